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
        // The runs are disjoint and in order: only the last one starting
        // before `at` can hold it.
        let i = self.loose.partition_point(|&(s, _)| s < at);
        i > 0 && self.loose.get(i - 1).is_some_and(|&(_, e)| at < e)
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
#[inline]
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

/// CJK unified ideographs whose every code point is assigned, has no
/// decomposition, no case and no marks, and is a letter: they fold to
/// themselves (a test walks every one), so most of a Chinese prompt skips
/// the Unicode table walks. The compatibility ideographs are left out on
/// purpose: they decompose to unified ones.
fn ideograph(c: char) -> bool {
    matches!(c, '\u{3400}'..='\u{4dbf}' | '\u{4e00}'..='\u{9fff}' | '\u{20000}'..='\u{2a6df}')
}

/// The three bytes of a three-byte character as one number, first byte
/// highest: UTF-8 keeps the order of code points, so a range of them is a
/// range of these numbers.
fn key_of(b0: u8, b1: u8, b2: u8) -> u32 {
    u32::from(b0) << 16 | u32::from(b1) << 8 | u32::from(b2)
}

/// Whether the three-byte character starting with `b0`, `b1` is a unified
/// ideograph (U+3400..=U+4DBF, U+4E00..=U+9FFF), told from its first two
/// bytes without decoding it: from E5 on every one is (U+5000..=U+9FFF);
/// in E4 all but the hexagrams (E4 B7); in E3 those from U+3400 (E3 90).
#[inline]
fn ideograph_lead(b0: u8, b1: u8) -> bool {
    match b0 {
        0xe5..=0xe9 => true,
        0xe4 => b1 != 0xb7,
        0xe3 => b1 >= 0x90,
        _ => false,
    }
}

/// The code point of the three-byte character with [`key_of`] `key`.
fn code_of_key(key: u32) -> u32 {
    (key >> 16 & 0x0f) << 12 | (key >> 8 & 0x3f) << 6 | (key & 0x3f)
}

/// Full-width forms of the printable ASCII characters (`Ａ`, `，`, `！`):
/// their compatibility decomposition is the ASCII character itself.
fn full_width(c: char) -> Option<char> {
    match c {
        '\u{ff01}'..='\u{ff5e}' => char::from_u32(c as u32 - 0xfee0),
        _ => None,
    }
}

/// Chinese punctuation (`、`, `。`, brackets such as `「」` and `【】`, the
/// ideographic space) that separates words and folds to no letter.
fn cjk_break(c: char) -> bool {
    matches!(c, '\u{3000}'..='\u{3004}' | '\u{3008}'..='\u{3020}')
}

/// The symbols that may sit in a word: the leetspeak ones. Every other
/// character of a word is a letter or digit.
fn symbol(c: char) -> bool {
    c.is_ascii() && !c.is_ascii_alphanumeric()
}

/// Whether an ASCII byte belongs in a word: a letter, a digit, or a
/// leetspeak symbol.
fn word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'@' | b'$' | b'!' | b'|' | b'+')
}

/// The ASCII character the full-width form `EF b1 b2` stands for
/// (U+FF01..=U+FF5E is EF BC 81 to EF BD 9E), from its bytes.
#[inline]
fn full_width_ascii(b1: u8, b2: u8) -> Option<u8> {
    match (b1, b2) {
        (0xbc, 0x81..=0xbf) => Some(b2 - 0x60),
        (0xbd, 0x80..=0x9e) => Some(b2 - 0x20),
        _ => None,
    }
}

/// Whether `E3 80 b2` is Chinese punctuation that breaks words
/// ([`cjk_break`]: U+3000..=U+3004, U+3008..=U+3020), from its last byte.
#[inline]
fn cjk_break_byte(b2: u8) -> bool {
    matches!(b2, 0x80..=0x84 | 0x88..=0xa0)
}

/// The length of the character `rest` starts with if it ends a word and
/// leaves nothing of itself (ASCII punctuation and space, their full-width
/// forms, Chinese punctuation), 0 at the end of the text; `None` for any
/// other character, or one the general path must look at.
#[inline]
fn plain_break(rest: &[u8]) -> Option<usize> {
    let breaks = |a: u8| !word_byte(a.to_ascii_lowercase());
    match *rest {
        [] => Some(0),
        [b, ..] if b < 0x80 => breaks(b).then_some(1),
        [0xef, b1, b2, ..] => full_width_ascii(b1, b2).filter(|&a| breaks(a)).map(|_| 3),
        [0xe3, 0x80, b2, ..] => cjk_break_byte(b2).then_some(3),
        _ => None,
    }
}

