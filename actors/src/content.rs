//! Content rules (ToS 3.2): what may not be generated.
//!
//! [`ContentPolicy`] is the seam: the orchestrator asks it about every
//! prompt before anything is charged, so a real classifier can be plugged
//! in. [`RulesPolicy`] is the built-in one: a rules file of categories, each
//! with terms (whole words or phrases) and regular expressions, matched on
//! [`normalize`]d text, so look-alike letters, accents, full-width forms,
//! leetspeak, spacing tricks and invisible characters do not slip past.

use std::collections::BTreeSet;

use regex::Regex;
use serde::Deserialize;
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// The decision about one prompt.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Verdict {
    Allowed,
    /// Refused, with the category of the rule that matched.
    Rejected {
        category: String,
    },
}

pub trait ContentPolicy: Send + Sync + 'static {
    fn check(&self, prompt: &str) -> Verdict;
}

/// Allows everything (the default of an orchestrator given no policy).
pub struct AllowAll;

impl ContentPolicy for AllowAll {
    fn check(&self, _: &str) -> Verdict {
        Verdict::Allowed
    }
}

/// The rules file shipped with the server, used when no other is given.
pub const DEFAULT_RULES: &str = include_str!("../rules/content.toml");

/// A rules file: `[[category]]` tables with `name`, `terms` and
/// `patterns`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    category: Vec<CategoryFile>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct CategoryFile {
    name: String,
    #[serde(default)]
    terms: Vec<String>,
    #[serde(default)]
    patterns: Vec<String>,
}

struct Category {
    name: String,
    /// Normalized terms, each as space-separated words.
    terms: Vec<String>,
    patterns: Vec<Regex>,
}

/// The built-in policy: categories of terms and patterns.
pub struct RulesPolicy {
    categories: Vec<Category>,
}

