//! Runs the built-in content rules on one kind of 4,000-character prompt,
//! the ones `benches/content.rs` times, a given number of times: for
//! counting instructions, which stay the same from run to run on a noisy
//! machine where times do not.
//!
//! ```sh
//! cargo build --release -p admedia-actors --example content_check
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/content_check chinese-allowed 20
//! ```
//!
//! Run it with 0 and with 20 checks: the difference over 20 is one
//! check's instructions (building the rules is the same in both). Kinds:
//! `english-allowed`, `english-refused`, `chinese-allowed`,
//! `chinese-refused`, `mixed-allowed`. A third argument `canonical` runs
//! the normalisation alone.

use std::hint::black_box;
use std::process::ExitCode;

use admedia_actors::domain::content::normalize::{canonical_into, Canonical};
use admedia_actors::domain::content::RulesPolicy;
use admedia_actors::domain::job::MAX_PROMPT_CHARS;

/// `filler` repeated to `MAX_PROMPT_CHARS` characters, with `head` and
/// `tail` at the two ends (as the benchmark builds them).
fn prompt(head: &str, filler: &str, tail: &str) -> String {
    let room = MAX_PROMPT_CHARS - head.chars().count() - tail.chars().count();
    let body: String = filler.chars().cycle().take(room).collect();
    format!("{head}{body}{tail}")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let english =
        "a cinematic portrait of an old fisherman mending nets at dawn, soft golden light, \
                   35mm film grain, shallow depth of field, harbour in the background, ";
    let chinese = "黄昏时分的江南水乡，石桥流水，白墙黑瓦，细雨蒙蒙，水墨画风格，高清细节，";
    let mixed = "ｃｙｂｅｒｐｕｎｋ city, neon rain, 赛博朋克 街道, сinematic lighting, 8k, ";
    let text = match args.get(1).map(String::as_str) {
        Some("english-allowed") => prompt("", english, ""),
        Some("english-refused") => prompt("a child ", english, " nude"),
        Some("chinese-allowed") => prompt("", chinese, ""),
        Some("chinese-refused") => prompt("儿童", chinese, "色情"),
        Some("mixed-allowed") => prompt("", mixed, ""),
        other => {
            eprintln!("unknown kind {other:?}; see the example's documentation");
            return ExitCode::FAILURE;
        }
    };
    let Some(n) = args.get(2).and_then(|n| n.parse::<u64>().ok()) else {
        eprintln!("the second argument is the number of checks");
        return ExitCode::FAILURE;
    };
    let policy = match RulesPolicy::builtin() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if args.get(3).is_some_and(|a| a == "canonical") {
        let mut out = Canonical::default();
        for _ in 0..n {
            canonical_into(black_box(&text), &mut out);
            black_box(&out);
        }
    } else {
        for _ in 0..n {
            black_box(policy.evaluate(black_box(&text)));
        }
    }
    ExitCode::SUCCESS
}
