//! The actor system: one wallet actor per user, one worker actor per
//! connected GPU worker, one job actor per attempt in flight, and the
//! scheduler that places jobs on workers and starts the job actors.
//!
//! They reach one another only through [`messages`] (the messages they
//! exchange and the `Recipient` handles they send them through), so the
//! dependencies run one way: `messages`; `worker` and `wallet`; `job_actor`;
//! `scheduler`. Each actor is built whole, with the handles it needs given
//! at construction; the orchestrator makes the scheduler's mailbox first,
//! so the wallet registry and the scheduler are built around each other.

pub mod job_actor;
pub mod messages;
pub mod scheduler;
pub mod wallet;
pub mod worker;
