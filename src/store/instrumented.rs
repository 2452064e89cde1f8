//! Times every store call, whatever the adapter, into
//! `admedia_store_operation_seconds{operation, adapter}` and counts the calls
//! that failed for a reason of the store's own into
//! `admedia_store_errors_total{operation, adapter, kind}`.
//!
//! A wrapper rather than code in each adapter, so the memory and PostgreSQL
//! adapters are measured the same way and a new adapter is measured for
//! free. A refusal the domain expects (not enough credits, a stale
//! transition, an unknown id...) is an answer, not an error: only
//! `unavailable` (the store could not be reached) and `other` (it broke)
//! count, so an alert on the counter means something is wrong.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use admedia_actors::domain::account::{AccountStatus, KeyHash, NewUser, User};
use admedia_actors::domain::ids::{EntryId, JobId, UserId, WorkerId};
use admedia_actors::domain::job::{AttemptOutcome, Job, JobState};
use admedia_actors::domain::ledger::{Grant, LedgerEntry};
use admedia_actors::domain::tier::Membership;
use admedia_actors::domain::wallet::{Credits, Wallet};
use admedia_actors::store::archive::{Chapter, History};
use admedia_actors::store::prelude::*;
use admedia_actors::store::{
    Activity, AttemptRecord, AttemptRef, Cancellation, FinishedBefore, GrantOutcome, JobCounts,
    JobFilter, Leader, NewJob, Settlement, StoreError, StoreResult, Submission,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use admedia_actors::domain::api_keys::ApiKeyRecord;
use admedia_actors::domain::content::evidence::{
    ModerationAction, ModerationKind, NewViolation, Violation,
};
use admedia_actors::domain::ids::ApiKeyId;
use admedia_actors::domain::payments::{
    GiftOutcome, NewPayment, PaymentId, PaymentOutcome, PaymentReview, ScheduledGift,
};
use admedia_actors::domain::price_schedule::PriceVersion;
use admedia_actors::domain::pricing::PriceTable;

use crate::metrics::Metrics;

/// Every operation of the store port, as it appears in the `operation`
/// label: one per method of [`Store`] that reaches the store.
pub const OPERATIONS: &[&str] = &[
    "ping",
    "users_after",
    "oldest_history",
    "close_chapter",
    "chapters",
    "claim_webhooks",
    "report_webhook",
    "create_user",
    "user_by_key",
    "user",
    "set_membership",
    "set_status",
    "wallet",
    "ledger",
    "grant",
    "submit_job",
    "assign_job",
    "start_job",
    "finish_attempt",
    "cancel_job",
    "cancel_queued_jobs",
    "job",
    "queue_position",
    "list_jobs",
    "jobs_in_states",
    "queued_jobs_after",
    "job_counts",
    "audit_ledgers",
    "admin_jobs",
    "attempts",
    "job_ledger",
    "find_users",
    "activity_since",
    "webhook_secret",
    "expire_idempotency_keys",
    "prune_finished_jobs",
    "become_leader",
    "leader",
    "create_api_key",
    "api_keys",
    "revoke_api_key",
    "apply_payment",
    "payments_for_review",
    "due_gifts",
    "grant_gift",
    "gifts",
    "price_versions",
    "init_prices",
    "announce_prices",
    "record_violation",
    "expire_job",
    "violations",
    "record_moderation_action",
    "moderation_actions",
    "key_by_hash",
    "user_events",
    "create_webhook_endpoint",
    "webhook_endpoints",
    "update_webhook_endpoint",
    "delete_webhook_endpoint",
    "webhook_deliveries",
];

/// The `kind` label of a failed call, or `None` for an answer the domain
/// expects.
pub fn error_kind(e: &StoreError) -> Option<&'static str> {
    match e {
        StoreError::Unavailable(_) => Some("unavailable"),
        StoreError::Invariant(_) | StoreError::Internal(_) | StoreError::HoldResolved => {
            // A second resolution of a hold should have been stopped by the
            // job's state first; reaching the hold's guard is a bug.
            Some("other")
        }
        StoreError::NotFound(_)
        | StoreError::EmailTaken
        | StoreError::InsufficientCredits { .. }
        | StoreError::QueueLimit { .. }
        | StoreError::IdempotencyKeyReused
        | StoreError::JobFinished
        | StoreError::AccountInactive(_)
        | StoreError::StaleTransition { .. }
        | StoreError::Deposed { .. }
        | StoreError::LimitExceeded(_)
        | StoreError::LastApiKey => None,
    }
}

