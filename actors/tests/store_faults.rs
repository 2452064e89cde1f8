//! An attempt whose end the store will not record does not stay in flight:
//! the job actors run on a store that refuses chosen writes (a wrapper
//! around the in-memory store), and every attempt still ends, with its
//! credits posted or refunded by the usual rules.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use admedia_actors::accounts::ApiKeyRecord;
use admedia_actors::actors::worker::SimProfile;
use admedia_actors::content::evidence::{
    ModerationAction, ModerationKind, NewViolation, Violation,
};
use admedia_actors::ids::{ApiKeyId, EntryId, JobId, UserId, WorkerId};
use admedia_actors::job::{
    AttemptOutcome, Charge, FailureClass, Job, JobKind, JobRequest, JobState, ParamsRequest,
};
use admedia_actors::ledger::{EntryKind, Grant, LedgerEntry};
use admedia_actors::money::{Credits, Wallet};
use admedia_actors::observer::NoopObserver;
use admedia_actors::payments::{
    GiftOutcome, NewPayment, PaymentId, PaymentOutcome, PaymentReview, ScheduledGift,
};
use admedia_actors::price_schedule::PriceVersion;
use admedia_actors::pricing::PriceTable;
use admedia_actors::store::memory::MemoryStore;
use admedia_actors::store::outbox::{DeliveryReport, OutboxFeed, PendingWebhook};
use admedia_actors::store::prelude::*;
use admedia_actors::store::{
    Activity, AttemptRecord, AttemptRef, Cancellation, GrantOutcome, JobCounts, JobFilter, Leader,
    NewJob, Settlement, StoreError, StoreResult, Submission,
};
use admedia_actors::tier::Membership;
use admedia_actors::user::{AccountStatus, KeyHash, NewUser, User};
use admedia_actors::{Orchestrator, OrchestratorConfig};

const TIMEOUT: Duration = Duration::from_secs(20);

/// Which ends of attempts the store refuses.
enum Refuse {
    /// Every success (a value the store cannot hold, say).
    Successes,
    /// The first `n` writes of any outcome (the store is down a while).
    First(u32),
    /// The first assignment commits but is reported failed (the
    /// connection dropped after the commit).
    AssignAfterCommit,
}

struct FaultyStore {
    inner: MemoryStore,
    refuse: Refuse,
    /// `finish_attempt` calls so far, refused or not.
    finishes: AtomicU32,
    refused: AtomicU32,
}

impl FaultyStore {
    fn new(refuse: Refuse) -> FaultyStore {
        FaultyStore {
            inner: MemoryStore::new(),
            refuse,
            finishes: AtomicU32::new(0),
            refused: AtomicU32::new(0),
        }
    }
}

