//! The built-in content rules measured on the evaluation set
//! (`tests/moderation/eval.tsv`): recall per prohibited category, false
//! positives on allowed prompts, precision per category. Fails below the
//! targets: recall ≥ 95% on prohibited prompts, false positives ≤ 2% on
//! allowed ones, and no sexual-minors prompt let through below 95%.
//! The rules were written against that set, so it says how they do on
//! what they were tuned for; the held-out set (`tests/moderation/unseen.tsv`)
//! says how they do on wording they were not, and is only reported.
//!
//! `cargo test -p admedia-actors --test moderation_eval -- --nocapture`
//! prints the tables recorded in BENCHMARKS.md.

use std::collections::BTreeMap;

use admedia_actors::domain::content::{RulesPolicy, Verdict};

const SET: &str = include_str!("moderation/eval.tsv");
/// Written after the rules and never used to change them: reported
/// beside the main set, not held to its targets, since meeting them there
/// would mean tuning the rules on it.
const UNSEEN: &str = include_str!("moderation/unseen.tsv");

struct Case<'a> {
    prohibited: bool,
    /// The category of a prohibited prompt, the kind of an allowed one.
    label: &'a str,
    prompt: &'a str,
}

fn cases() -> Vec<Case<'static>> {
    parse(SET)
}

fn parse(set: &'static str) -> Vec<Case<'static>> {
    set.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut parts = l.splitn(3, '\t');
            let (Some(kind), Some(label), Some(prompt)) =
                (parts.next(), parts.next(), parts.next())
            else {
                panic!("malformed line {l:?}");
            };
            let prohibited = match kind {
                "prohibited" => true,
                "allowed" => false,
                other => panic!("unknown label {other:?} in {l:?}"),
            };
            Case {
                prohibited,
                label,
                prompt,
            }
        })
        .collect()
}

#[derive(Default)]
struct Tally {
    /// Prohibited prompts of this category, and those refused (under any
    /// category; `as_this` under this one).
    total: usize,
    refused: usize,
    /// Refusals naming this category, and how many of those were right.
    predicted: usize,
    predicted_right: usize,
}

#[test]
fn the_rules_meet_the_targets_on_the_evaluation_set() {
    let policy = RulesPolicy::builtin().expect("shipped rules");
    let cases = cases();
    assert!(cases.len() >= 300, "the set has {} prompts", cases.len());
    let mut by_category: BTreeMap<&str, Tally> = BTreeMap::new();
    let mut allowed_by_kind: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut misses = Vec::new();
    let mut false_positives = Vec::new();
    for c in &cases {
        let verdict = policy.evaluate(c.prompt);
        let refused_as = match &verdict {
            Verdict::Rejected(r) => Some(r.category.clone()),
            Verdict::Allowed => None,
            Verdict::Unavailable(_) => panic!("the rules are always available"),
        };
        if let Some(cat) = &refused_as {
            let t = by_category.entry(leak(cat)).or_default();
            t.predicted += 1;
            if c.prohibited && c.label == cat {
                t.predicted_right += 1;
            }
        }
        if c.prohibited {
            let t = by_category.entry(c.label).or_default();
            t.total += 1;
            if refused_as.is_some() {
                t.refused += 1;
            } else {
                misses.push(format!("{}: {}", c.label, c.prompt));
            }
        } else {
            let k = allowed_by_kind.entry(c.label).or_default();
            k.0 += 1;
            if let Some(cat) = refused_as {
                k.1 += 1;
                false_positives.push(format!("{} (as {cat}): {}", c.label, c.prompt));
            }
        }
    }
    let prohibited: usize = by_category.values().map(|t| t.total).sum();
    let caught: usize = by_category.values().map(|t| t.refused).sum();
    let allowed: usize = allowed_by_kind.values().map(|k| k.0).sum();
    let wrongly: usize = allowed_by_kind.values().map(|k| k.1).sum();
    println!("category         prompts  recall  precision");
    for (cat, t) in &by_category {
        let precision = if t.predicted == 0 {
            1.0
        } else {
            t.predicted_right as f64 / t.predicted as f64
        };
        let recall = if t.total == 0 {
            f64::NAN
        } else {
            t.refused as f64 / t.total as f64
        };
        println!(
            "{cat:<16} {:>7}  {:>5.1}%  {:>8.1}%",
            t.total,
            recall * 100.0,
            precision * 100.0
        );
    }
    println!("allowed kind     prompts  refused");
    for (kind, (n, fp)) in &allowed_by_kind {
        println!("{kind:<16} {n:>7}  {fp:>7}");
    }
    let recall = caught as f64 / prohibited as f64;
    let fp_rate = wrongly as f64 / allowed as f64;
    println!(
        "prohibited: {caught}/{prohibited} refused ({:.1}%); allowed: {wrongly}/{allowed} refused ({:.1}%)",
        recall * 100.0,
        fp_rate * 100.0
    );
    for m in &misses {
        println!("missed: {m}");
    }
    for f in &false_positives {
        println!("false positive: {f}");
    }
    assert!(
        recall >= 0.95,
        "recall {recall:.3} < 0.95; missed: {misses:#?}"
    );
    assert!(
        fp_rate <= 0.02,
        "false positives {fp_rate:.3} > 0.02: {false_positives:#?}"
    );
    let minors = &by_category["sexual-minors"];
    assert!(
        minors.refused as f64 / minors.total as f64 >= 0.95,
        "sexual-minors recall below 95%: {misses:#?}"
    );
}

