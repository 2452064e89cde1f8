//! The deterministic simulation of the whole actor system
//! (`docs/simulation.md`): the real orchestrator, wallets, scheduler, job
//! and worker actors and the in-memory store, with simulated GPU workers,
//! on one thread in tokio's paused (virtual) time, every choice drawn from
//! one seed. Users of every tier submit, replay idempotency keys, cancel,
//! buy credits, change membership and get suspended; workers succeed, fail,
//! crash mid-job, hang past the deadline, send late and duplicate messages,
//! go silent and come back; the store fails transiently; the wall clock
//! jumps. After every step the store is audited against the invariants
//! (money, holds, attempts, line order); at the end every job must have
//! ended.
//!
//! Its own `main` (`harness = false`):
//!
//! - no argument (what `cargo test` runs): a short run of many seeds (and
//!   of some with ambiguous commits), a determinism check (one seed twice,
//!   one trace hash), and each planted bug found within a bounded number
//!   of seeds;
//! - `--seed N`: that seed alone, its trace printed; a failure exits 1;
//! - `--seeds K [--first F]`: seeds `F..F+K`, stopping at the first
//!   failure, with seeds per second;
//! - `--steps S`: steps per seed; `--plant late-complete|cancel-voids|
//!   retry-place`: with that bug planted; `--ambiguous`: store writes may
//!   also fail after committing; `--trace N`: trace lines shown.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use admedia_actors::actors::worker::{LinkClosed, WorkerActor, WorkerLink};
use admedia_actors::clock::{Clock, Random, SimulatedClock};
use admedia_actors::domain::account::AccountStatus;
use admedia_actors::domain::ids::{JobId, LeaseToken, UserId, WorkerId};
use admedia_actors::domain::job::{
    AttemptOutcome, AttemptOutcomeLabel, Charge, FailureClass, IdempotencyKey, Job, JobKind,
    JobRequest, JobState, Output, ParamsRequest,
};
use admedia_actors::domain::ledger::{replay, EntryKind, Grant, GrantSource, LedgerEntry};
use admedia_actors::domain::pricing::PriceTable;
use admedia_actors::domain::tier::{Membership, Tier};
use admedia_actors::domain::wallet::Credits;
use admedia_actors::error::OrchestratorError;
use admedia_actors::observer::{AttemptResult, Observer};
use admedia_actors::planted::{self, Bug};
use admedia_actors::store::forward::{
    self, ForwardAccounts, ForwardArchive, ForwardCluster, ForwardEndpoints, ForwardModeration,
    ForwardOperator, ForwardPayments, Wraps,
};
use admedia_actors::store::memory::MemoryStore;
use admedia_actors::store::prelude::*;
use admedia_actors::store::{
    AttemptRef, Cancellation, GrantOutcome, NewJob, Settlement, StoreError, StoreResult, Submission,
};
use admedia_actors::wire::{Capabilities, FromWorker, ToWorker};
use admedia_actors::{Orchestrator, OrchestratorConfig};

/// Seeds of the short run `cargo test` makes (see BENCHMARKS.md for what
/// they take).
const SUITE_SEEDS: u64 = 300;
/// Seeds of the short run with ambiguous commits (after the others).
const AMBIGUOUS_SEEDS: u64 = 100;
/// Steps per seed unless `--steps` says otherwise.
const STEPS: usize = 60;
/// A planted bug must be found within this many seeds.
const PLANTED_WITHIN: u64 = 200;
/// Trace lines printed with a failure unless `--trace` says otherwise.
const TRACE_SHOWN: usize = 80;
/// The longest the final drain may take, in virtual time.
const DRAIN_LIMIT: Duration = Duration::from_secs(900);
/// Where the wall clock starts, whatever the real date.
const WALL_START: i64 = 1_893_456_000; // 2030-01-01T00:00:00Z
/// A job must be in line this long (virtual) before another job of its
/// user behind it may be dispatched: the scheduler pushes a retry when its
/// timer fires and dispatches within the same instant.
const LINE_MARGIN: Duration = Duration::from_millis(100);
/// The scheduler's delay before a job whose assignment the store refused
/// goes back in line (`actors::scheduler`).
const REQUEUE_AFTER_STORE_ERROR: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------- the world

/// A broken invariant: its name (stable, what the planted-bug tests look
/// for) and what was found.
#[derive(Clone, Debug)]
struct Breach {
    invariant: &'static str,
    detail: String,
}

fn violation(invariant: &'static str, detail: impl Into<String>) -> Breach {
    Breach {
        invariant,
        detail: detail.into(),
    }
}

/// What a simulated worker does with one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    Succeed,
    /// Completes, then completes again.
    Duplicate,
    SystemFail,
    UserFail,
    /// Accepts, ignores the cancel at the deadline, completes late.
    Hang,
    /// Drops the connection half-way through; comes back later.
    Crash,
    /// Never accepts: the deadline takes it back.
    Ignore,
}

struct SimUser {
    id: UserId,
    /// Idempotency keys used, with the request and the job first returned.
    keys: Vec<(String, JobRequest, Option<JobId>)>,
    /// Grant keys used, with their amount.
    grants: Vec<(String, i64)>,
}

/// Everything the simulation itself knows; shared by the driver, the
/// simulated workers and the store wrapper, all on one thread.
struct World {
    rng: SmallRng,
    trace: Vec<String>,
    start: tokio::time::Instant,
    /// Jobs by the order the simulation first saw them (`j0`, `j1`, …).
    names: BTreeMap<JobId, usize>,
    jobs: Vec<JobId>,
    users: Vec<SimUser>,
    /// Every `complete` a worker sent: (job, lease).
    completes: BTreeSet<(JobId, LeaseToken)>,
    /// When each waiting job is (or will be) in the scheduler's line, and
    /// when that was computed.
    ready_at: BTreeMap<JobId, (tokio::time::Instant, tokio::time::Instant)>,
    /// When the wall clock jumped.
    jumps: Vec<tokio::time::Instant>,
    /// Probability that a store write fails (before anything is written).
    fault_rate: f64,
    /// Found by the store wrapper while the system ran.
    found: Vec<Breach>,
    /// Workers behave (the run drains).
    behave: bool,
    counter: u64,
    /// The simulated model's price factor.
    price_factor: u32,
    /// Committed waiting jobs are announced to the scheduler as a cluster
    /// node's store notifications announce them (`Orchestrator::job_waiting`).
    notify: Option<Orchestrator>,
    /// Writes may also fail after committing (reported failed, kept).
    ambiguous: bool,
}

type Shared = Arc<Mutex<World>>;

impl World {
    fn log(&mut self, line: impl AsRef<str>) {
        let t = tokio::time::Instant::now().saturating_duration_since(self.start);
        self.trace
            .push(format!("{:>10.3}s {}", t.as_secs_f64(), line.as_ref()));
    }

