//! The AdMedia orchestrator server: configuration, start-up, the HTTP API,
//! telemetry and the adapters that plug PostgreSQL and Redis into the
//! actors of `admedia-actors`.

pub mod cluster;
pub mod config;
pub mod console;
pub mod events;
pub mod http;
pub mod ledger_archive;
pub mod materials;
pub mod metrics;
pub mod moderation;
pub mod objects;
pub mod outbox;
pub mod ratelimit;
pub mod special_addresses;
pub mod startup;
pub mod store;
pub mod views;
pub mod webhooks;
