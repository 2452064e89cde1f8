//! A very short `soak` against a spawned server on the embedded store,
//! keeping at most 20 finished jobs in full so jobs are pruned during the
//! run: the report must carry the server's memory and the store's job
//! counts over time, and the money audit, pruned jobs included, must pass.

use std::path::Path;
use std::process::Command;

mod support;

use support::server_bin;

#[test]
fn a_short_soak_samples_memory_and_passes_its_audit_with_pruned_jobs() {
    let bin = server_bin();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(env!("CARGO_BIN_EXE_admedia-loadtest"))
        .args([
            "--spawn",
            "--scenario",
            "soak",
            "--seed",
            "11",
            "--rate",
            "100",
            "--duration",
            "5",
            "--users",
            "8",
            "--workers",
            "2",
            "--slots",
            "8",
            "--credits",
            "100000",
            // The shortest retention the server takes is a minute; the cap
            // on finished jobs kept in full prunes during these seconds.
            "--job-retention",
            "succeeded=1m,cancelled=1m,failed=1m",
            "--max-finished-in-memory",
            "20",
            "--sweep-every",
            "1s",
            "--steady-after",
            "1",
            "--drain-timeout",
            "30",
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
    assert!(stdout.contains("server RSS:"), "{stdout}");

    let json = std::fs::read_to_string(out.join("report.json"))
        .unwrap_or_else(|e| panic!("report.json: {e}"));
    let report: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("report.json is not JSON: {e}"));
    assert_eq!(report["passed"], serde_json::Value::Bool(true), "{json}");
    let res = &report["resources"];
    let numbers = |name: &str| -> Vec<f64> {
        res[name]
            .as_array()
            .unwrap_or_else(|| panic!("resources.{name} missing: {json}"))
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect()
    };
    // The server's memory was sampled, every second, throughout.
    let rss = numbers("rss_mb");
    assert!(rss.len() >= 3, "RSS samples: {rss:?}");
    assert!(rss.iter().all(|&mb| mb > 0.0), "{rss:?}");
    assert!(res["rss_steady_mb"].as_f64().is_some(), "{json}");
    assert!(res["rss_end_mb"].as_f64().is_some(), "{json}");
    // The embedded store has no database to measure; its counts stand in.
    assert!(numbers("db_mb").is_empty(), "{json}");
    let stored = numbers("stored_jobs");
    assert!(stored.iter().any(|&n| n > 0.0), "stored jobs: {stored:?}");
    assert_eq!(numbers("waiting").len(), stored.len());
    // Retention pruned jobs during the run, and the audit accounted for
    // each of them from the ledger.
    let pruned = report["audit"]["pruned"].as_u64().unwrap_or(0);
    assert!(pruned > 0, "no job was pruned: {json}");
    assert!(report["audit"]["violations"]
        .as_array()
        .is_some_and(|v| v.is_empty()));

    let html = std::fs::read_to_string(out.join("report.html"))
        .unwrap_or_else(|e| panic!("report.html: {e}"));
    assert!(
        html.contains("Server RSS and database size"),
        "no memory chart"
    );
}
