//! The canonical form prompts and rule terms are matched in, so look-alike
//! letters, accents, full-width forms, leetspeak, spacing tricks and
//! invisible characters do not slip past the rules.

use unicode_normalization::char::{decompose_canonical, decompose_compatible, is_combining_mark};

/// A prompt in canonical form: words separated by single spaces, runs of
/// spaced-out letters joined, repeated letters squeezed.
#[derive(Debug, Default)]
pub struct Canonical {
    pub text: String,
    /// Byte ranges of `text` that were spaced-out letters (`k i l l`):
    /// word boundaries inside them are unknown, so a term may match any
    /// part of one.
    pub loose: Vec<(usize, usize)>,
}

impl Canonical {
    /// Whether byte offset `at` lies strictly inside a joined run, where a
    /// word may start or end unseen.
    pub fn inside_run(&self, at: usize) -> bool {
        self.loose.iter().any(|&(s, e)| at > s && at < e)
    }
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

/// Zero-width and other format characters hide nothing from us.
fn invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{2060}'..='\u{2064}' | '\u{feff}' | '\u{00ad}')
}

/// Scripts written without spaces between words: their terms match as
/// any part of the text.
pub fn unspaced_script(c: char) -> bool {
    matches!(c,
        '\u{3040}'..='\u{30ff}'      // kana
        | '\u{3400}'..='\u{4dbf}'    // CJK extension A
        | '\u{4e00}'..='\u{9fff}'    // CJK unified ideographs
        | '\u{f900}'..='\u{faff}'    // CJK compatibility ideographs
        | '\u{ac00}'..='\u{d7af}'    // Hangul syllables
        | '\u{20000}'..='\u{2ffff}') // CJK extensions B and later
}

/// CJK unified ideographs (not the compatibility ones, which decompose):
/// letters that fold to themselves.
fn ideograph(c: char) -> bool {
    matches!(c, '\u{3400}'..='\u{4dbf}' | '\u{4e00}'..='\u{9fff}' | '\u{20000}'..='\u{2ffff}')
}

/// Lower-case, compatibility-folded (full-width and styled letters become
/// plain ones), accents removed: each character decomposed by
/// compatibility, lower-cased, and stripped of combining marks. Done per
/// character, so text with nothing to fold (ASCII, most Chinese) costs a
/// table lookup per character rather than a normalizer pass.
fn fold(text: &str) -> String {
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
            continue;
        }
        // Unified ideographs have no decomposition, no case and no marks:
        // most of a Chinese prompt skips the table walks.
        if ideograph(c) {
            out.push(c);
            continue;
        }
        decompose_compatible(c, |d| {
            for lower in d.to_lowercase() {
                decompose_canonical(lower, |m| {
                    if !is_combining_mark(m) {
                        out.push(m);
                    }
                });
            }
        });
    }
    out
}

/// Builds the canonical text one word at a time.
struct Builder {
    out: Canonical,
    join: bool,
    /// Start of the current run of one-letter words, and its length.
    run: Option<(usize, usize)>,
    last: Option<char>,
}

impl Builder {
    fn push_word(&mut self, word: &str) {
        let single = {
            let mut chars = word.chars();
            chars.next().is_some() && chars.next().is_none()
        };
        if self.join && single {
            match &mut self.run {
                Some((_, n)) => *n += 1,
                None => {
                    self.space();
                    self.run = Some((self.out.text.len(), 1));
                }
            }
        } else {
            self.end_run();
            self.space();
        }
        for c in word.chars() {
            // Squeezing letters (`kiiill` → `kil`) but not digits: `22`
            // is not `2`.
            if self.join && self.last == Some(c) && c.is_alphabetic() {
                continue;
            }
            self.out.text.push(c);
            self.last = Some(c);
        }
    }

    fn space(&mut self) {
        if !self.out.text.is_empty() {
            self.out.text.push(' ');
            self.last = Some(' ');
        }
    }

    fn end_run(&mut self) {
        if let Some((start, n)) = self.run.take() {
            if n >= 2 {
                self.out.loose.push((start, self.out.text.len()));
            }
        }
    }
}

