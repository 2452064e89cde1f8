//! `--spawn`: the server binary as a child process on a free local port,
//! with its own tokens, no simulated workers of its own, no rate limits,
//! and (unless told otherwise) a tier table whose per-user limits are open
//! wide so they do not cap the offered load. SIGKILL and restart for chaos.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use admedia_actors::domain::tier::{PerTier, Tier};

use crate::api::Api;
use crate::cli::Plan;
use crate::setting::Setting;

/// The workspace this crate was built in (`loadtest/..`).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_dir().join(dir)
            }
        }
        _ => workspace_dir().join("target"),
    }
}

/// The server binary: `explicit`, else target/release/admedia, else
/// target/debug/admedia; built (release) when none exists and `build`.
pub fn locate_server(explicit: Option<&Path>, build: bool) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("--server-bin {}: no such file", p.display()))
        };
    }
    let target = target_dir();
    let candidates = [
        target.join("release").join("admedia"),
        target.join("debug").join("admedia"),
    ];
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        warn_if_stale(found);
        return Ok(found.clone());
    }
    let tried = candidates
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if !build {
        return Err(format!(
            "no server binary at {tried}; build it with `cargo build --release -p admedia --bin admedia` or pass --server-bin"
        ));
    }
    eprintln!("no server binary at {tried}: building it (cargo build --release -p admedia --bin admedia)…");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "-p", "admedia", "--bin", "admedia"])
        .current_dir(workspace_dir())
        .status()
        .map_err(|e| format!("cannot run cargo to build the server: {e}; pass --server-bin"))?;
    if !status.success() {
        return Err(format!(
            "building the server failed ({status}); pass --server-bin"
        ));
    }
    if candidates[0].is_file() {
        Ok(candidates[0].clone())
    } else {
        Err(format!(
            "cargo built the server but {} is missing",
            candidates[0].display()
        ))
    }
}

fn newest_source(dir: &Path, depth: u32) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            if depth == 0 {
                continue;
            }
            newest_source(&path, depth - 1)
        } else if path.extension().is_some_and(|e| e == "rs" || e == "sql") {
            entry.metadata().ok().and_then(|m| m.modified().ok())
        } else {
            None
        };
        newest = newest.max(t);
    }
    newest
}

fn warn_if_stale(bin: &Path) {
    let Some(built) = std::fs::metadata(bin).and_then(|m| m.modified()).ok() else {
        return;
    };
    let ws = workspace_dir();
    let newest = [
        ws.join("src"),
        ws.join("actors").join("src"),
        ws.join("schema"),
    ]
    .iter()
    .filter_map(|d| newest_source(d, 6))
    .max();
    if newest.is_some_and(|n| n > built) {
        eprintln!(
            "note: {} is older than the server's sources; rebuild it with `cargo build --release -p admedia --bin admedia` to test the current code",
            bin.display()
        );
    }
}

pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free local port: {e}"))
}

/// A tier table (server TOML) with the given weights and open limits.
pub fn open_limits_config(weights: PerTier<u32>) -> String {
    let mut out = String::from(
        "# Written by admedia-loadtest: the default weights, per-user limits\n\
         # opened wide so they do not cap the offered load.\n",
    );
    for (tier, w) in weights.iter() {
        let name = tier.as_str();
        out.push_str(&format!(
            "[tiers.{name}]\nweight = {w}\nmax_running = 100000\nmax_waiting = 10000000\n\n"
        ));
    }
    out
}

