//! The operator's read models: every user's jobs, a job's attempts and
//! ledger entries, users by e-mail, retries and refunds, and the audit of
//! every ledger.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreResult;
use crate::domain::account::User;
use crate::domain::ids::{JobId, LeaseToken, UserId, WorkerId};
use crate::domain::job::{Job, JobState};
use crate::domain::ledger::LedgerEntry;
use crate::domain::tier::Tier;
use crate::domain::wallet::Wallet;

/// Which jobs an operator lists; every field narrows the list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub tier: Option<Tier>,
    pub kind: Option<crate::domain::job::JobKind>,
    pub user: Option<UserId>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// One attempt of a job, as the store recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub worker_id: WorkerId,
    pub lease: LeaseToken,
    pub assigned_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `None` while in flight.
    pub outcome: Option<crate::domain::job::AttemptOutcomeLabel>,
    pub message: Option<String>,
}

/// Retries and refunds over a period, for the operator's overview.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    pub retries: u64,
    pub refunds: u64,
    pub refunded_credits: i64,
}

/// What the operator reads across users; nothing here writes.
#[async_trait]
pub trait OperatorQueries: Send + Sync + 'static {
    /// Every user's ledger in order, for audits (tests, load tester).
    async fn audit_ledgers(&self) -> StoreResult<Vec<(UserId, Wallet, Vec<LedgerEntry>)>>;
    /// Jobs of every user matching `filter`, newest first.
    async fn admin_jobs(
        &self,
        filter: &JobFilter,
        before: Option<JobId>,
        limit: usize,
    ) -> StoreResult<Vec<Job>>;
    /// A job's attempts, first first.
    async fn attempts(&self, job: JobId) -> StoreResult<Vec<AttemptRecord>>;
    /// The ledger entries of one job (its hold and resolution), in order.
    async fn job_ledger(&self, job: JobId) -> StoreResult<Vec<LedgerEntry>>;
    /// Users whose e-mail contains `fragment` (case-insensitive).
    async fn find_users(&self, fragment: &str, limit: usize) -> StoreResult<Vec<User>>;
    /// Retries and refunds since `since`.
    async fn activity_since(&self, since: DateTime<Utc>) -> StoreResult<Activity>;
}
