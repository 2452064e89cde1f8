//! `admedia-actors`: the orchestrator's domain and its actors.
//!
//! Everything that decides what happens to a user's credits and jobs lives
//! here: the money model (a ledger with two-phase holds), the job state
//! machine, membership tiers and prices, the fair scheduler, the actors that
//! serialize each of those concerns, and the store port through which all
//! state is read and written. This crate knows nothing of HTTP, SQL or Redis;
//! the server (`src/`) and the load tester plug those in from outside.
//!
//! The layout follows the design, from the inside out:
//!
//! - [`domain`]: the rules as values and pure functions (credits and
//!   wallets, the ledger, jobs and their state machine, tiers, prices,
//!   accounts, payments, materials, content rules). No actor, store or
//!   I/O.
//! - [`scheduler`]: the scheduling decisions (fair order between tiers and
//!   users, taking back a presented attempt), pure as well.
//! - [`store`]: the port through which all state is read and written, the
//!   pure decision of every write ([`store::decide`]), the in-memory
//!   adapter and the conformance suite every adapter passes.
//! - [`actors`]: the actors (wallet, scheduler, job, worker) and the
//!   messages between them.
//! - [`orchestrator`]: the actor system wired together, and the operations
//!   the outside world performs on it, with its [`config`], [`policy`] and
//!   [`error`]s.
//! - The seams the outside world plugs into: [`clock`] (time and chance),
//!   [`observer`] (metrics), [`attempt_files`] (signed URLs for a worker's
//!   files) and [`wire`] (the GPU worker protocol). [`planted`] holds the
//!   deterministic simulation's switches.

pub mod actors;
pub mod attempt_files;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod observer;
pub mod orchestrator;
pub mod planted;
pub mod policy;
pub mod scheduler;
pub mod store;
pub mod wire;

pub use config::OrchestratorConfig;
pub use error::OrchestratorError;
pub use orchestrator::Orchestrator;