    fn job_name(&mut self, id: JobId) -> String {
        let next = self.jobs.len();
        let n = *self.names.entry(id).or_insert(next);
        if n == next {
            self.jobs.push(id);
        }
        format!("j{n}")
    }

    fn user_name(&self, id: UserId) -> String {
        match self.users.iter().position(|u| u.id == id) {
            Some(n) => format!("u{n}"),
            None => "u?".into(),
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random::<f64>() < p
    }

    fn between(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        Duration::from_millis(self.rng.random_range(lo_ms..=hi_ms))
    }

    /// An index below `n` (`n` > 0).
    fn pick(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n.max(1))
    }

    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }
}

fn lock(world: &Shared) -> parking_lot::MutexGuard<'_, World> {
    world.lock()
}

// ---------------------------------------------------------------- the store

/// The in-memory store with injected transient failures, which also
/// watches the line order as jobs are assigned.
struct SimStore {
    inner: MemoryStore,
    world: Shared,
}

impl SimStore {
    /// Whether this write fails (nothing written).
    fn fault(&self, op: &str) -> bool {
        let mut w = lock(&self.world);
        let rate = w.fault_rate;
        if rate > 0.0 && w.chance(rate) {
            w.log(format!("store: {op} fails (injected)"));
            true
        } else {
            false
        }
    }

    /// Whether this write, committed, is reported failed.
    fn fault_after(&self, op: &str) -> bool {
        let mut w = lock(&self.world);
        let rate = w.fault_rate / 2.0;
        if w.ambiguous && rate > 0.0 && w.chance(rate) {
            w.log(format!(
                "store: {op} committed but reported failed (injected)"
            ));
            true
        } else {
            false
        }
    }

    /// A committed job waits: announce it as a cluster's notifications
    /// would, a moment later.
    fn announce(&self, job: JobId) {
        let (orch, delay) = {
            let mut w = lock(&self.world);
            let delay = w.between(0, 100);
            (w.notify.clone(), delay)
        };
        if let Some(orch) = orch {
            actix_rt::spawn(async move {
                tokio::time::sleep(delay).await;
                orch.job_waiting(job);
            });
        }
    }

    fn injected(op: &str) -> StoreError {
        StoreError::Unavailable(format!("injected failure of {op}"))
    }

    /// Within a user (and the tier their jobs were submitted at), jobs go
    /// in submission order: no job of the line with an earlier `seq` may be
    /// waiting in it while this one is assigned.
    async fn check_line_order(&self, job: &Job) {
        let Ok(waiting) = self
            .inner
            .list_jobs(job.user_id, Some(JobState::Queued), None, 10_000)
            .await
        else {
            return;
        };
        let now = tokio::time::Instant::now();
        let mut w = lock(&self.world);
        for other in waiting {
            // A user's jobs wait in one line per tier they were submitted
            // at (a membership change opens another).
            if other.seq >= job.seq || other.id == job.id || other.tier != job.tier {
                continue;
            }
            let Some(&(ready, computed)) = w.ready_at.get(&other.id) else {
                continue;
            };
            // A jump at the very instant the retry delay was computed makes
            // the delay the scheduler used unknowable here.
            if w.jumps.contains(&computed) {
                continue;
            }
            if ready + LINE_MARGIN < now {
                let (a, b) = (w.job_name(job.id), w.job_name(other.id));
                let user = w.user_name(job.user_id);
                let waited = now.saturating_duration_since(ready);
                w.found.push(violation(
                    "jobs of a user are dispatched in submission order",
                    format!(
                        "{a} (seq {}) of {user} assigned while {b} (seq {}, attempt {}) had been \
                         in line for {waited:?}",
                        job.seq, other.seq, other.attempts
                    ),
                ));
            }
        }
    }
}

#[async_trait]
impl forward::ForwardJobs for SimStore {
    async fn grant(
        &self,
        user: UserId,
        grant: Grant,
        now: DateTime<Utc>,
    ) -> StoreResult<GrantOutcome> {
        if self.fault("grant") {
            return Err(Self::injected("grant"));
        }
        let granted = self.inner.grant(user, grant, now).await?;
        if self.fault_after("grant") {
            return Err(Self::injected("grant"));
        }
        Ok(granted)
    }

    async fn submit_job(&self, job: NewJob) -> StoreResult<Submission> {
        if self.fault("submit") {
            return Err(Self::injected("submit"));
        }
        let sub = self.inner.submit_job(job).await?;
        if sub.replayed {
            return Ok(sub);
        }
        self.announce(sub.job.id);
        if self.fault_after("submit") {
            // Nobody told the scheduler: it finds the job by a notification
            // or its reconciliation, so its place in line is not checked.
            return Err(Self::injected("submit"));
        }
        let now = tokio::time::Instant::now();
        lock(&self.world).ready_at.insert(sub.job.id, (now, now));
        Ok(sub)
    }

    async fn assign_job(
        &self,
        attempt: AttemptRef,
        worker: WorkerId,
        epoch: u64,
        now: DateTime<Utc>,
    ) -> StoreResult<Job> {
        if let Ok(Some(job)) = self.inner.job(attempt.job_id).await {
            if job.state == JobState::Queued {
                self.check_line_order(&job).await;
            }
        }
        if self.fault("assign") {
            // The scheduler puts the job back in line after a pause.
            let t = tokio::time::Instant::now();
            lock(&self.world)
                .ready_at
                .insert(attempt.job_id, (t + REQUEUE_AFTER_STORE_ERROR, t));
            return Err(Self::injected("assign"));
        }
        let job = self.inner.assign_job(attempt, worker, epoch, now).await?;
        if self.fault_after("assign") {
            return Err(Self::injected("assign"));
        }
        Ok(job)
    }

    async fn start_job(&self, attempt: AttemptRef, now: DateTime<Utc>) -> StoreResult<Job> {
        if self.fault("start") {
            return Err(Self::injected("start"));
        }
        let job = self.inner.start_job(attempt, now).await?;
        if self.fault_after("start") {
            return Err(Self::injected("start"));
        }
        Ok(job)
    }

    async fn finish_attempt(
        &self,
        attempt: AttemptRef,
        outcome: AttemptOutcome,
        now: DateTime<Utc>,
    ) -> StoreResult<Settlement> {
        if self.fault("finish") {
            return Err(Self::injected("finish"));
        }
        let settled = self.inner.finish_attempt(attempt, outcome, now).await?;
        if settled.job.state == JobState::Queued {
            self.announce(settled.job.id);
        }
        if self.fault_after("finish") {
            lock(&self.world).ready_at.remove(&settled.job.id);
            return Err(Self::injected("finish"));
        }
        if settled.job.state == JobState::Queued {
            let t = tokio::time::Instant::now();
            let delay = settled
                .job
                .retry_at
                .and_then(|at| (at - now).to_std().ok())
                .unwrap_or_default();
            lock(&self.world)
                .ready_at
                .insert(settled.job.id, (t + delay, t));
        }
        Ok(settled)
    }

