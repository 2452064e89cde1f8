//! The `smoke` scenario against a spawned server: the built load tester
//! starts the server binary, runs a little of everything (faults, replays,
//! cancels) and audits; the same with batch submissions.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The server binary: `ADMEDIA_BIN` if set; otherwise the workspace's debug
/// build, brought up to date with cargo (a no-op when the test run just
/// built it).
fn server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ADMEDIA_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => workspace().join(dir),
        None => workspace().join("target"),
    };
    let bin = target.join("debug").join("admedia");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        // The workspace's test targets, as `cargo test --workspace` builds
        // them: the server binary comes with the same features, so this
        // reuses what the test run compiled instead of building the
        // dependency tree a second time with other features.
        .args(["build", "--workspace", "--tests"])
        .current_dir(workspace())
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the server: {e}"));
    assert!(status.success(), "building the server failed: {status}");
    assert!(bin.is_file(), "no server binary at {}", bin.display());
    bin
}

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
