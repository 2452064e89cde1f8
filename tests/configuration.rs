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
    // Fails after the store is up, so start-up has logged a warning first.
    let out = admedia(&[("ADMEDIA_RATE_LIMITS", "gold=5")], &[]);
    assert!(!out.status.success());
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("embedded in-memory store"), "{stdout}");
    assert!(
        !stdout.contains('\u{1b}'),
        "colour codes in a redirected log: {stdout:?}"
    );
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    assert_eq!(stderr.matches("ADMEDIA_RATE_LIMITS").count(), 1, "{stderr}");
    assert!(
        !stdout.contains("ADMEDIA_RATE_LIMITS"),
        "printed twice: {stdout}"
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