    async fn cancel_job(
        &self,
        user: UserId,
        id: JobId,
        now: DateTime<Utc>,
    ) -> StoreResult<Cancellation> {
        if self.fault("cancel") {
            return Err(Self::injected("cancel"));
        }
        let cancelled = self.inner.cancel_job(user, id, now).await?;
        if self.fault_after("cancel") {
            return Err(Self::injected("cancel"));
        }
        Ok(cancelled)
    }
}

// The job methods not written above and every other concern pass
// through unchanged: faults are injected into job transitions only.
impl Wraps for SimStore {
    fn inner(&self) -> &dyn Store {
        &self.inner
    }
}

impl ForwardAccounts for SimStore {}
impl ForwardPayments for SimStore {}
impl ForwardModeration for SimStore {}
impl ForwardCluster for SimStore {}
impl ForwardEndpoints for SimStore {}
impl ForwardOperator for SimStore {}
impl ForwardArchive for SimStore {}

// ---------------------------------------------------------------- observer

/// What the actors report, into the trace.
struct SimObserver {
    world: Shared,
}

impl Observer for SimObserver {
    fn attempt_finished(&self, _kind: JobKind, result: AttemptResult, _run: Option<Duration>) {
        lock(&self.world).log(format!("attempt ends: {}", result.as_str()));
    }

    fn stale_worker_message(&self) {
        lock(&self.world).log("a stale worker message is refused");
    }

    fn actor_restarted(&self, actor: &'static str) {
        lock(&self.world).log(format!("{actor} restarted"));
    }

    fn worker_quarantined(&self) {
        lock(&self.world).log("a worker is quarantined");
    }

    fn job_expired(&self, tier: Tier) {
        lock(&self.world).log(format!("a {tier:?} job expires"));
    }
}

// ---------------------------------------------------------------- workers

/// A worker's connection: what `WorkerActor` sends goes to the simulated
/// worker, tagged with the connection it came on.
struct Link {
    to: Addr<SimWorker>,
    open: Arc<AtomicBool>,
    generation: u64,
}

impl WorkerLink for Link {
    fn send(&mut self, msg: ToWorker) -> bool {
        if !self.open.load(Ordering::SeqCst) {
            return false;
        }
        self.to.do_send(Delivered {
            generation: self.generation,
            msg,
        });
        true
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Delivered {
    generation: u64,
    msg: ToWorker,
}

/// Connect (again).
#[derive(Message)]
#[rtype(result = "()")]
struct Connect;

/// Drop the connection; come back after the given pause.
#[derive(Message)]
#[rtype(result = "()")]
struct Disconnect(Duration);

/// Send no heartbeat for this long.
#[derive(Message)]
#[rtype(result = "()")]
struct GoSilent(Duration);

struct Running {
    lease: LeaseToken,
    plan: Plan,
    handle: Option<SpawnHandle>,
}

struct SimWorker {
    n: usize,
    slots: u32,
    world: Shared,
    orch: Orchestrator,
    addr: Option<Addr<WorkerActor>>,
    open: Arc<AtomicBool>,
    generation: u64,
    running: BTreeMap<JobId, Running>,
    silent_until: Option<tokio::time::Instant>,
}

impl SimWorker {
    fn log(&self, line: impl AsRef<str>) {
        lock(&self.world).log(format!("w{} {}", self.n, line.as_ref()));
    }

    fn send(&self, msg: FromWorker) {
        if let Some(addr) = &self.addr {
            addr.do_send(msg);
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.generation += 1;
        self.open = Arc::new(AtomicBool::new(true));
        let caps = Capabilities {
            name: format!("w{}", self.n),
            slots: self.slots,
            gpu_model: "simulated".into(),
            vram_mb: 80_000,
            kinds: vec![JobKind::Image],
            models: Vec::new(),
            loaded_models: Vec::new(),
        };
        let link = Link {
            to: ctx.address(),
            open: self.open.clone(),
            generation: self.generation,
        };
        let addr = self
            .orch
            .connect_worker(WorkerId::generate(), caps, Vec::new(), Box::new(link));
        self.addr = Some(addr);
        self.log(format!("connects ({} slots)", self.slots));
    }

    fn disconnect(&mut self, ctx: &mut Context<Self>) {
        self.open.store(false, Ordering::SeqCst);
        if let Some(addr) = self.addr.take() {
            addr.do_send(LinkClosed);
        }
        for (_, run) in std::mem::take(&mut self.running) {
            if let Some(h) = run.handle {
                ctx.cancel_future(h);
            }
        }
    }

    fn outputs(job: JobId, count: u32) -> Vec<Output> {
        (0..count.max(1))
            .map(|i| Output::new(format!("sim://outputs/{job}/{i}.png"), "image/png"))
            .collect()
    }

    fn assigned(
        &mut self,
        job_id: JobId,
        lease: LeaseToken,
        count: u32,
        deadline: Duration,
        ctx: &mut Context<Self>,
    ) {
        let (plan, took, name) = {
            let mut w = lock(&self.world);
            let plan = if w.behave {
                Plan::Succeed
            } else {
                let draw: f64 = w.rng.random();
                match draw {
                    d if d < 0.52 => Plan::Succeed,
                    d if d < 0.58 => Plan::Duplicate,
                    d if d < 0.70 => Plan::SystemFail,
                    d if d < 0.77 => Plan::UserFail,
                    d if d < 0.87 => Plan::Hang,
                    d if d < 0.94 => Plan::Crash,
                    _ => Plan::Ignore,
                }
            };
            let took = match plan {
                Plan::Hang => deadline + w.between(100, 10_000),
                _ => w.between(300, 5_000),
            };
            (plan, took, w.job_name(job_id))
        };
        self.log(format!("takes {name} ({plan:?}, {took:?})"));
        if plan != Plan::Ignore {
            self.send(FromWorker::Accept { job_id, lease });
        }
        let handle = match plan {
            Plan::Ignore => None,
            Plan::Crash => Some(ctx.run_later(took / 2, move |act, ctx| {
                let back = lock(&act.world).between(200, 6_000);
                act.log(format!("crashes; back in {back:?}"));
                act.disconnect(ctx);
                ctx.run_later(back, |act, ctx| act.connect(ctx));
            })),
            _ => Some(ctx.run_later(took, move |act, ctx| {
                act.finish(job_id, lease, count, plan, ctx);
            })),
        };
        self.running.insert(
            job_id,
            Running {
                lease,
                plan,
                handle,
            },
        );
    }

    fn finish(
        &mut self,
        job_id: JobId,
        lease: LeaseToken,
        count: u32,
        plan: Plan,
        ctx: &mut Context<Self>,
    ) {
        self.running.remove(&job_id);
        let name = lock(&self.world).job_name(job_id);
        match plan {
            Plan::SystemFail | Plan::UserFail => {
                let class = if plan == Plan::SystemFail {
                    FailureClass::System
                } else {
                    FailureClass::User
                };
                self.log(format!("fails {name} ({class:?})"));
                self.send(FromWorker::Fail {
                    job_id,
                    lease,
                    class,
                    message: "simulated failure".into(),
                });
            }
            _ => {
                let late = if plan == Plan::Hang { " late" } else { "" };
                self.log(format!("completes {name}{late}"));
                lock(&self.world).completes.insert((job_id, lease));
                self.send(FromWorker::Complete {
                    job_id,
                    lease,
                    outputs: Self::outputs(job_id, count),
                });
                if plan == Plan::Duplicate {
                    ctx.run_later(Duration::from_millis(20), move |act, _| {
                        act.log(format!("completes {name} again"));
                        act.send(FromWorker::Complete {
                            job_id,
                            lease,
                            outputs: Self::outputs(job_id, count),
                        });
                    });
                }
            }
        }
    }
}

impl Actor for SimWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.connect(ctx);
        ctx.run_interval(Duration::from_secs(1), |act, ctx| {
            let now = tokio::time::Instant::now();
            if act.silent_until.is_some_and(|t| t > now) {
                return;
            }
            act.silent_until = None;
            match &act.addr {
                Some(addr) if addr.connected() => addr.do_send(FromWorker::Heartbeat),
                Some(_) => {
                    // The server gave up on this connection (its lease
                    // expired): the agent reconnects.
                    act.log("finds its connection gone");
                    act.disconnect(ctx);
                    act.connect(ctx);
                }
                None => {}
            }
        });
    }
}

impl Handler<Delivered> for SimWorker {
    type Result = ();

