//! HTTP integration tests: each starts the real server on a random port
//! with a fresh in-memory store and talks HTTP to it.

mod account_webhooks;
mod accounts;
mod admin;
mod batch;
mod client_limits;
mod content;
mod errors;
mod events;
mod helpers;
mod jobs;
mod key_scopes;
mod licences;
mod materials;
mod moderation;
mod operators;
mod ops;
mod payments;
mod pricing;
mod receiver;
mod retention;
mod scheduling;
#[path = "../support/mod.rs"]
mod support;
mod text;
mod user_events;
mod users;
mod wallet;
mod webhooks;
mod workers;
