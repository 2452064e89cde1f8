//! HTTP integration tests: each starts the real server on a random port
//! with a fresh in-memory store and talks HTTP to it.

mod admin;
mod events;
mod helpers;
mod jobs;
mod operators;
mod ops;
mod users;
mod wallet;
mod webhooks;
mod workers;
