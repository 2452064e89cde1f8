//! `admedia-actors`: the orchestrator's domain and its actors.
//!
//! Everything that decides what happens to a user's credits and jobs lives
//! here: the money model (a ledger with two-phase holds), the job state
//! machine, membership tiers and prices, the fair scheduler, the actors that
//! serialize each of those concerns, and the store port through which all
//! state is read and written. This crate knows nothing of HTTP, SQL or Redis;
//! the server (`src/`) and the load tester plug those in from outside.

pub mod actors;
pub mod api_keys;
pub mod attempt_files;
pub mod clock;
pub mod config;
pub mod content;
pub mod diagnostic;
pub mod email;
pub mod endpoints;
pub mod error;
pub mod events;
pub mod ids;
pub mod job;
pub mod ledger;
pub mod material;
pub mod models;
pub mod money;
pub mod observer;
pub mod orchestrator;
pub mod payments;
pub mod planted;
pub mod policy;
pub mod price_schedule;
pub mod pricing;
pub mod scheduler;
pub mod store;
pub mod text;
pub mod tier;
pub mod user;
pub mod wire;

pub use config::OrchestratorConfig;
pub use error::OrchestratorError;
pub use orchestrator::Orchestrator;