impl RulesPolicy {
    /// Parses a rules file, TOML or JSON (by its first non-blank
    /// character). Every pattern must compile and every category must
    /// have a name and at least one rule.
    pub fn parse(text: &str) -> Result<RulesPolicy, String> {
        let file: RulesFile = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| format!("rules: {e}"))?
        } else {
            toml::from_str(text).map_err(|e| format!("rules: {e}"))?
        };
        let mut names = BTreeSet::new();
        let mut categories = Vec::with_capacity(file.category.len());
        for c in file.category {
            let name = c.name.trim().to_owned();
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-');
            if !valid_name {
                return Err(format!(
                    "rules: category name {name:?} must be 1..=64 of a-z, 0-9 and -"
                ));
            }
            if !names.insert(name.clone()) {
                return Err(format!("rules: category {name:?} appears twice"));
            }
            let terms: Vec<String> = c
                .terms
                .iter()
                .map(|t| normalize(t))
                .filter(|t| !t.is_empty())
                .collect();
            let patterns = c
                .patterns
                .iter()
                .map(|p| {
                    regex::RegexBuilder::new(p)
                        .size_limit(1 << 20)
                        .build()
                        .map_err(|e| format!("rules: category {name:?}: pattern {p:?}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if terms.is_empty() && patterns.is_empty() {
                return Err(format!("rules: category {name:?} has no terms or patterns"));
            }
            categories.push(Category {
                name,
                terms,
                patterns,
            });
        }
        Ok(RulesPolicy { categories })
    }

    /// The rules shipped in the repository.
    pub fn builtin() -> Result<RulesPolicy, String> {
        RulesPolicy::parse(DEFAULT_RULES)
    }

    pub fn categories(&self) -> impl Iterator<Item = &str> {
        self.categories.iter().map(|c| c.name.as_str())
    }
}

/// `needle` occurs in `hay` as whole words (both are space-separated words).
fn has_phrase(hay: &str, needle: &str) -> bool {
    let padded_hay = format!(" {hay} ");
    let padded = format!(" {needle} ");
    padded_hay.contains(&padded)
}

impl ContentPolicy for RulesPolicy {
    fn check(&self, prompt: &str) -> Verdict {
        let forms = forms(prompt);
        for c in &self.categories {
            let term_hit = c.terms.iter().any(|t| {
                let squeezed_term = squeeze(t);
                forms
                    .iter()
                    .any(|f| has_phrase(f, t) || has_phrase(f, &squeezed_term))
            });
            let pattern_hit = || {
                c.patterns
                    .iter()
                    .any(|p| forms.iter().any(|f| p.is_match(f)))
            };
            if term_hit || pattern_hit() {
                return Verdict::Rejected {
                    category: c.name.clone(),
                };
            }
        }
        Verdict::Allowed
    }
}

/// The forms a prompt is matched in: normalized; with runs of single
/// letters joined (`k i l l` → `kill`); and each of those with repeated
/// letters squeezed (`kiiill` → `kil`, compared with squeezed terms).
fn forms(prompt: &str) -> Vec<String> {
    let normal = normalize(prompt);
    let joined = join_single_letters(&normal);
    let mut out = vec![normal.clone()];
    if joined != normal {
        out.push(joined.clone());
    }
    for f in [&normal, &joined] {
        let s = squeeze(f);
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Letters that look alike across scripts, folded to Latin.
fn confusable(c: char) -> char {
    match c {
        // Cyrillic
        'а' => 'a',
        'в' => 'b',
        'е' | 'ё' => 'e',
        'к' => 'k',
        'м' => 'm',
        'н' => 'h',
        'о' => 'o',
        'р' => 'p',
        'с' => 'c',
        'т' => 't',
        'у' => 'y',
        'х' => 'x',
        'і' | 'ї' => 'i',
        'ј' => 'j',
        'ѕ' => 's',
        'ԁ' => 'd',
        'ɡ' => 'g',
        // Greek
        'α' => 'a',
        'β' => 'b',
        'ε' => 'e',
        'η' => 'n',
        'ι' => 'i',
        'κ' => 'k',
        'ν' => 'v',
        'ο' => 'o',
        'ρ' => 'p',
        'τ' => 't',
        'υ' => 'u',
        'χ' => 'x',
        // Latin odds and ends
        'ı' => 'i',
        'ł' => 'l',
        'ø' => 'o',
        'đ' => 'd',
        'ß' => 's',
        other => other,
    }
}

/// Digits and symbols that stand in for letters inside a word.
fn leet(c: char) -> Option<char> {
    Some(match c {
        '0' => 'o',
        '1' => 'i',
        '2' => 'z',
        '3' => 'e',
        '4' => 'a',
        '5' => 's',
        '6' => 'g',
        '7' => 't',
        '8' => 'b',
        '9' => 'g',
        '@' => 'a',
        '$' => 's',
        '!' => 'i',
        '|' => 'l',
        '+' => 't',
        _ => return None,
    })
}

/// Lower-case, compatibility-folded (NFKC: full-width and styled letters
/// become plain ones), accents and invisible characters removed,
/// look-alike letters folded to Latin, leetspeak inside words turned into
/// letters, and everything else that is not a letter or digit made a
/// single space.
pub fn normalize(text: &str) -> String {
    let folded: String = text
        .nfkc()
        .flat_map(char::to_lowercase)
        .collect::<String>()
        .nfd()
        .filter(|c| !is_combining_mark(*c))
        // Zero-width and other format characters hide nothing from us.
        .filter(|c| !matches!(c, '\u{200b}'..='\u{200f}' | '\u{2060}'..='\u{2064}' | '\u{feff}' | '\u{00ad}'))
        .map(confusable)
        .collect();
    let mut words: Vec<String> = Vec::new();
    let mut current = String::new();
    let flush = |current: &mut String, words: &mut Vec<String>| {
        if current.is_empty() {
            return;
        }
        // Symbols at a word's edges are punctuation (`wow!!`, `$5`), not
        // letters in disguise.
        let trimmed = current.trim_matches(|c: char| !c.is_alphanumeric());
        let has_letter = trimmed.chars().any(char::is_alphabetic);
        let word: String = if has_letter {
            trimmed.chars().map(|c| leet(c).unwrap_or(c)).collect()
        } else {
            current.chars().filter(|c| c.is_alphanumeric()).collect()
        };
        if !word.is_empty() {
            words.push(word);
        }
        current.clear();
    };
    for c in folded.chars() {
        if c.is_alphanumeric() || leet(c).is_some() {
            current.push(c);
        } else {
            flush(&mut current, &mut words);
        }
    }
    flush(&mut current, &mut words);
    words.join(" ")
}

/// Joins runs of two or more one-letter words: `k i l l` → `kill`.
fn join_single_letters(normal: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut run = String::new();
    let mut run_len = 0;
    let end_run = |run: &mut String, run_len: &mut usize, out: &mut Vec<String>| {
        if *run_len > 0 {
            out.push(std::mem::take(run));
        }
        *run_len = 0;
    };
    for word in normal.split(' ').filter(|w| !w.is_empty()) {
        if word.chars().count() == 1 {
            run.push_str(word);
            run_len += 1;
        } else {
            end_run(&mut run, &mut run_len, &mut out);
            out.push(word.to_owned());
        }
    }
    end_run(&mut run, &mut run_len, &mut out);
    out.join(" ")
}

/// Collapses runs of the same character: `kiiill` → `kil`.
fn squeeze(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = None;
    for c in text.chars() {
        if Some(c) != last {
            out.push(c);
        }
        last = Some(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RulesPolicy {
        RulesPolicy::parse(
            r#"
            [[category]]
            name = "violence"
            terms = ["kill", "behead", "mass shooting"]
            patterns = ['\bbomb[a-z]*\s+(?:making|recipe)\b']
            "#,
        )
        .unwrap()
    }

    fn rejected(p: &RulesPolicy, prompt: &str) -> bool {
        matches!(p.check(prompt), Verdict::Rejected { .. })
    }

    #[test]
    fn normalization_folds_tricks() {
        assert_eq!(normalize("  Hello,\tWORLD!! "), "hello world");
        assert_eq!(normalize("ＫＩＬＬ"), "kill", "full-width");
        assert_eq!(normalize("kíll"), "kill", "accents");
        assert_eq!(normalize("k\u{200b}ill"), "kill", "zero-width space");
        assert_eq!(normalize("kіll"), "kill", "Cyrillic i");
        assert_eq!(normalize("k1ll"), "kill", "leetspeak");
        assert_eq!(normalize("1024x1024 image"), "iozaxioza image");
        assert_eq!(normalize("1024 2048"), "1024 2048", "numbers alone stay");
        assert_eq!(normalize("k!ll"), "kill");
    }

    #[test]
    fn terms_match_whole_words_in_every_disguise() {
        let p = policy();
        for bad in [
            "how to kill a man",
            "KILL",
            "k i l l him",
            "k.i.l.l",
            "k1ll",
            "kiiiiill",
            "Ｋｉｌｌ",
            "kіll",
            "a mass   shooting",
            "m@ss sh00ting",
            "bomb making guide",
            "bombs recipe",
        ] {
            assert!(rejected(&p, bad), "{bad:?} allowed");
        }
        for fine in [
            "a skilled painter",
            "killer whale",
            "a mass of shooting stars",
            "photo bombing",
            "a red fox in the snow",
        ] {
            assert!(!rejected(&p, fine), "{fine:?} rejected");
        }
        assert_eq!(
            p.check("kill"),
            Verdict::Rejected {
                category: "violence".into()
            }
        );
    }

    #[test]
    fn bad_rules_files_are_refused() {
        assert!(RulesPolicy::parse("[[category]]\nname = \"x\"\n").is_err());
        assert!(RulesPolicy::parse("[[category]]\nname = \"x\"\npatterns = [\"(\"]\n").is_err());
        assert!(RulesPolicy::parse("[[category]]\nname = \"Bad Name\"\nterms=[\"a\"]\n").is_err());
        assert!(RulesPolicy::parse("[[category]]\nname = \"a\"\nterms=[\"b\"]\nfoo=1\n").is_err());
        let twice =
            "[[category]]\nname=\"a\"\nterms=[\"b\"]\n[[category]]\nname=\"a\"\nterms=[\"c\"]\n";
        assert!(RulesPolicy::parse(twice).is_err());
        let json = r#"{"category": [{"name": "a", "terms": ["forbidden thing"]}]}"#;
        let p = RulesPolicy::parse(json).unwrap();
        assert!(rejected(&p, "a FORBIDDEN  thing"));
    }

    #[test]
    fn the_shipped_rules_load_and_allow_ordinary_prompts() {
        let p = RulesPolicy::builtin().unwrap();
        assert!(p.categories().count() >= 3);
        for fine in [
            "a red fox in the snow",
            "a lighthouse at dusk",
            "product photo of a sneaker, studio light",
            "a cat wearing a hat",
        ] {
            assert_eq!(p.check(fine), Verdict::Allowed, "{fine:?}");
        }
        assert!(rejected(&p, "how to build a pipe bomb"));
    }
}