/// The variables of the server's settings the plan chooses: timings,
/// tier weights, waiting limits, quarantine, retention and the sweep.
/// A setting the plan leaves unset is not passed, so the server's own
/// default applies.
pub fn settings_env(plan: &Plan) -> Vec<(String, String)> {
    let millis = |d: Duration| d.as_millis().to_string();
    let weights: Vec<String> = plan.weights.values().map(u32::to_string).collect();
    let mut env = vec![
        ("ADMEDIA_RETRY_BASE_MS", millis(plan.retry_base)),
        ("ADMEDIA_RETRY_MAX_MS", millis(plan.retry_max())),
        ("ADMEDIA_WORKER_LEASE_MS", millis(plan.lease)),
        ("ADMEDIA_TIER_WEIGHTS", weights.join(",")),
    ];
    let optional = [
        ("ADMEDIA_MAX_WAIT", plan.max_wait.map(|w| w.setting())),
        (
            "ADMEDIA_QUARANTINE_AFTER",
            plan.quarantine_after.map(|n| n.to_string()),
        ),
        (
            "ADMEDIA_QUARANTINE_BASE",
            plan.quarantine_base.map(|d| d.setting()),
        ),
        (
            "ADMEDIA_JOB_RETENTION",
            plan.job_retention.map(|r| r.setting()),
        ),
        (
            "ADMEDIA_IDEMPOTENCY_WINDOW",
            plan.idempotency_window.map(|d| d.setting()),
        ),
        (
            "ADMEDIA_MAX_FINISHED_IN_MEMORY",
            plan.max_finished_in_memory.map(|n| n.to_string()),
        ),
        ("ADMEDIA_GIFT_SWEEP", plan.sweep_every.map(|d| d.setting())),
        (
            "ADMEDIA_RETENTION",
            plan.output_retention.map(|d| {
                let each: Vec<String> = Tier::ALL
                    .iter()
                    .map(|t| format!("{}={}", t.as_str(), d.setting()))
                    .collect();
                each.join(",")
            }),
        ),
        (
            "ADMEDIA_OBJECT_SWEEP",
            plan.object_sweep.map(|d| d.setting()),
        ),
        (
            "ADMEDIA_LEDGER_ARCHIVE_AFTER",
            plan.archive_after.map(|d| d.setting()),
        ),
        (
            "ADMEDIA_LEDGER_ARCHIVE_EVERY",
            plan.archive_every.map(|d| d.setting()),
        ),
    ];
    env.extend(
        optional
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (name, v))),
    );
    env.into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}

