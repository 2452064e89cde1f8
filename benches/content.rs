//! The built-in content rules' time per check on a 4,000-character prompt
//! (the longest accepted): English, Chinese, and mixed text with
//! look-alike and full-width letters, each allowed and with a prohibited
//! combination far apart at its two ends.
//!
//! `cargo bench --bench content` (options: `-- --iterations N`). Prints
//! p50/p99/p99.9/max per prompt kind. Figures go in BENCHMARKS.md.

use std::hint::black_box;
use std::time::Instant;

use admedia_actors::domain::content::{RulesPolicy, Verdict};
use admedia_actors::domain::job::MAX_PROMPT_CHARS;
use hdrhistogram::Histogram;

fn iterations() -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--iterations")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|e| panic!("--iterations: {e}")))
        .unwrap_or(20_000)
}

/// `filler` repeated to `MAX_PROMPT_CHARS` characters, with `head` and
/// `tail` at the two ends.
fn prompt(head: &str, filler: &str, tail: &str) -> String {
    let room = MAX_PROMPT_CHARS - head.chars().count() - tail.chars().count();
    let body: String = filler.chars().cycle().take(room).collect();
    let p = format!("{head}{body}{tail}");
    assert_eq!(p.chars().count(), MAX_PROMPT_CHARS);
    p
}

fn main() {
    let policy = RulesPolicy::builtin().unwrap_or_else(|e| panic!("{e}"));
    let english =
        "a cinematic portrait of an old fisherman mending nets at dawn, soft golden light, \
                   35mm film grain, shallow depth of field, harbour in the background, ";
    let chinese = "黄昏时分的江南水乡，石桥流水，白墙黑瓦，细雨蒙蒙，水墨画风格，高清细节，";
    let mixed = "ｃｙｂｅｒｐｕｎｋ city, neon rain, 赛博朋克 街道, сinematic lighting, 8k, ";
    let kinds = [
        ("english, allowed", prompt("", english, ""), false),
        (
            "english, refused",
            prompt("a child ", english, " nude"),
            true,
        ),
        ("chinese, allowed", prompt("", chinese, ""), false),
        ("chinese, refused", prompt("儿童", chinese, "色情"), true),
        ("mixed, allowed", prompt("", mixed, ""), false),
    ];
    let n = iterations();
    println!("{n} checks per kind, {MAX_PROMPT_CHARS}-character prompts");
    println!("kind               p50 µs   p99 µs  p99.9 µs   max µs");
    for (name, text, refused) in &kinds {
        let verdict = policy.evaluate(text);
        assert_eq!(
            matches!(verdict, Verdict::Rejected(_)),
            *refused,
            "{name}: {verdict:?}"
        );
        let mut h = Histogram::<u64>::new(3).unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..n / 10 {
            black_box(policy.evaluate(black_box(text)));
        }
        for _ in 0..n {
            let start = Instant::now();
            black_box(policy.evaluate(black_box(text)));
            let _ = h.record(start.elapsed().as_nanos() as u64);
        }
        println!(
            "{name:<17} {:>8.1} {:>8.1} {:>9.1} {:>8.1}",
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
            h.value_at_quantile(0.999) as f64 / 1e3,
            h.max() as f64 / 1e3,
        );
    }
}
