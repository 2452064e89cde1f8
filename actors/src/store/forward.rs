//! Forwarding to a wrapped store, one concern at a time.
//!
//! A store wrapper (a test's store that injects faults or watches
//! transitions, say) changes a few methods of one concern and passes every
//! other call to the store it wraps unchanged. Writing those pass-through
//! methods by hand repeats every signature of the port in each wrapper and
//! has to follow every change to it. Here instead a wrapper says what it
//! wraps ([`Wraps`]) and, for each concern it leaves alone, declares the
//! concern's marker (`impl ForwardAccounts for MyStore {}`): the blanket
//! impls below then implement that concern's trait by calling the wrapped
//! store. The job transitions, where wrappers intercept, are forwarded
//! method by method instead: a wrapper implements [`ForwardJobs`] with
//! only the methods it changes. Name that trait by its path
//! (`forward::ForwardJobs`) rather than importing it: its methods share
//! the names of [`JobStore`]'s.
//!
//! The adapters implement the traits directly and declare no marker, so
//! the blanket impls never overlap with them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::archive::{Chapter, History};
use super::outbox::{DeliveryReport, OutboxFeed, PendingWebhook};
use super::prelude::*;
use super::{
    Activity, AttemptRecord, AttemptRef, Cancellation, FinishedBefore, GrantOutcome, JobCounts,
    JobFilter, Leader, NewJob, Settlement, StoreResult, Submission,
};
use crate::domain::account::{AccountStatus, KeyHash, NewUser, User};
use crate::domain::api_keys::{ApiKeyRecord, KeyOptions};
use crate::domain::content::evidence::{ModerationAction, ModerationKind, NewViolation, Violation};
use crate::domain::endpoints::{DeliveryAttempt, EndpointPatch, EventPage, WebhookEndpoint};
use crate::domain::ids::{ApiKeyId, EntryId, JobId, UserId, WebhookEndpointId, WorkerId};
use crate::domain::job::{AttemptOutcome, Job, JobState};
use crate::domain::ledger::{Grant, LedgerEntry};
use crate::domain::payments::{
    GiftOutcome, NewPayment, PaymentId, PaymentOutcome, PaymentReview, ScheduledGift,
};
use crate::domain::price_schedule::PriceVersion;
use crate::domain::pricing::PriceTable;
use crate::domain::tier::Membership;
use crate::domain::wallet::{Credits, Wallet};

/// A store that wraps another: where the forwarded calls go.
pub trait Wraps: Send + Sync + 'static {
    fn inner(&self) -> &dyn Store;
}

/// Forward [`AccountStore`] to the wrapped store.
pub trait ForwardAccounts: Wraps {}
/// Forward [`PaymentStore`] to the wrapped store.
pub trait ForwardPayments: Wraps {}
/// Forward [`ModerationStore`] to the wrapped store.
pub trait ForwardModeration: Wraps {}
/// Forward [`ClusterStore`] to the wrapped store.
pub trait ForwardCluster: Wraps {}
/// Forward [`EndpointStore`] to the wrapped store.
pub trait ForwardEndpoints: Wraps {}
/// Forward [`OperatorQueries`] to the wrapped store.
pub trait ForwardOperator: Wraps {}
/// Forward [`ArchiveStore`] to the wrapped store.
pub trait ForwardArchive: Wraps {}

/// Writes [`ForwardJobs`], whose methods forward by default and may be
/// overridden one by one, and the impl of [`JobStore`] that calls them:
/// each method's signature is written once, below.
macro_rules! forward_jobs {
    ($(async fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;)*) => {
        /// [`JobStore`] forwarded method by method: a wrapper that intercepts
        /// some job transitions overrides those and inherits the rest.
        #[async_trait]
        pub trait ForwardJobs: Wraps {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    self.inner().$name($($arg),*).await
                }
            )*
        }

        #[async_trait]
        impl<T: ForwardJobs> JobStore for T {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    ForwardJobs::$name(self $(, $arg)*).await
                }
            )*
        }
    };
}

