//! What the load tester's end-to-end tests share: the server binary they
//! spawn.

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
pub fn server_bin() -> PathBuf {
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