/// Builds the canonical text in one pass over the prompt: each character
/// is folded (lower-cased, compatibility-decomposed, stripped of marks)
/// and fed to the word builder at once, with no folded copy of the prompt
/// in between. The current word is kept in a buffer reused from word to
/// word, with what ending it needs to know (whether it holds a letter,
/// only letters, a letter twice in a row): a word of letters alone, the
/// usual case, is copied out whole, with no per-character Unicode lookups.
struct Tokenizer<'a> {
    out: &'a mut Canonical,
    join: bool,
    /// Start of the current run of one-letter words, and its length.
    run: Option<(usize, usize)>,
    /// The last character written to the text, as a code point; 0 before
    /// the first (no NUL is ever written: it separates words).
    last: u32,
    word: String,
    /// Characters in `word`, and its last one (0 when empty).
    chars: usize,
    prev: u32,
    /// Whether `word` holds a letter; holds only letters; holds the same
    /// character twice in a row.
    alpha: bool,
    plain: bool,
    repeat: bool,
}

impl Tokenizer<'_> {
    #[inline]
    fn note(&mut self, code: u32, alphabetic: bool) {
        self.chars += 1;
        self.alpha |= alphabetic;
        self.plain &= alphabetic;
        self.repeat |= code == self.prev;
        self.prev = code;
    }

    /// `n` letters that fold to themselves, the last `last`, with
    /// `repeat` if one repeats the one before it.
    #[inline]
    fn keep_run(&mut self, run: &str, n: usize, last: u32, repeat: bool) {
        self.word.push_str(run);
        self.chars += n;
        self.alpha = true;
        self.repeat |= repeat;
        self.prev = last;
    }

    #[inline]
    fn keep(&mut self, c: char, alphabetic: bool) {
        self.word.push(c);
        self.note(u32::from(c), alphabetic);
    }

    /// One ASCII character as folding left it.
    #[inline]
    fn ascii(&mut self, b: u8) {
        if word_byte(b) {
            self.word.push(char::from(b));
            self.note(u32::from(b), b.is_ascii_alphabetic());
        } else {
            self.end_word();
        }
    }

    /// One character of the prompt that is neither ASCII nor a
    /// three-byte unified ideograph.
    fn other(&mut self, c: char) {
        if ideograph(c) {
            self.keep(c, true);
        } else if cjk_break(c) {
            self.end_word();
        } else if let Some(a) = full_width(c) {
            self.ascii(a.to_ascii_lowercase() as u8);
        } else {
            decompose_compatible(c, |d| {
                for lower in d.to_lowercase() {
                    decompose_canonical(lower, |m| {
                        // Marks are dropped here, so the word builder
                        // never sees one.
                        if !is_combining_mark(m) {
                            self.folded(m);
                        }
                    });
                }
            });
        }
    }

    /// One character as the general folding left it (lower case, no
    /// combining mark).
    fn folded(&mut self, c: char) {
        if c.is_ascii() {
            return self.ascii(c as u8);
        }
        if ideograph(c) {
            return self.keep(c, true);
        }
        if invisible(c) {
            return;
        }
        let c = confusable(c);
        if c.is_alphabetic() {
            self.keep(c, true);
        } else if c.is_numeric() || leet(c).is_some() {
            self.keep(c, false);
        } else {
            self.end_word();
        }
    }

    /// Ends the current word: symbols at its edges are punctuation
    /// (`wow!!`, `$5`), not letters in disguise; inside a word with a
    /// letter they are leetspeak, as are its digits; a word of digits and
    /// symbols keeps its digits.
    fn end_word(&mut self) {
        if self.chars == 0 {
            return;
        }
        let word = std::mem::take(&mut self.word);
        if self.alpha && self.plain {
            // Letters alone: nothing to trim or map.
            self.put_letters(&word, 0, self.chars == 1, self.repeat, self.prev);
            self.word = word;
            return self.clear_word();
        }
        if self.alpha {
            let kept = word.trim_matches(symbol);
            self.push_word(
                kept.chars().count(),
                kept.chars().map(|c| leet(c).unwrap_or(c)),
            );
        } else {
            let digits = word.chars().filter(|&c| !symbol(c)).count();
            if digits > 0 {
                self.push_word(digits, word.chars().filter(|&c| !symbol(c)));
            }
        }
        self.word = word;
        self.clear_word();
    }

    /// Writes a word of letters alone, `single` if it has one, with
    /// `repeat` if a letter in it repeats the one before it, ending with
    /// `last`. `width` is the length of each of its letters when they are
    /// all as long (a run of them), 0 when not known.
    #[inline(always)]
    fn put_letters(&mut self, word: &str, width: usize, single: bool, repeat: bool, last: u32) {
        if !self.join || !(repeat || single) {
            // Nothing to squeeze, and a word of its own: a space, then the
            // word copied whole.
            self.end_run();
            self.space();
            self.out.text.push_str(word);
        } else {
            self.start_word(single);
            // A letter repeating the one before it (in a one-letter word,
            // the run's last) is left out; the rest is copied in slices
            // between them.
            let mut from = 0;
            if width == 0 {
                let mut before = self.last;
                for (i, c) in word.char_indices() {
                    if u32::from(c) == before {
                        self.out
                            .text
                            .push_str(word.get(from..i).unwrap_or_default());
                        from = i + c.len_utf8();
                    }
                    before = u32::from(c);
                }
            } else {
                // Letters of one length: each compared with the one before
                // as bytes, the first with the text's last.
                if word
                    .chars()
                    .next()
                    .is_some_and(|c| u32::from(c) == self.last)
                {
                    from = width;
                }
                let bytes = word.as_bytes();
                let mut i = width;
                while let Some(letter) = bytes.get(i..i + width) {
                    if bytes.get(i - width..i) == Some(letter) {
                        self.out
                            .text
                            .push_str(word.get(from..i).unwrap_or_default());
                        from = i + width;
                    }
                    i += width;
                }
            }
            self.out.text.push_str(word.get(from..).unwrap_or_default());
        }
        self.last = last;
    }

    /// A run of letters `width` bytes long each that fold to themselves,
    /// the last `last`, with `repeat` if one repeats the one before it,
    /// followed by `rest`. When
    /// the run is a whole word (nothing before it in the word, a plain
    /// break after it), it is written out at once, with no copy into the
    /// word buffer, and the break is stepped over: what is left of `rest`
    /// is returned.
    #[inline(always)]
    fn letters<'r>(
        &mut self,
        run: &str,
        width: usize,
        last: u32,
        repeat: bool,
        rest: &'r [u8],
    ) -> &'r [u8] {
        let n = run.len() / width;
        if self.chars == 0 {
            if let Some(len) = plain_break(rest) {
                self.put_letters(run, width, n == 1, repeat, last);
                return rest.get(len..).unwrap_or_default();
            }
        }
        self.keep_run(run, n, last, repeat || self.first_repeats(run));
        rest
    }

    /// Whether the first character of `run` repeats the word's last.
    #[inline]
    fn first_repeats(&self, run: &str) -> bool {
        run.chars()
            .next()
            .is_some_and(|c| u32::from(c) == self.prev)
    }

    fn clear_word(&mut self) {
        self.word.clear();
        self.chars = 0;
        self.prev = 0;
        self.alpha = false;
        self.plain = true;
        self.repeat = false;
    }

    /// What comes before a word of `single` letter or more: it joins the
    /// run before it, starts one, or ends it and takes a space.
    #[inline]
    fn start_word(&mut self, single: bool) {
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
    }

    /// Appends a word of `len` characters, squeezed.
    fn push_word(&mut self, len: usize, chars: impl Iterator<Item = char>) {
        self.start_word(len == 1);
        for c in chars {
            // Squeezing letters (`kiiill` → `kil`) but not digits: `22`
            // is not `2`.
            if self.join && self.last == u32::from(c) && c.is_alphabetic() {
                continue;
            }
            self.out.text.push(c);
            self.last = u32::from(c);
        }
    }

    #[inline]
    fn space(&mut self) {
        if !self.out.text.is_empty() {
            self.out.text.push(' ');
            self.last = u32::from(' ');
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

/// Lower-case, compatibility-folded (full-width and styled letters become
/// plain ones), accents removed: each character decomposed by
/// compatibility, lower-cased, and stripped of combining marks, then
/// handed to the word builder. Done per character, so text with nothing to
/// fold (ASCII, most Chinese) costs a range check per character rather
/// than a normalizer pass; the unified ideographs of the Basic
/// Multilingual Plane are taken as bytes, without decoding.
fn tokenize_into(text: &str, join: bool, out: &mut Canonical) {
    out.text.clear();
    out.loose.clear();
    out.text.reserve(text.len());
    let mut t = Tokenizer {
        out,
        join,
        run: None,
        last: 0,
        word: String::with_capacity(64),
        chars: 0,
        prev: 0,
        alpha: false,
        plain: true,
        repeat: false,
    };
    // What is left of the prompt; always starts at a character boundary.
    let mut rest = text.as_bytes();
    let at = |rest: &[u8]| text.len() - rest.len();
    while let [b, ..] = *rest {
        // Runs of what folds to itself and is a letter (lower-case ASCII
        // letters, unified ideographs) are scanned as bytes and copied into
        // the word whole.
        if b.is_ascii_lowercase() {
            let start = at(rest);
            let (mut prev, mut repeat) = (0, false);
            while let [b @ b'a'..=b'z', ref tail @ ..] = *rest {
                repeat |= u32::from(b) == prev;
                prev = u32::from(b);
                rest = tail;
            }
            let run = text.get(start..at(rest)).unwrap_or_default();
            rest = t.letters(run, 1, prev, repeat, rest);
            continue;
        }
        if (0xe3..=0xe9).contains(&b) {
            // Per ideograph: one length check, a look at its first two
            // bytes, and one comparison of the number its bytes make with
            // the one before (for squeezing); its count and the last one
            // are worked out from the run afterwards.
            let start = at(rest);
            let (mut repeat, mut prev) = (false, 0);
            while let [b0, b1, b2, ref tail @ ..] = *rest {
                if !ideograph_lead(b0, b1) {
                    break;
                }
                let key = key_of(b0, b1, b2);
                repeat |= key == prev;
                prev = key;
                rest = tail;
            }
            if prev != 0 {
                // Whole characters only were scanned: a boundary.
                let run = text.get(start..at(rest)).unwrap_or_default();
                rest = t.letters(run, 3, code_of_key(prev), repeat, rest);
                continue;
            }
        }
        if b < 0x80 {
            t.ascii(b.to_ascii_lowercase());
            rest = rest.get(1..).unwrap_or_default();
            continue;
        }
        // Full-width punctuation and letters (`，`, `！`, `Ａ`), as common in
        // Chinese text as spaces in English: U+FF01..=U+FF5E is EF BC 81 to
        // EF BD 9E.
        if let [0xef, b1, b2, ref tail @ ..] = *rest {
            if let Some(a) = full_width_ascii(b1, b2) {
                t.ascii(a.to_ascii_lowercase());
                rest = tail;
                continue;
            }
        }
        let Some(c) = text.get(at(rest)..).and_then(|s| s.chars().next()) else {
            // Not reached: `rest` always starts at a character boundary.
            break;
        };
        t.other(c);
        rest = rest.get(c.len_utf8()..).unwrap_or_default();
    }
    t.end_word();
    t.end_run();
}

/// Lower-case, compatibility-folded, accents and invisible characters
/// removed, look-alike letters folded to Latin, leetspeak inside words
/// turned into letters, and everything else that is not a letter or digit
/// made a single space.
pub fn normalize(text: &str) -> String {
    let mut out = Canonical::default();
    tokenize_into(text, false, &mut out);
    out.text
}

/// [`normalize`]d, then runs of one-letter words joined (`k i l l` →
/// `kill`) and repeated letters squeezed (`kiiill` → `kil`): the form the
/// rules match in, with rule terms put in the same form.
pub fn canonical(text: &str) -> Canonical {
    let mut out = Canonical::default();
    canonical_into(text, &mut out);
    out
}

/// [`canonical`], written into `out` (cleared first), so a caller checking
/// many prompts reuses one buffer.
pub fn canonical_into(text: &str, out: &mut Canonical) {
    tokenize_into(text, true, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the general path makes of one character: compatibility
    /// decomposition, lower case, canonical decomposition, marks dropped.
    fn general(c: char) -> String {
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
    }

    /// Whether the word builder's general path ends a word at `c`.
    fn breaks(c: char) -> bool {
        !invisible(c) && !c.is_alphanumeric() && leet(c).is_none()
    }

    /// The fast paths agree with the general path, character by character.
    #[test]
    fn fast_paths_fold_as_the_general_path_does() {
        let ranges = [(0x3400u32, 0x4dbfu32), (0x4e00, 0x9fff), (0x20000, 0x2a6df)];
        for (lo, hi) in ranges {
            for c in (lo..=hi).filter_map(char::from_u32) {
                assert!(ideograph(c));
                assert_eq!(general(c), c.to_string(), "{c:?}");
                assert!(c.is_alphabetic() && !invisible(c) && confusable(c) == c);
            }
        }
        for c in ('\u{800}'..='\u{ffff}').filter(|c| c.len_utf8() == 3) {
            let mut buf = [0; 4];
            let bytes = c.encode_utf8(&mut buf).as_bytes();
            let key = key_of(bytes[0], bytes[1], bytes[2]);
            assert_eq!(ideograph_lead(bytes[0], bytes[1]), ideograph(c), "{c:?}");
            assert_eq!(code_of_key(key), u32::from(c));
        }
        assert!(
            !ideograph('\u{2f800}'),
            "compatibility ideographs decompose"
        );
        assert_eq!(general('\u{2f800}'), "\u{4e3d}");
        for c in (0xff01u32..=0xff5e).filter_map(char::from_u32) {
            let ascii = full_width(c).unwrap();
            assert!(ascii.is_ascii_graphic(), "{c:?}");
            assert_eq!(general(c), ascii.to_ascii_lowercase().to_string(), "{c:?}");
        }
        // The fast paths' byte checks agree with the character checks.
        for c in '\u{800}'..='\u{ffff}' {
            let mut buf = [0; 4];
            if let [b0, b1, b2] = *c.encode_utf8(&mut buf).as_bytes() {
                if b0 == 0xef {
                    let ascii = full_width(c).map(|a| a as u8);
                    assert_eq!(full_width_ascii(b1, b2), ascii, "{c:?}");
                }
                if (b0, b1) == (0xe3, 0x80) {
                    assert_eq!(cjk_break_byte(b2), cjk_break(c), "{c:?}");
                }
            }
        }
        assert_eq!(full_width('\u{ff00}'), None);
        assert_eq!(full_width('\u{ff5f}'), None);
        for c in ('\u{2fff}'..='\u{3040}').filter(|&c| cjk_break(c)) {
            let folded = general(c);
            assert!(!folded.is_empty() && folded.chars().all(breaks), "{c:?}");
        }
        assert!(
            !cjk_break('\u{3005}') && !cjk_break('\u{3007}'),
            "々 and 〇 are letters"
        );
        for c in (0u32..128).filter_map(char::from_u32) {
            assert_eq!(confusable(c), c);
            assert!(!invisible(c) && !is_combining_mark(c));
            // The symbols a word may hold are exactly its non-alphanumeric
            // characters.
            if c.is_ascii_alphanumeric() || leet(c).is_some() {
                assert_eq!(symbol(c), !c.is_alphanumeric(), "{c:?}");
            }
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

    #[test]
    fn odd_input() {
        assert_eq!(normalize(""), "");
        let empty = canonical("");
        assert!(empty.text.is_empty() && empty.loose.is_empty());
        assert_eq!(canonical("  ,,, !!! @@ \t\n").text, "", "punctuation alone");
        assert_eq!(
            normalize("$5, 100%"),
            "5 100",
            "symbols at a number's edges"
        );
        // Combining marks, alone, stacked, or on a letter.
        assert_eq!(normalize("\u{301}"), "");
        assert_eq!(normalize("k\u{301}i\u{308}l\u{323}\u{302}l"), "kill");
        assert_eq!(normalize("e\u{301}\u{302}\u{303} x"), "e x");
        assert_eq!(normalize("\u{301}kill"), "kill", "a mark with no letter");
        assert_eq!(normalize("İstanbul"), "istanbul", "dotted capital I");
        // Outside the Basic Multilingual Plane.
        assert_eq!(normalize("𝐊𝐈𝐋𝐋 𝟏𝟐"), "kill 12", "mathematical bold");
        assert_eq!(normalize("😀 cat 🐈"), "cat", "emoji separate words");
        assert_eq!(normalize("𠀀𠀁"), "𠀀𠀁", "CJK extension B");
        assert_eq!(
            normalize("\u{2f800}"),
            "\u{4e3d}",
            "compatibility ideograph"
        );
        // Controls, replacement and private-use characters, invisibles.
        assert_eq!(normalize("a\u{0}b\u{fffd}c\u{e000}d"), "a b c d");
        assert_eq!(normalize("k\u{200b}i\u{feff}l\u{ad}l\u{2063}"), "kill");
        assert_eq!(normalize("\u{200b}\u{200d}"), "");
        // Scripts and forms mixed inside one word.
        assert_eq!(
            normalize("ｋіⅼ1"),
            "kili",
            "full-width, Cyrillic, Roman numeral, digit"
        );
        assert_eq!(normalize("儿童ｋｉｌｌ，色情"), "儿童kill 色情");
        assert_eq!(normalize("「儿童」【色情】、。"), "儿童 色情");
        assert_eq!(normalize("ﬁre ㎏"), "fire kg", "ligatures and unit signs");
        assert_eq!(normalize("ｶﾞ が"), "カ か", "voiced marks are marks");
    }

    #[test]
    fn long_runs_of_one_character() {
        let n = 4000;
        let of = |c: char| std::iter::repeat_n(c, n).collect::<String>();
        assert_eq!(normalize(&of('a')), of('a'), "normalize squeezes nothing");
        assert_eq!(canonical(&of('a')).text, "a");
        assert_eq!(canonical(&of('Ａ')).text, "a");
        assert_eq!(canonical(&of('𝐀')).text, "a");
        assert_eq!(canonical(&of('儿')).text, "儿");
        assert_eq!(canonical(&of('1')).text, of('1'), "digits are not squeezed");
        for nothing in ['!', ' ', '\u{301}', '\u{200b}', '。', '😀'] {
            let c = canonical(&of(nothing));
            assert!(c.text.is_empty() && c.loose.is_empty(), "{nothing:?}");
        }
        let spaced = canonical(&"a ".repeat(n / 2));
        assert_eq!(spaced.text, "a");
        assert_eq!(spaced.loose, vec![(0, 1)]);
    }

    #[test]
    fn inside_run_agrees_with_a_scan_of_every_run() {
        let c = canonical(&"k i l l, war, x y, word, ".repeat(200));
        assert_eq!(c.loose.len(), 400);
        for at in 0..=c.text.len() {
            let scan = c.loose.iter().any(|&(s, e)| at > s && at < e);
            assert_eq!(c.inside_run(at), scan, "{at}");
        }
    }

    #[test]
    fn canonical_into_reuses_and_clears_its_buffer() {
        let mut out = Canonical::default();
        canonical_into("k i l l him", &mut out);
        assert_eq!(out.loose, vec![(0, 3)]);
        canonical_into("a cat", &mut out);
        assert_eq!(out.text, "a cat");
        assert!(out.loose.is_empty());
    }

    /// Characters worth mixing: every fast path, and the general path's
    /// folds, look-alikes, marks, invisibles, leetspeak and separators.
    const ALPHABET: &[char] = &[
        'a', 'b', 'e', 'i', 'k', 'l', 'o', 's', 'K', 'L', 'Z', '0', '1', '3', '4', '5', '9', '@',
        '$', '!', '|', '+', ' ', ' ', '.', ',', '-', '\'', '#', '%', '\t', '\n', '\u{3000}', '、',
        '。', '「', '」', '々', '〇', '〡', '〸', 'Ａ', 'ｋ', '１', '！', '＠', '，', '＄', 'а',
        'і', 'к', 'о', 'А', 'К', 'α', 'Ο', 'ρ', 'ı', 'İ', 'ł', 'ß', 'ẞ', 'ø', 'é', 'É', '\u{301}',
        '\u{308}', '\u{345}', '\u{200b}', '\u{200d}', '\u{feff}', '\u{ad}', '²', '①', 'ﬁ', 'Ⅻ',
        '㎏', 'ｶ', 'ﾞ', 'が', 'ガ', '가', '한', '儿', '童', '色', '情', '十', '二', '丽', '豈',
        '⼉', '𝐀', '𝐤', '𝟏', '😀', '𠀀', '𪜀', '\u{fdfa}', 'Ω', 'K', 'Å', '\u{0}', '\u{fffd}',
    ];

    fn same_as_reference(text: &str) {
        let canon = canonical(text);
        let old = reference::tokenize(text, true);
        assert_eq!(canon.text, old.text, "{text:?}");
        assert_eq!(canon.loose, old.loose, "{text:?}");
        assert_eq!(
            normalize(text),
            reference::tokenize(text, false).text,
            "{text:?}"
        );
    }

    #[test]
    fn the_one_pass_agrees_with_the_reference_on_known_tricks() {
        for text in [
            "",
            "k i l l him",
            "how to make a b o m b",
            "a 1 b",
            "kiiiill",
            "22 years",
            "k!ll",
            "!kill!",
            "$$$",
            "m@ss sh00ting",
            "1024x1024 image",
            "儿 童 色 情",
            "ｃｈｉｌｄ　ｎｕｄｅ",
            "a b c d e f g h",
            "x y, z",
            "aa a a",
            "a  a",
            "é é",
            "ǅ",
            "ﬀ f",
            "细雨蒙蒙，哈哈哈 a a a",
            "k k i i l l",
            "kk",
            "Kk",
            "儿 儿 童",
            "a 儿 b",
            // A run written out whole as a word, or not, by what follows.
            "儿童，色情。kill, x",
            "kill\u{3000}儿童、a「b」",
            "儿童ｋｉｌｌ",
            "儿童Kill kill5 kill$ kill!",
            "儿童１ 儿童！ 儿童～",
            "kill\u{200b}er 儿童\u{301}色情",
            "哈哈，哈 哈，a，a，b",
            "aa，aa aa",
            "b o m b，儿，童",
            "细雨蒙蒙",
            "蒙蒙蒙，aaab，a aa，儿 儿儿童童，x xx",
        ] {
            same_as_reference(text);
        }
    }

    /// Runs of letters that make a whole word are written out at once;
    /// those that do not still fold with what follows them.
    #[test]
    fn whole_word_runs_keep_their_neighbours() {
        for (text, canonical_text) in [
            ("儿童，色情。", "儿童 色情"),
            ("儿童ｋｉｌｌ，色情", "儿童kil 色情"),
            ("war5 war! w@r", "wars war war"),
            ("儿童Ｗａｒ", "儿童war"),
            ("儿童\u{3000}色情\u{3001}", "儿童 色情"),
            ("a，b、c d", "abcd"),
            ("哈哈，哈 哈", "哈 哈"),
            ("细雨蒙蒙，蒙蒙", "细雨蒙 蒙"),
            ("aab，a aa", "ab a a"),
            ("war\u{200b}ship", "warship"),
        ] {
            assert_eq!(canonical(text).text, canonical_text, "{text:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// The one pass gives exactly what the former two-pass
        /// normalisation gave, on strings of characters chosen to collide.
        #[test]
        fn the_one_pass_agrees_with_the_reference(
            chars in proptest::collection::vec(proptest::sample::select(ALPHABET), 0..48)
        ) {
            same_as_reference(&chars.into_iter().collect::<String>());
        }

        /// And on any characters, but the ideograph planes' unassigned and
        /// compatibility code points, which the reference kept unfolded.
        #[test]
        fn the_one_pass_agrees_with_the_reference_on_any_text(
            chars in proptest::collection::vec(proptest::prelude::any::<char>(), 0..48)
        ) {
            let text: String = chars
                .into_iter()
                .map(|c| if ('\u{2a6e0}'..='\u{2ffff}').contains(&c) { 'x' } else { c })
                .collect();
            same_as_reference(&text);
        }
    }

    /// The former normalisation (a folded copy of the prompt, then words
    /// built from it), kept as the oracle the one pass is checked against.
    mod reference {
        use super::super::{confusable, invisible, leet, Canonical};
        use unicode_normalization::char::{
            decompose_canonical, decompose_compatible, is_combining_mark,
        };

        fn ideograph(c: char) -> bool {
            matches!(c, '\u{3400}'..='\u{4dbf}' | '\u{4e00}'..='\u{9fff}' | '\u{20000}'..='\u{2ffff}')
        }

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

        struct Builder {
            out: Canonical,
            join: bool,
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
                    if self.join && self.last == Some(c) && c.is_alphabetic() {
                        continue;
                    }
                    self.out.text.push(c);
                    self.last = Some(c);
                }
            }

            #[inline]
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

        pub fn tokenize(text: &str, join: bool) -> Canonical {
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
    }
}