/// Any store, measured.
pub struct InstrumentedStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    adapter: &'static str,
}

impl InstrumentedStore {
    /// Wraps `inner`, and creates its error series at zero so an alert on
    /// them has something to evaluate before the first error.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> InstrumentedStore {
        let adapter = inner.adapter();
        metrics.prime_store(adapter, OPERATIONS);
        InstrumentedStore {
            inner,
            metrics,
            adapter,
        }
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let started = Instant::now();
        let result = call.await;
        let failure = result.as_ref().err().and_then(error_kind);
        self.metrics
            .store_operation(operation, self.adapter, started.elapsed(), failure);
        result
    }
}

#[async_trait]
impl JobStore for InstrumentedStore {
    async fn wallet(&self, user: UserId) -> StoreResult<Wallet> {
        self.timed("wallet", self.inner.wallet(user)).await
    }

    async fn ledger(
        &self,
        user: UserId,
        before: Option<EntryId>,
        limit: usize,
    ) -> StoreResult<Vec<LedgerEntry>> {
        self.timed("ledger", self.inner.ledger(user, before, limit))
            .await
    }

    async fn grant(
        &self,
        user: UserId,
        grant: Grant,
        now: DateTime<Utc>,
    ) -> StoreResult<GrantOutcome> {
        self.timed("grant", self.inner.grant(user, grant, now))
            .await
    }

    async fn submit_job(&self, job: NewJob) -> StoreResult<Submission> {
        self.timed("submit_job", self.inner.submit_job(job)).await
    }

    async fn assign_job(
        &self,
        attempt: AttemptRef,
        worker: WorkerId,
        epoch: u64,
        now: DateTime<Utc>,
    ) -> StoreResult<Job> {
        self.timed(
            "assign_job",
            self.inner.assign_job(attempt, worker, epoch, now),
        )
        .await
    }

    async fn start_job(&self, attempt: AttemptRef, now: DateTime<Utc>) -> StoreResult<Job> {
        self.timed("start_job", self.inner.start_job(attempt, now))
            .await
    }

    async fn finish_attempt(
        &self,
        attempt: AttemptRef,
        outcome: AttemptOutcome,
        now: DateTime<Utc>,
    ) -> StoreResult<Settlement> {
        self.timed(
            "finish_attempt",
            self.inner.finish_attempt(attempt, outcome, now),
        )
        .await
    }

    async fn cancel_job(
        &self,
        user: UserId,
        id: JobId,
        now: DateTime<Utc>,
    ) -> StoreResult<Cancellation> {
        self.timed("cancel_job", self.inner.cancel_job(user, id, now))
            .await
    }

    async fn cancel_queued_jobs(&self, user: UserId, now: DateTime<Utc>) -> StoreResult<Vec<Job>> {
        self.timed(
            "cancel_queued_jobs",
            self.inner.cancel_queued_jobs(user, now),
        )
        .await
    }

    async fn job(&self, id: JobId) -> StoreResult<Option<Job>> {
        self.timed("job", self.inner.job(id)).await
    }

    async fn queue_position(&self, id: JobId) -> StoreResult<Option<u32>> {
        self.timed("queue_position", self.inner.queue_position(id))
            .await
    }

    async fn list_jobs(
        &self,
        user: UserId,
        state: Option<JobState>,
        before: Option<JobId>,
        limit: usize,
    ) -> StoreResult<Vec<Job>> {
        self.timed(
            "list_jobs",
            self.inner.list_jobs(user, state, before, limit),
        )
        .await
    }

    async fn jobs_in_states(&self, states: &[JobState]) -> StoreResult<Vec<Job>> {
        self.timed("jobs_in_states", self.inner.jobs_in_states(states))
            .await
    }

    async fn queued_jobs_after(&self, after_seq: u64, limit: usize) -> StoreResult<Vec<Job>> {
        self.timed(
            "queued_jobs_after",
            self.inner.queued_jobs_after(after_seq, limit),
        )
        .await
    }

    async fn job_counts(&self) -> StoreResult<JobCounts> {
        self.timed("job_counts", self.inner.job_counts()).await
    }

    async fn expire_idempotency_keys(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        self.timed(
            "expire_idempotency_keys",
            self.inner.expire_idempotency_keys(before),
        )
        .await
    }

