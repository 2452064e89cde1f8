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
            if let Err(e) = client.batch_execute(&format!("CREATE SCHEMA {schema}")).await {
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
