//! Shared by the integration tests that need real services.
#![allow(dead_code)]

use std::str::FromStr;
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

/// The orchestrator as a separate OS process, killed (SIGKILL) on drop.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub port: u16,
    pub base: String,
}

pub const ADMIN_TOKEN: &str = "test-admin-token";

impl ServerProcess {
    /// Starts the server binary (`ADMEDIA_BIN`, or the one cargo built for
    /// this test run) with `env`, and waits until it answers `/readyz`.
    pub async fn start(env: &[(&str, String)]) -> ServerProcess {
        let bin = std::env::var("ADMEDIA_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_admedia").to_owned());
        let port = free_port();
        let mut cmd = std::process::Command::new(bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ADMEDIA_BIND", format!("127.0.0.1:{port}"))
            .env("ADMEDIA_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("ADMEDIA_WORKER_TOKEN", "test-worker-token")
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