#[async_trait]
impl JobStore for FaultyStore {
    async fn finish_attempt(
        &self,
        attempt: AttemptRef,
        outcome: AttemptOutcome,
        now: DateTime<Utc>,
    ) -> StoreResult<Settlement> {
        let n = self.finishes.fetch_add(1, Ordering::SeqCst) + 1;
        let refuse = match self.refuse {
            Refuse::Successes => matches!(outcome, AttemptOutcome::Succeeded { .. }),
            Refuse::First(k) => n <= k,
            Refuse::AssignAfterCommit => false,
        };
        if refuse {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Unavailable("injected write failure".into()));
        }
        self.inner.finish_attempt(attempt, outcome, now).await
    }

    async fn wallet(&self, user: UserId) -> StoreResult<Wallet> {
        self.inner.wallet(user).await
    }

    async fn ledger(
        &self,
        user: UserId,
        before: Option<EntryId>,
        limit: usize,
    ) -> StoreResult<Vec<LedgerEntry>> {
        self.inner.ledger(user, before, limit).await
    }

    async fn grant(
        &self,
        user: UserId,
        grant: Grant,
        now: DateTime<Utc>,
    ) -> StoreResult<GrantOutcome> {
        self.inner.grant(user, grant, now).await
    }

    async fn submit_job(&self, job: NewJob) -> StoreResult<Submission> {
        self.inner.submit_job(job).await
    }

    async fn assign_job(
        &self,
        attempt: AttemptRef,
        worker: WorkerId,
        epoch: u64,
        now: DateTime<Utc>,
    ) -> StoreResult<Job> {
        let job = self.inner.assign_job(attempt, worker, epoch, now).await?;
        if matches!(self.refuse, Refuse::AssignAfterCommit)
            && self.refused.fetch_add(1, Ordering::SeqCst) == 0
        {
            return Err(StoreError::Unavailable(
                "injected: committed, then lost".into(),
            ));
        }
        Ok(job)
    }

    async fn start_job(&self, attempt: AttemptRef, now: DateTime<Utc>) -> StoreResult<Job> {
        self.inner.start_job(attempt, now).await
    }

    async fn cancel_job(
        &self,
        user: UserId,
        id: JobId,
        now: DateTime<Utc>,
    ) -> StoreResult<Cancellation> {
        self.inner.cancel_job(user, id, now).await
    }

    async fn cancel_queued_jobs(&self, user: UserId, now: DateTime<Utc>) -> StoreResult<Vec<Job>> {
        self.inner.cancel_queued_jobs(user, now).await
    }

    async fn expire_job(
        &self,
        user: UserId,
        id: JobId,
        now: DateTime<Utc>,
    ) -> StoreResult<Settlement> {
        self.inner.expire_job(user, id, now).await
    }

    async fn job(&self, id: JobId) -> StoreResult<Option<Job>> {
        self.inner.job(id).await
    }

    async fn queue_position(&self, id: JobId) -> StoreResult<Option<u32>> {
        self.inner.queue_position(id).await
    }

    async fn list_jobs(
        &self,
        user: UserId,
        state: Option<JobState>,
        before: Option<JobId>,
        limit: usize,
    ) -> StoreResult<Vec<Job>> {
        self.inner.list_jobs(user, state, before, limit).await
    }

    async fn jobs_in_states(&self, states: &[JobState]) -> StoreResult<Vec<Job>> {
        self.inner.jobs_in_states(states).await
    }

    async fn job_counts(&self) -> StoreResult<JobCounts> {
        self.inner.job_counts().await
    }

    async fn expire_idempotency_keys(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        self.inner.expire_idempotency_keys(before).await
    }

    async fn prune_finished_jobs(
        &self,
        before: &admedia_actors::store::FinishedBefore,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<u64> {
        self.inner.prune_finished_jobs(before, now, limit).await
    }
}

#[async_trait]
impl AccountStore for FaultyStore {
    async fn create_user(
        &self,
        new: NewUser,
        reward: Credits,
        now: DateTime<Utc>,
    ) -> StoreResult<(User, Wallet)> {
        self.inner.create_user(new, reward, now).await
    }

    async fn user_by_key(&self, hash: KeyHash) -> StoreResult<Option<User>> {
        self.inner.user_by_key(hash).await
    }

    async fn user(&self, id: UserId) -> StoreResult<Option<User>> {
        self.inner.user(id).await
    }

    async fn set_membership(&self, id: UserId, membership: Membership) -> StoreResult<User> {
        self.inner.set_membership(id, membership).await
    }

    async fn set_status(
        &self,
        id: UserId,
        status: AccountStatus,
        now: DateTime<Utc>,
    ) -> StoreResult<User> {
        self.inner.set_status(id, status, now).await
    }

    async fn create_api_key(
        &self,
        user: UserId,
        id: ApiKeyId,
        hash: KeyHash,
        options: admedia_actors::accounts::KeyOptions,
        now: DateTime<Utc>,
    ) -> StoreResult<ApiKeyRecord> {
        self.inner
            .create_api_key(user, id, hash, options, now)
            .await
    }