    fn handle(&mut self, msg: Delivered, ctx: &mut Self::Context) {
        if msg.generation != self.generation {
            return;
        }
        match msg.msg {
            ToWorker::Assign {
                job_id,
                lease,
                params,
                deadline_ms,
                ..
            } => {
                let count = params.count.unwrap_or(1);
                self.assigned(
                    job_id,
                    lease,
                    count,
                    Duration::from_millis(deadline_ms),
                    ctx,
                );
            }
            ToWorker::Cancel { job_id, lease } => {
                let Some(run) = self.running.get(&job_id) else {
                    return;
                };
                if run.lease != lease || run.plan == Plan::Hang {
                    // A hung worker does not hear the cancel.
                    return;
                }
                if let Some(run) = self.running.remove(&job_id) {
                    if let Some(h) = run.handle {
                        ctx.cancel_future(h);
                    }
                }
                let (late, name) = {
                    let mut w = lock(&self.world);
                    (w.chance(0.2), w.job_name(job_id))
                };
                if late {
                    // Its result was already on the way.
                    self.log(format!("completes {name} after its cancel"));
                    lock(&self.world).completes.insert((job_id, lease));
                    self.send(FromWorker::Complete {
                        job_id,
                        lease,
                        outputs: Self::outputs(job_id, 1),
                    });
                }
            }
            ToWorker::Welcome { .. }
            | ToWorker::Error { .. }
            | ToWorker::Drain
            | ToWorker::Redirect { .. } => {}
        }
    }
}

impl Handler<Connect> for SimWorker {
    type Result = ();
    fn handle(&mut self, _: Connect, ctx: &mut Self::Context) {
        if self.addr.is_none() {
            self.connect(ctx);
        }
    }
}

impl Handler<Disconnect> for SimWorker {
    type Result = ();
    fn handle(&mut self, msg: Disconnect, ctx: &mut Self::Context) {
        if self.addr.is_none() {
            return;
        }
        self.log(format!("disconnects; back in {:?}", msg.0));
        self.disconnect(ctx);
        ctx.run_later(msg.0, |act, ctx| {
            if act.addr.is_none() {
                act.connect(ctx);
            }
        });
    }
}

impl Handler<GoSilent> for SimWorker {
    type Result = ();
    fn handle(&mut self, msg: GoSilent, _ctx: &mut Self::Context) {
        self.log(format!("goes silent for {:?}", msg.0));
        self.silent_until = Some(tokio::time::Instant::now() + msg.0);
    }
}

// ---------------------------------------------------------------- one run

#[derive(Clone, Copy, Debug)]
struct Settings {
    steps: usize,
    plant: Option<Bug>,
    /// Store writes may also fail after committing (`--ambiguous`).
    ambiguous: bool,
}

struct Outcome {
    seed: u64,
    trace: Vec<String>,
    hash: String,
    failure: Option<Breach>,
}

fn config(clock: Clock, random: Random, rng: &mut SmallRng) -> OrchestratorConfig {
    let mut c = OrchestratorConfig::default();
    c.clock = clock;
    c.random = random;
    c.max_attempts = rng.random_range(2..=4);
    c.retry_base = Duration::from_millis(rng.random_range(50..=400));
    c.retry_max = Duration::from_secs(3);
    c.image_deadline = Duration::from_secs(8);
    c.worker_lease = Duration::from_secs(3);
    c.wallet_idle = Duration::from_secs(4);
    c.settle_retry = Duration::from_millis(100);
    c.quarantine_after = 3;
    c.quarantine_base = Duration::from_secs(5);
    c.quarantine_max = Duration::from_secs(20);
    c.max_wait[Tier::Free] = Duration::from_secs(600);
    // Price changes take effect within the run; the sweep reloads them.
    c.platform.price_notice = Duration::from_secs(5);
    c.platform.sweep_every = Duration::from_secs(5);
    c
}

fn request(prompt: String, count: u32) -> JobRequest {
    JobRequest {
        kind: JobKind::Image,
        model: "sdxl".into(),
        prompt,
        params: ParamsRequest {
            count: Some(count),
            ..ParamsRequest::default()
        },
        webhook_url: None,
        priority: Default::default(),
    }
}

fn error_name(e: &OrchestratorError) -> String {
    let s = format!("{e:?}");
    s.split(['(', ' ', '{'])
        .next()
        .unwrap_or("error")
        .to_owned()
}

/// One seeded run, from an empty store to a drained system.
fn run(seed: u64, settings: Settings) -> Outcome {
    planted::plant(settings.plant);
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap_or_else(|e| panic!("a current-thread runtime: {e}"))
    };
    let system = actix_rt::System::with_tokio_rt(runtime);
    let outcome = system.block_on(simulate(seed, settings));
    planted::plant(None);
    outcome
}

