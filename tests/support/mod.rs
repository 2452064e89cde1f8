//! Shared by the integration tests that need real services.
#![allow(dead_code)]

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{json, Value};
use std::sync::Arc;

use admedia::store::postgres::PgStore;
use admedia_actors::store::Store;

/// The database the test command prepared (`scripts/test.sh` sets it).
pub fn database_url() -> Option<String> {
    std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty())
}

/// In CI a missing service fails the test; on a laptop it is skipped with
/// a note, so `cargo test` alone still runs everything else.
pub fn service_missing(what: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{what} is required when CI=true: {why}");
    }
    eprintln!("skipping: {what} unavailable ({why}); run ./scripts/test.sh to provide it");
}

/// The S3 server the test script started (`ADMEDIA_TEST_S3_*`): its
/// endpoint, bucket, access key and secret.
pub fn s3_settings() -> Option<[String; 4]> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (
        var("ADMEDIA_TEST_S3_ENDPOINT"),
        var("ADMEDIA_TEST_S3_BUCKET"),
        var("ADMEDIA_TEST_S3_ACCESS_KEY"),
        var("ADMEDIA_TEST_S3_SECRET_KEY"),
    ) {
        (Some(e), Some(b), Some(a), Some(s)) => Some([e, b, a, s]),
        _ => {
            service_missing(
                "an S3 server",
                "ADMEDIA_TEST_S3_ENDPOINT and friends are not set",
            );
            None
        }
    }
}

/// A fresh, migrated schema of its own for one test, so tests never see
/// each other's rows.
pub async fn fresh_pg() -> Option<(PgStore, String)> {
    let Some(url) = database_url() else {
        service_missing("PostgreSQL", "DATABASE_URL is not set");
        return None;
    };
    let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
    let config = match tokio_postgres::Config::from_str(&url) {
        Ok(c) => c,
        Err(e) => panic!("DATABASE_URL {url:?}: {e}"),
    };
    match config.connect(tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            if let Err(e) = client
                .batch_execute(&format!("CREATE SCHEMA {schema}"))
                .await
            {
                panic!("create schema: {e}");
            }
        }
        Err(e) => {
            service_missing("PostgreSQL", &e.to_string());
            return None;
        }
    }
    let mut config = config;
    config.options(format!("-c search_path={schema}"));
    let store = match PgStore::from_config(config, 8) {
        Ok(s) => s,
        Err(e) => panic!("pool: {e}"),
    };
    if let Err(e) = store.migrate().await {
        panic!("migrate: {e}");
    }
    Some((store, schema))
}

pub async fn fresh_pg_store() -> Option<Arc<dyn Store>> {
    fresh_pg().await.map(|(s, _)| Arc::new(s) as Arc<dyn Store>)
}

/// A plain client on the test's schema, to poke the database directly.
pub async fn raw_client(schema: &str) -> tokio_postgres::Client {
    let url = database_url().unwrap_or_default();
    let mut config = tokio_postgres::Config::from_str(&url).unwrap_or_else(|e| panic!("{e}"));
    config.options(format!("-c search_path={schema}"));
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    tokio::spawn(conn);
    client
}

/// A database of its own for a test that runs whole server processes
/// (which migrate the default schema), dropped with everything in it by the
/// next run of the test command.
pub async fn fresh_database() -> Option<String> {
    let Some(url) = database_url() else {
        service_missing("PostgreSQL", "DATABASE_URL is not set");
        return None;
    };
    let config =
        tokio_postgres::Config::from_str(&url).unwrap_or_else(|e| panic!("DATABASE_URL: {e}"));
    let (client, conn) = match config.connect(tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => {
            service_missing("PostgreSQL", &e.to_string());
            return None;
        }
    };
    tokio::spawn(conn);
    let name = format!("admedia_t_{}", uuid::Uuid::now_v7().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("create database: {e}"));
    let base = url
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .unwrap_or(url);
    Some(format!("{base}/{name}"))
}

