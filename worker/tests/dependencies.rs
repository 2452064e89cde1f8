//! The agent runs on GPU machines, apart from the server: it must build
//! without the server's web framework, database, cache or HTML templates,
//! and the load tester, which dials through its socket alone, without the
//! agent's executors, TLS roots and logging. Checked on what cargo really
//! resolves (`cargo tree`), so a dependency that comes in through another
//! crate counts too.

use std::collections::BTreeSet;
use std::process::Command;

/// The packages `package` builds for its normal targets (no dev or build
/// dependencies), by name.
fn normal_dependencies(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let output = Command::new(&cargo)
        .args(["tree", "--quiet", "--edges", "normal", "--prefix", "none"])
        .args(["--format", "{p}", "--package", package])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", cargo.to_string_lossy()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "cargo tree -p {package}: {stderr}");
    // One package a line: `name v1.2.3 (path)`, `(*)` after a repeat.
    let names: BTreeSet<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(
        names.contains(package),
        "{package} not in its own tree: {names:?}"
    );
    names
}

fn assert_none_of(package: &str, names: &BTreeSet<String>, forbidden: &[&str]) {
    let found: Vec<&&str> = forbidden.iter().filter(|f| names.contains(**f)).collect();
    assert!(found.is_empty(), "{package} depends on {found:?}");
}

#[test]
fn the_agent_builds_without_the_servers_stack() {
    let names = normal_dependencies("admedia-worker");
    // What the agent is made of is there, so the names were read right.
    for needed in [
        "admedia-actors",
        "admedia-process",
        "awc",
        "rustls",
        "shell-words",
    ] {
        assert!(names.contains(needed), "no {needed} in {names:?}");
    }
    assert_none_of(
        "admedia-worker",
        &names,
        &[
            "admedia",
            "actix-web",
            "tokio-postgres",
            "deadpool-postgres",
            "refinery",
            "redis",
            "bb8-redis",
            "maud",
            "object_store",
        ],
    );
}

#[test]
fn the_load_tester_takes_the_socket_without_the_agent() {
    let names = normal_dependencies("admedia-loadtest");
    assert!(names.contains("admedia-worker"), "{names:?}");
    assert_none_of(
        "admedia-loadtest",
        &names,
        &[
            "admedia-process",
            "rustls",
            "shell-words",
            "tracing-subscriber",
            "actix-web",
        ],
    );
}
