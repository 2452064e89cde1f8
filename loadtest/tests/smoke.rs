//! The `smoke` scenario against a spawned server: the built load tester
//! starts the server binary, runs a little of everything (faults, replays,
//! cancels) and audits; the same with batch submissions.

mod support;

use support::{run_loadtest, Run};

#[test]
fn smoke_scenario_passes_its_audit_against_a_spawned_server() {
    let Run {
        out,
        stdout,
        json,
        report,
    } = run_loadtest("smoke", &["--spawn", "--scenario", "smoke", "--seed", "7"]);
    assert!(stdout.contains("AUDIT PASSED"), "{stdout}");

    assert_eq!(
        report["audit"]["passed"],
        serde_json::Value::Bool(true),
        "{json}"
    );
    assert_eq!(report["passed"], serde_json::Value::Bool(true));
    assert!(report["audit"]["violations"]
        .as_array()
        .is_some_and(|v| v.is_empty()));
    let jobs = report["audit"]["jobs"].as_u64().unwrap_or(0);
    assert!(jobs > 50, "the smoke run audited only {jobs} jobs");
    // The run exercised what it is meant to: faults, replays and cancels.
    assert!(
        report["replays"]["sent"].as_u64().unwrap_or(0) > 0,
        "no replay was sent"
    );
    assert!(
        report["cancels"]["sent"].as_u64().unwrap_or(0) > 0,
        "no cancel was sent"
    );
    assert!(report["faults"]["system_errors"].as_u64().unwrap_or(0) > 0);

    let html = std::fs::read_to_string(out.join("report.html"))
        .unwrap_or_else(|e| panic!("report.html: {e}"));
    assert!(html.contains("<svg"), "the HTML report has no chart");
    assert!(!html.contains("http://cdn") && !html.contains("<script src"));
}

#[test]
fn batch_submissions_are_audited_item_by_item() {
    let Run {
        stdout,
        json,
        report,
        ..
    } = run_loadtest(
        "batch",
        &[
            "--spawn",
            "--scenario",
            "smoke",
            "--seed",
            "11",
            "--closed-loop",
            "--concurrency",
            "4",
            "--batch",
            "25",
            "--jobs",
            "400",
            // Fewer than the jobs: the embedded store prunes the first
            // finished ones during the run, as its default cap does on a
            // long run, and the audit must account for them.
            "--max-finished-in-memory",
            "150",
        ],
    );
    assert_eq!(
        report["audit"]["passed"],
        serde_json::Value::Bool(true),
        "{json}"
    );
    // Every item was answered on its own and the accepted ones audited.
    let jobs = report["audit"]["jobs"].as_u64().unwrap_or(0);
    let pruned = report["audit"]["pruned"].as_u64().unwrap_or(0);
    assert!(pruned > 0, "the cap pruned nothing: {json}");
    assert!(
        jobs + pruned >= 300,
        "only {jobs} listed and {pruned} pruned of 400 batch items were audited: {json}"
    );
    assert!(stdout.contains("batches of 25"), "{stdout}");
}