pub fn redis_url() -> Option<String> {
    match std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()) {
        Some(u) => Some(u),
        None => {
            service_missing("Redis", "REDIS_URL is not set");
            None
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// The worker agent's binary (`ADMEDIA_WORKER_BIN`, or the workspace's
/// own, built fresh). The agent is another package's binary (`worker/`),
/// so cargo builds it for no test of this package and `CARGO_BIN_EXE_*`
/// does not name it: the first call builds it into this test's target
/// directory and profile, so a fresh clone works and an agent older than
/// its source is never run. It is built with the whole workspace's
/// features, as `cargo build --workspace` builds it, so after one of those
/// the call only checks. Then the binary sits beside this test's `deps/`
/// directory. (A cross build's `--target` is not passed on: there the
/// agent is not found, and the test says so.)
pub fn worker_bin() -> &'static std::path::Path {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(named) = std::env::var_os("ADMEDIA_WORKER_BIN") {
            return named.into();
        }
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("this test's path: {e}"));
        // …/<target>/<profile>/deps/<test>
        let profile_dir = exe
            .parent()
            .and_then(std::path::Path::parent)
            .unwrap_or_else(|| panic!("{} is not in a cargo target directory", exe.display()));
        let (Some(target_dir), Some(profile)) = (
            profile_dir.parent(),
            profile_dir.file_name().and_then(|n| n.to_str()),
        ) else {
            panic!("{} is not in a cargo target directory", exe.display());
        };
        // The dev profile (and the test profile, which inherits it) builds
        // into `debug`; every other profile into its own name.
        let profile = if profile == "debug" { "dev" } else { profile };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let mut build = std::process::Command::new(&cargo);
        for (name, _) in std::env::vars_os() {
            if set_for_this_test(&name.to_string_lossy()) {
                build.env_remove(name);
            }
        }
        let status = build
            .args(["build", "--quiet", "--workspace", "--bin", "admedia-worker"])
            .args(["--profile", profile])
            .arg("--manifest-path")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir)
            .status()
            .unwrap_or_else(|e| panic!("run {}: {e}", cargo.to_string_lossy()));
        assert!(
            status.success(),
            "cargo build --bin admedia-worker: {status}"
        );
        let bin = profile_dir.join(format!("admedia-worker{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.is_file(), "{} was not built", bin.display());
        bin
    })
}

/// Whether `name` is one of the variables cargo sets for a test (its
/// package's name, directory, …). The agent's build goes without them:
/// build scripts that watch them (ring's) would run again there, and then
/// again at the next plain cargo command.
fn set_for_this_test(name: &str) -> bool {
    const PREFIXES: [&str; 4] = [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_BIN_",
        "CARGO_CRATE_",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
        || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&name)
}

/// The orchestrator as a separate OS process, killed (SIGKILL) on drop.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub port: u16,
    pub base: String,
}

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef0123";

impl ServerProcess {
    /// Starts the server binary (`ADMEDIA_BIN`, or the one cargo built for
    /// this test run) with `env`, and waits until it answers `/readyz`.
    pub async fn start(env: &[(&str, String)]) -> ServerProcess {
        ServerProcess::start_on(free_port(), env).await
    }

