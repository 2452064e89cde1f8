//! The built-in content rules measured on the evaluation set
//! (`tests/moderation/eval.tsv`): recall per prohibited category, false
//! positives on allowed prompts, precision per category. Fails below the
//! targets: recall ≥ 95% on prohibited prompts, false positives ≤ 2% on
//! allowed ones, and no sexual-minors prompt let through below 95%.
//!
//! `cargo test -p admedia-actors --test moderation_eval -- --nocapture`
//! prints the table recorded in BENCHMARKS.md.

use std::collections::BTreeMap;

use admedia_actors::content::{RulesPolicy, Verdict};

const SET: &str = include_str!("moderation/eval.tsv");
/// Written after the rules and never used to change them: reported
/// beside the main set, not held to its targets.
const HELD_OUT: &str = include_str!("moderation/held_out.tsv");

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
    let held_out = parse(HELD_OUT);
    let (mut hp, mut hc, mut ha, mut hf) = (0, 0, 0, 0);
    for c in &held_out {
        let refused = matches!(policy.evaluate(c.prompt), Verdict::Rejected(_));
        match (c.prohibited, refused) {
            (true, r) => {
                hp += 1;
                hc += usize::from(r);
                if !r {
                    println!("held out, missed: {}: {}", c.label, c.prompt);
                }
            }
            (false, r) => {
                ha += 1;
                hf += usize::from(r);
                if r {
                    println!("held out, false positive: {}: {}", c.label, c.prompt);
                }
            }
        }
    }
    assert!(hp > 0 && ha > 0, "the held-out set has both labels");
    println!("held out: prohibited {hc}/{hp} refused; allowed {hf}/{ha} refused");
    let minors = &by_category["sexual-minors"];
    assert!(
        minors.refused as f64 / minors.total as f64 >= 0.95,
        "sexual-minors recall below 95%: {misses:#?}"
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