    async fn key_by_hash(&self, hash: KeyHash) -> StoreResult<Option<(User, ApiKeyRecord)>> {
        self.inner.key_by_hash(hash).await
    }

    async fn api_keys(&self, user: UserId) -> StoreResult<Vec<ApiKeyRecord>> {
        self.inner.api_keys(user).await
    }

    async fn revoke_api_key(
        &self,
        user: UserId,
        id: ApiKeyId,
        now: DateTime<Utc>,
    ) -> StoreResult<ApiKeyRecord> {
        self.inner.revoke_api_key(user, id, now).await
    }
}

#[async_trait]
impl PaymentStore for FaultyStore {
    async fn apply_payment(&self, payment: NewPayment) -> StoreResult<PaymentOutcome> {
        self.inner.apply_payment(payment).await
    }

    async fn payments_for_review(&self, limit: usize) -> StoreResult<Vec<PaymentReview>> {
        self.inner.payments_for_review(limit).await
    }

    async fn due_gifts(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<ScheduledGift>> {
        self.inner.due_gifts(now, limit).await
    }

    async fn grant_gift(
        &self,
        user: UserId,
        payment: PaymentId,
        month: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<GiftOutcome> {
        self.inner.grant_gift(user, payment, month, now).await
    }

    async fn gifts(&self, user: UserId) -> StoreResult<Vec<ScheduledGift>> {
        self.inner.gifts(user).await
    }

    async fn price_versions(&self) -> StoreResult<Vec<PriceVersion>> {
        self.inner.price_versions().await
    }

    async fn init_prices(
        &self,
        prices: PriceTable,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<PriceVersion>> {
        self.inner.init_prices(prices, now).await
    }

    async fn announce_prices(
        &self,
        prices: PriceTable,
        effective_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<(PriceVersion, bool)> {
        self.inner.announce_prices(prices, effective_at, now).await
    }
}

#[async_trait]
impl ModerationStore for FaultyStore {
    async fn record_violation(
        &self,
        user: UserId,
        violation: &NewViolation,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
    ) -> StoreResult<u32> {
        self.inner
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
        self.inner
            .violations(user, since, counted_only, limit)
            .await
    }

    async fn record_moderation_action(&self, action: &ModerationAction) -> StoreResult<()> {
        self.inner.record_moderation_action(action).await
    }

    async fn moderation_actions(
        &self,
        user: Option<UserId>,
        kind: Option<ModerationKind>,
        limit: usize,
    ) -> StoreResult<Vec<ModerationAction>> {
        self.inner.moderation_actions(user, kind, limit).await
    }
}

#[async_trait]
impl ClusterStore for FaultyStore {
    fn adapter(&self) -> &'static str {
        self.inner.adapter()
    }

    fn durable(&self) -> bool {
        self.inner.durable()
    }

    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }

    fn outbox(&self) -> &OutboxFeed {
        self.inner.outbox()
    }

    async fn claim_webhooks(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<PendingWebhook>> {
        self.inner.claim_webhooks(now, limit).await
    }

    async fn report_webhook(
        &self,
        id: &str,
        report: DeliveryReport,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.inner.report_webhook(id, report, now).await
    }

    async fn webhook_secret(&self, user: UserId, fresh: String) -> StoreResult<String> {
        self.inner.webhook_secret(user, fresh).await
    }

    async fn become_leader(&self, node: &str, url: &str, now: DateTime<Utc>) -> StoreResult<u64> {
        self.inner.become_leader(node, url, now).await
    }

    async fn leader(&self) -> StoreResult<Option<Leader>> {
        self.inner.leader().await
    }
}

#[async_trait]
impl EndpointStore for FaultyStore {
    async fn user_events(
        &self,
        user: UserId,
        after: Option<u64>,
        since: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<admedia_actors::endpoints::EventPage> {
        self.inner.user_events(user, after, since, limit).await
    }

    async fn create_webhook_endpoint(
        &self,
        endpoint: admedia_actors::endpoints::WebhookEndpoint,
    ) -> StoreResult<admedia_actors::endpoints::WebhookEndpoint> {
        self.inner.create_webhook_endpoint(endpoint).await
    }

    async fn webhook_endpoints(
        &self,
        user: UserId,
    ) -> StoreResult<Vec<admedia_actors::endpoints::WebhookEndpoint>> {
        self.inner.webhook_endpoints(user).await
    }

    async fn update_webhook_endpoint(
        &self,
        user: UserId,
        id: admedia_actors::ids::WebhookEndpointId,
        patch: admedia_actors::endpoints::EndpointPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<admedia_actors::endpoints::WebhookEndpoint> {
        self.inner
            .update_webhook_endpoint(user, id, patch, now)
            .await
    }

    async fn delete_webhook_endpoint(
        &self,
        user: UserId,
        id: admedia_actors::ids::WebhookEndpointId,
    ) -> StoreResult<()> {
        self.inner.delete_webhook_endpoint(user, id).await
    }

    async fn webhook_deliveries(
        &self,
        user: UserId,
        id: admedia_actors::ids::WebhookEndpointId,
        limit: usize,
    ) -> StoreResult<Vec<admedia_actors::endpoints::DeliveryAttempt>> {
        self.inner.webhook_deliveries(user, id, limit).await
    }
}

#[async_trait]
impl OperatorQueries for FaultyStore {
    async fn audit_ledgers(&self) -> StoreResult<Vec<(UserId, Wallet, Vec<LedgerEntry>)>> {
        self.inner.audit_ledgers().await
    }

    async fn admin_jobs(
        &self,
        filter: &JobFilter,
        before: Option<JobId>,
        limit: usize,
    ) -> StoreResult<Vec<Job>> {
        self.inner.admin_jobs(filter, before, limit).await
    }

    async fn attempts(&self, job: JobId) -> StoreResult<Vec<AttemptRecord>> {
        self.inner.attempts(job).await
    }

    async fn job_ledger(&self, job: JobId) -> StoreResult<Vec<LedgerEntry>> {
        self.inner.job_ledger(job).await
    }

    async fn find_users(&self, fragment: &str, limit: usize) -> StoreResult<Vec<User>> {
        self.inner.find_users(fragment, limit).await
    }

    async fn activity_since(&self, since: DateTime<Utc>) -> StoreResult<Activity> {
        self.inner.activity_since(since).await
    }
}

fn config(max_attempts: u32) -> OrchestratorConfig {
    OrchestratorConfig {
        max_attempts,
        retry_base: Duration::from_millis(10),
        retry_max: Duration::from_millis(40),
        settle_retry: Duration::from_millis(5),
        ..OrchestratorConfig::default()
    }
}

async fn start(store: Arc<FaultyStore>, max_attempts: u32) -> Orchestrator {
    let orch = Orchestrator::start(store, config(max_attempts), Arc::new(NoopObserver))
        .await
        .expect("orchestrator starts");
    orch.add_simulated_workers(
        1,
        1,
        SimProfile {
            job_time: Duration::from_millis(5),
            failure_rate: 0.0,
            user_error_rate: 0.0,
        },
    );
    orch
}

fn image_request() -> JobRequest {
    JobRequest {
        kind: JobKind::Image,
        model: "sdxl".into(),
        prompt: "a lighthouse at dusk".into(),
        params: ParamsRequest::default(),
        webhook_url: None,
        priority: None,
    }
}

async fn wait_terminal(orch: &Orchestrator, user: UserId, id: JobId) -> Job {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let job = orch.job(user, id).await.expect("job").0;
        if job.state.is_terminal() {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} still in flight: {job:#?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn job_entries(orch: &Orchestrator, user: UserId, job: JobId) -> Vec<EntryKind> {
    let mut entries = orch.ledger(user, None, 1000).await.expect("ledger");
    entries.reverse();
    entries
        .into_iter()
        .filter(|e| e.job_id == Some(job))
        .map(|e| e.kind)
        .collect()
}

#[actix_rt::test]
async fn a_success_the_store_keeps_refusing_ends_as_a_system_failure_and_is_refunded() {
    let store = Arc::new(FaultyStore::new(Refuse::Successes));
    let orch = start(store.clone(), 2).await;
    let user = orch
        .register("refused@example.com", "Refused")
        .await
        .expect("register")
        .user
        .id;
    let before = orch.wallet(user).await.expect("wallet");
    let job = orch
        .submit(user, image_request(), None)
        .await
        .expect("submit")
        .job;

    let done = wait_terminal(&orch, user, job.id).await;
    // Both attempts' successes were refused three times each, then each
    // ended as a system failure; the second had no attempt left.
    assert_eq!(done.state, JobState::Failed, "{done:#?}");
    assert_eq!(done.charge, Charge::Voided);
    assert_eq!(done.attempts, 2);
    let error = done.error.expect("an error");
    assert_eq!(error.class, FailureClass::System);
    assert!(
        error.message.contains("could not be recorded"),
        "{}",
        error.message
    );
    assert_eq!(store.refused.load(Ordering::SeqCst), 6);
    assert_eq!(
        job_entries(&orch, user, job.id).await,
        [EntryKind::Hold, EntryKind::Void]
    );
    let after = orch.wallet(user).await.expect("wallet");
    assert_eq!(
        (after.balance, after.held),
        (before.balance, Credits::ZERO),
        "refunded in full"
    );
}

#[actix_rt::test]
async fn an_end_written_while_the_store_is_down_is_recorded_once_it_is_back() {
    // Three refusals of the reported success, two of the system failure
    // that replaces it; the sixth write is taken.
    let store = Arc::new(FaultyStore::new(Refuse::First(5)));
    let orch = start(store.clone(), 2).await;
    let user = orch
        .register("down@example.com", "Down")
        .await
        .expect("register")
        .user
        .id;
    let before = orch.wallet(user).await.expect("wallet");
    let job = orch
        .submit(user, image_request(), None)
        .await
        .expect("submit")
        .job;

    let done = wait_terminal(&orch, user, job.id).await;
    // The first attempt ended as a system failure and was retried; the
    // second succeeded and is the only one charged.
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    assert_eq!(done.attempts, 2);
    assert_eq!(done.charge, Charge::Posted);
    assert_eq!(store.refused.load(Ordering::SeqCst), 5);
    assert_eq!(store.finishes.load(Ordering::SeqCst), 7);
    let attempts = orch.store().attempts(job.id).await.expect("attempts");
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    assert_eq!(
        job_entries(&orch, user, job.id).await,
        [EntryKind::Hold, EntryKind::Post]
    );
    let after = orch.wallet(user).await.expect("wallet");
    assert_eq!(after.balance.get(), before.balance.get() - job.cost.get());
    assert_eq!(after.held, Credits::ZERO);
}

#[actix_rt::test]
async fn an_assignment_committed_but_reported_failed_still_runs() {
    let store = Arc::new(FaultyStore::new(Refuse::AssignAfterCommit));
    let orch = start(store.clone(), 2).await;
    let user = orch
        .register("lost-ack@example.com", "Lost ack")
        .await
        .expect("register")
        .user
        .id;
    let job = orch
        .submit(user, image_request(), None)
        .await
        .expect("submit")
        .job;

    // Put back in line blindly, the job would stay assigned to an attempt
    // nobody runs; read again, the attempt goes on.
    let done = wait_terminal(&orch, user, job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    assert_eq!(done.attempts, 1);
    assert!(store.refused.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        job_entries(&orch, user, job.id).await,
        [EntryKind::Hold, EntryKind::Post]
    );
}