async fn simulate(seed: u64, settings: Settings) -> Outcome {
    let mut rng = SmallRng::seed_from_u64(seed);
    let wall = DateTime::<Utc>::from_timestamp(WALL_START, 0).unwrap_or_default();
    let (clock, sim_clock) = Clock::simulated(wall);
    let random = Random::seeded(rng.random());
    let cfg = config(clock.clone(), random, &mut rng);
    let world: Shared = Arc::new(Mutex::new(World {
        rng,
        trace: Vec::new(),
        start: tokio::time::Instant::now(),
        names: BTreeMap::new(),
        jobs: Vec::new(),
        users: Vec::new(),
        completes: BTreeSet::new(),
        ready_at: BTreeMap::new(),
        jumps: Vec::new(),
        fault_rate: 0.0,
        found: Vec::new(),
        behave: false,
        counter: 0,
        price_factor: cfg.models.get("sdxl").map_or(1, |m| m.price_factor),
        notify: None,
        ambiguous: settings.ambiguous,
    }));
    lock(&world).log(format!(
        "seed {seed}: max_attempts {}, retry_base {:?}",
        cfg.max_attempts, cfg.retry_base
    ));
    let store = Arc::new(SimStore {
        inner: MemoryStore::new().with_clock(clock.clone()),
        world: world.clone(),
    });
    let failure = drive(&world, store.clone(), cfg, &sim_clock, settings)
        .await
        .err();
    let mut w = lock(&world);
    if let Some(v) = &failure {
        w.log(format!("VIOLATED: {}: {}", v.invariant, v.detail));
    }
    let trace = std::mem::take(&mut w.trace);
    let mut hasher = Sha256::new();
    for line in &trace {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    Outcome {
        seed,
        trace,
        hash: hex::encode(&hasher.finalize()[..8]),
        failure,
    }
}

async fn drive(
    world: &Shared,
    store: Arc<SimStore>,
    cfg: OrchestratorConfig,
    sim_clock: &SimulatedClock,
    settings: Settings,
) -> Result<(), Breach> {
    let observer = Arc::new(SimObserver {
        world: world.clone(),
    });
    let orch = Orchestrator::start_on_this_thread(store.clone(), cfg, observer)
        .await
        .map_err(|e| violation("the orchestrator starts", e.to_string()))?;
    {
        let mut w = lock(world);
        if w.chance(0.5) {
            w.notify = Some(orch.clone());
            w.log("waiting jobs are also announced by store notifications");
        }
    }
    // Users of every tier.
    let users = lock(world).rng.random_range(2..=5);
    for n in 0..users {
        let reg = orch
            .register(&format!("user{n}@example.com"), &format!("User {n}"))
            .await
            .map_err(|e| violation("users register", e.to_string()))?;
        let tier = Tier::ALL[lock(world).rng.random_range(0..Tier::ALL.len())];
        if tier != Tier::Free {
            let expires = Some(sim_clock_now(&orch) + chrono::Duration::days(30));
            orch.set_membership(
                reg.user.id,
                Membership {
                    tier,
                    expires_at: expires,
                },
            )
            .await
            .map_err(|e| violation("memberships are set", e.to_string()))?;
        }
        let mut w = lock(world);
        w.log(format!("u{n} registers ({tier:?})"));
        w.users.push(SimUser {
            id: reg.user.id,
            keys: Vec::new(),
            grants: Vec::new(),
        });
    }
    // Workers: sometimes one alone, so a retry comes back to the worker
    // that failed it.
    let count = {
        let mut w = lock(world);
        if w.chance(0.3) {
            1
        } else {
            w.rng.random_range(2..=4)
        }
    };
    let mut workers = Vec::new();
    for n in 0..count {
        let slots = lock(world).rng.random_range(1..=3);
        let sim = SimWorker {
            n,
            slots,
            world: world.clone(),
            orch: orch.clone(),
            addr: None,
            open: Arc::new(AtomicBool::new(false)),
            generation: 0,
            running: BTreeMap::new(),
            silent_until: None,
        };
        workers.push(sim.start());
    }
    let mut suspended: BTreeSet<usize> = BTreeSet::new();
    for step in 0..settings.steps {
        let (action, pause) = {
            let mut w = lock(world);
            (w.rng.random_range(0..100u32), w.between(0, 1_500))
        };
        match action {
            0..=44 => submit(world, &orch).await,
            45..=56 => cancel(world, &orch).await,
            57..=63 => grant(world, &orch).await,
            64..=66 => {
                let (n, tier) = {
                    let mut w = lock(world);
                    let n = {
                        let len = w.users.len();
                        w.pick(len)
                    };
                    (n, Tier::ALL[w.rng.random_range(0..Tier::ALL.len())])
                };
                let user = lock(world).users[n].id;
                let expires = Some(sim_clock_now(&orch) + chrono::Duration::days(30));
                let res = orch
                    .set_membership(
                        user,
                        Membership {
                            tier,
                            expires_at: expires,
                        },
                    )
                    .await;
                lock(world).log(format!("u{n} becomes {tier:?}: {}", ok_or(&res)));
            }
            67..=69 => {
                let n = {
                    let mut w = lock(world);
                    {
                        let len = w.users.len();
                        w.pick(len)
                    }
                };
                let user = lock(world).users[n].id;
                let status = if suspended.remove(&n) {
                    AccountStatus::Active
                } else {
                    suspended.insert(n);
                    AccountStatus::Suspended
                };
                let res = orch.set_status(user, status).await;
                lock(world).log(format!("u{n} {status:?}: {}", ok_or(&res)));
            }
            70..=74 => {
                let by = {
                    let mut w = lock(world);
                    chrono::Duration::seconds(w.rng.random_range(-120..=120))
                };
                sim_clock.jump(by);
                let mut w = lock(world);
                let t = tokio::time::Instant::now();
                w.jumps.push(t);
                w.log(format!("the wall clock jumps {by}"));
            }
            75..=79 => {
                let (n, pause) = {
                    let mut w = lock(world);
                    (w.rng.random_range(0..workers.len()), w.between(100, 8_000))
                };
                workers[n].do_send(Disconnect(pause));
            }
            80..=83 => {
                let (n, pause) = {
                    let mut w = lock(world);
                    (
                        w.rng.random_range(0..workers.len()),
                        w.between(1_000, 7_000),
                    )
                };
                workers[n].do_send(GoSilent(pause));
            }
            84..=88 => {
                let mut w = lock(world);
                let rate = [0.0, 0.0, 0.05, 0.2, 0.5][w.rng.random_range(0..5)];
                w.fault_rate = rate;
                w.log(format!("store faults at {rate}"));
            }
            89..=90 => change_prices(world, &orch).await,
            _ => {
                let extra = lock(world).between(1_000, 6_000);
                tokio::time::sleep(extra).await;
            }
        }
        tokio::time::sleep(pause).await;
        check(world, &store, false)
            .await
            .map_err(|v| step_note(v, step))?;
    }
    // Drain: faults heal, workers behave and come back, suspended users
    // stay suspended; every job must end.
    {
        let mut w = lock(world);
        w.fault_rate = 0.0;
        w.behave = true;
        w.log("drain");
    }
    for w in &workers {
        w.do_send(Connect);
    }
    let began = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        check(world, &store, false).await?;
        let open = store
            .inner
            .jobs_in_states(&[JobState::Queued, JobState::Assigned, JobState::Running])
            .await
            .map_err(|e| violation("the store answers", e.to_string()))?;
        if open.is_empty() {
            break;
        }
        if began.elapsed() > DRAIN_LIMIT {
            let mut w = lock(world);
            let names: Vec<String> = open
                .iter()
                .map(|j| format!("{} {:?} attempt {}", w.job_name(j.id), j.state, j.attempts))
                .collect();
            return Err(violation(
                "every job ends when the run drains",
                format!("after {DRAIN_LIMIT:?}: {}", names.join(", ")),
            ));
        }
    }
    check(world, &store, true).await?;
    let mut w = lock(world);
    w.notify = None;
    w.log("drained");
    drop(w);
    drop(workers);
    Ok(())
}

