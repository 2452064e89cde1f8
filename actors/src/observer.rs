//! What the actors report about themselves. The server turns these calls
//! into Prometheus metrics; the benchmark into histograms; tests ignore them.
//! Kept as a trait so this crate does not pick a metrics library.

use std::time::Duration;

use crate::domain::events::JobEvent;
use crate::domain::job::{JobKind, JobState};
use crate::domain::ledger::EntryKind;
use crate::domain::tier::Tier;

/// How one attempt ended.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum AttemptResult {
    Succeeded,
    /// Outputs made, every one withheld by the content checks.
    Withheld,
    SystemFailure,
    UserFailure,
    LeaseLost,
    TimedOut,
    Cancelled,
}

impl AttemptResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::Succeeded => "succeeded",
            AttemptResult::Withheld => "withheld",
            AttemptResult::SystemFailure => "system_failure",
            AttemptResult::UserFailure => "user_failure",
            AttemptResult::LeaseLost => "lease_lost",
            AttemptResult::TimedOut => "timed_out",
            AttemptResult::Cancelled => "cancelled",
        }
    }
}

pub trait Observer: Send + Sync + 'static {
    fn job_submitted(&self, _kind: JobKind, _tier: Tier) {}
    /// `outcome` is the job's terminal state.
    fn job_finished(&self, _kind: JobKind, _tier: Tier, _outcome: JobState) {}
    fn attempt_finished(&self, _kind: JobKind, _result: AttemptResult, _run: Option<Duration>) {}
    /// From a slot becoming free (or a job arriving) to the assignment.
    fn dispatched(&self, _tier: Tier, _queue_wait: Duration, _dispatch_latency: Option<Duration>) {}
    fn credits_moved(&self, _kind: EntryKind, _amount: i64) {}
    fn actor_restarted(&self, _actor: &'static str) {}
    fn stale_worker_message(&self) {}
    fn queue_limited(&self) {}
    /// A job changed state or reported progress (for event streams).
    fn job_event(&self, _event: &JobEvent) {}
    /// A worker was quarantined after repeated system failures.
    fn worker_quarantined(&self) {}
    /// A job waited past its tier's limit and was refunded.
    fn job_expired(&self, _tier: Tier) {}
    /// Retention pruned `count` finished jobs.
    fn jobs_pruned(&self, _count: u64) {}
}

/// Observes nothing.
pub struct NoopObserver;

impl Observer for NoopObserver {}
