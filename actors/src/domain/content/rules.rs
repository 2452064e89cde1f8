//! The built-in content policy: a rules file of concepts and categories,
//! matched in one multi-pattern pass over the prompt's canonical form, then
//! combined per category (the format is described in
//! `actors/rules/content.toml`).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::dfa::DFA;
use aho_corasick::{Anchored, MatchKind, StartKind};
use async_trait::async_trait;
use regex::Regex;
use serde::Deserialize;

use super::normalize::{canonical, canonical_into, unspaced_script, Canonical};
use super::{ContentPolicy, Refusal, Score, Source, Verdict};
use crate::domain::tier::Tier;

/// The rules file shipped with the server, used when no other is given.
pub const DEFAULT_RULES: &str = include_str!("../../../rules/content.toml");

/// Limits that keep a check's bookkeeping in fixed-size bit sets.
const MAX_CATEGORIES: usize = 64;
const MAX_CONCEPTS: usize = 128;

/// Texts from this many bytes on are searched as two halves at once.
const SPLIT_WALK_AT: usize = 256;

const TERM_CONFIDENCE: f64 = 1.0;
const RULE_CONFIDENCE: f64 = 0.9;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    neutral: NeutralFile,
    #[serde(default)]
    concepts: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    category: Vec<CategoryFile>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct NeutralFile {
    #[serde(default)]
    terms: Vec<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct CategoryFile {
    name: String,
    #[serde(default)]
    terms: Vec<String>,
    #[serde(default)]
    patterns: Vec<String>,
    #[serde(default)]
    rule: Vec<RuleFile>,
    #[serde(default)]
    context: Vec<String>,
    #[serde(default)]
    never_cleared: bool,
    confidence: Option<f64>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    all: Vec<String>,
    #[serde(default)]
    strict: bool,
    confidence: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Neutral,
    Term(usize),
    Concept(usize),
    Context(usize),
}

struct Pattern {
    text: String,
    /// `porn*`: also the start of a longer word.
    prefix: bool,
    /// Edges in a script without spaces need no word boundary.
    start_free: bool,
    end_free: bool,
    roles: Vec<Role>,
}

/// A match of a pattern: its start and end in the canonical text, and
/// which pattern.
type Found = (usize, usize, usize);

struct Rule {
    concepts: u128,
    strict: bool,
    confidence: Score,
}

struct Category {
    name: String,
    term_confidence: Score,
    /// Regular expressions on the canonical text, for rules files that
    /// still use them; they count as terms.
    patterns: Vec<Regex>,
    rules: Vec<Rule>,
    never_cleared: bool,
}

/// What a walk standing in the automaton's start state can step over
/// without it, as the automaton would leave it there: in a Chinese prompt
/// most ideographs begin no term, and stepping over one is a bit test
/// rather than three lookups.
struct StartSkips {
    /// Bytes that lead from the start state back to it.
    bytes: [bool; 256],
    /// Three-byte characters whose bytes lead from the start state back to
    /// it through no match: a bit per character, the word chosen by the
    /// low four bits of its first byte and six of its second, the bit by
    /// six of its third (the bits of its code point).
    chars: Box<[u64; 1024]>,
}

impl StartSkips {
    /// Worked out by walking the automaton itself over every byte and
    /// every three-byte character, so a skip is exactly the steps it saves.
    fn of(dfa: &DFA, start: StateID) -> StartSkips {
        let mut skips = StartSkips {
            bytes: [false; 256],
            chars: Box::new([0; 1024]),
        };
        if dfa.is_special(start) {
            // A start state that reports something is never stepped over.
            return skips;
        }
        for b in 0..=u8::MAX {
            skips.bytes[usize::from(b)] = dfa.next_state(Anchored::No, start, b) == start;
        }
        for c in '\u{800}'..='\u{ffff}' {
            let mut buf = [0; 4];
            let mut sid = start;
            let mut quiet = true;
            for &b in c.encode_utf8(&mut buf).as_bytes() {
                sid = dfa.next_state(Anchored::No, sid, b);
                quiet &= !dfa.is_special(sid);
            }
            if quiet && sid == start {
                let code = u32::from(c);
                skips.chars[(code >> 6) as usize & 1023] |= 1 << (code & 63);
            }
        }
        skips
    }

    /// Where a walk in the start state at `at` next needs the automaton:
    /// past every byte and three-byte character from there that would
    /// leave it in the start state.
    #[inline(always)]
    fn skip(&self, bytes: &[u8], at: usize) -> usize {
        let mut rest = bytes.get(at..).unwrap_or_default();
        loop {
            match *rest {
                [b0 @ 0xe0..=0xef, b1, b2, ref tail @ ..]
                    if self.chars[usize::from(b0 & 0x0f) << 6 | usize::from(b1 & 0x3f)]
                        >> (b2 & 0x3f)
                        & 1
                        != 0 =>
                {
                    rest = tail
                }
                [b, ref tail @ ..] if self.bytes[usize::from(b)] => rest = tail,
                _ => return bytes.len() - rest.len(),
            }
        }
    }
}

/// The built-in policy.
pub struct RulesPolicy {
    matcher: DFA,
    /// The matcher's unanchored start state.
    start: StateID,
    skips: StartSkips,
    patterns: Vec<Pattern>,
    categories: Vec<Category>,
}

fn confidence(raw: Option<f64>, default: f64, what: &str) -> Result<Score, String> {
    let value = raw.unwrap_or(default);
    Score::new(value).ok_or_else(|| format!("rules: {what}: confidence {value} must be 0..=1"))
}

/// Collects the patterns and their roles, one automaton pattern per
/// distinct canonical term.
#[derive(Default)]
struct Patterns {
    list: Vec<Pattern>,
    by_text: HashMap<(String, bool), usize>,
}

impl Patterns {
    fn add(&mut self, raw: &str, role: Role) {
        let trimmed = raw.trim();
        let (body, prefix) = match trimmed.strip_suffix('*') {
            Some(b) => (b, true),
            None => (trimmed, false),
        };
        let text = canonical(body).text;
        let (Some(first), Some(last)) = (text.chars().next(), text.chars().next_back()) else {
            return;
        };
        let id = *self
            .by_text
            .entry((text.clone(), prefix))
            .or_insert_with(|| {
                self.list.push(Pattern {
                    start_free: unspaced_script(first),
                    end_free: unspaced_script(last),
                    text,
                    prefix,
                    roles: Vec::new(),
                });
                self.list.len() - 1
            });
        if !self.list[id].roles.contains(&role) {
            self.list[id].roles.push(role);
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '_')
}

impl RulesPolicy {
    /// Parses a rules file, TOML or JSON (by its first non-blank
    /// character). Every category needs a name and at least one term,
    /// pattern or rule; every rule names known concepts; every pattern
    /// compiles.
    pub fn parse(text: &str) -> Result<RulesPolicy, String> {
        let file: RulesFile = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| format!("rules: {e}"))?
        } else {
            toml::from_str(text).map_err(|e| format!("rules: {e}"))?
        };
        if file.concepts.len() > MAX_CONCEPTS {
            return Err(format!("rules: at most {MAX_CONCEPTS} concepts"));
        }
        if file.category.len() > MAX_CATEGORIES {
            return Err(format!("rules: at most {MAX_CATEGORIES} categories"));
        }
        let mut patterns = Patterns::default();
        for t in &file.neutral.terms {
            patterns.add(t, Role::Neutral);
        }
        let mut concept_index = HashMap::new();
        for (i, (name, terms)) in file.concepts.iter().enumerate() {
            if !valid_name(name) {
                return Err(format!(
                    "rules: concept name {name:?} must be 1..=64 of a-z, 0-9, - and _"
                ));
            }
            if terms
                .iter()
                .all(|t| canonical(t.trim_end_matches('*')).text.is_empty())
            {
                return Err(format!("rules: concept {name:?} has no terms"));
            }
            concept_index.insert(name.as_str(), i);
            for t in terms {
                patterns.add(t, Role::Concept(i));
            }
        }
        let mut names = BTreeSet::new();
        let mut categories = Vec::with_capacity(file.category.len());
        for (ci, c) in file.category.iter().enumerate() {
            let name = c.name.trim().to_owned();
            if !valid_name(&name) || name.contains('_') {
                return Err(format!(
                    "rules: category name {name:?} must be 1..=64 of a-z, 0-9 and -"
                ));
            }
            if !names.insert(name.clone()) {
                return Err(format!("rules: category {name:?} appears twice"));
            }
            let before = patterns.list.len();
            let mut has_term = false;
            for t in &c.terms {
                if !canonical(t.trim_end_matches('*')).text.is_empty() {
                    has_term = true;
                }
                patterns.add(t, Role::Term(ci));
            }
            let _ = before;
            for t in &c.context {
                patterns.add(t, Role::Context(ci));
            }
            let compiled = c
                .patterns
                .iter()
                .map(|p| {
                    regex::RegexBuilder::new(p)
                        .size_limit(1 << 20)
                        .build()
                        .map_err(|e| format!("rules: category {name:?}: pattern {p:?}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut rules = Vec::with_capacity(c.rule.len());
            for r in &c.rule {
                if r.all.is_empty() {
                    return Err(format!("rules: category {name:?}: a rule with no concepts"));
                }
                let mut mask = 0u128;
                for concept in &r.all {
                    let i = concept_index.get(concept.as_str()).ok_or_else(|| {
                        format!("rules: category {name:?}: unknown concept {concept:?}")
                    })?;
                    mask |= 1u128 << i;
                }
                rules.push(Rule {
                    concepts: mask,
                    strict: r.strict,
                    confidence: confidence(r.confidence, RULE_CONFIDENCE, &name)?,
                });
            }
            if !has_term && compiled.is_empty() && rules.is_empty() {
                return Err(format!(
                    "rules: category {name:?} has no terms, patterns or rules"
                ));
            }
            categories.push(Category {
                name,
                term_confidence: confidence(c.confidence, TERM_CONFIDENCE, &c.name)?,
                patterns: compiled,
                rules,
                never_cleared: c.never_cleared,
            });
        }
        // A DFA: built once at start-up, fastest to search. No prefilter:
        // with hundreds of terms none would skip anything, and without one
        // only match states are special, which the search loop relies on.
        let matcher = DFA::builder()
            .match_kind(MatchKind::Standard)
            .start_kind(StartKind::Unanchored)
            .prefilter(false)
            .build(patterns.list.iter().map(|p| p.text.as_str()))
            .map_err(|e| format!("rules: {e}"))?;
        let start = matcher
            .start_state(Anchored::No)
            .map_err(|e| format!("rules: {e}"))?;
        let skips = StartSkips::of(&matcher, start);
        Ok(RulesPolicy {
            matcher,
            start,
            skips,
            patterns: patterns.list,
            categories,
        })
    }

    /// The rules shipped in the repository.
    pub fn builtin() -> Result<RulesPolicy, String> {
        RulesPolicy::parse(DEFAULT_RULES)
    }

    pub fn categories(&self) -> impl Iterator<Item = &str> {
        self.categories.iter().map(|c| c.name.as_str())
    }

    /// The matches of one prompt: accepted at word boundaries, those
    /// overlapping a neutral phrase dropped. Every match is reported,
    /// overlapping ones too (`child porn` and `porn*` both count), in the
    /// order they end.
    fn matches(&self, canon: &Canonical, found: &mut Vec<Found>) {
        found.clear();
        let text = canon.text.as_str();
        let bytes = text.as_bytes();
        let boundary_before = |at: usize| {
            at == 0
                || bytes[at - 1] == b' '
                || text[..at].chars().next_back().is_some_and(unspaced_script)
                || canon.inside_run(at)
        };
        let boundary_after = |at: usize| {
            at == bytes.len()
                || bytes[at] == b' '
                || text[at..].chars().next().is_some_and(unspaced_script)
                || canon.inside_run(at)
        };
        // The automaton walked by hand: the same states and matches as its
        // overlapping search, without the per-byte bookkeeping that search
        // keeps to resume after each match.
        let dfa = &self.matcher;
        let mut neutral = false;
        let mut report = |sid: StateID, end: usize, found: &mut Vec<Found>| {
            if !dfa.is_match(sid) {
                return;
            }
            for k in 0..dfa.match_len(sid) {
                let pid = dfa.match_pattern(sid, k);
                let start = end - dfa.pattern_len(pid);
                let id = pid.as_usize();
                let p = &self.patterns[id];
                if !p.start_free && !boundary_before(start) {
                    continue;
                }
                if !p.prefix && !p.end_free && !boundary_after(end) {
                    continue;
                }
                neutral |= p.roles.contains(&Role::Neutral);
                found.push((start, end, id));
            }
        };
        // A long text is walked as two halves at once. Each step waits on
        // the lookup before it; two walks depend on nothing in common, so
        // the processor overlaps their lookups. The second walk starts a
        // longest term early, so it sees whole every match ending in its
        // half and reports only those: with the first walk's, every match,
        // once. The first walk is given its half alone, so no skip takes it
        // past the middle.
        //
        // Whenever a walk is in the start state, what begins no term is
        // stepped over: those steps would have stayed in the start state,
        // which reports nothing.
        let n = bytes.len();
        let split = n >= SPLIT_WALK_AT;
        let mid = if split { n / 2 } else { n };
        let overlap = dfa.max_pattern_len().saturating_sub(1);
        let head = bytes.get(..mid).unwrap_or_default();
        let (start, skips) = (self.start, &self.skips);
        let (mut sa, mut a) = (start, skips.skip(head, 0));
        let (mut sb, mut b) = (start, n);
        if split {
            b = skips.skip(bytes, mid.saturating_sub(overlap));
        }
        while a < mid && b < n {
            sa = dfa.next_state(Anchored::No, sa, head[a]);
            sb = dfa.next_state(Anchored::No, sb, bytes[b]);
            a += 1;
            b += 1;
            if dfa.is_special(sa) {
                report(sa, a, found);
            } else if sa == start {
                a = skips.skip(head, a);
            }
            if dfa.is_special(sb) {
                if b > mid {
                    report(sb, b, found);
                }
            } else if sb == start {
                b = skips.skip(bytes, b);
            }
        }
        // Each walk reports the matches ending past `from`.
        for (sid, at, walked, from) in [(&mut sa, &mut a, head, 0), (&mut sb, &mut b, bytes, mid)] {
            while let Some(&byte) = walked.get(*at) {
                *sid = dfa.next_state(Anchored::No, *sid, byte);
                *at += 1;
                if dfa.is_special(*sid) {
                    if *at > from {
                        report(*sid, *at, found);
                    }
                } else if *sid == start {
                    *at = skips.skip(walked, *at);
                }
            }
        }
        if split {
            // In the order they end, as one walk finds them; those ending
            // at one place come from one walk, in its order.
            found.sort_by_key(|&(_, end, _)| end);
        }
        if neutral {
            self.drop_neutralized(found);
        }
    }

    /// Drops the matches that overlap a neutral phrase (the phrases
    /// themselves stay). The neutral matches are in order of their ends, so
    /// those ending after a match starts are a suffix of them; the match
    /// overlaps one if the earliest start in that suffix is before its end.
    fn drop_neutralized(&self, found: &mut Vec<Found>) {
        let is_neutral = |id: usize| self.patterns[id].roles.contains(&Role::Neutral);
        let neutral: Vec<(usize, usize)> = found
            .iter()
            .filter(|&&(_, _, id)| is_neutral(id))
            .map(|&(s, e, _)| (s, e))
            .collect();
        let mut earliest_start = vec![usize::MAX; neutral.len() + 1];
        for (i, &(s, _)) in neutral.iter().enumerate().rev() {
            earliest_start[i] = s.min(earliest_start[i + 1]);
        }
        found.retain(|&(s, e, id)| {
            let after = neutral.partition_point(|&(_, ne)| ne <= s);
            is_neutral(id) || earliest_start[after] >= e
        });
    }

    /// The decision about one prompt, synchronously.
    pub fn evaluate(&self, prompt: &str) -> Verdict {
        thread_local! {
            /// One canonical text and match list per thread, reused from
            /// check to check rather than allocated for each.
            static SCRATCH: RefCell<(Canonical, Vec<Found>)> =
                RefCell::default();
        }
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => {
                let (canon, found) = &mut *scratch;
                self.evaluate_in(prompt, canon, found)
            }
            // Not reached (a check calls no other), but a fresh buffer is
            // always correct.
            Err(_) => self.evaluate_in(prompt, &mut Canonical::default(), &mut Vec::new()),
        })
    }

    fn evaluate_in(&self, prompt: &str, canon: &mut Canonical, found: &mut Vec<Found>) -> Verdict {
        canonical_into(prompt, canon);
        self.matches(canon, found);
        let found = &*found;
        let mut terms = 0u64;
        let mut context = 0u64;
        let mut concepts = 0u128;
        for &(_, _, id) in found {
            for role in &self.patterns[id].roles {
                match *role {
                    Role::Neutral => {}
                    Role::Term(c) => terms |= 1 << c,
                    Role::Context(c) => context |= 1 << c,
                    Role::Concept(i) => concepts |= 1 << i,
                }
            }
        }
        for (ci, c) in self.categories.iter().enumerate() {
            let cleared = !c.never_cleared && context & (1 << ci) != 0;
            let term_hit =
                terms & (1 << ci) != 0 || c.patterns.iter().any(|p| p.is_match(&canon.text));
            let mut best: Option<(Score, u128)> = None;
            if term_hit && !cleared {
                best = Some((c.term_confidence, 0));
            }
            for r in &c.rules {
                if concepts & r.concepts != r.concepts || (cleared && !r.strict) {
                    continue;
                }
                if best.is_none_or(|(s, _)| r.confidence > s) {
                    best = Some((r.confidence, r.concepts));
                }
            }
            if let Some((score, rule_concepts)) = best {
                let matched = self.evidence(found, ci, rule_concepts);
                return Verdict::Rejected(Refusal {
                    category: c.name.clone(),
                    confidence: score,
                    source: Source::Rules,
                    matched,
                    scores: BTreeMap::new(),
                });
            }
        }
        Verdict::Allowed
    }

    /// The canonical terms that made the refusal, for operators.
    fn evidence(&self, found: &[Found], category: usize, concepts: u128) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for &(_, _, id) in found {
            let p = &self.patterns[id];
            let relevant = p.roles.iter().any(|r| match *r {
                Role::Term(c) => c == category,
                Role::Concept(i) => concepts & (1 << i) != 0,
                _ => false,
            });
            if relevant && !out.contains(&p.text) {
                out.push(p.text.clone());
            }
        }
        out
    }
}

#[async_trait]
impl ContentPolicy for RulesPolicy {
    async fn check(&self, prompt: &str, _tier: Tier) -> Verdict {
        self.evaluate(prompt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RulesPolicy {
        RulesPolicy::parse(
            r#"
            [neutral]
            terms = ["killer whale", "photo bombing"]
            [concepts]
            minor = ["child", "kid", "儿童"]
            sexual = ["nude", "porn*", "色情"]
            explosive = ["bomb"]
            how = ["how to"]
            [[category]]
            name = "sexual-minors"
            never_cleared = true
            [[category.rule]]
            all = ["minor", "sexual"]
            confidence = 0.95
            [[category]]
            name = "violence"
            terms = ["kill", "behead", "mass shooting", "car bomb"]
            context = ["disposal", "saint", "museum"]
            patterns = ['\bbomb[a-z]*\s+(?:making|recipe)\b']
            [[category.rule]]
            all = ["explosive", "how"]
            strict = true
            "#,
        )
        .unwrap()
    }

    fn category(p: &RulesPolicy, prompt: &str) -> Option<String> {
        match p.evaluate(prompt) {
            Verdict::Rejected(r) => Some(r.category),
            _ => None,
        }
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
            assert_eq!(category(&p, bad).as_deref(), Some("violence"), "{bad:?}");
        }
        for fine in [
            "a skilled painter",
            "killer whale",
            "a mass of shooting stars",
            "photo bombing",
            "a red fox in the snow",
        ] {
            assert_eq!(category(&p, fine), None, "{fine:?}");
        }
    }

    #[test]
    fn concepts_combine_anywhere_in_any_order() {
        let p = policy();
        for bad in [
            "a nude child",
            "a child, standing in a garden at dusk with flowers, nude",
            "nude, then much later in the prompt: a kid",
            "pornographic drawing of a kid",
            "儿童色情",
            "一个儿童的色情图片",
            "n u d e c h i l d",
        ] {
            assert_eq!(
                category(&p, bad).as_deref(),
                Some("sexual-minors"),
                "{bad:?}"
            );
        }
        for fine in [
            "a child in a garden",
            "a nude statue",
            "a kidney bean, nude colour",
        ] {
            assert_eq!(category(&p, fine), None, "{fine:?}");
        }
    }

    #[test]
    fn context_clears_except_strict_rules_and_never_cleared_categories() {
        let p = policy();
        assert_eq!(category(&p, "car bomb"), Some("violence".into()));
        assert_eq!(category(&p, "car bomb disposal robot"), None);
        assert_eq!(category(&p, "Saint John, behead, baroque"), None);
        assert_eq!(
            category(&p, "how to build a bomb, museum"),
            Some("violence".into()),
            "strict rules ignore context"
        );
        assert_eq!(
            category(&p, "a nude child, museum, saint, disposal"),
            Some("sexual-minors".into()),
            "context never clears sexual content involving minors"
        );
    }

    #[test]
    fn a_refusal_carries_its_confidence_and_evidence() {
        let p = policy();
        let Verdict::Rejected(r) = p.evaluate("a kid, nude") else {
            panic!("allowed")
        };
        assert_eq!(r.confidence.get(), 0.95);
        assert_eq!(r.source, Source::Rules);
        assert_eq!(r.matched, vec!["kid".to_owned(), "nude".to_owned()]);
        let Verdict::Rejected(r) = p.evaluate("kill") else {
            panic!("allowed")
        };
        assert_eq!(r.confidence.get(), 1.0);
    }

    #[test]
    fn bad_rules_files_are_refused() {
        for bad in [
            "[[category]]\nname = \"x\"\n",
            "[[category]]\nname = \"x\"\npatterns = [\"(\"]\n",
            "[[category]]\nname = \"Bad Name\"\nterms=[\"a\"]\n",
            "[[category]]\nname = \"a\"\nterms=[\"b\"]\nfoo=1\n",
            "[[category]]\nname=\"a\"\nterms=[\"b\"]\n[[category]]\nname=\"a\"\nterms=[\"c\"]\n",
            "[[category]]\nname=\"a\"\n[[category.rule]]\nall=[\"nope\"]\n",
            "[[category]]\nname=\"a\"\n[[category.rule]]\nall=[]\n",
            "[concepts]\nx=[\"y\"]\n[[category]]\nname=\"a\"\nconfidence=2.0\nterms=[\"b\"]\n",
            "[concepts]\nx=[\"!!\"]\n",
            "not toml at all [",
        ] {
            assert!(RulesPolicy::parse(bad).is_err(), "{bad:?} accepted");
        }
        let json = r#"{"category": [{"name": "a", "terms": ["forbidden thing"]}]}"#;
        let p = RulesPolicy::parse(json).unwrap();
        assert_eq!(category(&p, "a FORBIDDEN  thing"), Some("a".into()));
    }

    #[test]
    fn the_shipped_rules_load_and_behave_on_the_reported_prompts() {
        let p = RulesPolicy::builtin().unwrap();
        assert!(p.categories().count() >= 6);
        for fine in [
            "a red fox in the snow",
            "Caravaggio, The Beheading of Saint John",
            "car bomb disposal robot",
        ] {
            assert_eq!(p.evaluate(fine), Verdict::Allowed, "{fine:?}");
        }
        assert_eq!(
            category(
                &p,
                "a sexual photo, in a bedroom, soft light, of a young child"
            ),
            Some("sexual-minors".into())
        );
        assert_eq!(
            category(&p, "how to build a pipe bomb"),
            Some("terrorism".into())
        );
        // School grades and years name minors; printable guns are guns made
        // at home; hiding the cuts is a self-harm method. Each alone is
        // harmless.
        for fine in [
            "a kindergarten teacher reading to children",
            "a fourth grader at the science fair",
            "year 6 graduation photo",
            "a 3d printed toy robot",
            "a printable birthday card",
            "men's underwear advertisement",
            "a tip jar on a cafe counter",
        ] {
            assert_eq!(p.evaluate(fine), Verdict::Allowed, "{fine:?}");
        }
        for (bad, cat) in [
            ("a sexualised drawing of a schoolgirl", "sexual-minors"),
            ("a kindergartener in underwear", "sexual-minors"),
            ("intimate photos of a 7th grade girl", "sexual-minors"),
            ("初中女生裸照", "sexual-minors"),
            ("3d printable rifle", "weapons"),
            ("tips to hide the cuts from self harm", "self-harm"),
        ] {
            assert_eq!(category(&p, bad).as_deref(), Some(cat), "{bad:?}");
        }
    }

    /// The former search (the library's overlapping iterator, then a scan
    /// of every neutral match per match), kept as the oracle the hand-walked
    /// automaton is checked against.
    fn reference_matches(
        p: &RulesPolicy,
        ac: &aho_corasick::AhoCorasick,
        canon: &Canonical,
    ) -> Vec<Found> {
        let text = canon.text.as_str();
        let bytes = text.as_bytes();
        let linear_inside = |at: usize| canon.loose.iter().any(|&(s, e)| at > s && at < e);
        let before = |at: usize| {
            at == 0
                || bytes[at - 1] == b' '
                || text[..at].chars().next_back().is_some_and(unspaced_script)
                || linear_inside(at)
        };
        let after = |at: usize| {
            at == bytes.len()
                || bytes[at] == b' '
                || text[at..].chars().next().is_some_and(unspaced_script)
                || linear_inside(at)
        };
        let mut found = Vec::new();
        for m in ac.find_overlapping_iter(text) {
            let pat = &p.patterns[m.pattern().as_usize()];
            if !pat.start_free && !before(m.start()) {
                continue;
            }
            if !pat.prefix && !pat.end_free && !after(m.end()) {
                continue;
            }
            found.push((m.start(), m.end(), m.pattern().as_usize()));
        }
        let neutral: Vec<(usize, usize)> = found
            .iter()
            .filter(|(_, _, id)| p.patterns[*id].roles.contains(&Role::Neutral))
            .map(|&(s, e, _)| (s, e))
            .collect();
        found.retain(|&(s, e, id)| {
            p.patterns[id].roles.contains(&Role::Neutral)
                || !neutral.iter().any(|&(ns, ne)| s < ne && ns < e)
        });
        found
    }

    /// The shipped rules, and the library's own automaton over their
    /// patterns: built once, as building them unoptimised takes seconds.
    static SHIPPED: std::sync::LazyLock<(RulesPolicy, aho_corasick::AhoCorasick)> =
        std::sync::LazyLock::new(|| {
            let p = RulesPolicy::builtin().unwrap();
            let ac = aho_corasick::AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .kind(Some(aho_corasick::AhoCorasickKind::DFA))
                .build(p.patterns.iter().map(|p| p.text.as_str()))
                .unwrap();
            (p, ac)
        });

    fn same_matches_as_reference(prompt: &str) {
        let (p, ac) = &*SHIPPED;
        same_matches_as_reference_of(p, ac, prompt);
    }

    fn same_matches_as_reference_of(p: &RulesPolicy, ac: &aho_corasick::AhoCorasick, prompt: &str) {
        let canon = canonical(prompt);
        let mut found = Vec::new();
        p.matches(&canon, &mut found);
        assert_eq!(found, reference_matches(p, ac, &canon), "{prompt:?}");
    }

    /// Rules whose terms sit where the start-state skips could lose them:
    /// terms whose later characters begin no term (白 in 黑白), a term
    /// whose first character shares its first two bytes with skipped ones
    /// (百 beside 白), one-character terms ending a run of skipped
    /// ideographs, kana, two- and four-byte scripts, and scripts mixed in
    /// one term.
    const SKIPPING_RULES: &str = r#"
        [neutral]
        terms = ["情书"]
        [[category]]
        name = "test"
        terms = ["黑白", "百年", "情", "儿童色情", "アイ", "жук", "𠀀𠀁", "x儿", "kill", "色情*"]
    "#;

    /// Pieces of prompts for [`SKIPPING_RULES`]: their terms, the parts
    /// of them, characters no term begins with, and separators.
    const SKIPPING_PIECES: &[&str] = &[
        "白", "黑", "百", "年", "情", "书", "儿", "童", "色", "ア", "イ", "ウ", "ж", "у", "к",
        "жук", "𠀀", "𠀁", "x", "kill", "ki", "ll", "水", "乡", " ", "，", "、", "a", "Ｋ", "1",
    ];

    static SKIPPING: std::sync::LazyLock<(RulesPolicy, aho_corasick::AhoCorasick)> =
        std::sync::LazyLock::new(|| {
            let p = RulesPolicy::parse(SKIPPING_RULES).unwrap();
            let ac = aho_corasick::AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .kind(Some(aho_corasick::AhoCorasickKind::DFA))
                .build(p.patterns.iter().map(|p| p.text.as_str()))
                .unwrap();
            (p, ac)
        });

    /// A walk may step over exactly what begins no term: a byte no term
    /// starts with, a three-byte character no term starts with.
    #[test]
    fn the_start_state_skips_only_what_begins_no_term() {
        for p in [&SHIPPED.0, &SKIPPING.0] {
            for b in 0..=u8::MAX {
                let begins = p.patterns.iter().any(|t| t.text.as_bytes()[0] == b);
                assert_eq!(p.skips.bytes[usize::from(b)], !begins, "byte {b:#x}");
            }
            for c in '\u{800}'..='\u{ffff}' {
                let begins = p.patterns.iter().any(|t| t.text.starts_with(c));
                let mut buf = [0; 4];
                let bytes = c.encode_utf8(&mut buf).as_bytes();
                assert_eq!(p.skips.skip(bytes, 0) == 3, !begins, "{c:?}");
            }
        }
        let p = &SKIPPING.0;
        assert_eq!(p.skips.skip("白水乡".as_bytes(), 0), 9);
        assert_eq!(p.skips.skip("白百".as_bytes(), 0), 3, "百 begins 百年");
        assert_eq!(p.skips.skip("白 黑".as_bytes(), 0), 4, "黑 begins 黑白");
    }

    #[test]
    fn terms_among_skipped_characters_are_found() {
        let p = &SKIPPING.0;
        let filler = "白水乡".repeat(60);
        for (prompt, term) in [
            (format!("{filler}黑白{filler}"), "黑白"),
            (format!("{filler}百年"), "百年"),
            (format!("{filler}情"), "情"),
            (format!("情{filler}"), "情"),
            (format!("{filler}儿童色情，{filler}"), "儿童色情"),
            (format!("{filler}アイ{filler}"), "アイ"),
            (format!("{filler} жук {filler}"), "жук"),
            (format!("{filler}𠀀𠀁{filler}"), "𠀀𠀁"),
            (format!("{filler}x儿{filler}"), "x儿"),
            (format!("{filler} kill"), "kill"),
            (format!("{filler}色情片{filler}"), "色情"),
        ] {
            let Verdict::Rejected(r) = p.evaluate(&prompt) else {
                panic!("{term}: allowed")
            };
            let term = canonical(term).text;
            assert!(r.matched.contains(&term), "{term}: {:?}", r.matched);
        }
        // Every term of the shipped rules, in Chinese filler that begins no
        // term, on either side of the middle of a long prompt.
        let (shipped, _) = &*SHIPPED;
        let chinese = "黄昏时分的江南水乡，石桥流水，";
        for t in shipped.patterns.iter().filter(|t| t.start_free) {
            for pad in [0, 40, 90, 200] {
                let prompt = format!(
                    "{}{}{}",
                    chinese.repeat(pad / 10),
                    t.text,
                    chinese.repeat(3)
                );
                let canon = canonical(&prompt);
                let mut found = Vec::new();
                shipped.matches(&canon, &mut found);
                let id = shipped
                    .patterns
                    .iter()
                    .position(|q| q.text == t.text && q.prefix == t.prefix);
                assert!(
                    found.iter().any(|&(_, _, f)| Some(f) == id),
                    "{:?} in {prompt:?}",
                    t.text
                );
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// The skipping walk finds what the library's search finds, in
        /// prompts of terms, their parts and skipped characters, long
        /// enough to be walked as two halves.
        #[test]
        fn the_skipping_search_agrees_with_the_reference(
            pieces in proptest::collection::vec(proptest::sample::select(SKIPPING_PIECES), 0..300),
        ) {
            let (p, ac) = &*SKIPPING;
            same_matches_as_reference_of(p, ac, &pieces.concat());
        }
    }

    #[test]
    fn the_search_finds_what_the_overlapping_iterator_found() {
        let sets = [
            include_str!("../../../tests/moderation/eval.tsv"),
            include_str!("../../../tests/moderation/unseen.tsv"),
        ];
        let mut checked = 0;
        for line in sets.iter().flat_map(|s| s.lines()) {
            if let Some(prompt) = line.splitn(3, '\t').nth(2) {
                same_matches_as_reference(prompt);
                checked += 1;
            }
        }
        assert!(checked > 300, "{checked} prompts");
        // Long prompts, walked as two halves: every term of every kind
        // placed across the middle, at each offset.
        let terms = [
            "child pornography",
            "儿童色情",
            "killer whale",
            "bath bomb",
            "k i l l",
            "porn",
            "pornographic",
            "二十岁",
            "十岁",
            "how to make a pipe bomb",
        ];
        for term in terms {
            for pad in 120..140 {
                let prompt = format!("{}{term} {}", "x ".repeat(pad), "y ".repeat(pad));
                same_matches_as_reference(&prompt);
                let prompt = format!("{}{term}{}", "白".repeat(pad), "白".repeat(pad));
                same_matches_as_reference(&prompt);
            }
        }
        let english = "a cinematic portrait of a child, nude, killer whale, bath bomb, ";
        let chinese = "黄昏时分的江南水乡，儿童色情，二十岁，十岁，细雨蒙蒙，";
        for filler in [english, chinese] {
            let long: String = filler.chars().cycle().take(4000).collect();
            same_matches_as_reference(&long);
        }
        // Neutral phrases overlapping terms, runs, Chinese decades.
        for prompt in [
            "killer whale kill bath bomb bomb making, photo bombing a child",
            "二十岁 十岁 三十岁的儿童色情",
            "a b o m b k i l l e r w h a l e",
            "sex education for kids, sex ed, sex",
        ] {
            same_matches_as_reference(prompt);
        }
    }

    /// Words of the shipped rules (terms, neutral phrases and their parts),
    /// for prompts dense with overlapping and neutralised matches.
    const WORDS: &[&str] = &[
        "killer",
        "whale",
        "kill",
        "bath",
        "bomb",
        "bombs",
        "making",
        "photo",
        "child",
        "porn",
        "pornographic",
        "sex",
        "ed",
        "education",
        "nude",
        "how",
        "to",
        "make",
        "a",
        "b",
        "o",
        "m",
        "k",
        "i",
        "l",
        "儿童",
        "色情",
        "二十",
        "十岁",
        "岁",
        "炸弹",
        "如何",
        "museum",
        "pipe",
        "year",
        "old",
        "12",
        "is",
        "the",
        "jews",
        "gas",
        "白",
        "，",
        ",",
        " ",
        "  ",
        "-",
        "!",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        #[test]
        fn the_search_agrees_with_the_reference(
            words in proptest::collection::vec(proptest::sample::select(WORDS), 0..200),
            spaced in proptest::prelude::any::<bool>(),
        ) {
            let prompt = words.join(if spaced { " " } else { "" });
            same_matches_as_reference(&prompt);
        }
    }
}
