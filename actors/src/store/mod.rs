//! The store port: the only way state is read or written.
//!
//! Each method is one unit of atomicity: it happens entirely or not at all,
//! and returns the state after it, so an actor's copy is a cache of what the
//! store decided, never the authority. Job transitions are conditional on
//! the expected state, attempt and lease, so a late or duplicate message
//! changes nothing. Holds are resolved at most once, enforced here.
//!
//! Two adapters implement it: [`memory::MemoryStore`] (embedded default)
//! and the PostgreSQL adapter in the server. Both pass [`conformance`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use thiserror::Error;

use crate::ids::{EntryId, JobId, LeaseToken, UserId, WorkerId};
use crate::job::{AttemptOutcome, IdempotencyKey, Job, JobSpec, JobState, RequestHash};
use crate::ledger::{Grant, LedgerEntry};
use crate::money::{Credits, Wallet};
use crate::tier::{Membership, Tier};
use crate::user::{AccountStatus, KeyHash, NewUser, User};
// Platform rules (ToS 2.2, 3.2, 4.2, 4.5, 5): see `platform_rules` below.
use crate::accounts::{ApiKeyRecord, KeyOptions};
use crate::content::evidence::{ModerationAction, ModerationKind, NewViolation, Violation};
use crate::endpoints::{DeliveryAttempt, EndpointPatch, EventPage, WebhookEndpoint};
use crate::ids::ApiKeyId;
use crate::ids::WebhookEndpointId;
use crate::payments::{
    GiftOutcome, NewPayment, PaymentId, PaymentOutcome, PaymentReview, ScheduledGift,
};
use crate::price_schedule::PriceVersion;
use crate::pricing::PriceTable;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod decide;
/// The catalogue of stored files: a port of its own.
pub mod materials;
pub mod memory;
pub mod outbox;
pub mod writeset;

use outbox::{DeliveryReport, OutboxFeed, PendingWebhook};

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("e-mail address already registered")]
    EmailTaken,
    #[error("insufficient credits: {required} required, {available} available")]
    InsufficientCredits {
        required: Credits,
        available: Credits,
    },
    #[error("waiting-job limit {limit} reached")]
    QueueLimit { limit: u32 },
    #[error("idempotency key reused with another request")]
    IdempotencyKeyReused,
    #[error("job already finished")]
    JobFinished,
    #[error("account is {}", .0.as_str())]
    AccountInactive(AccountStatus),
    /// A conditional transition found the job elsewhere: a late, duplicate
    /// or fenced-off message. Callers drop it.
    #[error("stale transition for job {job}: found {found} at attempt {attempt}")]
    StaleTransition {
        job: JobId,
        found: JobState,
        attempt: u32,
    },
    /// The request is valid but would push a number past its limit.
    #[error("{0}")]
    LimitExceeded(String),
    /// The scheduler's election term ended: another node leads now.
    #[error("scheduler deposed: epoch {current} is current")]
    Deposed { current: u64 },
    /// Revoking this key would leave the account without one.
    #[error("the last active API key cannot be revoked")]
    LastApiKey,
    #[error("hold already resolved")]
    HoldResolved,
    #[error("invariant violated: {0}")]
    Invariant(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Internal(String),
}

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
            charge: crate::job::Charge::Held,
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

/// Which jobs an operator lists; every field narrows the list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub tier: Option<Tier>,
    pub kind: Option<crate::job::JobKind>,
    pub user: Option<UserId>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl JobFilter {
    pub fn matches(&self, job: &Job) -> bool {
        self.state.is_none_or(|s| job.state == s)
            && self.tier.is_none_or(|t| job.tier == t)
            && self.kind.is_none_or(|k| job.spec.kind == k)
            && self.user.is_none_or(|u| job.user_id == u)
            && self.since.is_none_or(|t| job.created_at >= t)
            && self.until.is_none_or(|t| job.created_at < t)
    }
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
    pub outcome: Option<crate::job::AttemptOutcomeLabel>,
    pub message: Option<String>,
}

/// A scheduler term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    pub epoch: u64,
    pub node: String,
    pub url: String,
    pub since: DateTime<Utc>,
}

/// Retries and refunds over a period, for the operator's overview.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    pub retries: u64,
    pub refunds: u64,
    pub refunded_credits: i64,
}

