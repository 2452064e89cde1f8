//! Every actor reads time and chance from what it was given
//! (`admedia_actors::clock`), never from the process: otherwise the
//! deterministic simulation (docs/simulation.md) would not replay a seed.
//! This scans `actors/src` (all but the clock module itself) for the calls
//! that read the process's clocks or random generator.

use std::path::{Path, PathBuf};

/// What reads the process's clocks or its random generator.
const FORBIDDEN: [&str; 8] = [
    "Utc::now",
    "Local::now",
    "Instant::now",
    "SystemTime::now",
    "rand::",
    "thread_rng",
    ".elapsed()",
    "random()",
];

/// The module that may.
const EXEMPT: &str = "clock.rs";

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `(line number, line)` of every forbidden call in `text`; comments may
/// name them.
fn offending(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let code = line.trim_start();
            !code.starts_with("//") && FORBIDDEN.iter().any(|f| code.contains(f))
        })
        .map(|(i, line)| (i + 1, line.trim().to_owned()))
        .collect()
}

#[test]
fn the_scan_finds_each_forbidden_call() {
    for f in FORBIDDEN {
        let sample = format!("    let x = {f}(); // sample");
        assert_eq!(offending(&sample).len(), 1, "{f} not found in {sample:?}");
    }
    assert!(offending("    // Utc::now is named in a comment only").is_empty());
    assert!(offending("    let now = clock.now();").is_empty());
}

#[test]
fn actors_read_time_and_chance_only_through_the_clock_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    files.sort();
    assert!(
        files.len() > 20,
        "the sources were not found under {root:?}"
    );
    let mut found = Vec::new();
    for file in files {
        if file.file_name().is_some_and(|n| n == EXEMPT) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (n, line) in offending(&text) {
            found.push(format!("{}:{n}: {line}", file.display()));
        }
    }
    assert!(
        found.is_empty(),
        "read the time and random numbers from `OrchestratorConfig::clock`/`random` \
         (or `Clock::system()` where no configuration reaches):\n{}",
        found.join("\n")
    );
}