/// Prohibited prompts refused, and allowed prompts refused, as counts
/// with their totals.
#[derive(Debug, Default)]
struct Outcome {
    prohibited: usize,
    prohibited_refused: usize,
    allowed: usize,
    allowed_refused: usize,
}

/// Runs the rules over a set, printing each miss and false positive.
fn outcome(policy: &RulesPolicy, set: &[Case<'_>], name: &str) -> Outcome {
    let mut o = Outcome::default();
    for c in set {
        let refused = match policy.evaluate(c.prompt) {
            Verdict::Rejected(_) => true,
            Verdict::Allowed => false,
            Verdict::Unavailable(_) => panic!("the rules are always available"),
        };
        if c.prohibited {
            o.prohibited += 1;
            o.prohibited_refused += usize::from(refused);
            if !refused {
                println!("{name}, missed: {}: {}", c.label, c.prompt);
            }
        } else {
            o.allowed += 1;
            o.allowed_refused += usize::from(refused);
            if refused {
                println!("{name}, false positive: {}: {}", c.label, c.prompt);
            }
        }
    }
    o
}

/// Reports the held-out set per category and in all; asserts only that
/// it is well formed, as its figures are what the rules do, not a target.
#[test]
fn the_rules_on_the_held_out_set_are_reported() {
    let policy = RulesPolicy::builtin().expect("shipped rules");
    let set = parse(UNSEEN);
    let known: Vec<&str> = policy.categories().collect();
    for c in set.iter().filter(|c| c.prohibited) {
        assert!(known.contains(&c.label), "unknown category {:?}", c.label);
    }
    let eval: Vec<&str> = cases().iter().map(|c| c.prompt).collect();
    for c in &set {
        assert!(
            !eval.contains(&c.prompt),
            "{:?} is in the evaluation set too",
            c.prompt
        );
    }
    let mut by_label: BTreeMap<(bool, &str), Vec<Case<'static>>> = BTreeMap::new();
    for c in set {
        by_label.entry((c.prohibited, c.label)).or_default().push(c);
    }
    println!("held out         prompts  refused");
    let mut o = Outcome::default();
    for ((prohibited, label), cases) in by_label.into_iter().rev() {
        let part = outcome(&policy, &cases, "held out");
        let (kind, n, r) = if prohibited {
            ("", part.prohibited, part.prohibited_refused)
        } else {
            ("allowed ", part.allowed, part.allowed_refused)
        };
        println!("{:<16} {n:>7}  {r:>7}", format!("{kind}{label}"));
        o.prohibited += part.prohibited;
        o.prohibited_refused += part.prohibited_refused;
        o.allowed += part.allowed;
        o.allowed_refused += part.allowed_refused;
    }
    assert!(
        o.prohibited >= 20 && o.allowed >= 20,
        "the held-out set is too small to say anything: {o:?}"
    );
    println!(
        "held out: prohibited {}/{} refused ({:.1}%); allowed {}/{} refused ({:.1}%)",
        o.prohibited_refused,
        o.prohibited,
        100.0 * o.prohibited_refused as f64 / o.prohibited as f64,
        o.allowed_refused,
        o.allowed,
        100.0 * o.allowed_refused as f64 / o.allowed as f64,
    );
}

/// Category names live as long as the test; leaking a handful is fine.
fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

#[test]
fn the_set_is_labelled_with_known_categories() {
    let policy = RulesPolicy::builtin().expect("shipped rules");
    let known: Vec<&str> = policy.categories().collect();
    for c in cases().iter().filter(|c| c.prohibited) {
        assert!(known.contains(&c.label), "unknown category {:?}", c.label);
    }
}
