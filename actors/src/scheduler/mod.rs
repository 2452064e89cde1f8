//! Scheduling: membership priority without starvation, placement-aware.
//!
//! [`queue::FairQueue`] is the pure decision (which job next), tested with
//! properties; [`actor::SchedulerActor`] owns it together with the worker
//! slots, retry timers and the jobs in flight.

pub mod actor;
pub mod queue;
pub mod resume;

pub use actor::SchedulerActor;
pub use queue::{FairQueue, JobClass, QueuedJob};