    /// As [`ServerProcess::start`], on `port`: a restarted server where its
    /// workers and signed URLs expect it.
    pub async fn start_on(port: u16, env: &[(&str, String)]) -> ServerProcess {
        let bin = std::env::var("ADMEDIA_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_admedia").to_owned());
        let mut cmd = std::process::Command::new(bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ADMEDIA_BIND", format!("127.0.0.1:{port}"))
            .env("ADMEDIA_ADMIN_TOKEN", ADMIN_TOKEN)
            .env(
                "ADMEDIA_WORKER_TOKEN",
                "test-worker-token-0123456789abcdef012",
            )
            .env("ADMEDIA_REGISTRATIONS_PER_HOUR", "0")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn server: {e}"));
        let server = ServerProcess {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = awc::Client::default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Ok(res) = client.get(format!("{}/readyz", server.base)).send().await {
                if res.status().is_success() {
                    return server;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "server did not become ready"
            );
            actix_rt::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy in front of the shared PostgreSQL that the test can cut:
/// cutting drops every connection through it and refuses new ones.
pub struct CuttableProxy {
    pub port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl CuttableProxy {
    pub async fn start(upstream: String) -> CuttableProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let generation = std::sync::Arc::new(tx);
        let accept_open = open.clone();
        actix_rt::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !accept_open.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let mut cut = rx.clone();
                // Only a cut after this connection opened closes it.
                cut.borrow_and_update();
                actix_rt::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        CuttableProxy {
            port,
            open,
            generation,
        }
    }

    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A small JSON client for tests that drive whole server processes.
pub struct Api {
    pub client: awc::Client,
    pub base: String,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api {
            client: awc::Client::builder()
                .timeout(Duration::from_secs(30))
                .finish(),
            base: base.to_owned(),
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Value), String> {
        let mut req = match method {
            "GET" => self.client.get(format!("{}{path}", self.base)),
            "PUT" => self.client.put(format!("{}{path}", self.base)),
            _ => self.client.post(format!("{}{path}", self.base)),
        };
        req = req.insert_header(("Authorization", format!("Bearer {token}")));
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        let mut res = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        }
        .map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let bytes = res
            .body()
            .limit(10 << 20)
            .await
            .map_err(|e| e.to_string())?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    pub async fn register(&self, email: &str) -> (String, String) {
        let (status, body) = self
            .call(
                "POST",
                "/v1/users",
                "",
                Some(json!({"email": email, "display_name": "Crash"})),
                &[],
            )
            .await
            .expect("register");
        assert_eq!(status, 201, "{body}");
        (
            body["user"]["id"].as_str().expect("id").to_owned(),
            body["api_key"].as_str().expect("key").to_owned(),
        )
    }

    pub async fn all_pages(&self, path: &str, field: &str, key: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = match &before {
                Some(b) => format!("{path}{sep}limit=200&before={b}"),
                None => format!("{path}{sep}limit=200"),
            };
            let (status, body) = self.call("GET", &url, key, None, &[]).await.expect("page");
            assert_eq!(status, 200, "{body}");
            out.extend(body[field].as_array().cloned().unwrap_or_default());
            match body["next"].as_str() {
                Some(n) => before = Some(n.to_owned()),
                None => return out,
            }
        }
    }
}

/// Audits one user from the API: the ledger replays to the wallet, nothing
/// is held, every job is terminal with its hold resolved exactly once and
/// the right way. Returns the user's jobs.
pub async fn audit_user(api: &Api, key: &str) -> Vec<Value> {
    let jobs = api.all_pages("/v1/jobs", "jobs", key).await;
    let entries = api.all_pages("/v1/wallet/ledger", "entries", key).await;
    let (mut grants, mut posts) = (0i64, 0i64);
    let mut holds: HashMap<String, usize> = HashMap::new();
    let mut resolutions: HashMap<String, Vec<String>> = HashMap::new();
    for e in &entries {
        let amount = e["amount"].as_i64().expect("amount");
        let kind = e["kind"].as_str().expect("kind");
        match kind {
            "grant" => grants += amount,
            "post" => posts += amount,
            _ => {}
        }
        if let Some(job) = e["job_id"].as_str() {
            match kind {
                "hold" => *holds.entry(job.to_owned()).or_default() += 1,
                _ => resolutions
                    .entry(job.to_owned())
                    .or_default()
                    .push(kind.to_owned()),
            }
        }
    }
    let (_, wallet) = api
        .call("GET", "/v1/wallet", key, None, &[])
        .await
        .expect("wallet");
    assert_eq!(
        wallet["balance"].as_i64(),
        Some(grants - posts),
        "balance = grants - posts"
    );
    assert_eq!(
        wallet["held"].as_i64(),
        Some(0),
        "nothing held once all jobs ended"
    );
    for job in &jobs {
        let id = job["id"].as_str().expect("id");
        assert_eq!(holds.get(id), Some(&1), "job {id} held once");
        let res = resolutions.get(id).cloned().unwrap_or_default();
        assert_eq!(res.len(), 1, "job {id} resolved exactly once: {res:?}");
        let expected = match (job["state"].as_str(), job["error"]["class"].as_str()) {
            (Some("succeeded"), _) | (Some("failed"), Some("user")) => "post",
            (Some("failed"), Some("system")) => "void",
            other => panic!("job {id} not terminal as expected: {other:?}"),
        };
        assert_eq!(res[0], expected, "job {id}");
    }
    jobs
}

/// Waits until the server counts no job queued, assigned or running.
pub async fn await_no_open_jobs(api: &Api, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let (_, stats) = api
            .call("GET", "/v1/admin/stats", ADMIN_TOKEN, None, &[])
            .await
            .expect("stats");
        let open: u64 = ["queued", "assigned", "running"]
            .iter()
            .map(|s| stats["jobs"][s].as_u64().unwrap_or(0))
            .sum();
        if open == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "jobs still open: {stats}"
        );
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A fresh, migrated schema with the PostgreSQL catalogue of stored files
/// on it.
pub async fn fresh_pg_catalogue() -> Option<Arc<dyn admedia_actors::store::materials::MaterialStore>>
{
    let (_, schema) = fresh_pg().await?;
    let url = database_url().unwrap_or_default();
    let mut config = tokio_postgres::Config::from_str(&url).unwrap_or_else(|e| panic!("{e}"));
    config.options(format!("-c search_path={schema}"));
    match admedia::store::postgres_materials::PgMaterialStore::from_config(config, 4) {
        Ok(store) => Some(Arc::new(store)),
        Err(e) => panic!("catalogue pool: {e}"),
    }
}
