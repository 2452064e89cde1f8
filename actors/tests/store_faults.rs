//! An attempt whose end the store will not record does not stay in flight:
//! the job actors run on a store that refuses chosen writes (a wrapper
//! around the in-memory store), and every attempt still ends, with its
//! credits posted or refunded by the usual rules.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use admedia_actors::actors::worker::SimProfile;
use admedia_actors::domain::ids::{JobId, UserId, WorkerId};
use admedia_actors::domain::job::{
    AttemptOutcome, Charge, FailureClass, Job, JobKind, JobRequest, JobState, ParamsRequest,
};
use admedia_actors::domain::ledger::EntryKind;
use admedia_actors::domain::wallet::Credits;
use admedia_actors::observer::NoopObserver;
use admedia_actors::store::forward::{
    self, ForwardAccounts, ForwardArchive, ForwardCluster, ForwardEndpoints, ForwardModeration,
    ForwardOperator, ForwardPayments, Wraps,
};
use admedia_actors::store::memory::MemoryStore;
use admedia_actors::store::prelude::*;
use admedia_actors::store::{AttemptRef, Settlement, StoreError, StoreResult};
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
impl forward::ForwardJobs for FaultyStore {
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
}

// The job methods not written above and every other concern pass
// through unchanged: only the ends of attempts (and assignments) are refused.
impl Wraps for FaultyStore {
    fn inner(&self) -> &dyn Store {
        &self.inner
    }
}

impl ForwardAccounts for FaultyStore {}
impl ForwardPayments for FaultyStore {}
impl ForwardModeration for FaultyStore {}
impl ForwardCluster for FaultyStore {}
impl ForwardEndpoints for FaultyStore {}
impl ForwardOperator for FaultyStore {}
impl ForwardArchive for FaultyStore {}

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
