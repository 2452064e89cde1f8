//! HTTP integration tests: each starts the real server on a random port
//! with a fresh in-memory store and talks HTTP to it.

mod accounts;
mod admin;
mod content;
mod events;
mod helpers;
mod jobs;
mod licences;
mod materials;
mod operators;
mod ops;
mod payments;
mod pricing;
mod users;
mod wallet;
mod webhooks;
mod workers;