/// Retention cutoffs by final state: a finished job that ended before its
/// state's instant is pruned (see [`Store::prune_finished_jobs`]).
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

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"memory"` or `"postgres"`, for logs and metrics.
    fn adapter(&self) -> &'static str;
    /// Whether acknowledged state survives the process.
    fn durable(&self) -> bool;
    async fn ping(&self) -> StoreResult<()>;

    // ---- outbox
    /// Where this store hands committed events and webhooks.
    fn outbox(&self) -> &OutboxFeed;
    /// Webhook deliveries still owed whose time has come, oldest first,
    /// each claimed for [`outbox::DELIVERY_CLAIM`] so that no other
    /// dispatcher takes it meanwhile (restart and retries).
    async fn claim_webhooks(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<PendingWebhook>>;
    /// Records one delivery attempt of webhook `id`.
    async fn report_webhook(
        &self,
        id: &str,
        report: DeliveryReport,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;

    // ---- accounts
    /// Creates the user, their wallet and the registration grant at once.
    async fn create_user(
        &self,
        new: NewUser,
        reward: Credits,
        now: DateTime<Utc>,
    ) -> StoreResult<(User, Wallet)>;
    async fn user_by_key(&self, hash: KeyHash) -> StoreResult<Option<User>>;
    /// The user and the (not revoked) key behind `hash`: what a request
    /// is authenticated by, with the key's expiry and scopes.
    async fn key_by_hash(&self, hash: KeyHash) -> StoreResult<Option<(User, ApiKeyRecord)>>;
    async fn user(&self, id: UserId) -> StoreResult<Option<User>>;
    async fn set_membership(&self, id: UserId, membership: Membership) -> StoreResult<User>;
    /// Reinstating a suspended account at `now` lapses the gifts of the
    /// months that passed entirely while it was suspended.
    async fn set_status(
        &self,
        id: UserId,
        status: AccountStatus,
        now: DateTime<Utc>,
    ) -> StoreResult<User>;

    // ---- wallets
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

    // ---- jobs
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
    async fn job_counts(&self) -> StoreResult<JobCounts>;
    /// Every user's ledger in order, for audits (tests, load tester).
    async fn audit_ledgers(&self) -> StoreResult<Vec<(UserId, Wallet, Vec<LedgerEntry>)>>;

    /// The user's webhook signing secret, created on first use; `fresh`
    /// is the secret to store if there is none yet.
    async fn webhook_secret(&self, user: UserId, fresh: String) -> StoreResult<String>;

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

    // ---- cluster
    /// Starts a new scheduler term led by `node` (reachable at `url`) and
    /// returns its epoch. Assignments of older terms are refused from now.
    async fn become_leader(&self, node: &str, url: &str, now: DateTime<Utc>) -> StoreResult<u64>;
    /// The current term, if any node has led.
    async fn leader(&self) -> StoreResult<Option<Leader>>;

    // ---- operator views
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

    // ---- platform rules: API keys (ToS 2.2)
    /// Adds an active key for an active user; `LimitExceeded` past
    /// [`crate::accounts::MAX_ACTIVE_KEYS`] active keys.
    async fn create_api_key(
        &self,
        user: UserId,
        id: ApiKeyId,
        hash: KeyHash,
        options: KeyOptions,
        now: DateTime<Utc>,
    ) -> StoreResult<ApiKeyRecord>;
    /// The user's keys, oldest first, revoked ones included.
    async fn api_keys(&self, user: UserId) -> StoreResult<Vec<ApiKeyRecord>>;
    /// Revokes one of the user's keys (`NotFound` for another user's);
    /// revoking a revoked key changes nothing; `LastApiKey` when it is the
    /// user's only active key.
    async fn revoke_api_key(
        &self,
        user: UserId,
        id: ApiKeyId,
        now: DateTime<Utc>,
    ) -> StoreResult<ApiKeyRecord>;

    // ---- platform rules: purchases and memberships (ToS 4.2, 5)
    /// Claims the payment id and applies what it bought, all at once: a
    /// credit grant, or the extended membership with its monthly gifts
    /// scheduled (and the ones already due granted). A replay with the
    /// same content changes nothing (`replayed`); the same id with other
    /// content is `IdempotencyKeyReused`.
    async fn apply_payment(&self, payment: NewPayment) -> StoreResult<PaymentOutcome>;
    /// Payments recorded for an operator instead of applied (see
    /// [`crate::payments::PaymentReview`]), oldest first.
    async fn payments_for_review(&self, limit: usize) -> StoreResult<Vec<PaymentReview>>;
    /// Gifts whose month has started and that are not granted yet, of
    /// active accounts, oldest first.
    async fn due_gifts(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<ScheduledGift>>;
    /// Grants one scheduled gift exactly once: marks it granted and books
    /// the grant in one transaction; `granted: false` when it was granted
    /// before, is not due yet, or the account is not active.
    async fn grant_gift(
        &self,
        user: UserId,
        payment: PaymentId,
        month: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<GiftOutcome>;
    /// The user's scheduled gifts, by start.
    async fn gifts(&self, user: UserId) -> StoreResult<Vec<ScheduledGift>>;

    // ---- platform rules: prices with notice (ToS 4.5)
    /// Every price version, by version.
    async fn price_versions(&self) -> StoreResult<Vec<PriceVersion>>;
    /// Stores `prices` as version 1, effective at `now`, unless a version
    /// exists; returns every version.
    async fn init_prices(
        &self,
        prices: PriceTable,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<PriceVersion>>;
    /// Adds the next version; a version with the same `effective_at` and
    /// prices is returned instead (`true`: a replay).
    async fn announce_prices(
        &self,
        prices: PriceTable,
        effective_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<(PriceVersion, bool)>;

    // ---- platform rules: content (ToS 3.2)
    /// Records a refused prompt and returns the user's counted refusals
    /// since `since`, this one included if it counts.
    async fn record_violation(
        &self,
        user: UserId,
        violation: &NewViolation,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
    ) -> StoreResult<u32>;

    // ---- scheduling
    /// A waiting job passed its tier's waiting limit: `queued` → `failed`
    /// as expired, its hold voided (`Job::expire`); `StaleTransition` when
    /// it is no longer waiting.
    async fn expire_job(
        &self,
        user: UserId,
        id: JobId,
        now: DateTime<Utc>,
    ) -> StoreResult<Settlement>;
    /// The user's refusals since `since`, newest first, at most `limit`;
    /// `counted_only` leaves out those that did not count.
    async fn violations(
        &self,
        user: UserId,
        since: DateTime<Utc>,
        counted_only: bool,
        limit: usize,
    ) -> StoreResult<Vec<Violation>>;
    /// Appends to an account's moderation history.
    async fn record_moderation_action(&self, action: &ModerationAction) -> StoreResult<()>;
    /// Moderation history, newest first: one user's, or everyone's when
    /// `user` is `None`; only of `kind` when given.
    async fn moderation_actions(
        &self,
        user: Option<UserId>,
        kind: Option<ModerationKind>,
        limit: usize,
    ) -> StoreResult<Vec<ModerationAction>>;

    // ---- the per-user event stream
    /// The user's job events after `after` (`None`: none, only `latest`),
    /// oldest first, at most `limit`, among those written at or after
    /// `since`; `missed` when an event after `after` is no longer kept.
    async fn user_events(
        &self,
        user: UserId,
        after: Option<u64>,
        since: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<EventPage>;

    // ---- account webhook endpoints
    /// Registers an endpoint for an active account; `LimitExceeded` past
    /// [`crate::endpoints::MAX_ENDPOINTS`].
    async fn create_webhook_endpoint(
        &self,
        endpoint: WebhookEndpoint,
    ) -> StoreResult<WebhookEndpoint>;
    /// The user's endpoints, oldest first.
    async fn webhook_endpoints(&self, user: UserId) -> StoreResult<Vec<WebhookEndpoint>>;
    /// Changes one of the user's endpoints (`NotFound` for another's).
    async fn update_webhook_endpoint(
        &self,
        user: UserId,
        id: WebhookEndpointId,
        patch: EndpointPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<WebhookEndpoint>;
    /// Removes one of the user's endpoints with its log and the deliveries
    /// it is still owed (`NotFound` for another's).
    async fn delete_webhook_endpoint(&self, user: UserId, id: WebhookEndpointId)
        -> StoreResult<()>;
    /// The endpoint's logged delivery attempts, newest first, at most
    /// `limit` (`NotFound` for another user's endpoint).
    async fn webhook_deliveries(
        &self,
        user: UserId,
        id: WebhookEndpointId,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryAttempt>>;
}
