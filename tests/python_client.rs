//! The Python client (`clients/python`) against the real server: its pytest
//! suite starts the `admedia` binary built for this test run (and an
//! `admedia-worker` agent) on the embedded store and on PostgreSQL, and
//! drives it through the client.
//!
//! The virtual environment lives outside the clone, under the user's cache
//! directory (`ADMEDIA_PYTHON_CLIENT_VENV`, which `scripts/test.sh` sets,
//! else `~/.cache/admedia/venv-client`). It is made here when missing, with
//! pytest, the client's dependencies (httpx, websockets), Pillow for the
//! example worker and the client's build backend; the client itself is
//! installed from this clone on every run, without build isolation, so a
//! prepared environment needs no network. Without Python this fails when
//! `CI=true` and is skipped otherwise.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

/// What the client and its tests need, besides the client.
const REQUIREMENTS: [&str; 5] = [
    "pytest>=7,<10",
    "httpx>=0.25,<1",
    "websockets>=13,<18",
    "pillow>=9",
    "hatchling>=1.18",
];
/// The modules of [`REQUIREMENTS`]: an environment missing one is made again.
const READY_CHECK: &str = "import pytest, httpx, websockets, PIL, hatchling";

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn venv_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ADMEDIA_PYTHON_CLIENT_VENV") {
        return Some(PathBuf::from(dir));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("admedia").join("venv-client"))
}

/// Runs a command; the error names it with its output.
fn run(command: &mut Command) -> Result<(), String> {
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{command:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// The environment's Python with pytest and the client from this clone.
fn prepare(venv: &Path, client: &Path) -> Result<PathBuf, String> {
    let python = venv.join("bin").join("python");
    let ready = python.is_file()
        && Command::new(&python)
            .args(["-c", READY_CHECK])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ready {
        if let Some(parent) = venv.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        run(Command::new("python3").arg("-m").arg("venv").arg(venv))?;
        run(Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(REQUIREMENTS))?;
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            "--force-reinstall",
        ])
        .arg(client))?;
    Ok(python)
}

#[test]
fn the_python_client_works_against_the_server() {
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python");
    let prepared = venv_dir()
        .ok_or_else(|| "no cache directory (HOME unset)".to_owned())
        .and_then(|venv| prepare(&venv, &client));
    let python = match prepared {
        Ok(python) => python,
        Err(why) if ci() => {
            panic!("the Python client's environment is required when CI=true: {why}")
        }
        Err(why) => {
            eprintln!("skipping: {why}; run ./scripts/test.sh to prepare it");
            return;
        }
    };
    let status = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(&client)
        .env("ADMEDIA_BIN", env!("CARGO_BIN_EXE_admedia"))
        .env("ADMEDIA_WORKER_BIN", support::worker_bin())
        // Nothing written into the clone.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .status()
        .unwrap_or_else(|e| panic!("run pytest: {e}"));
    // Exit 5 (no test collected) is a failure too.
    assert!(
        status.success(),
        "the Python client's tests failed ({status})"
    );
}