pub struct ServerConfig {
    pub bin: PathBuf,
    pub port: u16,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

pub struct ServerChild {
    config: ServerConfig,
    child: Option<Child>,
    pub starts: u32,
}

impl ServerChild {
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.config.port)
    }

    /// The running child's process id (its `/proc` entry), if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn start(config: ServerConfig) -> Result<ServerChild, String> {
        let mut s = ServerChild {
            config,
            child: None,
            starts: 0,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.config.log)
            .map_err(|e| format!("server log {}: {e}", self.config.log.display()))?;
        let log2: File = log.try_clone().map_err(|e| format!("server log: {e}"))?;
        let mut cmd = Command::new(&self.config.bin);
        // Nothing of the caller's environment may change what is tested.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("ADMEDIA_") || k == "DATABASE_URL" || k == "REDIS_URL" {
                cmd.env_remove(k.as_ref());
            }
        }
        cmd.envs(self.config.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.config.bin.display()))?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// Waits for `/readyz`; fails early if the process exits.
    pub async fn wait_ready(&mut self, api: &Api, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if api.ready().await {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "the server exited during start-up ({status}); see {}",
                        self.config.log.display()
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the server did not answer /readyz within {} s; see {}",
                    timeout.as_secs(),
                    self.config.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL, then start again on the same port.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn()
    }

    /// Whether the process has exited by itself.
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// SIGTERM, as an operator stops it, so it cleans up after itself (an
    /// embedded server removes its scratch objects); SIGKILL if it has
    /// not exited within ten seconds.
    pub fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let asked = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while asked && Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use admedia_actors::config::{JobRetention, WaitLimits};
    use admedia_actors::domain::material::TierRetention;

    #[test]
    fn the_open_limits_config_is_a_full_tier_table() {
        let text = open_limits_config(PerTier::from([1, 2, 4, 8]));
        for t in ["free", "basic", "professional", "enterprise"] {
            assert!(text.contains(&format!("[tiers.{t}]")));
        }
        assert!(text.contains("weight = 8"));
        assert_eq!(text.matches("max_running").count(), 4);
    }

    fn plan(args: &[&str]) -> Plan {
        let all = ["admedia-loadtest", "--spawn"].iter().chain(args);
        <crate::cli::Cli as clap::Parser>::try_parse_from(all)
            .expect("the flags parse")
            .plan()
            .expect("a plan")
    }

    fn value<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn durations_are_written_in_the_largest_exact_unit() {
        let ms = Duration::from_millis;
        for (d, text) in [
            (ms(0), "0ms"),
            (ms(1500), "1500ms"),
            (ms(2000), "2s"),
            (ms(90_000), "90s"),
            (ms(120_000), "2m"),
            (ms(36 * 3_600_000), "36h"),
            (ms(7 * 86_400_000), "7d"),
        ] {
            assert_eq!(d.setting(), text);
        }
    }

    /// Whatever the plan holds, the server reads back exactly that value:
    /// each variable is parsed here with the server's own parser.
    #[test]
    fn the_server_reads_back_what_the_plan_holds() {
        use admedia_actors::domain::price_schedule::{parse_duration, parse_millis};
        for d in [1u64, 999, 1000, 61_000, 3_600_000, 90_061_001].map(Duration::from_millis) {
            assert_eq!(parse_duration(&d.setting()), Ok(d), "{}", d.setting());
        }
        let p = plan(&[
            "--scenario=fleet",
            "--max-wait=free=90s,enterprise=1500ms",
            "--quarantine-base=2500ms",
            "--job-retention=failed=1d12h",
            "--sweep-every=2s",
            "--idempotency-window=90m",
            "--max-finished-in-memory=500",
            "--lease-ms=2500",
            "--retry-base-ms=20",
        ]);
        let env = settings_env(&p);
        let read = |name| value(&env, name).unwrap_or_else(|| panic!("{name} not passed"));
        assert_eq!(
            read("ADMEDIA_MAX_WAIT").parse::<WaitLimits>(),
            Ok(p.max_wait.expect("fleet sets a waiting limit"))
        );
        assert_eq!(
            read("ADMEDIA_JOB_RETENTION").parse::<JobRetention>(),
            Ok(p.job_retention.expect("a retention was given"))
        );
        assert_eq!(
            parse_duration(read("ADMEDIA_QUARANTINE_BASE")),
            Ok(Duration::from_millis(2500))
        );
        assert_eq!(
            parse_duration(read("ADMEDIA_GIFT_SWEEP")),
            Ok(Duration::from_secs(2))
        );
        assert_eq!(
            parse_duration(read("ADMEDIA_IDEMPOTENCY_WINDOW")),
            Ok(Duration::from_secs(90 * 60))
        );
        assert_eq!(parse_millis(read("ADMEDIA_WORKER_LEASE_MS")), Ok(p.lease));
        assert_eq!(
            parse_millis(read("ADMEDIA_RETRY_BASE_MS")),
            Ok(p.retry_base)
        );
        assert_eq!(
            parse_millis(read("ADMEDIA_RETRY_MAX_MS")),
            Ok(p.retry_max())
        );
        assert_eq!(read("ADMEDIA_QUARANTINE_AFTER"), "3");
        assert_eq!(read("ADMEDIA_MAX_FINISHED_IN_MEMORY"), "500");
        assert_eq!(read("ADMEDIA_TIER_WEIGHTS"), "1,2,4,8");
        let soak = settings_env(&plan(&["--scenario=soak", "--output-retention=3m"]));
        let retention = value(&soak, "ADMEDIA_RETENTION").expect("ADMEDIA_RETENTION not passed");
        let parsed: TierRetention = retention.parse().expect("the server reads it");
        assert!(parsed
            .0
            .values()
            .all(|d| *d == Some(Duration::from_secs(180))));
        assert_eq!(
            value(&soak, "ADMEDIA_OBJECT_SWEEP").map(parse_duration),
            Some(Ok(Duration::from_secs(5)))
        );
        // report.json shows the same text.
        let json = serde_json::to_value(&p).expect("the plan serializes");
        assert_eq!(json["max_wait"], read("ADMEDIA_MAX_WAIT"));
        assert_eq!(json["sweep_every"], "2s");
    }

    #[test]
    fn what_the_plan_leaves_unset_is_not_passed() {
        let env = settings_env(&plan(&["--scenario=smoke"]));
        for name in [
            "ADMEDIA_MAX_WAIT",
            "ADMEDIA_QUARANTINE_AFTER",
            "ADMEDIA_QUARANTINE_BASE",
            "ADMEDIA_JOB_RETENTION",
            "ADMEDIA_MAX_FINISHED_IN_MEMORY",
            "ADMEDIA_GIFT_SWEEP",
            "ADMEDIA_RETENTION",
            "ADMEDIA_OBJECT_SWEEP",
        ] {
            assert_eq!(value(&env, name), None, "{name}");
        }
        assert!(value(&env, "ADMEDIA_WORKER_LEASE_MS").is_some());
    }

    #[test]
    fn a_missing_explicit_binary_is_a_clear_error() {
        let err = locate_server(Some(Path::new("/no/such/admedia")), false).unwrap_err();
        assert!(err.contains("--server-bin"), "{err}");
    }
}
