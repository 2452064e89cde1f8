//! End-to-end lifecycle tests of the actor system on the in-memory store:
//! wallets, scheduler, job actors and worker actors wired together by
//! `Orchestrator::start`, with GPU workers either simulated or scripted by
//! the test (every `ToWorker` message is handed to the test, which answers
//! with `FromWorker` messages of its choosing).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use parking_lot::Mutex;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use admedia_actors::actors::messages::SchedulerHandle;
use admedia_actors::actors::scheduler::SchedulerStats;
use admedia_actors::actors::worker::{LinkClosed, SimProfile, WorkerActor, WorkerLink};
use admedia_actors::domain::ids::{JobId, LeaseToken, UserId};
use admedia_actors::domain::job::{
    Charge, FailureClass, Job, JobKind, JobRequest, JobState, Output, ParamsRequest,
};
use admedia_actors::domain::ledger::{replay, EntryKind, Grant, GrantSource, LedgerEntry};
use admedia_actors::domain::tier::{License, Membership, PerTier, Tier};
use admedia_actors::domain::wallet::Credits;
use admedia_actors::error::OrchestratorError;
use admedia_actors::observer::{AttemptResult, Observer};
use admedia_actors::store::memory::MemoryStore;
use admedia_actors::wire::{Capabilities, FromWorker, ToWorker};
use admedia_actors::{Orchestrator, OrchestratorConfig};

/// Upper bound for anything the tests wait for; reaching it fails the test.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long "nothing happens" is watched for.
const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------- observer

#[derive(Default)]
struct Counting {
    stale: Mutex<u64>,
    restarted: Mutex<Vec<&'static str>>,
    attempts: Mutex<HashMap<AttemptResult, u64>>,
    finished: Mutex<HashMap<&'static str, u64>>,
}

impl Counting {
    fn stale(&self) -> u64 {
        *self.stale.lock()
    }

    fn attempts(&self, result: AttemptResult) -> u64 {
        self.attempts.lock().get(&result).copied().unwrap_or(0)
    }

    fn total_attempts(&self) -> u64 {
        self.attempts.lock().values().sum()
    }

    fn restarts(&self) -> usize {
        self.restarted.lock().len()
    }
}

impl Observer for Counting {
    fn job_finished(
        &self,
        _kind: JobKind,
        _tier: Tier,
        outcome: admedia_actors::domain::job::JobState,
    ) {
        *self.finished.lock().entry(outcome.as_str()).or_default() += 1;
    }

    fn attempt_finished(&self, _kind: JobKind, result: AttemptResult, _run: Option<Duration>) {
        *self.attempts.lock().entry(result).or_default() += 1;
    }

    fn actor_restarted(&self, actor: &'static str) {
        self.restarted.lock().push(actor);
    }

    fn stale_worker_message(&self) {
        *self.stale.lock() += 1;
    }
}

// ---------------------------------------------------------------- set-up

struct Harness {
    orch: Orchestrator,
    obs: Arc<Counting>,
}

fn config() -> OrchestratorConfig {
    OrchestratorConfig {
        retry_base: Duration::from_millis(10),
        retry_max: Duration::from_millis(40),
        ..OrchestratorConfig::default()
    }
}

async fn start_with(config: OrchestratorConfig) -> Harness {
    let obs = Arc::new(Counting::default());
    let orch = Orchestrator::start(Arc::new(MemoryStore::new()), config, obs.clone())
        .await
        .expect("orchestrator starts");
    Harness { orch, obs }
}

async fn start() -> Harness {
    start_with(config()).await
}

impl Harness {
    async fn user(&self, email: &str) -> UserId {
        self.orch
            .register(email, "Test User")
            .await
            .expect("register")
            .user
            .id
    }

    async fn submit(&self, user: UserId) -> Job {
        self.orch
            .submit(user, image_request(), None)
            .await
            .expect("submit")
            .job
    }

    async fn job(&self, user: UserId, id: JobId) -> Job {
        self.orch.job(user, id).await.expect("job").0
    }