fn tokenize(text: &str, join: bool) -> Canonical {
    let folded = fold(text);
    let mut b = Builder {
        out: Canonical {
            text: String::with_capacity(folded.len()),
            loose: Vec::new(),
        },
        join,
        run: None,
        last: None,
    };
    let mut current = String::new();
    let mut word = String::new();
    let mut flush = |current: &mut String, b: &mut Builder| {
        if current.is_empty() {
            return;
        }
        // Symbols at a word's edges are punctuation (`wow!!`, `$5`), not
        // letters in disguise.
        let trimmed = current.trim_matches(|c: char| !c.is_alphanumeric());
        word.clear();
        if trimmed.chars().any(char::is_alphabetic) {
            word.extend(trimmed.chars().map(|c| leet(c).unwrap_or(c)));
        } else {
            word.extend(current.chars().filter(|c| c.is_alphanumeric()));
        }
        if !word.is_empty() {
            b.push_word(&word);
        }
        current.clear();
    };
    for c in folded.chars() {
        // The fast paths give what the general one below gives for these
        // characters (none is invisible, a mark or a look-alike), sooner.
        if c.is_ascii() {
            if c.is_ascii_alphanumeric() || leet(c).is_some() {
                current.push(c);
            } else {
                flush(&mut current, &mut b);
            }
            continue;
        }
        if ideograph(c) {
            current.push(c);
            continue;
        }
        if invisible(c) || is_combining_mark(c) {
            continue;
        }
        let c = confusable(c);
        if c.is_alphanumeric() || leet(c).is_some() {
            current.push(c);
        } else {
            flush(&mut current, &mut b);
        }
    }
    flush(&mut current, &mut b);
    b.end_run();
    b.out
}

/// Lower-case, compatibility-folded, accents and invisible characters
/// removed, look-alike letters folded to Latin, leetspeak inside words
/// turned into letters, and everything else that is not a letter or digit
/// made a single space.
pub fn normalize(text: &str) -> String {
    tokenize(text, false).text
}

/// [`normalize`]d, then runs of one-letter words joined (`k i l l` →
/// `kill`) and repeated letters squeezed (`kiiill` → `kil`): the form the
/// rules match in, with rule terms put in the same form.
pub fn canonical(text: &str) -> Canonical {
    tokenize(text, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast paths agree with the general path, character by character.
    #[test]
    fn fast_paths_fold_as_the_general_path_does() {
        let general = |c: char| -> String {
            let mut out = String::new();
            decompose_compatible(c, |d| {
                for lower in d.to_lowercase() {
                    decompose_canonical(lower, |m| {
                        if !is_combining_mark(m) {
                            out.push(m);
                        }
                    });
                }
            });
            out
        };
        let ranges = [(0x3400u32, 0x4dbfu32), (0x4e00, 0x9fff), (0x20000, 0x2a6df)];
        for (lo, hi) in ranges {
            for c in (lo..=hi).filter_map(char::from_u32) {
                assert!(ideograph(c));
                assert_eq!(general(c), c.to_string(), "{c:?}");
                assert!(c.is_alphanumeric() && !invisible(c) && confusable(c) == c);
            }
        }
        for c in (0u32..128).filter_map(char::from_u32) {
            assert_eq!(confusable(c), c);
            assert!(!invisible(c) && !is_combining_mark(c));
        }
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
        assert_eq!(normalize("儿童，色情"), "儿童 色情", "full-width comma");
        assert_eq!(
            normalize("ｃｈｉｌｄ　ｎｕｄｅ"),
            "child nude",
            "ideographic space"
        );
    }

    #[test]
    fn canonical_joins_spaced_letters_and_squeezes() {
        let c = canonical("k i l l him");
        assert_eq!(c.text, "kil him");
        assert_eq!(c.loose, vec![(0, 3)]);
        assert_eq!(canonical("kiiiill").text, "kil");
        assert_eq!(
            canonical("22 years").text,
            "22 years",
            "digits are not squeezed"
        );
        assert_eq!(canonical("儿 童 色 情").text, "儿童色情");
        let c = canonical("how to make a b o m b");
        assert_eq!(c.text, "how to make abomb");
        assert!(c.inside_run(c.text.find("bomb").unwrap()));
        assert!(!c.inside_run(0), "a run's own start is a real boundary");
        assert!(
            canonical("a cat").loose.is_empty(),
            "one lone letter is a word"
        );
    }
}