    async fn prune_finished_jobs(
        &self,
        before: &FinishedBefore,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<u64> {
        self.timed(
            "prune_finished_jobs",
            self.inner.prune_finished_jobs(before, now, limit),
        )
        .await
    }

    async fn expire_job(
        &self,
        user: UserId,
        id: JobId,
        now: DateTime<Utc>,
    ) -> StoreResult<Settlement> {
        self.timed("expire_job", self.inner.expire_job(user, id, now))
            .await
    }
}

#[async_trait]
impl AccountStore for InstrumentedStore {
    async fn create_user(
        &self,
        new: NewUser,
        reward: Credits,
        now: DateTime<Utc>,
    ) -> StoreResult<(User, Wallet)> {
        self.timed("create_user", self.inner.create_user(new, reward, now))
            .await
    }

    async fn user_by_key(&self, hash: KeyHash) -> StoreResult<Option<User>> {
        self.timed("user_by_key", self.inner.user_by_key(hash))
            .await
    }

    async fn user(&self, id: UserId) -> StoreResult<Option<User>> {
        self.timed("user", self.inner.user(id)).await
    }

    async fn set_membership(&self, id: UserId, membership: Membership) -> StoreResult<User> {
        self.timed("set_membership", self.inner.set_membership(id, membership))
            .await
    }

    async fn set_status(
        &self,
        id: UserId,
        status: AccountStatus,
        now: DateTime<Utc>,
    ) -> StoreResult<User> {
        self.timed("set_status", self.inner.set_status(id, status, now))
            .await
    }

    async fn create_api_key(
        &self,
        user: UserId,
        id: ApiKeyId,
        hash: KeyHash,
        options: admedia_actors::domain::api_keys::KeyOptions,
        now: DateTime<Utc>,
    ) -> StoreResult<ApiKeyRecord> {
        self.timed(
            "create_api_key",
            self.inner.create_api_key(user, id, hash, options, now),
        )
        .await
    }

    async fn key_by_hash(&self, hash: KeyHash) -> StoreResult<Option<(User, ApiKeyRecord)>> {
        self.timed("key_by_hash", self.inner.key_by_hash(hash))
            .await
    }

    async fn api_keys(&self, user: UserId) -> StoreResult<Vec<ApiKeyRecord>> {
        self.timed("api_keys", self.inner.api_keys(user)).await
    }

    async fn revoke_api_key(
        &self,
        user: UserId,
        id: ApiKeyId,
        now: DateTime<Utc>,
    ) -> StoreResult<ApiKeyRecord> {
        self.timed("revoke_api_key", self.inner.revoke_api_key(user, id, now))
            .await
    }
}

#[async_trait]
impl PaymentStore for InstrumentedStore {
    async fn apply_payment(&self, payment: NewPayment) -> StoreResult<PaymentOutcome> {
        self.timed("apply_payment", self.inner.apply_payment(payment))
            .await
    }

    async fn payments_for_review(&self, limit: usize) -> StoreResult<Vec<PaymentReview>> {
        self.timed("payments_for_review", self.inner.payments_for_review(limit))
            .await
    }

