//! What the load tester's end-to-end tests share: the server binary they
//! spawn and a run of the built load tester against it.

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

/// What a run of the load tester left: its output folder, what it printed
/// and its report, as text and parsed.
pub struct Run {
    pub out: PathBuf,
    pub stdout: String,
    pub json: String,
    pub report: serde_json::Value,
}

/// Runs the built load tester with `args` against a spawned server, into a
/// fresh folder named after `name`; fails the test unless it exits 0 and
/// writes a report.
pub fn run_loadtest(name: &str, args: &[&str]) -> Run {
    let bin = server_bin();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(env!("CARGO_BIN_EXE_admedia-loadtest"))
        .args(args)
        .arg("--server-bin")
        .arg(&bin)
        .arg("--out")
        .arg(&out)
        .env_remove("ADMEDIA_ADMIN_TOKEN")
        .env_remove("ADMEDIA_WORKER_TOKEN")
        .output()
        .unwrap_or_else(|e| panic!("cannot run admedia-loadtest: {e}"));
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
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
    Run {
        out,
        stdout,
        json,
        report,
    }
}
