//! What an operator sees when the configuration is wrong: the server, run
//! as a process with its output redirected, says once what is wrong, by
//! the name the operator used, without terminal colour codes.

use std::process::{Command, Output};

fn admedia(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_admedia"));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env("ADMEDIA_BIND", "127.0.0.1:0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap_or_else(|e| panic!("run admedia: {e}"))
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_variable_is_named_as_the_variable_once() {
    for (var, value) in [
        ("ADMEDIA_MAX_ATTEMPTS", "many"),
        ("ADMEDIA_LEADER_TIMEOUT", "-5s"),
        ("ADMEDIA_IMAGE_DEADLINE_MS", "-1"),
        ("ADMEDIA_DB_WRITERS", "0"),
        ("ADMEDIA_DB_MAX_BATCH", "100000"),
    ] {
        let out = admedia(&[(var, value)], &[]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{var}={value}: {:?}",
            text(&out)
        );
        let (stdout, stderr) = text(&out);
        assert_eq!(stderr.matches(var).count(), 1, "{var}: {stderr}");
        assert!(!stderr.contains("--"), "names a flag: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(!stdout.contains(var), "repeated on stdout: {stdout}");
    }
    // Given as a flag, the flag is named.
    let out = admedia(&[], &["--max-attempts", "many"]);
    let (_, stderr) = text(&out);
    assert!(stderr.contains("--max-attempts"), "{stderr}");
}

#[test]
fn a_zero_duration_is_refused_by_its_variable() {
    let out = admedia(&[("ADMEDIA_IMAGE_DEADLINE_MS", "0")], &[]);
    assert!(!out.status.success());
    let (_, stderr) = text(&out);
    assert_eq!(
        stderr.trim(),
        "admedia: ADMEDIA_IMAGE_DEADLINE_MS: must be a positive number of milliseconds, got 0"
    );
}

#[test]
fn a_price_change_needs_notice() {
    let out = admedia(&[("ADMEDIA_PRICE_NOTICE", "0s")], &[]);
    assert!(!out.status.success());
    let (_, stderr) = text(&out);
    assert_eq!(
        stderr.trim(),
        "admedia: ADMEDIA_PRICE_NOTICE: must be a positive duration, got 0"
    );
}

#[test]
fn redirected_logs_have_no_colour_and_the_error_is_printed_once() {
    // An address without a port is read as a setting but only fails to
    // bind once the store is up, so start-up has logged a warning first.
    let out = admedia(&[("ADMEDIA_BIND", "127.0.0.1")], &[]);
    assert!(!out.status.success());
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("embedded in-memory store"), "{stdout}");
    assert!(
        !stdout.contains('\u{1b}'),
        "colour codes in a redirected log: {stdout:?}"
    );
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    assert_eq!(stderr.matches("ADMEDIA_BIND").count(), 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(!stdout.contains("ADMEDIA_BIND"), "printed twice: {stdout}");
}

#[test]
fn a_bad_typed_setting_is_refused_at_start_by_its_variable() {
    // Each is read into its typed value as the settings are read, so the
    // process stops before anything starts (the log stays empty), and the
    // error names the variable once.
    for (var, value, why) in [
        ("ADMEDIA_SIM_JOB_MS", "fast", "milliseconds"),
        ("ADMEDIA_RETRY_BASE_MS", "1s", "milliseconds"),
        ("ADMEDIA_RETRY_MAX_MS", "-5", "milliseconds"),
        ("ADMEDIA_VIDEO_DEADLINE_MS", "1.5", "milliseconds"),
        ("ADMEDIA_WORKER_LEASE_MS", "15s", "milliseconds"),
        ("ADMEDIA_WEBHOOK_RETRY_BASE_MS", "soon", "milliseconds"),
        ("ADMEDIA_TIER_WEIGHTS", "1,2,4", "4 whole numbers"),
        ("ADMEDIA_TIER_WEIGHTS", "0,2,4,8", "1..=1000"),
        ("ADMEDIA_RATE_LIMITS", "abc", "expected tier=per_minute"),
        ("ADMEDIA_RATE_LIMITS", "gold=5", "unknown tier"),
        ("ADMEDIA_MEMBERSHIP_GIFTS", "basic=-1", "0..="),
        (
            "ADMEDIA_MEMBERSHIP_GIFTS",
            "free=5",
            "free has no paid months",
        ),
        ("ADMEDIA_MAX_WAIT", "free=soon", "free=soon"),
        ("ADMEDIA_MAX_WAIT", "free=0s", "at least 100 ms"),
        ("ADMEDIA_OUTPUT_THRESHOLDS", "violence", "category=score"),
        (
            "ADMEDIA_MODERATION_THRESHOLDS",
            "violence=2",
            "not in 0..=1",
        ),
        (
            "ADMEDIA_MODERATION_DEFAULT_THRESHOLD",
            "high",
            "not a number",
        ),
        ("ADMEDIA_MODERATION_WHEN_DOWN", "maybe", "refuse, rules"),
        ("ADMEDIA_STORAGE_QUOTAS", "free=lots", "expected a size"),
        ("ADMEDIA_RETENTION", "free", "expected tier=duration"),
        (
            "ADMEDIA_DOTLESS_EMAIL_DOMAINS",
            "jdoe@gmail.com",
            "mail domains",
        ),
        ("ADMEDIA_MAX_MATERIAL_SIZE", "5XB", "unknown unit"),
        ("ADMEDIA_MAX_OUTPUT_SIZE", "big", "expected a size"),
    ] {
        let out = admedia(&[(var, value)], &[]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{var}={value}: {:?}",
            text(&out)
        );
        let (stdout, stderr) = text(&out);
        assert!(
            stderr.starts_with(&format!("admedia: {var}: invalid value {value:?}")),
            "{var}={value}: {stderr}"
        );
        assert!(stderr.contains(why), "{var}={value}: {stderr}");
        assert_eq!(stderr.matches(var).count(), 1, "{var}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stdout.is_empty(), "{var}={value} started: {stdout}");
    }
}

#[test]
fn moderation_settings_are_refused_without_a_provider_too() {
    // Read at start whether or not ADMEDIA_MODERATION_URL is set, so a
    // mistake shows before a provider is switched on.
    let out = admedia(&[("ADMEDIA_MODERATION_WHEN_DOWN", "free=maybe")], &[]);
    assert!(!out.status.success());
    let (_, stderr) = text(&out);
    assert!(
        stderr.starts_with("admedia: ADMEDIA_MODERATION_WHEN_DOWN"),
        "{stderr}"
    );
}

#[test]
fn group_commit_writers_must_leave_connections_in_the_pool() {
    // Checked before the database is reached, so no server is needed.
    let out = admedia(
        &[
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere"),
            ("ADMEDIA_DB_POOL", "4"),
            ("ADMEDIA_DB_WRITERS", "4"),
        ],
        &[],
    );
    assert!(!out.status.success());
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("ADMEDIA_DB_WRITERS (4) must be fewer than ADMEDIA_DB_POOL (4)"),
        "{stderr}"
    );
}

#[test]
fn a_retention_setting_that_makes_no_sense_is_refused_by_its_variable() {
    for (var, value, why) in [
        (
            "ADMEDIA_JOB_RETENTION",
            "forever",
            "expected state=duration",
        ),
        ("ADMEDIA_JOB_RETENTION", "running=7d", "have not finished"),
        ("ADMEDIA_JOB_RETENTION", "failed=5s", "at least 60 s"),
        ("ADMEDIA_MAX_FINISHED_IN_MEMORY", "0", "at least 1"),
        ("ADMEDIA_IDEMPOTENCY_WINDOW", "30s", "at least a minute"),
        ("ADMEDIA_IDEMPOTENCY_WINDOW", "a day", "invalid value"),
    ] {
        let out = admedia(&[(var, value)], &[]);
        assert!(!out.status.success(), "{var}={value} accepted");
        let (_, stderr) = text(&out);
        assert!(
            stderr.trim().starts_with(&format!("admedia: {var}")),
            "{var}={value}: {stderr}"
        );
        assert!(stderr.contains(why), "{var}={value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn a_setting_the_orchestrator_refuses_is_named_by_its_variable() {
    for (vars, named, why) in [
        (
            &[("ADMEDIA_WORKER_LEASE_MS", "50")][..],
            "ADMEDIA_WORKER_LEASE_MS",
            "at least 100 ms",
        ),
        (
            &[("ADMEDIA_MAX_ATTEMPTS", "0")][..],
            "ADMEDIA_MAX_ATTEMPTS",
            "1..=20",
        ),
        (
            &[("ADMEDIA_QUARANTINE_AFTER", "0")][..],
            "ADMEDIA_QUARANTINE_AFTER",
            "1..=100",
        ),
        (
            &[
                ("ADMEDIA_RETRY_BASE_MS", "5000"),
                ("ADMEDIA_RETRY_MAX_MS", "1000"),
            ][..],
            "ADMEDIA_RETRY_MAX_MS",
            "must be at least ADMEDIA_RETRY_BASE_MS",
        ),
        (
            &[("ADMEDIA_QUARANTINE_BASE", "0s")][..],
            "ADMEDIA_QUARANTINE_BASE",
            "above zero",
        ),
    ] {
        let out = admedia(vars, &[]);
        assert!(!out.status.success(), "{vars:?} accepted");
        let (_, stderr) = text(&out);
        assert!(
            stderr.trim().starts_with(&format!("admedia: {named}")),
            "{vars:?}: {stderr}"
        );
        assert!(stderr.contains(why), "{vars:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
}