    async fn due_gifts(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<ScheduledGift>> {
        self.timed("due_gifts", self.inner.due_gifts(now, limit))
            .await
    }

    async fn grant_gift(
        &self,
        user: UserId,
        payment: PaymentId,
        month: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<GiftOutcome> {
        self.timed(
            "grant_gift",
            self.inner.grant_gift(user, payment, month, now),
        )
        .await
    }

    async fn gifts(&self, user: UserId) -> StoreResult<Vec<ScheduledGift>> {
        self.timed("gifts", self.inner.gifts(user)).await
    }

    async fn price_versions(&self) -> StoreResult<Vec<PriceVersion>> {
        self.timed("price_versions", self.inner.price_versions())
            .await
    }

    async fn init_prices(
        &self,
        prices: PriceTable,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<PriceVersion>> {
        self.timed("init_prices", self.inner.init_prices(prices, now))
            .await
    }

    async fn announce_prices(
        &self,
        prices: PriceTable,
        effective_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<(PriceVersion, bool)> {
        self.timed(
            "announce_prices",
            self.inner.announce_prices(prices, effective_at, now),
        )
        .await
    }
}

#[async_trait]
impl ModerationStore for InstrumentedStore {
    async fn record_violation(
        &self,
        user: UserId,
        violation: &NewViolation,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
    ) -> StoreResult<u32> {
        self.timed(
            "record_violation",
            self.inner.record_violation(user, violation, now, since),
        )
        .await
    }

    async fn violations(
        &self,
        user: UserId,
        since: DateTime<Utc>,
        counted_only: bool,
        limit: usize,
    ) -> StoreResult<Vec<Violation>> {
        self.timed(
            "violations",
            self.inner.violations(user, since, counted_only, limit),
        )
        .await
    }

    async fn record_moderation_action(&self, action: &ModerationAction) -> StoreResult<()> {
        self.timed(
            "record_moderation_action",
            self.inner.record_moderation_action(action),
        )
        .await
    }

    async fn moderation_actions(
        &self,
        user: Option<UserId>,
        kind: Option<ModerationKind>,
        limit: usize,
    ) -> StoreResult<Vec<ModerationAction>> {
        self.timed(
            "moderation_actions",
            self.inner.moderation_actions(user, kind, limit),
        )
        .await
    }
}

#[async_trait]
impl ClusterStore for InstrumentedStore {
    fn adapter(&self) -> &'static str {
        self.adapter
    }

    fn durable(&self) -> bool {
        self.inner.durable()
    }

    async fn ping(&self) -> StoreResult<()> {
        self.timed("ping", self.inner.ping()).await
    }

    fn outbox(&self) -> &admedia_actors::store::outbox::OutboxFeed {
        self.inner.outbox()
    }

    async fn claim_webhooks(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<admedia_actors::store::outbox::PendingWebhook>> {
        self.timed("claim_webhooks", self.inner.claim_webhooks(now, limit))
            .await
    }

    async fn report_webhook(
        &self,
        id: &str,
        report: admedia_actors::store::outbox::DeliveryReport,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.timed("report_webhook", self.inner.report_webhook(id, report, now))
            .await
    }

    async fn become_leader(&self, node: &str, url: &str, now: DateTime<Utc>) -> StoreResult<u64> {
        self.timed("become_leader", self.inner.become_leader(node, url, now))
            .await
    }

    async fn leader(&self) -> StoreResult<Option<Leader>> {
        self.timed("leader", self.inner.leader()).await
    }

    async fn webhook_secret(&self, user: UserId, fresh: String) -> StoreResult<String> {
        self.timed("webhook_secret", self.inner.webhook_secret(user, fresh))
            .await
    }
}

#[async_trait]
impl EndpointStore for InstrumentedStore {
    async fn user_events(
        &self,
        user: UserId,
        after: Option<u64>,
        since: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<admedia_actors::domain::endpoints::EventPage> {
        self.timed(
            "user_events",
            self.inner.user_events(user, after, since, limit),
        )
        .await
    }

    async fn create_webhook_endpoint(
        &self,
        endpoint: admedia_actors::domain::endpoints::WebhookEndpoint,
    ) -> StoreResult<admedia_actors::domain::endpoints::WebhookEndpoint> {
        self.timed(
            "create_webhook_endpoint",
            self.inner.create_webhook_endpoint(endpoint),
        )
        .await
    }

    async fn webhook_endpoints(
        &self,
        user: UserId,
    ) -> StoreResult<Vec<admedia_actors::domain::endpoints::WebhookEndpoint>> {
        self.timed("webhook_endpoints", self.inner.webhook_endpoints(user))
            .await
    }

    async fn update_webhook_endpoint(
        &self,
        user: UserId,
        id: admedia_actors::domain::ids::WebhookEndpointId,
        patch: admedia_actors::domain::endpoints::EndpointPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<admedia_actors::domain::endpoints::WebhookEndpoint> {
        self.timed(
            "update_webhook_endpoint",
            self.inner.update_webhook_endpoint(user, id, patch, now),
        )
        .await
    }

    async fn delete_webhook_endpoint(
        &self,
        user: UserId,
        id: admedia_actors::domain::ids::WebhookEndpointId,
    ) -> StoreResult<()> {
        self.timed(
            "delete_webhook_endpoint",
            self.inner.delete_webhook_endpoint(user, id),
        )
        .await
    }

    async fn webhook_deliveries(
        &self,
        user: UserId,
        id: admedia_actors::domain::ids::WebhookEndpointId,
        limit: usize,
    ) -> StoreResult<Vec<admedia_actors::domain::endpoints::DeliveryAttempt>> {
        self.timed(
            "webhook_deliveries",
            self.inner.webhook_deliveries(user, id, limit),
        )
        .await
    }
}

#[async_trait]
impl OperatorQueries for InstrumentedStore {
    async fn audit_ledgers(&self) -> StoreResult<Vec<(UserId, Wallet, Vec<LedgerEntry>)>> {
        self.timed("audit_ledgers", self.inner.audit_ledgers())
            .await
    }

    async fn admin_jobs(
        &self,
        filter: &JobFilter,
        before: Option<JobId>,
        limit: usize,
    ) -> StoreResult<Vec<Job>> {
        self.timed("admin_jobs", self.inner.admin_jobs(filter, before, limit))
            .await
    }

    async fn attempts(&self, job: JobId) -> StoreResult<Vec<AttemptRecord>> {
        self.timed("attempts", self.inner.attempts(job)).await
    }

    async fn job_ledger(&self, job: JobId) -> StoreResult<Vec<LedgerEntry>> {
        self.timed("job_ledger", self.inner.job_ledger(job)).await
    }

    async fn find_users(&self, fragment: &str, limit: usize) -> StoreResult<Vec<User>> {
        self.timed("find_users", self.inner.find_users(fragment, limit))
            .await
    }

    async fn activity_since(&self, since: DateTime<Utc>) -> StoreResult<Activity> {
        self.timed("activity_since", self.inner.activity_since(since))
            .await
    }
}

#[async_trait]
impl ArchiveStore for InstrumentedStore {
    async fn users_after(&self, after: Option<UserId>, limit: usize) -> StoreResult<Vec<UserId>> {
        self.timed("users_after", self.inner.users_after(after, limit))
            .await
    }

    async fn oldest_history(&self, user: UserId, limit: usize) -> StoreResult<History> {
        self.timed("oldest_history", self.inner.oldest_history(user, limit))
            .await
    }

    async fn close_chapter(&self, chapter: &Chapter, jobs: &[JobId]) -> StoreResult<bool> {
        self.timed("close_chapter", self.inner.close_chapter(chapter, jobs))
            .await
    }

    async fn chapters(
        &self,
        user: UserId,
        before: Option<EntryId>,
        limit: usize,
    ) -> StoreResult<Vec<Chapter>> {
        self.timed("chapters", self.inner.chapters(user, before, limit))
            .await
    }
}

#[cfg(test)]
mod tests {
    use admedia_actors::store::memory::MemoryStore;

    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[actix_rt::test]
    async fn times_calls_and_counts_only_real_errors() {
        let metrics = Arc::new(Metrics::new());
        let store = InstrumentedStore::new(Arc::new(MemoryStore::new()), metrics.clone());
        assert_eq!(store.adapter(), "memory");
        store.ping().await.expect("ping");
        // An unknown wallet is a refusal the domain expects, not an error.
        let missing = store.wallet(UserId::generate()).await;
        assert!(missing.is_err());

        let text = metrics.render(None, true);
        assert!(
            line(
                &text,
                r#"admedia_store_operation_seconds_count{adapter="memory",operation="ping"} 1"#
            )
            .is_some(),
            "{text}"
        );
        assert!(
            line(
                &text,
                r#"admedia_store_operation_seconds_count{adapter="memory",operation="wallet"} 1"#
            )
            .is_some(),
            "{text}"
        );
        for kind in ["unavailable", "other"] {
            for op in OPERATIONS {
                let series = format!(
                    r#"admedia_store_errors_total{{adapter="memory",kind="{kind}",operation="{op}"}} 0"#
                );
                assert!(line(&text, &series).is_some(), "{series} in {text}");
            }
        }
    }

    /// `OPERATIONS` (whose error series are created at start-up) names
    /// exactly the operations the wrapper times.
    #[test]
    fn every_timed_operation_is_listed() {
        let source = include_str!("instrumented.rs");
        let timed: std::collections::BTreeSet<&str> = source
            .split("self.timed(")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"'))
            .filter_map(|rest| rest.split('"').next())
            .filter(|name| name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect();
        let listed: std::collections::BTreeSet<&str> = OPERATIONS.iter().copied().collect();
        assert_eq!(timed, listed);
        assert_eq!(listed.len(), OPERATIONS.len(), "no duplicates");
    }

    #[test]
    fn only_failures_of_the_store_itself_are_errors() {
        assert_eq!(
            error_kind(&StoreError::Unavailable("down".into())),
            Some("unavailable")
        );
        assert_eq!(error_kind(&StoreError::Internal("x".into())), Some("other"));
        assert_eq!(
            error_kind(&StoreError::Invariant("x".into())),
            Some("other")
        );
        for refusal in [
            StoreError::NotFound("job"),
            StoreError::EmailTaken,
            StoreError::QueueLimit { limit: 1 },
            StoreError::IdempotencyKeyReused,
            StoreError::JobFinished,
            StoreError::AccountInactive(AccountStatus::Suspended),
            StoreError::LimitExceeded("too much".into()),
        ] {
            assert_eq!(error_kind(&refusal), None, "{refusal}");
        }
    }
}