forward_jobs! {
    async fn wallet(&self, user: UserId) -> StoreResult<Wallet>;
    async fn ledger(
        &self,
        user: UserId,
        before: Option<EntryId>,
        limit: usize,
    ) -> StoreResult<Vec<LedgerEntry>>;
    async fn grant(&self, user: UserId, grant: Grant, now: DateTime<Utc>)
        -> StoreResult<GrantOutcome>;
    async fn submit_job(&self, job: NewJob) -> StoreResult<Submission>;
    async fn assign_job(
        &self,
        attempt: AttemptRef,
        worker: WorkerId,
        epoch: u64,
        now: DateTime<Utc>,
    ) -> StoreResult<Job>;
    async fn start_job(&self, attempt: AttemptRef, now: DateTime<Utc>) -> StoreResult<Job>;
    async fn finish_attempt(
        &self,
        attempt: AttemptRef,
        outcome: AttemptOutcome,
        now: DateTime<Utc>,
    ) -> StoreResult<Settlement>;
    async fn cancel_job(&self, user: UserId, id: JobId, now: DateTime<Utc>)
        -> StoreResult<Cancellation>;
    async fn cancel_queued_jobs(&self, user: UserId, now: DateTime<Utc>) -> StoreResult<Vec<Job>>;
    async fn job(&self, id: JobId) -> StoreResult<Option<Job>>;
    async fn queue_position(&self, id: JobId) -> StoreResult<Option<u32>>;
    async fn list_jobs(
        &self,
        user: UserId,
        state: Option<JobState>,
        before: Option<JobId>,
        limit: usize,
    ) -> StoreResult<Vec<Job>>;
    async fn jobs_in_states(&self, states: &[JobState]) -> StoreResult<Vec<Job>>;
    async fn queued_jobs_after(&self, after_seq: u64, limit: usize) -> StoreResult<Vec<Job>>;
    async fn job_counts(&self) -> StoreResult<JobCounts>;
    async fn expire_idempotency_keys(&self, before: DateTime<Utc>) -> StoreResult<u64>;
    async fn prune_finished_jobs(
        &self,
        before: &FinishedBefore,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<u64>;
    async fn expire_job(&self, user: UserId, id: JobId, now: DateTime<Utc>)
        -> StoreResult<Settlement>;
}

#[async_trait]
impl<T: ForwardAccounts> AccountStore for T {
    async fn create_user(
        &self,
        new: NewUser,
        reward: Credits,
        now: DateTime<Utc>,
    ) -> StoreResult<(User, Wallet)> {
        self.inner().create_user(new, reward, now).await
    }

    async fn user_by_key(&self, hash: KeyHash) -> StoreResult<Option<User>> {
        self.inner().user_by_key(hash).await
    }

    async fn key_by_hash(&self, hash: KeyHash) -> StoreResult<Option<(User, ApiKeyRecord)>> {
        self.inner().key_by_hash(hash).await
    }

    async fn user(&self, id: UserId) -> StoreResult<Option<User>> {
        self.inner().user(id).await
    }

    async fn set_membership(&self, id: UserId, membership: Membership) -> StoreResult<User> {
        self.inner().set_membership(id, membership).await
    }

    async fn set_status(
        &self,
        id: UserId,
        status: AccountStatus,
        now: DateTime<Utc>,
    ) -> StoreResult<User> {
        self.inner().set_status(id, status, now).await
    }

    async fn create_api_key(
        &self,
        user: UserId,
        id: ApiKeyId,
        hash: KeyHash,
        options: KeyOptions,
        now: DateTime<Utc>,
    ) -> StoreResult<ApiKeyRecord> {
        self.inner()
            .create_api_key(user, id, hash, options, now)
            .await
    }

    async fn api_keys(&self, user: UserId) -> StoreResult<Vec<ApiKeyRecord>> {
        self.inner().api_keys(user).await
    }

    async fn revoke_api_key(
        &self,
        user: UserId,
        id: ApiKeyId,
        now: DateTime<Utc>,
    ) -> StoreResult<ApiKeyRecord> {
        self.inner().revoke_api_key(user, id, now).await
    }
}

#[async_trait]
impl<T: ForwardPayments> PaymentStore for T {
    async fn apply_payment(&self, payment: NewPayment) -> StoreResult<PaymentOutcome> {
        self.inner().apply_payment(payment).await
    }

    async fn payments_for_review(&self, limit: usize) -> StoreResult<Vec<PaymentReview>> {
        self.inner().payments_for_review(limit).await
    }

    async fn due_gifts(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<ScheduledGift>> {
        self.inner().due_gifts(now, limit).await
    }

    async fn grant_gift(
        &self,
        user: UserId,
        payment: PaymentId,
        month: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<GiftOutcome> {
        self.inner().grant_gift(user, payment, month, now).await
    }

    async fn gifts(&self, user: UserId) -> StoreResult<Vec<ScheduledGift>> {
        self.inner().gifts(user).await
    }

    async fn price_versions(&self) -> StoreResult<Vec<PriceVersion>> {
        self.inner().price_versions().await
    }

    async fn init_prices(
        &self,
        prices: PriceTable,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<PriceVersion>> {
        self.inner().init_prices(prices, now).await
    }

    async fn announce_prices(
        &self,
        prices: PriceTable,
        effective_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<(PriceVersion, bool)> {
        self.inner()
            .announce_prices(prices, effective_at, now)
            .await
    }
}

#[async_trait]
impl<T: ForwardModeration> ModerationStore for T {
    async fn record_violation(
        &self,
        user: UserId,
        violation: &NewViolation,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
    ) -> StoreResult<u32> {
        self.inner()
            .record_violation(user, violation, now, since)
            .await
    }

    async fn violations(
        &self,
        user: UserId,
        since: DateTime<Utc>,
        counted_only: bool,
        limit: usize,
    ) -> StoreResult<Vec<Violation>> {
        self.inner()
            .violations(user, since, counted_only, limit)
            .await
    }

    async fn record_moderation_action(&self, action: &ModerationAction) -> StoreResult<()> {
        self.inner().record_moderation_action(action).await
    }

    async fn moderation_actions(
        &self,
        user: Option<UserId>,
        kind: Option<ModerationKind>,
        limit: usize,
    ) -> StoreResult<Vec<ModerationAction>> {
        self.inner().moderation_actions(user, kind, limit).await
    }
}

#[async_trait]
impl<T: ForwardCluster> ClusterStore for T {
    fn adapter(&self) -> &'static str {
        self.inner().adapter()
    }

    fn durable(&self) -> bool {
        self.inner().durable()
    }

    async fn ping(&self) -> StoreResult<()> {
        self.inner().ping().await
    }

    fn outbox(&self) -> &OutboxFeed {
        self.inner().outbox()
    }

    async fn claim_webhooks(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<PendingWebhook>> {
        self.inner().claim_webhooks(now, limit).await
    }

    async fn report_webhook(
        &self,
        id: &str,
        report: DeliveryReport,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.inner().report_webhook(id, report, now).await
    }

    async fn webhook_secret(&self, user: UserId, fresh: String) -> StoreResult<String> {
        self.inner().webhook_secret(user, fresh).await
    }

    async fn become_leader(&self, node: &str, url: &str, now: DateTime<Utc>) -> StoreResult<u64> {
        self.inner().become_leader(node, url, now).await
    }

    async fn leader(&self) -> StoreResult<Option<Leader>> {
        self.inner().leader().await
    }
}

#[async_trait]
impl<T: ForwardEndpoints> EndpointStore for T {
    async fn user_events(
        &self,
        user: UserId,
        after: Option<u64>,
        since: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<EventPage> {
        self.inner().user_events(user, after, since, limit).await
    }

    async fn create_webhook_endpoint(
        &self,
        endpoint: WebhookEndpoint,
    ) -> StoreResult<WebhookEndpoint> {
        self.inner().create_webhook_endpoint(endpoint).await
    }

    async fn webhook_endpoints(&self, user: UserId) -> StoreResult<Vec<WebhookEndpoint>> {
        self.inner().webhook_endpoints(user).await
    }

    async fn update_webhook_endpoint(
        &self,
        user: UserId,
        id: WebhookEndpointId,
        patch: EndpointPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<WebhookEndpoint> {
        self.inner()
            .update_webhook_endpoint(user, id, patch, now)
            .await
    }

    async fn delete_webhook_endpoint(
        &self,
        user: UserId,
        id: WebhookEndpointId,
    ) -> StoreResult<()> {
        self.inner().delete_webhook_endpoint(user, id).await
    }

    async fn webhook_deliveries(
        &self,
        user: UserId,
        id: WebhookEndpointId,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryAttempt>> {
        self.inner().webhook_deliveries(user, id, limit).await
    }
}

#[async_trait]
impl<T: ForwardOperator> OperatorQueries for T {
    async fn audit_ledgers(&self) -> StoreResult<Vec<(UserId, Wallet, Vec<LedgerEntry>)>> {
        self.inner().audit_ledgers().await
    }

    async fn admin_jobs(
        &self,
        filter: &JobFilter,
        before: Option<JobId>,
        limit: usize,
    ) -> StoreResult<Vec<Job>> {
        self.inner().admin_jobs(filter, before, limit).await
    }

    async fn attempts(&self, job: JobId) -> StoreResult<Vec<AttemptRecord>> {
        self.inner().attempts(job).await
    }

    async fn job_ledger(&self, job: JobId) -> StoreResult<Vec<LedgerEntry>> {
        self.inner().job_ledger(job).await
    }

    async fn find_users(&self, fragment: &str, limit: usize) -> StoreResult<Vec<User>> {
        self.inner().find_users(fragment, limit).await
    }

    async fn activity_since(&self, since: DateTime<Utc>) -> StoreResult<Activity> {
        self.inner().activity_since(since).await
    }
}

#[async_trait]
impl<T: ForwardArchive> ArchiveStore for T {
    async fn users_after(&self, after: Option<UserId>, limit: usize) -> StoreResult<Vec<UserId>> {
        self.inner().users_after(after, limit).await
    }

    async fn oldest_history(&self, user: UserId, limit: usize) -> StoreResult<History> {
        self.inner().oldest_history(user, limit).await
    }

    async fn close_chapter(&self, chapter: &Chapter, jobs: &[JobId]) -> StoreResult<bool> {
        self.inner().close_chapter(chapter, jobs).await
    }

    async fn chapters(
        &self,
        user: UserId,
        before: Option<EntryId>,
        limit: usize,
    ) -> StoreResult<Vec<Chapter>> {
        self.inner().chapters(user, before, limit).await
    }
}