fn step_note(mut v: Breach, step: usize) -> Breach {
    v.detail = format!("{} (after step {step})", v.detail);
    v
}

fn sim_clock_now(orch: &Orchestrator) -> DateTime<Utc> {
    orch.config().clock.now()
}

fn ok_or<T>(res: &Result<T, OrchestratorError>) -> String {
    match res {
        Ok(_) => "ok".into(),
        Err(e) => error_name(e),
    }
}

async fn submit(world: &Shared, orch: &Orchestrator) {
    let (n, user, request, key, replay) = {
        let mut w = lock(world);
        let n = {
            let len = w.users.len();
            w.pick(len)
        };
        let replay = !w.users[n].keys.is_empty() && w.chance(0.25);
        if replay {
            let k = {
                let len = w.users[n].keys.len();
                w.pick(len)
            };
            let (key, req, _) = w.users[n].keys[k].clone();
            (n, w.users[n].id, req, Some(key), true)
        } else {
            let id = w.next();
            let count = w.rng.random_range(1..=3);
            let req = request(format!("sim prompt {id}"), count);
            let key = if w.chance(0.6) {
                let key = format!("key-{id}");
                w.users[n].keys.push((key.clone(), req.clone(), None));
                Some(key)
            } else {
                None
            };
            (n, w.users[n].id, req, key, false)
        }
    };
    let idem = key.as_deref().and_then(|k| IdempotencyKey::parse(k).ok());
    let res = orch.submit(user, request, idem).await;
    let mut w = lock(world);
    let how = match (&key, replay) {
        (Some(k), true) => format!(" replaying {k}"),
        (Some(k), false) => format!(" with {k}"),
        (None, _) => String::new(),
    };
    match res {
        Ok(sub) => {
            let name = w.job_name(sub.job.id);
            w.log(format!("u{n} submits{how}: {name} (cost {})", sub.job.cost));
            if let Some(k) = &key {
                let entry = w.users[n].keys.iter_mut().find(|(key, _, _)| key == k);
                if let Some((_, _, first)) = entry {
                    match first {
                        None => *first = Some(sub.job.id),
                        Some(id) if *id != sub.job.id => {
                            let first = *id;
                            let (a, b) = (w.job_name(first), w.job_name(sub.job.id));
                            w.found.push(violation(
                                "an idempotent replay returns the first job",
                                format!("{k} gave {a}, then {b}"),
                            ));
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        Err(e) => w.log(format!("u{n} submits{how}: {}", error_name(&e))),
    }
}

async fn cancel(world: &Shared, orch: &Orchestrator) {
    let picked = {
        let mut w = lock(world);
        if w.jobs.is_empty() {
            None
        } else {
            let j = {
                let len = w.jobs.len();
                w.pick(len)
            };
            Some((j, w.jobs[j]))
        }
    };
    let Some((j, job)) = picked else {
        return;
    };
    let owner = match orch.store().job(job).await {
        Ok(Some(found)) => found.user_id,
        _ => return,
    };
    let res = orch.cancel(owner, job).await;
    let mut w = lock(world);
    let user = w.user_name(owner);
    match res {
        Ok(found) => w.log(format!("{user} cancels j{j}: {:?}", found.charge)),
        Err(e) => w.log(format!("{user} cancels j{j}: {}", error_name(&e))),
    }
}

/// A new price table, taking effect some time after the notice.
async fn change_prices(world: &Shared, orch: &Orchestrator) {
    let (price, after) = {
        let mut w = lock(world);
        (w.rng.random_range(1..=4), w.between(0, 20_000))
    };
    let prices = PriceTable {
        image_standard: price,
        image_large: price * 2,
        ..PriceTable::default()
    };
    let notice = orch.config().platform.price_notice;
    let at =
        orch.config().clock.now() + chrono::Duration::from_std(notice + after).unwrap_or_default();
    let res = orch.announce_prices(prices, at).await;
    lock(world).log(format!(
        "prices: {price} an image from {after:?} after the notice: {}",
        ok_or(&res)
    ));
}

async fn grant(world: &Shared, orch: &Orchestrator) {
    let (n, user, key, amount) = {
        let mut w = lock(world);
        let n = {
            let len = w.users.len();
            w.pick(len)
        };
        if !w.users[n].grants.is_empty() && w.chance(0.3) {
            let k = {
                let len = w.users[n].grants.len();
                w.pick(len)
            };
            let (key, amount) = w.users[n].grants[k].clone();
            (n, w.users[n].id, key, amount)
        } else {
            let key = format!("grant-{}", w.next());
            let amount = w.rng.random_range(10..=300);
            w.users[n].grants.push((key.clone(), amount));
            (n, w.users[n].id, key, amount)
        }
    };
    let Ok(credits) = Credits::new(amount) else {
        return;
    };
    let res = orch
        .grant(
            user,
            Grant {
                amount: credits,
                source: GrantSource::Purchase,
                idempotency_key: Some(key.clone()),
                note: Some(key.clone()),
            },
        )
        .await;
    lock(world).log(format!("u{n} buys {amount} ({key}): {}", ok_or(&res)));
}

// ---------------------------------------------------------------- invariants

/// Every invariant, read from the store (the inner one: no faults).
async fn check(world: &Shared, store: &SimStore, end: bool) -> Result<(), Breach> {
    let factor = lock(world).price_factor;
    if let Some(v) = lock(world).found.first().cloned() {
        return Err(v);
    }
    let fail = |e: StoreError| violation("the store answers", e.to_string());
    let audit = store.inner.audit_ledgers().await.map_err(fail)?;
    let all = store
        .inner
        .jobs_in_states(&[
            JobState::Queued,
            JobState::Assigned,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
        ])
        .await
        .map_err(fail)?;
    let mut by_job: BTreeMap<JobId, Vec<&LedgerEntry>> = BTreeMap::new();
    for (user, wallet, entries) in &audit {
        let replayed = replay(entries).map_err(|e| {
            violation(
                "balance = Σ grants − Σ posts, held = Σ open holds",
                format!("{user}: {e}"),
            )
        })?;
        if replayed != *wallet {
            return Err(violation(
                "balance = Σ grants − Σ posts, held = Σ open holds",
                format!("{user}: the ledger replays to {replayed:?}, the wallet is {wallet:?}"),
            ));
        }
        if wallet.balance.get() < 0 || wallet.held.get() < 0 || wallet.held > wallet.balance {
            return Err(violation(
                "no wallet goes negative",
                format!("{user}: {wallet:?}"),
            ));
        }
        let mut notes = BTreeSet::new();
        for e in entries {
            if let Some(job) = e.job_id {
                by_job.entry(job).or_default().push(e);
            }
            if e.kind == EntryKind::Grant {
                if let Some(note) = &e.note {
                    if !notes.insert(note.clone()) {
                        return Err(violation(
                            "an idempotent grant is credited once",
                            format!("{user}: {note} credited twice"),
                        ));
                    }
                }
            }
        }
        let open: i64 = all
            .iter()
            .filter(|j| j.user_id == *user && j.charge == Charge::Held)
            .map(|j| j.cost.get())
            .sum();
        if open != wallet.held.get() {
            return Err(violation(
                "balance = Σ grants − Σ posts, held = Σ open holds",
                format!("{user}: held {} but open holds sum to {open}", wallet.held),
            ));
        }
        if end && !wallet.held.is_zero() {
            return Err(violation(
                "no hold stays open when the run drains",
                format!("{user}: {wallet:?}"),
            ));
        }
    }
    let versions = store.inner.price_versions().await.map_err(fail)?;
    let mut prompts = BTreeSet::new();
    for job in &all {
        let name = lock(world).job_name(job.id);
        if !prompts.insert(job.spec.prompt.clone()) {
            return Err(violation(
                "an idempotent replay is charged once",
                format!("{name}: a second job for {:?}", job.spec.prompt),
            ));
        }
        let price = versions
            .iter()
            .find(|v| v.version == job.price_version)
            .and_then(|v| v.prices.cost_with_factor(&job.spec, factor).ok());
        if price != Some(job.cost) {
            return Err(Breach {
                invariant: "a job is charged the price in force at submission",
                detail: format!(
                    "{name}: cost {} at price version {}, which prices it {price:?}",
                    job.cost, job.price_version
                ),
            });
        }
        let entries = by_job.get(&job.id).map(Vec::as_slice).unwrap_or(&[]);
        let count = |k: EntryKind| entries.iter().filter(|e| e.kind == k).count();
        let (holds, posts, voids) = (
            count(EntryKind::Hold),
            count(EntryKind::Post),
            count(EntryKind::Void),
        );
        if holds != 1
            || entries
                .iter()
                .any(|e| e.kind == EntryKind::Hold && e.amount != job.cost)
        {
            return Err(violation(
                "every job holds its price once",
                format!("{name}: {holds} holds for cost {}", job.cost),
            ));
        }
        if posts + voids > 1 {
            return Err(violation(
                "every hold is resolved at most once",
                format!("{name}: {posts} posts, {voids} voids"),
            ));
        }
        let books = match job.charge {
            Charge::Held => posts + voids == 0,
            Charge::Posted => posts == 1,
            Charge::Voided => voids == 1,
        };
        if !books {
            return Err(violation(
                "a job's charge matches its ledger",
                format!("{name} {:?}: {posts} posts, {voids} voids", job.charge),
            ));
        }
        let attempts = store.inner.attempts(job.id).await.map_err(fail)?;
        let open = attempts.iter().filter(|a| a.outcome.is_none()).count();
        let in_flight = matches!(job.state, JobState::Assigned | JobState::Running);
        if open > usize::from(in_flight) || (in_flight && open != 1) {
            return Err(violation(
                "no job is in two attempts at once",
                format!("{name} {:?} with {open} open attempts", job.state),
            ));
        }
        let leases: BTreeSet<LeaseToken> = attempts.iter().map(|a| a.lease).collect();
        if leases.len() != attempts.len() {
            return Err(violation(
                "no job is in two attempts at once",
                format!("{name}: two attempts share a lease"),
            ));
        }
        let expected = match job.state {
            JobState::Queued | JobState::Assigned | JobState::Running => Charge::Held,
            JobState::Succeeded => Charge::Posted,
            JobState::Failed => match &job.error {
                Some(e) if e.class == FailureClass::User => Charge::Posted,
                _ => Charge::Voided,
            },
            JobState::Cancelled => {
                if attempts
                    .iter()
                    .any(|a| a.outcome == Some(AttemptOutcomeLabel::Cancelled))
                {
                    Charge::Posted
                } else {
                    Charge::Voided
                }
            }
        };
        if job.charge != expected {
            let invariant = match job.state {
                JobState::Succeeded => "every succeeded job is posted once",
                JobState::Failed => {
                    "every system-failed job is voided once, a user-failed one posted"
                }
                JobState::Cancelled if expected == Charge::Posted => {
                    "a job cancelled in flight is posted (its GPU time was used)"
                }
                JobState::Cancelled => "a job cancelled while waiting is voided",
                _ => "a job not finished holds its credits",
            };
            return Err(violation(
                invariant,
                format!("{name} {:?} is {:?}", job.state, job.charge),
            ));
        }
        if job.state == JobState::Succeeded {
            let done = attempts
                .iter()
                .rev()
                .find(|a| a.outcome == Some(AttemptOutcomeLabel::Succeeded));
            let sent = done.is_some_and(|a| lock(world).completes.contains(&(job.id, a.lease)));
            if !sent {
                return Err(violation(
                    "a job succeeds only by its current attempt's own completion",
                    format!(
                        "{name} succeeded in attempt {} without a completion sent with its lease",
                        job.attempts
                    ),
                ));
            }
        }
        if end && !job.state.is_terminal() {
            return Err(violation(
                "every job ends when the run drains",
                format!("{name} {:?}", job.state),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- main

struct Args {
    seed: Option<u64>,
    seeds: Option<u64>,
    first: u64,
    steps: usize,
    plant: Option<Bug>,
    trace: usize,
    ambiguous: bool,
}

fn bug_named(name: &str) -> Option<Bug> {
    match name {
        "late-complete" => Some(Bug::LateCompleteAccepted),
        "cancel-voids" => Some(Bug::CancelVoidsRunning),
        "retry-place" => Some(Bug::RetryLosesItsPlace),
        _ => None,
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seed: None,
        seeds: None,
        first: 0,
        steps: STEPS,
        plant: None,
        trace: TRACE_SHOWN,
        ambiguous: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: {v:?} is not a number"))
        };
        match arg.as_str() {
            "--seed" => args.seed = Some(number("--seed", value("--seed")?)?),
            "--seeds" => args.seeds = Some(number("--seeds", value("--seeds")?)?),
            "--first" => args.first = number("--first", value("--first")?)?,
            "--steps" => args.steps = number("--steps", value("--steps")?)? as usize,
            "--ambiguous" => args.ambiguous = true,
            "--trace" => args.trace = number("--trace", value("--trace")?)? as usize,
            "--plant" => {
                let v = value("--plant")?;
                args.plant = Some(bug_named(&v).ok_or_else(|| {
                    format!("--plant {v:?}: expected late-complete, cancel-voids or retry-place")
                })?);
            }
            // What the test runner passes to every test binary.
            _ => {}
        }
    }
    Ok(args)
}

fn report_failure(outcome: &Outcome, settings: Settings, shown: usize) {
    let Some(v) = &outcome.failure else {
        return;
    };
    let from = outcome.trace.len().saturating_sub(shown);
    eprintln!(
        "--- last {} events of seed {}",
        outcome.trace.len() - from,
        outcome.seed
    );
    for line in &outcome.trace[from..] {
        eprintln!("{line}");
    }
    let plant = match settings.plant {
        Some(Bug::LateCompleteAccepted) => " --plant late-complete",
        Some(Bug::CancelVoidsRunning) => " --plant cancel-voids",
        Some(Bug::RetryLosesItsPlace) => " --plant retry-place",
        None => "",
    };
    let ambiguous = if settings.ambiguous {
        " --ambiguous"
    } else {
        ""
    };
    eprintln!(
        "seed {} FAILED: {}: {}\nreplay: cargo test -p admedia-actors --test simulation -- --seed {} --steps {}{plant}{ambiguous}",
        outcome.seed, v.invariant, v.detail, outcome.seed, settings.steps
    );
}

/// Seeds `first..first+count`; the first failure, if any.
fn sweep(first: u64, count: u64, settings: Settings) -> Option<Outcome> {
    (first..first + count)
        .map(|seed| run(seed, settings))
        .find(|o| o.failure.is_some())
}

/// What `cargo test` runs.
fn suite(steps: usize, shown: usize) -> bool {
    let mut ok = true;
    let clean = Settings {
        steps,
        plant: None,
        ambiguous: false,
    };
    let began = std::time::Instant::now();
    match sweep(0, SUITE_SEEDS, clean) {
        Some(failed) => {
            report_failure(&failed, clean, shown);
            ok = false;
        }
        None => println!(
            "simulation: {SUITE_SEEDS} seeds of {steps} steps passed in {:.1} s",
            began.elapsed().as_secs_f64()
        ),
    }
    let ambiguous = Settings {
        ambiguous: true,
        ..clean
    };
    let began = std::time::Instant::now();
    match sweep(SUITE_SEEDS, AMBIGUOUS_SEEDS, ambiguous) {
        Some(failed) => {
            report_failure(&failed, ambiguous, shown);
            ok = false;
        }
        None => println!(
            "simulation: {AMBIGUOUS_SEEDS} seeds with ambiguous commits passed in {:.1} s",
            began.elapsed().as_secs_f64()
        ),
    }
    for seed in [1, 7] {
        let (a, b) = (run(seed, clean), run(seed, clean));
        if a.hash != b.hash || a.trace != b.trace {
            let at = a.trace.iter().zip(&b.trace).position(|(x, y)| x != y);
            eprintln!(
                "simulation: seed {seed} is not deterministic: {} then {} (first difference at line {at:?})",
                a.hash, b.hash
            );
            if let Some(i) = at {
                eprintln!("  {}\n  {}", a.trace[i], b.trace[i]);
            }
            ok = false;
        } else {
            println!(
                "simulation: seed {seed} replays exactly (trace {} lines, hash {})",
                a.trace.len(),
                a.hash
            );
        }
    }
    let planted = [
        (
            Bug::LateCompleteAccepted,
            "a job succeeds only by its current attempt's own completion",
        ),
        (
            Bug::CancelVoidsRunning,
            "a job cancelled in flight is posted (its GPU time was used)",
        ),
        (
            Bug::RetryLosesItsPlace,
            "jobs of a user are dispatched in submission order",
        ),
    ];
    for (bug, invariant) in planted {
        let settings = Settings {
            steps,
            plant: Some(bug),
            ambiguous: false,
        };
        match sweep(0, PLANTED_WITHIN, settings) {
            Some(found) => {
                let named = found.failure.as_ref().map(|v| v.invariant).unwrap_or("");
                if named == invariant {
                    println!(
                        "simulation: planted {bug:?} found by seed {}: {named}",
                        found.seed
                    );
                } else {
                    report_failure(&found, settings, shown);
                    eprintln!("simulation: planted {bug:?} was expected to break {invariant:?}");
                    ok = false;
                }
            }
            None => {
                eprintln!("simulation: planted {bug:?} not found within {PLANTED_WITHIN} seeds");
                ok = false;
            }
        }
    }
    ok
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("simulation: {e}");
            std::process::exit(2);
        }
    };
    let settings = Settings {
        steps: args.steps,
        plant: args.plant,
        ambiguous: args.ambiguous,
    };
    let ok = if let Some(seed) = args.seed {
        let outcome = run(seed, settings);
        if outcome.failure.is_some() {
            report_failure(&outcome, settings, args.trace);
        } else {
            for line in &outcome.trace {
                println!("{line}");
            }
            println!(
                "seed {seed} passed: {} events, trace hash {}",
                outcome.trace.len(),
                outcome.hash
            );
        }
        outcome.failure.is_none()
    } else if let Some(count) = args.seeds {
        let began = std::time::Instant::now();
        let failed = sweep(args.first, count, settings);
        let secs = began.elapsed().as_secs_f64();
        match &failed {
            Some(o) => report_failure(o, settings, args.trace),
            None => println!(
                "simulation: seeds {}..{} ({} steps) passed in {secs:.1} s: {:.1} seeds/s",
                args.first,
                args.first + count,
                args.steps,
                count as f64 / secs.max(1e-9)
            ),
        }
        failed.is_none()
    } else {
        suite(args.steps, args.trace)
    };
    if !ok {
        std::process::exit(1);
    }
}
