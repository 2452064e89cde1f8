//! The `smoke` scenario against a spawned server: the built load tester
//! starts the server binary, runs a little of everything (faults, replays,
//! cancels) and audits; the same with batch submissions.

use std::path::Path;
use std::process::Command;

mod support;

use support::server_bin;

#[test]
fn smoke_scenario_passes_its_audit_against_a_spawned_server() {
    let bin = server_bin();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(env!("CARGO_BIN_EXE_admedia-loadtest"))
        .args([
            "--spawn",
            "--scenario",
            "smoke",
            "--seed",
            "7",
            "--server-bin",
        ])
        .arg(&bin)
        .arg("--out")
        .arg(&out)
        .env_remove("ADMEDIA_ADMIN_TOKEN")
        .env_remove("ADMEDIA_WORKER_TOKEN")
        .output()
        .unwrap_or_else(|e| panic!("cannot run admedia-loadtest: {e}"));
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "admedia-loadtest exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        run.status
    );
    assert!(stdout.contains("AUDIT PASSED"), "{stdout}");

    let json = std::fs::read_to_string(out.join("report.json"))
        .unwrap_or_else(|e| panic!("report.json: {e}"));
    let report: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("report.json is not JSON: {e}"));
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
    let bin = server_bin();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("batch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(env!("CARGO_BIN_EXE_admedia-loadtest"))
        .args([
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
            "--server-bin",
        ])
        .arg(&bin)
        .arg("--out")
        .arg(&out)
        .env_remove("ADMEDIA_ADMIN_TOKEN")
        .env_remove("ADMEDIA_WORKER_TOKEN")
        .output()
        .unwrap_or_else(|e| panic!("cannot run admedia-loadtest: {e}"));
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "admedia-loadtest exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        run.status
    );
    let json = std::fs::read_to_string(out.join("report.json"))
        .unwrap_or_else(|e| panic!("report.json: {e}"));
    let report: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("report.json is not JSON: {e}"));
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
