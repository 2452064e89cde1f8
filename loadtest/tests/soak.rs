//! A very short `soak` against a spawned server on the embedded store,
//! keeping at most 20 finished jobs in full so jobs are pruned during the
//! run: the report must carry the server's memory and the store's job
//! counts over time, and the money audit, pruned jobs included, must pass.

mod support;

use support::{run_loadtest, Run};

#[test]
fn a_short_soak_samples_memory_and_passes_its_audit_with_pruned_jobs() {
    let Run {
        out,
        stdout,
        json,
        report,
    } = run_loadtest(
        "soak",
        &[
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
        ],
    );
    assert!(stdout.contains("AUDIT PASSED"), "{stdout}");
    assert!(stdout.contains("server RSS:"), "{stdout}");

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
