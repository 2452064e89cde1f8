//! The money path: wallets, the ledger and jobs with their holds, from
//! submission through assignment, attempts and cancellation to expiry and
//! retention. Every transition is conditional on the expected state,
//! attempt and lease, and moves the money with it in the same unit.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreResult;
use crate::domain::ids::{EntryId, JobId, LeaseToken, UserId, WorkerId};
use crate::domain::job::{AttemptOutcome, IdempotencyKey, Job, JobSpec, JobState, RequestHash};
use crate::domain::ledger::{Grant, LedgerEntry};
use crate::domain::tier::Tier;
use crate::domain::wallet::{Credits, Wallet};

/// A job to insert together with its hold.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub id: JobId,
    pub user_id: UserId,
    pub spec: JobSpec,
    pub tier: Tier,
    pub cost: Credits,
    pub max_attempts: u32,
    /// The user's waiting-job limit at their tier.
    pub max_waiting: u32,
    pub idempotency: Option<(IdempotencyKey, RequestHash)>,
    pub now: DateTime<Utc>,
    /// The price version `cost` comes from (ToS 4.5).
    pub price_version: u32,
}

impl NewJob {
    /// The job as inserted: waiting, nothing attempted, its hold open.
    pub fn queued_job(&self, seq: u64) -> Job {
        Job {
            id: self.id,
            user_id: self.user_id,
            seq,
            spec: self.spec.clone(),
            tier: self.tier,
            cost: self.cost,
            state: JobState::Queued,
            attempts: 0,
            max_attempts: self.max_attempts,
            created_at: self.now,
            started_at: None,
            finished_at: None,
            retry_at: None,
            error: None,
            result: None,
            charge: crate::domain::job::Charge::Held,
            worker_id: None,
            lease: None,
            price_version: self.price_version,
            pruned_at: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Submission {
    /// The job as created; on a replay, as it was first returned.
    pub job: Job,
    pub wallet: Wallet,
    pub replayed: bool,
    /// The new job's queue position among its owner's waiting jobs, as of
    /// the commit (none on a replay: the job may have moved on since).
    pub position: Option<u32>,
}

/// Names one attempt of one job: the fencing for every later transition.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AttemptRef {
    pub job_id: JobId,
    pub attempt: u32,
    pub lease: LeaseToken,
}

#[derive(Clone, Debug)]
pub struct Settlement {
    pub job: Job,
    pub wallet: Wallet,
}

#[derive(Clone, Debug)]
pub struct Cancellation {
    pub job: Job,
    pub wallet: Wallet,
    /// The state the job was cancelled from: the caller stops a worker when
    /// it was in flight.
    pub previous: JobState,
    pub previous_lease: Option<LeaseToken>,
}

#[derive(Clone, Debug)]
pub struct GrantOutcome {
    pub wallet: Wallet,
    pub replayed: bool,
}

/// Retention cutoffs by final state: a finished job that ended before its
/// state's instant is pruned (see [`JobStore::prune_finished_jobs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinishedBefore {
    pub succeeded: DateTime<Utc>,
    pub failed: DateTime<Utc>,
    pub cancelled: DateTime<Utc>,
}

impl FinishedBefore {
    /// The cutoff of jobs that ended in `state`; `None` while not ended.
    pub fn of(&self, state: JobState) -> Option<DateTime<Utc>> {
        match state {
            JobState::Succeeded => Some(self.succeeded),
            JobState::Failed => Some(self.failed),
            JobState::Cancelled => Some(self.cancelled),
            JobState::Queued | JobState::Assigned | JobState::Running => None,
        }
    }
}

/// Jobs per state, for stats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobCounts(pub Vec<(JobState, u64)>);

/// Wallets, the ledger and jobs: every operation that moves credits.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    async fn wallet(&self, user: UserId) -> StoreResult<Wallet>;
    /// Newest first; entries older than `before` when given.
    async fn ledger(
        &self,
        user: UserId,
        before: Option<EntryId>,
        limit: usize,
    ) -> StoreResult<Vec<LedgerEntry>>;
    /// Idempotent by `grant.idempotency_key` per user.
    async fn grant(
        &self,
        user: UserId,
        grant: Grant,
        now: DateTime<Utc>,
    ) -> StoreResult<GrantOutcome>;
    /// Claims the idempotency key, checks the account, the waiting limit and
    /// the credits, holds the cost and inserts the job `queued`: all or
    /// nothing.
    async fn submit_job(&self, job: NewJob) -> StoreResult<Submission>;
    /// `queued` with `attempts == attempt - 1` → `assigned` at `attempt`,
    /// only while `epoch` is the current scheduler term (`Deposed` else).
    async fn assign_job(
        &self,
        attempt: AttemptRef,
        worker: WorkerId,
        epoch: u64,
        now: DateTime<Utc>,
    ) -> StoreResult<Job>;
    /// `assigned` → `running`, for the named attempt only.
    async fn start_job(&self, attempt: AttemptRef, now: DateTime<Utc>) -> StoreResult<Job>;
    /// Ends the named attempt and moves the money with it: post on success
    /// or user failure; on system failure re-queue while attempts remain,
    /// else void (refund).
    async fn finish_attempt(
        &self,
        attempt: AttemptRef,
        outcome: AttemptOutcome,
        now: DateTime<Utc>,
    ) -> StoreResult<Settlement>;
    /// The user cancels: void when queued, post when in flight (GPU time
    /// was used); `JobFinished` when terminal.
    async fn cancel_job(
        &self,
        user: UserId,
        id: JobId,
        now: DateTime<Utc>,
    ) -> StoreResult<Cancellation>;
    /// Cancels and voids every queued job of a user (suspension).
    async fn cancel_queued_jobs(&self, user: UserId, now: DateTime<Utc>) -> StoreResult<Vec<Job>>;
    async fn job(&self, id: JobId) -> StoreResult<Option<Job>>;
    /// 1-based position among the user's own waiting jobs.
    async fn queue_position(&self, id: JobId) -> StoreResult<Option<u32>>;
    /// Newest first; jobs older than `before` when given.
    async fn list_jobs(
        &self,
        user: UserId,
        state: Option<JobState>,
        before: Option<JobId>,
        limit: usize,
    ) -> StoreResult<Vec<Job>>;
    /// Jobs in any of `states`, oldest submission first (recovery).
    async fn jobs_in_states(&self, states: &[JobState]) -> StoreResult<Vec<Job>>;
    /// Waiting jobs submitted after `after_seq`, oldest first, at most
    /// `limit`: the scheduler compares its line with the store a page at
    /// a time, so a large backlog is never read in one piece.
    async fn queued_jobs_after(&self, after_seq: u64, limit: usize) -> StoreResult<Vec<Job>>;
    async fn job_counts(&self) -> StoreResult<JobCounts>;
    /// Forgets idempotency keys of submissions made before `before`: a
    /// replay after that is a new submission (Stripe keeps keys ~24 h).
    /// Returns how many were forgotten.
    async fn expire_idempotency_keys(&self, before: DateTime<Utc>) -> StoreResult<u64>;
    /// Retention: prunes at most `limit` finished jobs that ended before
    /// their state's cutoff, oldest-finished first, in one transaction.
    /// A pruned job keeps what the money needs (id, owner, cost, charge,
    /// times; its ledger entries and hold are never touched) and loses its
    /// prompt, result, error, attempt records and job events
    /// ([`Job::pruned`]); it is marked `pruned_at = now`. Pruning a pruned
    /// job changes nothing. Returns how many jobs were pruned; the embedded
    /// store adds those it pruned since the last call to stay within its
    /// cap of finished jobs in memory.
    async fn prune_finished_jobs(
        &self,
        before: &FinishedBefore,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<u64>;
    /// A waiting job passed its tier's waiting limit: `queued` → `failed`
    /// as expired, its hold voided (`Job::expire`); `StaleTransition` when
    /// it is no longer waiting.
    async fn expire_job(
        &self,
        user: UserId,
        id: JobId,
        now: DateTime<Utc>,
    ) -> StoreResult<Settlement>;
}