    /// Polls the job until `done` holds; fails the test after `TIMEOUT`.
    async fn wait_for(
        &self,
        user: UserId,
        id: JobId,
        what: &str,
        done: impl Fn(&Job) -> bool,
    ) -> Job {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let job = self.job(user, id).await;
            if done(&job) {
                return job;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for job {id} to be {what}; it is {job:#?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn wait_terminal(&self, user: UserId, id: JobId) -> Job {
        self.wait_for(user, id, "terminal", |j| j.state.is_terminal())
            .await
    }

    /// Waits until `cond` holds on the observer; fails the test after `TIMEOUT`.
    async fn wait_obs(&self, what: &str, cond: impl Fn(&Counting) -> bool) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while !cond(&self.obs) {
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for the observer to see {what}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until the scheduler's stats satisfy `cond`; fails the test after `TIMEOUT`.
    async fn wait_line(&self, what: &str, cond: impl Fn(&SchedulerStats) -> bool) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let stats = self.orch.stats().await.expect("stats").scheduler;
            if cond(&stats) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for the scheduler to show {what}; it shows {stats:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn ledger(&self, user: UserId) -> Vec<LedgerEntry> {
        let mut entries = self.orch.ledger(user, None, 10_000).await.expect("ledger");
        entries.reverse();
        entries
    }

    /// Kinds of the ledger entries that name `job`, oldest first.
    async fn job_entries(&self, user: UserId, job: JobId) -> Vec<EntryKind> {
        self.ledger(user)
            .await
            .into_iter()
            .filter(|e| e.job_id == Some(job))
            .map(|e| e.kind)
            .collect()
    }

    async fn balance(&self, user: UserId) -> (i64, i64) {
        let w = self.orch.wallet(user).await.expect("wallet");
        (w.balance.get(), w.held.get())
    }

    /// Every user's ledger replays to their stored wallet, and no hold is
    /// resolved twice.
    async fn assert_books_balance(&self) {
        let audit = self.orch.store().audit_ledgers().await.expect("audit");
        for (user, wallet, entries) in audit {
            let replayed = replay(&entries).unwrap_or_else(|e| panic!("user {user}: {e}"));
            assert_eq!(replayed, wallet, "user {user}: ledger and wallet disagree");
            let mut resolved = std::collections::HashSet::new();
            for e in &entries {
                if matches!(e.kind, EntryKind::Post | EntryKind::Void) {
                    let job = e.job_id.expect("a resolution names its job");
                    assert!(resolved.insert(job), "hold of job {job} resolved twice");
                }
            }
        }
    }

    fn scripted_worker(&self, name: &str, slots: u32) -> Scripted {
        let (tx, rx) = unbounded_channel();
        let caps = Capabilities {
            name: name.to_owned(),
            slots,
            gpu_model: "scripted".into(),
            vram_mb: 80_000,
            kinds: JobKind::ALL.to_vec(),
            models: Vec::new(),
            loaded_models: Vec::new(),
        };
        let scheduler = SchedulerHandle::of(self.orch.scheduler());
        let observer: Arc<dyn Observer> = self.obs.clone();
        let addr = WorkerActor::create(move |_ctx| {
            WorkerActor::new(
                admedia_actors::domain::ids::WorkerId::generate(),
                caps,
                Box::new(ChannelLink(tx)),
                scheduler,
                observer,
                None,
            )
        });
        Scripted { addr, rx }
    }
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

fn credits(v: i64) -> Credits {
    Credits::new(v).expect("amount")
}

fn sim_profile() -> SimProfile {
    SimProfile {
        job_time: Duration::from_millis(5),
        failure_rate: 0.0,
        user_error_rate: 0.0,
    }
}

fn outputs(job: JobId) -> Vec<Output> {
    vec![Output::new(
        format!("test://outputs/{job}/0.png"),
        "image/png",
    )]
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

// ---------------------------------------------------------------- scripted worker

/// Hands every message for the GPU to the test.
struct ChannelLink(UnboundedSender<ToWorker>);

impl WorkerLink for ChannelLink {
    fn send(&mut self, msg: ToWorker) -> bool {
        self.0.send(msg).is_ok()
    }
}

#[derive(Clone, Copy, Debug)]
struct Assigned {
    job_id: JobId,
    attempt: u32,
    lease: LeaseToken,
}

struct Scripted {
    addr: Addr<WorkerActor>,
    rx: UnboundedReceiver<ToWorker>,
}

impl Scripted {
    async fn next(&mut self) -> ToWorker {
        within("a message to the worker", self.rx.recv())
            .await
            .expect("the worker link is open")
    }

    async fn assigned(&mut self) -> Assigned {
        match self.next().await {
            ToWorker::Assign {
                job_id,
                attempt,
                lease,
                ..
            } => Assigned {
                job_id,
                attempt,
                lease,
            },
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    /// Nothing but error frames (the answer to a refused late message)
    /// reaches the worker for `QUIET`.
    async fn expect_quiet(&mut self) {
        let deadline = tokio::time::Instant::now() + QUIET;
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            if !matches!(msg, ToWorker::Error { .. }) {
                panic!("expected no message to the worker, got {msg:?}");
            }
        }
    }

    fn accept(&self, a: Assigned) {
        self.addr.do_send(FromWorker::Accept {
            job_id: a.job_id,
            lease: a.lease,
        });
    }

    fn complete(&self, a: Assigned) {
        self.addr.do_send(FromWorker::Complete {
            job_id: a.job_id,
            lease: a.lease,
            outputs: outputs(a.job_id),
        });
    }

    fn fail(&self, a: Assigned, class: FailureClass) {
        self.addr.do_send(FromWorker::Fail {
            job_id: a.job_id,
            lease: a.lease,
            class,
            message: "scripted failure".into(),
        });
    }
}

// ---------------------------------------------------------------- tests

#[actix_rt::test]
async fn success_posts_the_hold() {
    let h = start().await;
    let user = h.user("success@example.com").await;
    assert_eq!(h.balance(user).await, (100, 0));
    h.orch.add_simulated_workers(1, 2, sim_profile());

    let job = h.submit(user).await;
    assert_eq!(job.cost.get(), 1);
    assert_eq!(job.tier, Tier::Free);
    let job = h.wait_terminal(user, job.id).await;

    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.charge, Charge::Posted);
    assert_eq!(job.attempts, 1);
    assert_eq!(h.balance(user).await, (99, 0));
    let result = job.result.expect("a succeeded job has a result");
    assert_eq!(result.license, License::Personal);
    assert_eq!(result.outputs.len(), 1);
    assert_eq!(
        h.job_entries(user, job.id).await,
        vec![EntryKind::Hold, EntryKind::Post]
    );
    h.wait_obs("one successful attempt", |o| {
        o.attempts(AttemptResult::Succeeded) == 1
    })
    .await;
    assert_eq!(h.obs.total_attempts(), 1);
    assert_eq!(h.obs.restarts(), 0);
    h.assert_books_balance().await;
}

#[actix_rt::test]
async fn commercial_licence_for_professional_members() {
    let h = start().await;
    let user = h.user("pro@example.com").await;
    let updated = h
        .orch
        .set_membership(
            user,
            Membership {
                tier: Tier::Professional,
                expires_at: Some(Utc::now() + chrono::Duration::days(30)),
            },
        )
        .await
        .expect("set membership");
    assert_eq!(updated.tier(Utc::now()), Tier::Professional);
    h.orch.add_simulated_workers(1, 1, sim_profile());

    let job = h.submit(user).await;
    assert_eq!(job.tier, Tier::Professional);
    let job = h.wait_terminal(user, job.id).await;
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.charge, Charge::Posted);
    assert_eq!(job.result.expect("result").license, License::Commercial);
    assert_eq!(h.balance(user).await, (99, 0));
    h.assert_books_balance().await;
}

#[actix_rt::test]
async fn system_failure_retries_then_voids_exactly_once() {
    let h = start().await;
    let user = h.user("sysfail@example.com").await;
    let mut w = h.scripted_worker("gpu-a", 1);
    let job = h.submit(user).await;
    assert_eq!(h.balance(user).await, (100, 1));

    let mut leases = Vec::new();
    for n in 1..=3 {
        let a = w.assigned().await;
        assert_eq!((a.job_id, a.attempt), (job.id, n));
        assert!(!leases.contains(&a.lease), "each attempt has a fresh lease");
        leases.push(a.lease);
        w.accept(a);
        w.fail(a, FailureClass::System);
    }
    let job = h.wait_terminal(user, job.id).await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts, 3);
    assert_eq!(job.max_attempts, 3);
    assert_eq!(job.charge, Charge::Voided);
    assert_eq!(
        job.error.as_ref().map(|e| e.class),
        Some(FailureClass::System)
    );
    assert!(job.result.is_none());
    assert_eq!(h.balance(user).await, (100, 0), "refunded in full");
    assert_eq!(
        h.job_entries(user, job.id).await,
        vec![EntryKind::Hold, EntryKind::Void]
    );
    // No fourth attempt.
    w.expect_quiet().await;
    assert_eq!(h.obs.attempts(AttemptResult::SystemFailure), 3);
    assert_eq!(h.obs.total_attempts(), 3);
    assert_eq!(h.obs.stale(), 0);
    h.assert_books_balance().await;
}

#[actix_rt::test]
async fn system_failure_then_success_charges_once() {
    let h = start().await;
    let user = h.user("flaky@example.com").await;
    let mut w = h.scripted_worker("gpu-a", 1);
    let job = h.submit(user).await;

    let first = w.assigned().await;
    assert_eq!((first.job_id, first.attempt), (job.id, 1));
    w.accept(first);
    w.fail(first, FailureClass::System);

    let second = w.assigned().await;
    assert_eq!((second.job_id, second.attempt), (job.id, 2));
    assert_ne!(second.lease, first.lease);
    w.accept(second);
    w.complete(second);

    let job = h.wait_terminal(user, job.id).await;
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.attempts, 2);
    assert_eq!(job.charge, Charge::Posted);
    assert_eq!(h.balance(user).await, (99, 0));
    assert_eq!(
        h.job_entries(user, job.id).await,
        vec![EntryKind::Hold, EntryKind::Post]
    );
    w.expect_quiet().await;
    assert_eq!(h.obs.attempts(AttemptResult::SystemFailure), 1);
    assert_eq!(h.obs.attempts(AttemptResult::Succeeded), 1);
    h.assert_books_balance().await;
}

#[actix_rt::test]
async fn user_error_posts_without_retry() {
    let h = start().await;
    let user = h.user("usererr@example.com").await;
    let mut w = h.scripted_worker("gpu-a", 1);
    let job = h.submit(user).await;

    let a = w.assigned().await;
    assert_eq!((a.job_id, a.attempt), (job.id, 1));
    w.accept(a);
    w.fail(a, FailureClass::User);

    let job = h.wait_terminal(user, job.id).await;
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts, 1);
    assert_eq!(job.charge, Charge::Posted);
    assert_eq!(
        job.error.as_ref().map(|e| e.class),
        Some(FailureClass::User)
    );
    assert_eq!(h.balance(user).await, (99, 0));
    assert_eq!(
        h.job_entries(user, job.id).await,
        vec![EntryKind::Hold, EntryKind::Post]
    );
    // Not retried.
    w.expect_quiet().await;
    assert_eq!(h.obs.attempts(AttemptResult::UserFailure), 1);
    assert_eq!(h.obs.total_attempts(), 1);
    h.assert_books_balance().await;
}

#[actix_rt::test]
async fn cancel_while_queued_voids() {
    let h = start().await;
    let user = h.user("cancelq@example.com").await;
    let job = h.submit(user).await;
    assert_eq!(h.balance(user).await, (100, 1));
    let (queued, position) = h.orch.job(user, job.id).await.expect("job");
    assert_eq!((queued.state, position), (JobState::Queued, Some(1)));

    h.wait_line("the job in the line", |s| {
        s.waiting_by_tier == PerTier::from([1, 0, 0, 0])
    })
    .await;

    let cancelled = h.orch.cancel(user, job.id).await.expect("cancel");
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(cancelled.charge, Charge::Voided);
    assert_eq!(h.balance(user).await, (100, 0));
    assert_eq!(
        h.job_entries(user, job.id).await,
        vec![EntryKind::Hold, EntryKind::Void]
    );
    // It leaves the scheduler's line, not only the store's.
    h.wait_line("an empty line", |s| {
        s.waiting_by_tier == PerTier::splat(0) && s.retrying == 0
    })
    .await;
    // A second cancel is refused and moves nothing.
    assert!(matches!(
        h.orch.cancel(user, job.id).await,
        Err(OrchestratorError::JobFinished)
    ));

    // A worker arriving later never sees the job, and the job left the line.
    let mut w = h.scripted_worker("late-gpu", 2);
    w.expect_quiet().await;
    let stats = h.orch.stats().await.expect("stats").scheduler;
    assert_eq!(stats.workers, 1);
    assert_eq!(stats.waiting_by_tier, PerTier::splat(0));
    assert_eq!(
        (stats.retrying, stats.in_flight, stats.busy_slots),
        (0, 0, 0)
    );
    let job = h.job(user, job.id).await;
    assert_eq!(
        (job.state, job.charge, job.attempts),
        (JobState::Cancelled, Charge::Voided, 0)
    );
    assert_eq!(h.balance(user).await, (100, 0));
    assert_eq!(h.obs.total_attempts(), 0);
    h.assert_books_balance().await;
}

#[actix_rt::test]
async fn cancel_while_running_posts_and_stops_the_worker() {
    let h = start().await;
    let user = h.user("cancelr@example.com").await;
    let mut w = h.scripted_worker("gpu-a", 1);
    let job = h.submit(user).await;

    let a = w.assigned().await;
    assert_eq!(a.job_id, job.id);
    w.accept(a);
    h.wait_for(user, job.id, "running", |j| j.state == JobState::Running)
        .await;

    let cancelled = h.orch.cancel(user, job.id).await.expect("cancel");
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(cancelled.charge, Charge::Posted, "the GPU time was used");
    assert_eq!(h.balance(user).await, (99, 0));

    match w.next().await {
        ToWorker::Cancel { job_id, lease } => assert_eq!((job_id, lease), (a.job_id, a.lease)),
        other => panic!("expected the worker to be told to stop, got {other:?}"),
    }
    h.wait_obs("the cancelled attempt", |o| {
        o.attempts(AttemptResult::Cancelled) == 1
    })
    .await;

    // The worker finishes anyway: ignored.
    w.complete(a);
    h.wait_obs("the late completion to be dropped", |o| o.stale() == 1)
        .await;
    w.expect_quiet().await;
    let job = h.job(user, job.id).await;
    assert_eq!(
        (job.state, job.charge),
        (JobState::Cancelled, Charge::Posted)
    );
    assert!(job.result.is_none());
    assert_eq!(h.balance(user).await, (99, 0));
    assert_eq!(
        h.job_entries(user, job.id).await,
        vec![EntryKind::Hold, EntryKind::Post]
    );
    assert_eq!(h.obs.attempts(AttemptResult::Succeeded), 0);

    // The slot came back: the worker takes the next job.
    let next = h.submit(user).await;
    let b = w.assigned().await;
    assert_eq!((b.job_id, b.attempt), (next.id, 1));
    h.assert_books_balance().await;
}

#[actix_rt::test]
async fn late_message_from_an_old_attempt_changes_nothing() {
    let h = start().await;
    let user = h.user("late@example.com").await;
    let mut w = h.scripted_worker("gpu-a", 1);
    let job = h.submit(user).await;

    let first = w.assigned().await;
    assert_eq!((first.job_id, first.attempt), (job.id, 1));
    w.accept(first);
    w.fail(first, FailureClass::System);

    let second = w.assigned().await;
    assert_eq!((second.job_id, second.attempt), (job.id, 2));
    assert_ne!(second.lease, first.lease);
    w.accept(second);
    h.wait_for(user, job.id, "running attempt 2", |j| {
        j.state == JobState::Running && j.attempts == 2
    })
    .await;

    // Attempt 1's lease: ignored, and counted.
    let stale_before = h.obs.stale();
    w.complete(first);
    h.wait_obs("the stale completion", |o| o.stale() == stale_before + 1)
        .await;
    let running = h.job(user, job.id).await;
    assert_eq!(
        (running.state, running.attempts, running.charge),
        (JobState::Running, 2, Charge::Held)
    );
    assert_eq!(h.balance(user).await, (100, 1));

    // Attempt 2 completes: succeeded, posted once.
    w.complete(second);
    let done = h.wait_terminal(user, job.id).await;
    assert_eq!(
        (done.state, done.attempts, done.charge),
        (JobState::Succeeded, 2, Charge::Posted)
    );
    assert_eq!(h.balance(user).await, (99, 0));

    // A duplicate completion of attempt 2: ignored, and counted.
    w.complete(second);
    h.wait_obs("the duplicate completion", |o| {
        o.stale() == stale_before + 2
    })
    .await;
    w.expect_quiet().await;
    let after = h.job(user, job.id).await;
    assert_eq!(after, done);
    assert_eq!(h.balance(user).await, (99, 0));
    assert_eq!(
        h.job_entries(user, job.id).await,
        vec![EntryKind::Hold, EntryKind::Post]
    );
    assert_eq!(h.obs.attempts(AttemptResult::Succeeded), 1);
    assert_eq!(h.obs.attempts(AttemptResult::SystemFailure), 1);
    h.assert_books_balance().await;
}

#[actix_rt::test]
async fn two_hundred_concurrent_submits_accept_exactly_what_the_balance_covers() {
    let h = start_with(OrchestratorConfig {
        registration_credits: Credits::ZERO,
        ..config()
    })
    .await;
    let user = h.user("race@example.com").await;
    // The free tier may only have 10 jobs waiting; enterprise 1000.
    h.orch
        .set_membership(
            user,
            Membership {
                tier: Tier::Enterprise,
                expires_at: Some(Utc::now() + chrono::Duration::days(30)),
            },
        )
        .await
        .expect("set membership");
    let wallet = h
        .orch
        .grant(
            user,
            Grant {
                amount: credits(50),
                source: GrantSource::Purchase,
                idempotency_key: Some("purchase-1".into()),
                note: None,
            },
        )
        .await
        .expect("grant");
    assert_eq!((wallet.balance.get(), wallet.held.get()), (50, 0));

    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let orch = h.orch.clone();
            actix_rt::spawn(async move { orch.submit(user, image_request(), None).await })
        })
        .collect();
    let (mut accepted, mut refused) = (Vec::new(), 0);
    for t in tasks {
        match within("a submission", t).await.expect("task") {
            Ok(sub) => {
                assert!(!sub.replayed);
                assert!(sub.wallet.held <= sub.wallet.balance);
                accepted.push(sub.job.id);
            }
            Err(OrchestratorError::InsufficientCredits { required, .. }) => {
                assert_eq!(required.get(), 1);
                refused += 1;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(accepted.len(), 50);
    assert_eq!(refused, 150);
    let w = h.orch.wallet(user).await.expect("wallet");
    assert_eq!(
        (w.balance.get(), w.held.get(), w.available().get()),
        (50, 50, 0)
    );

    let queued = h
        .orch
        .jobs(user, Some(JobState::Queued), None, 1000)
        .await
        .expect("jobs");
    assert_eq!(queued.len(), 50);
    assert!(queued
        .iter()
        .all(|j| j.tier == Tier::Enterprise && j.charge == Charge::Held));

    // The ledger replays to the wallet and never went below zero.
    let audit = h.orch.store().audit_ledgers().await.expect("audit");
    let (_, stored, entries) = audit
        .into_iter()
        .find(|(id, _, _)| *id == user)
        .expect("the user's ledger");
    assert_eq!(stored, w);
    assert_eq!(replay(&entries).expect("replay"), w);
    assert!(entries.iter().all(|e| e.held <= e.balance));
    let holds = entries.iter().filter(|e| e.kind == EntryKind::Hold).count();
    assert_eq!(holds, 50);
    assert_eq!(entries.len(), 51, "one grant and fifty holds");
    h.assert_books_balance().await;
}

#[actix_rt::test]
async fn worker_disconnect_retries_on_another_worker() {
    let h = start().await;
    let user = h.user("disconnect@example.com").await;
    let mut a = h.scripted_worker("gpu-a", 1);
    let mut b = h.scripted_worker("gpu-b", 1);
    // Both workers have joined before the job arrives.
    h.wait_line("two workers", |s| s.workers == 2).await;
    let job = h.submit(user).await;

    let (on_a, first) = within("the first assignment", async {
        tokio::select! {
            Some(msg) = a.rx.recv() => (true, msg),
            Some(msg) = b.rx.recv() => (false, msg),
        }
    })
    .await;
    let (lost, mut other) = if on_a { (a, b) } else { (b, a) };
    let mut lost = lost;
    let ToWorker::Assign {
        job_id, attempt, ..
    } = first
    else {
        panic!("expected an assignment, got {first:?}");
    };
    assert_eq!((job_id, attempt), (job.id, 1));
    lost.accept_raw(&first);
    h.wait_for(user, job.id, "running", |j| j.state == JobState::Running)
        .await;

    // The connection of the worker running it drops.
    lost.addr.do_send(LinkClosed);
    assert!(
        within("the link to close", lost.rx.recv()).await.is_none(),
        "a closed worker gets no more messages"
    );

    let second = other.assigned().await;
    assert_eq!((second.job_id, second.attempt), (job.id, 2));
    other.accept(second);
    other.complete(second);

    let job = h.wait_terminal(user, job.id).await;
    assert_eq!(
        (job.state, job.attempts, job.charge),
        (JobState::Succeeded, 2, Charge::Posted)
    );
    assert_eq!(h.balance(user).await, (99, 0));
    assert_eq!(
        h.job_entries(user, job.id).await,
        vec![EntryKind::Hold, EntryKind::Post]
    );
    assert_eq!(h.obs.attempts(AttemptResult::LeaseLost), 1);
    assert_eq!(h.obs.attempts(AttemptResult::Succeeded), 1);
    assert_eq!(h.orch.stats().await.expect("stats").scheduler.workers, 1);
    h.assert_books_balance().await;
}

impl Scripted {
    fn accept_raw(&self, msg: &ToWorker) {
        if let ToWorker::Assign { job_id, lease, .. } = msg {
            self.addr.do_send(FromWorker::Accept {
                job_id: *job_id,
                lease: *lease,
            });
        }
    }
}

#[actix_rt::test]
async fn per_user_running_limit_is_respected() {
    let h = start().await;
    let user = h.user("limit@example.com").await;
    assert_eq!(h.orch.config().tiers[Tier::Free].max_running, 1);
    let mut w = h.scripted_worker("big-gpu", 5);
    let mut jobs = Vec::new();
    for _ in 0..3 {
        jobs.push(h.submit(user).await.id);
    }

    for (i, id) in jobs.iter().enumerate() {
        let a = w.assigned().await;
        assert_eq!(
            (a.job_id, a.attempt),
            (*id, 1),
            "job {i} runs in submission order"
        );
        // Four slots are free, but the user may only run one job at once.
        w.expect_quiet().await;
        let running = h.orch.jobs(user, None, None, 10).await.expect("jobs");
        assert_eq!(running.iter().filter(|j| j.state.is_in_flight()).count(), 1);
        w.accept(a);
        w.complete(a);
        let done = h.wait_terminal(user, *id).await;
        assert_eq!(done.state, JobState::Succeeded);
    }
    w.expect_quiet().await;
    assert_eq!(h.balance(user).await, (97, 0));
    assert_eq!(h.obs.attempts(AttemptResult::Succeeded), 3);
    h.assert_books_balance().await;
}

/// A worker quarantined while another of its attempts was running, which
/// then succeeds, takes work again: the success clears its record, and its
/// slots with it (found by the simulation: only the record was cleared, and
/// the worker was left out of dispatch for good).
#[actix_rt::test]
async fn a_success_during_a_quarantine_lets_the_worker_take_work_again() {
    let mut cfg = config();
    cfg.quarantine_after = 1;
    // The only worker may be quarantined, for longer than the test runs.
    cfg.quarantine_max_percent = 100;
    cfg.quarantine_base = Duration::from_secs(3600);
    cfg.quarantine_max = Duration::from_secs(3600);
    let h = start_with(cfg).await;
    // Two users: a free user runs one job at a time.
    let user = h.user("cleared@example.com").await;
    let other = h.user("other@example.com").await;
    let mut gpu = h.scripted_worker("flaky", 2);
    let failing = h.submit(user).await;
    let working = h.submit(other).await;
    let a = gpu.assigned().await;
    let b = gpu.assigned().await;
    let (fails, works) = if a.job_id == failing.id {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(works.job_id, working.id);
    gpu.accept(fails);
    gpu.accept(works);
    gpu.fail(fails, FailureClass::System);
    // Settled (and the worker quarantined) before the success arrives.
    h.wait_for(user, failing.id, "waiting for its retry", |j| {
        j.state == JobState::Queued && j.attempts == 1
    })
    .await;
    gpu.complete(works);
    h.wait_for(other, working.id, "succeeded", |j| {
        j.state == JobState::Succeeded
    })
    .await;
    // The retry goes to the same worker long before the quarantine would end.
    let retry = gpu.assigned().await;
    assert_eq!((retry.job_id, retry.attempt), (failing.id, 2));
    gpu.accept(retry);
    gpu.complete(retry);
    h.wait_for(user, failing.id, "succeeded", |j| {
        j.state == JobState::Succeeded
    })
    .await;
}
