//! Scheduling: membership priority without starvation, placement-aware.
//!
//! The pure decisions: [`queue::FairQueue`] says which job goes next
//! (tested with properties), [`resume`] whether an attempt a worker
//! presents again is taken back. The scheduler actor
//! (`crate::actors::scheduler`) owns them together with the worker slots,
//! retry timers and the jobs in flight.

pub mod queue;
pub mod resume;

pub use queue::{FairQueue, JobClass, QueuedJob};
