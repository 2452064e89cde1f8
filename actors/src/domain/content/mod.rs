//! Content rules (ToS 3.2): what may not be generated.
//!
//! [`ContentPolicy`] is the seam: the orchestrator asks it about every
//! prompt before anything is charged, so a classifier can be plugged in
//! (the server has one that speaks the common moderation API over HTTP).
//! [`RulesPolicy`] is the built-in one. [`outputs`] judges the safety
//! labels workers report about what they generated.

pub mod evidence;
pub mod normalize;
pub mod outputs;
pub mod rules;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use normalize::normalize;
pub use rules::{RulesPolicy, DEFAULT_RULES};

use crate::domain::tier::Tier;

/// A probability-like score in `0..=1`: a classifier's score for a
/// category, or how sure a refusal is. Never NaN, so it compares totally.
#[derive(Clone, Copy, PartialEq, PartialOrd, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct Score(f64);

// Every `Score` is finite (see `new`), so equality is an equivalence.
impl Eq for Score {}

impl Score {
    pub const ONE: Score = Score(1.0);
    pub const ZERO: Score = Score(0.0);

    pub fn new(value: f64) -> Option<Score> {
        (value.is_finite() && (0.0..=1.0).contains(&value)).then_some(Score(value))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Score {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Score, D::Error> {
        let v = f64::deserialize(d)?;
        Score::new(v).ok_or_else(|| serde::de::Error::custom(format!("score {v} is not in 0..=1")))
    }
}

impl std::str::FromStr for Score {
    type Err = String;
    fn from_str(s: &str) -> Result<Score, String> {
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a number"))?;
        Score::new(v).ok_or_else(|| format!("{v} is not in 0..=1"))
    }
}

/// A score per category, as settings write them:
/// `sexual-minors=0.1,violence=0.8` (the last `=` of a pair splits it, a
/// category named twice takes its last score).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CategoryScores(pub BTreeMap<String, Score>);

impl std::str::FromStr for CategoryScores {
    type Err = String;
    fn from_str(raw: &str) -> Result<CategoryScores, String> {
        let mut scores = BTreeMap::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (category, value) = part
                .rsplit_once('=')
                .ok_or_else(|| format!("{part:?}: expected category=score"))?;
            let score: Score = value.parse().map_err(|e| format!("{part:?}: {e}"))?;
            scores.insert(category.trim().to_owned(), score);
        }
        Ok(CategoryScores(scores))
    }
}

/// Who decided.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Source {
    /// The built-in rules.
    Rules,
    /// The configured classifier.
    Provider,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Rules => "rules",
            Source::Provider => "provider",
        }
    }
}

/// A refused prompt and why: kept as evidence for operators.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Refusal {
    /// The category returned to the client.
    pub category: String,
    /// How sure the policy is; only confident refusals count toward
    /// automatic suspension.
    pub confidence: Score,
    pub source: Source,
    /// The rules' terms that matched, in canonical form.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matched: Vec<String>,
    /// The provider's score per category.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scores: BTreeMap<String, Score>,
}

/// The decision about one prompt.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Verdict {
    Allowed,
    Rejected(Refusal),
    /// No decision could be made (the provider is down and the tier's
    /// policy is to refuse rather than fall back): not the user's fault,
    /// so nothing is charged or counted.
    Unavailable(String),
}

#[async_trait]
pub trait ContentPolicy: Send + Sync + 'static {
    /// Judges `prompt` for a user of `tier` (the tier picks what to do
    /// when a provider is down).
    async fn check(&self, prompt: &str, tier: Tier) -> Verdict;

    /// Whether `check` looks at the tier; when not, the caller need not
    /// look it up.
    fn depends_on_tier(&self) -> bool {
        false
    }
}

/// Allows everything (the default of an orchestrator given no policy).
pub struct AllowAll;

#[async_trait]
impl ContentPolicy for AllowAll {
    async fn check(&self, _: &str, _: Tier) -> Verdict {
        Verdict::Allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_scores_parse_by_the_last_equals_sign() {
        let scores: CategoryScores = " sexual/minors=0.1, a=b=0.5 ,".parse().unwrap();
        let score = |v| Score::new(v).unwrap();
        assert_eq!(scores.0.get("sexual/minors"), Some(&score(0.1)));
        assert_eq!(scores.0.get("a=b"), Some(&score(0.5)));
        assert_eq!("".parse::<CategoryScores>(), Ok(CategoryScores::default()));
        for bad in ["violence", "violence=high", "violence=1.5"] {
            assert!(bad.parse::<CategoryScores>().is_err(), "{bad} accepted");
        }
    }
}
