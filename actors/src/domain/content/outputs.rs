//! Output checks (ToS 3.1–3.2 apply to what is generated, not only to what
//! is asked): a worker may report safety labels per output, and an output
//! whose label reaches its category's threshold is withheld from the user.
//! The server, not the worker, applies the thresholds, so operators tune
//! them in one place.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Score;

/// One safety label a worker reports about an output: a category (the
/// worker's or its classifier's name for it) and a score.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SafetyLabel {
    pub category: String,
    pub score: Score,
}

/// Why an output is withheld: the label that reached its threshold.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Withheld {
    pub category: String,
    pub score: Score,
}

/// At most this many labels per output, and this long a category name:
/// a worker's report is bounded like every other input.
pub const MAX_LABELS: usize = 32;
pub const MAX_CATEGORY_CHARS: usize = 64;

/// The score at which a label withholds its output, per category.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputThresholds {
    pub default: Score,
    pub per_category: BTreeMap<String, Score>,
}

impl Default for OutputThresholds {
    fn default() -> OutputThresholds {
        OutputThresholds {
            default: Score::new(0.5).unwrap_or(Score::ONE),
            per_category: BTreeMap::new(),
        }
    }
}

impl OutputThresholds {
    fn threshold(&self, category: &str) -> Score {
        self.per_category
            .get(category)
            .copied()
            .unwrap_or(self.default)
    }

    /// The label that withholds an output, the highest-scoring one when
    /// several reach their thresholds. An output with too many labels or
    /// a malformed one is withheld: a report we cannot read is not a
    /// clean one.
    pub fn judge(&self, labels: &[SafetyLabel]) -> Option<Withheld> {
        if labels.len() > MAX_LABELS {
            return Some(Withheld {
                category: "unreadable-labels".into(),
                score: Score::ONE,
            });
        }
        labels
            .iter()
            .filter(|l| {
                l.category.is_empty()
                    || l.category.chars().count() > MAX_CATEGORY_CHARS
                    || l.score >= self.threshold(&l.category)
            })
            .max_by(|a, b| {
                a.score
                    .partial_cmp(&b.score)
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .map(|l| {
                if l.category.is_empty() || l.category.chars().count() > MAX_CATEGORY_CHARS {
                    Withheld {
                        category: "unreadable-labels".into(),
                        score: Score::ONE,
                    }
                } else {
                    Withheld {
                        category: l.category.clone(),
                        score: l.score,
                    }
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(category: &str, score: f64) -> SafetyLabel {
        SafetyLabel {
            category: category.into(),
            score: Score::new(score).unwrap(),
        }
    }

    #[test]
    fn thresholds_withhold_per_category() {
        let mut t = OutputThresholds::default();
        t.per_category
            .insert("sexual-minors".into(), Score::new(0.1).unwrap());
        assert_eq!(t.judge(&[]), None);
        assert_eq!(t.judge(&[label("violence", 0.49)]), None);
        assert_eq!(
            t.judge(&[label("violence", 0.5)]).map(|w| w.category),
            Some("violence".into())
        );
        assert_eq!(
            t.judge(&[label("violence", 0.2), label("sexual-minors", 0.15)])
                .map(|w| w.category),
            Some("sexual-minors".into())
        );
        let many: Vec<_> = (0..40).map(|_| label("x", 0.0)).collect();
        assert_eq!(
            t.judge(&many).map(|w| w.category),
            Some("unreadable-labels".into())
        );
        assert_eq!(
            t.judge(&[label("", 0.0)]).map(|w| w.category),
            Some("unreadable-labels".into())
        );
    }

    #[test]
    fn scores_outside_zero_to_one_are_refused() {
        assert!(serde_json::from_str::<SafetyLabel>(r#"{"category":"x","score":1.5}"#).is_err());
        assert!(serde_json::from_str::<SafetyLabel>(r#"{"category":"x","score":-0.1}"#).is_err());
        assert!(serde_json::from_str::<SafetyLabel>(r#"{"category":"x","score":0.3}"#).is_ok());
    }
}
