//! `SchedulerActor`: one per node. Owns the waiting line, the idle worker
//! slots, the retry timers, the map of jobs in flight and each worker's
//! health; decides dispatch order and placement and starts a `JobActor` per
//! dispatched attempt. Every event that can make a waiting job runnable (a
//! job arriving or leaving, a slot or a running-limit turn freed, a worker
//! joining, a retry delay or a quarantine ending) dispatches.

// Ordered maps: which worker takes a job, and the order in which a departed
// worker's attempts or the delayed retries are handled, must not depend on
// a hash seed, so one simulation seed replays one run (docs/simulation.md).
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::actors::job_actor::JobActor;
use crate::actors::messages::{
    Adopt, AttemptEnded, CancelAttempt, CancelInFlight, Deposed, Drain, Enqueue, NextStep,
    Registered, SchedulerHandle, Settle, Withdraw, WorkerDraining, WorkerHandle, WorkerJoined,
    WorkerLeft,
};
use crate::actors::wallet::WalletRegistry;
use crate::attempt_files::AttemptFiles;
use crate::config::OrchestratorConfig;
use crate::domain::ids::{JobId, LeaseToken, WorkerId};
use crate::domain::job::{Job, JobState};
use crate::domain::tier::PerTier;
use crate::observer::{AttemptResult, Observer};
use crate::scheduler::queue::{FairQueue, JobClass, QueuedJob};
use crate::scheduler::resume;
use crate::store::{AttemptRecord, StoreResult};
use crate::store::{Store, StoreError};
use crate::wire::{AttemptId, Capabilities, PresentedAttempt, RefusedAttempt};

/// How often the scheduler compares its line with the store, so a job the
/// store holds as waiting can never be forgotten by the actors.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// How many waiting jobs one step of a reconciliation pass reads.
const RECONCILE_PAGE: usize = 2_000;
/// After a store outage during assignment, when to try the job again.
const REQUEUE_AFTER_STORE_ERROR: Duration = Duration::from_millis(500);
/// How often waiting jobs are checked against their tier's waiting limit.
const EXPIRY_SWEEP: Duration = Duration::from_secs(1);

struct WorkerSlots {
    worker: WorkerHandle,
    caps: Capabilities,
    free: u32,
    /// Finishing what it runs; takes nothing new.
    draining: bool,
    warm: BTreeSet<Arc<str>>,
    /// When a slot last became free, for dispatch latency.
    freed_at: Option<Instant>,
    /// Its name is quarantined: it takes nothing new.
    quarantined: bool,
}

impl WorkerSlots {
    fn takes(&self, class: &JobClass) -> bool {
        self.free > 0
            && !self.draining
            && !self.quarantined
            && self.caps.serves(class.kind, &class.model, class.vram_mb)
    }
}

/// A worker's recent record, by name, so reconnecting does not clear it.
#[derive(Clone, Debug, Default)]
struct WorkerHealth {
    /// System failures since its last success.
    consecutive_failures: u32,
    /// Quarantines since its last success; each lasts twice the one before.
    level: u32,
    until: Option<Instant>,
    /// Ends the current quarantine.
    timer: Option<SpawnHandle>,
}

struct InFlight {
    actor: Addr<JobActor>,
    worker: WorkerId,
    /// The worker's name: its health is kept by name, and the attempt may
    /// end after the worker left (lost with its connection).
    worker_name: String,
    job: QueuedJob,
}

pub struct SchedulerActor {
    queue: FairQueue,
    workers: BTreeMap<WorkerId, WorkerSlots>,
    health: BTreeMap<String, WorkerHealth>,
    in_flight: BTreeMap<JobId, InFlight>,
    /// Retries waiting for their backoff to pass.
    delayed: BTreeMap<JobId, SpawnHandle>,
    recent: RecentDispatches,
    /// The election term this scheduler leads; `None` on a standby.
    epoch: Option<u64>,
    store: Arc<dyn Store>,
    wallets: WalletRegistry,
    config: Arc<OrchestratorConfig>,
    observer: Arc<dyn Observer>,
    /// How the job actors it starts reach it back.
    handle: SchedulerHandle,
    /// Each attempt's input and output files (see `attempt_files`).
    files: Option<Arc<dyn AttemptFiles>>,
    /// Attempts in flight under an earlier term, waiting for their worker
    /// to present them again (see `resume`); what is left of them when the
    /// grace ends counts as lost.
    orphans: BTreeMap<JobId, Job>,
    /// The grace of this term ended: an orphan handed back now is lost at
    /// once.
    grace_over: bool,
    /// Workers whose presented attempts are being checked in the store;
    /// they are registered (and welcomed) once that is done.
    presenting: BTreeMap<WorkerId, Presenting>,
    /// A reconciliation pass is reading the store's waiting jobs.
    reconciling: bool,
}

struct Presenting {
    caps: Capabilities,
    worker: WorkerHandle,
    refused: Vec<RefusedAttempt>,
}

impl SchedulerActor {
    /// `handle` is this scheduler's own (made from its mailbox before it
    /// starts), for the job actors it starts; `files` gives each attempt
    /// its files (none: the files a worker names are trusted).
    pub fn new(
        store: Arc<dyn Store>,
        wallets: WalletRegistry,
        config: Arc<OrchestratorConfig>,
        observer: Arc<dyn Observer>,
        handle: SchedulerHandle,
        files: Option<Arc<dyn AttemptFiles>>,
    ) -> SchedulerActor {
        SchedulerActor {
            queue: FairQueue::new(config.tiers, config.fairness),
            workers: BTreeMap::new(),
            health: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            delayed: BTreeMap::new(),
            recent: RecentDispatches::new(),
            epoch: None,
            store,
            wallets,
            config,
            observer,
            handle,
            files,
            orphans: BTreeMap::new(),
            grace_over: true,
            presenting: BTreeMap::new(),
            reconciling: false,
        }
    }

    fn free_slots(&self) -> bool {
        self.workers
            .values()
            .any(|w| w.free > 0 && !w.draining && !w.quarantined)
    }

    /// Hands out jobs while an idle slot can take one. Only requirement
    /// classes some idle slot serves are looked at, so a job nobody can run
    /// never holds up one that can be run.
    fn dispatch(&mut self) {
        let Some(epoch) = self.epoch else {
            // A standby dispatches nothing; the active scheduler of the
            // cluster hears of every waiting job through the store.
            return;
        };
        while self.free_slots() {
            let workers = &self.workers;
            let Some(job) = self
                .queue
                .pop_next(|class| workers.values().any(|w| w.takes(class)))
            else {
                break;
            };
            let class = job.class();
            // A retry avoids the worker it failed on if another can take
            // it; then a worker with the model loaded wins; then the one
            // with the most free slots, to spread load.
            let chosen = self
                .workers
                .iter()
                .filter(|(_, w)| w.takes(&class))
                .max_by_key(|(id, w)| {
                    (job.avoid != Some(**id), w.warm.contains(&job.model), w.free)
                })
                .map(|(id, _)| *id);
            let Some(worker_id) = chosen else {
                // `takes` said yes a moment ago; put it back rather than lose it.
                self.queue.finished(job.user_id);
                self.queue.push(job);
                break;
            };
            let Some(slots) = self.workers.get_mut(&worker_id) else {
                break;
            };
            slots.free -= 1;
            self.recent.record(job.tier, self.config.clock.instant());
            slots.warm.insert(job.model.clone());
            let ready_since = slots
                .freed_at
                .map_or(job.enqueued_at, |f| f.max(job.enqueued_at));
            let worker = slots.worker.clone();
            let worker_name = slots.caps.name.clone();
            let job_id = job.job_id;
            let actor = JobActor::new(
                job.clone(),
                LeaseToken::generate(),
                worker_id,
                worker,
                self.handle.clone(),
                self.wallets.clone(),
                self.store.clone(),
                self.config.clone(),
                self.observer.clone(),
                ready_since,
                epoch,
            )
            .with_files(self.files.clone())
            .start();
            self.in_flight.insert(
                job_id,
                InFlight {
                    actor,
                    worker: worker_id,
                    worker_name,
                    job,
                },
            );
        }
    }

    /// Counts an attempt's end against (or for) the worker that ran it; N
    /// system failures in a row quarantine its name for a cool-down that
    /// doubles while failures continue.
    fn record_health(&mut self, name: String, result: AttemptResult, ctx: &mut Context<Self>) {
        let failed = match result {
            // A withheld output was still a GPU that worked.
            AttemptResult::Succeeded | AttemptResult::Withheld => false,
            AttemptResult::SystemFailure | AttemptResult::LeaseLost | AttemptResult::TimedOut => {
                true
            }
            AttemptResult::UserFailure | AttemptResult::Cancelled => return,
        };
        let health = self.health.entry(name.clone()).or_default();
        if !failed {
            let was_quarantined = health.until.is_some();
            if let Some(timer) = health.timer.take() {
                ctx.cancel_future(timer);
            }
            *health = WorkerHealth::default();
            if was_quarantined {
                // An attempt it ran from before its quarantine succeeded:
                // its record is clean again, so its slots take work again
                // too (the simulation found a worker left out for good, its
                // cool-down timer cancelled, when only the record was reset).
                self.set_quarantined(&name, false);
            }
            return;
        }
        health.consecutive_failures += 1;
        if health.consecutive_failures < self.config.quarantine_after || health.until.is_some() {
            return;
        }
        if !self.may_quarantine(&name) {
            tracing::info!(worker = %name, "not quarantined: too much of the fleet already is");
            return;
        }
        let Some(health) = self.health.get_mut(&name) else {
            return;
        };
        let cool_down = self
            .config
            .quarantine_base
            .saturating_mul(1u32 << health.level.min(16))
            .min(self.config.quarantine_max);
        health.level += 1;
        health.until = Some(self.config.clock.instant() + cool_down);
        tracing::warn!(worker = %name, failures = health.consecutive_failures,
            cool_down_ms = cool_down.as_millis() as u64, "worker quarantined");
        let timer_name = name.clone();
        health.timer = Some(ctx.run_later(cool_down, move |act, ctx| {
            act.end_quarantine(&timer_name, false, ctx);
        }));
        self.observer.worker_quarantined();
        self.set_quarantined(&name, true);
    }

    /// Whether quarantining `name` keeps the quarantined share of the
    /// connected workers (counting `name`, even if it has just left)
    /// within `quarantine_max_percent`.
    fn may_quarantine(&self, name: &str) -> bool {
        let mut names: BTreeSet<&str> = self
            .workers
            .values()
            .map(|w| w.caps.name.as_str())
            .collect();
        names.insert(name);
        let quarantined = names
            .iter()
            .filter(|n| self.health.get(**n).is_some_and(|h| h.until.is_some()))
            .count();
        let allowed = names.len() * usize::from(self.config.quarantine_max_percent) / 100;
        quarantined < allowed
    }

    /// The cool-down passed (or an operator lifted it): the worker takes
    /// jobs again. After a cool-down it is on probation: one more system
    /// failure quarantines it again, for twice as long.
    fn end_quarantine(&mut self, name: &str, lifted: bool, ctx: &mut Context<Self>) {
        let Some(health) = self.health.get_mut(name) else {
            return;
        };
        if let Some(timer) = health.timer.take() {
            if lifted {
                ctx.cancel_future(timer);
            }
        }
        health.until = None;
        if lifted {
            *health = WorkerHealth::default();
        } else {
            health.consecutive_failures = self.config.quarantine_after.saturating_sub(1);
        }
        tracing::info!(worker = %name, lifted, "worker quarantine over");
        self.set_quarantined(name, false);
        self.dispatch();
    }

    fn set_quarantined(&mut self, name: &str, on: bool) {
        for w in self.workers.values_mut() {
            if w.caps.name == name {
                w.quarantined = on;
            }
        }
    }

    /// Jobs past their tier's waiting limit fail as expired, refunded.
    fn expire_overdue(&mut self, ctx: &mut Context<Self>) {
        let now = self.config.clock.now();
        let expired = self.queue.take_expired(&self.config.max_wait.0, now);
        for job in expired {
            let wallets = self.wallets.clone();
            let addr = ctx.address();
            actix::spawn(async move {
                match wallets.expire(job.user_id, job.job_id).await {
                    Ok(_) => {}
                    // Assigned, cancelled or gone meanwhile: nothing to do.
                    Err(crate::store::StoreError::StaleTransition { .. })
                    | Err(crate::store::StoreError::NotFound(_))
                    | Err(crate::store::StoreError::JobFinished) => {}
                    Err(e) => {
                        tracing::warn!(job = %job.job_id, error = %e, "could not expire; back in line");
                        addr.do_send(Enqueue(job));
                    }
                }
            });
        }
    }

    fn enqueue_after(&mut self, job: QueuedJob, delay: Duration, ctx: &mut Context<Self>) {
        let job_id = job.job_id;
        if delay.is_zero() {
            self.queue.push(job);
            return;
        }
        let handle = ctx.run_later(delay, move |act, _| {
            act.delayed.remove(&job_id);
            let mut job = job;
            job.enqueued_at = act.config.clock.instant();
            act.queue.push(job);
            act.dispatch();
        });
        self.delayed.insert(job_id, handle);
    }

    /// Drops the waiting line and retry timers (the store keeps them; a
    /// new term rebuilds the line from it).
    fn forget_line(&mut self, ctx: &mut Context<Self>) {
        self.queue = FairQueue::new(self.config.tiers, self.config.fairness);
        for (_, handle) in std::mem::take(&mut self.delayed) {
            ctx.cancel_future(handle);
        }
        // Another term's recovery decides on them now.
        self.orphans.clear();
        self.grace_over = true;
    }

    /// An orphan claimed by a presentation that was not taken back after
    /// all: it waits again while the grace lasts, else it is lost now.
    fn return_orphan(&mut self, job: Job, ctx: &mut Context<Self>) {
        if !self.grace_over {
            self.orphans.insert(job.id, job);
            return;
        }
        let (wallets, config, addr) = (
            self.wallets.clone(),
            self.config.clone(),
            Some(ctx.address()),
        );
        actix::spawn(async move {
            lose(&wallets, &config, &addr, job).await;
        });
    }

    /// Makes the worker known and welcomes it; its `occupied` slots run
    /// attempts it was given back.
    fn register(
        &mut self,
        id: WorkerId,
        caps: Capabilities,
        worker: WorkerHandle,
        occupied: u32,
        welcome: Registered,
    ) {
        worker.registered.do_send(welcome);
        let quarantined = self
            .health
            .get(&caps.name)
            .is_some_and(|h| h.until.is_some());
        self.workers.insert(
            id,
            WorkerSlots {
                free: caps.slots.saturating_sub(occupied),
                draining: false,
                warm: caps
                    .loaded_models
                    .iter()
                    .map(|m| Arc::from(m.as_str()))
                    .collect(),
                caps,
                worker,
                // Its slots are free from now on.
                freed_at: Some(self.config.clock.instant()),
                quarantined,
            },
        );
        self.dispatch();
    }

    fn knows(&self, job: JobId) -> bool {
        self.queue.contains(job)
            || self.delayed.contains_key(&job)
            || self.in_flight.contains_key(&job)
    }
}

impl Actor for SchedulerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(RECONCILE_EVERY, |act, ctx| {
            if act.epoch.is_some() && !act.reconciling {
                act.reconciling = true;
                ctx.notify(Reconcile);
            }
        });
        ctx.run_interval(EXPIRY_SWEEP, |act, ctx| {
            if act.epoch.is_some() {
                act.expire_overdue(ctx);
            }
        });
    }
}

impl Handler<Enqueue> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, msg: Enqueue, _ctx: &mut Self::Context) {
        if self.epoch.is_some() && !self.knows(msg.0.job_id) {
            self.queue.push(msg.0);
            self.dispatch();
        }
    }
}

/// This node won the election: lead with `epoch`, from a line rebuilt from
/// the store (the caller sends it with [`Recover`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Activate {
    pub epoch: u64,
}

impl Handler<Activate> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, msg: Activate, ctx: &mut Self::Context) {
        tracing::info!(epoch = msg.epoch, "scheduler active");
        self.epoch = Some(msg.epoch);
        self.forget_line(ctx);
    }
}

/// This node lost (or gave up) the lead: dispatch nothing more.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deactivate;

impl Handler<Deactivate> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, _: Deactivate, ctx: &mut Self::Context) {
        if self.epoch.take().is_some() {
            tracing::warn!("scheduler standing by: another node leads");
        }
        self.forget_line(ctx);
    }
}

impl Handler<Deposed> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, msg: Deposed, ctx: &mut Self::Context) {
        if self.epoch.is_some_and(|e| e < msg.current) {
            tracing::warn!(epoch = ?self.epoch, current = msg.current, "deposed by a newer scheduler");
            self.epoch = None;
            self.forget_line(ctx);
        }
    }
}

/// Is this scheduler the active one, and in which term?
#[derive(Message)]
#[rtype(result = "Option<u64>")]
pub struct CurrentEpoch;

impl Handler<CurrentEpoch> for SchedulerActor {
    type Result = Option<u64>;

    fn handle(&mut self, _: CurrentEpoch, _ctx: &mut Self::Context) -> Option<u64> {
        self.epoch
    }
}

/// A job the store says waits (announced by another node, or found by a
/// sweep): queue it if this scheduler leads.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Waiting(pub JobId);

impl Handler<Waiting> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, msg: Waiting, ctx: &mut Self::Context) {
        if self.epoch.is_none() || self.knows(msg.0) {
            return;
        }
        let store = self.store.clone();
        let addr = ctx.address();
        actix::spawn(async move {
            if let Ok(Some(job)) = store.job(msg.0).await {
                addr.do_send(Recover(vec![job]));
            }
        });
    }
}

impl Handler<Withdraw> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, msg: Withdraw, ctx: &mut Self::Context) {
        self.queue.remove(msg.0);
        if let Some(handle) = self.delayed.remove(&msg.0) {
            ctx.cancel_future(handle);
        }
        // What waited beside it may be runnable now.
        self.dispatch();
    }
}

impl Handler<CancelInFlight> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, msg: CancelInFlight, ctx: &mut Self::Context) {
        if let Some(f) = self.in_flight.get(&msg.0) {
            f.actor.do_send(CancelAttempt);
        }
        // A cancelled job may also be between attempts.
        self.queue.remove(msg.0);
        if let Some(handle) = self.delayed.remove(&msg.0) {
            ctx.cancel_future(handle);
        }
    }
}

impl Handler<WorkerJoined> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, msg: WorkerJoined, ctx: &mut Self::Context) {
        tracing::info!(worker = %msg.id, name = %msg.caps.name, slots = msg.caps.slots,
            presented = msg.presented.len(), "worker joined");
        if msg.presented.is_empty() {
            self.register(msg.id, msg.caps, msg.worker, 0, Registered::default());
            return;
        }
        // Only an attempt of an earlier term still waiting for its worker
        // can be taken back; claiming it here (the actor is the one owner)
        // means neither the end of the grace nor a second presentation can
        // decide on it while the store is read.
        let mut refused = Vec::new();
        let mut claimed = Vec::new();
        for p in msg.presented {
            let reason = if self.epoch.is_none() {
                Some("this node does not run the active scheduler")
            } else if self.in_flight.contains_key(&p.job_id) {
                Some("the attempt is in flight on another connection")
            } else {
                None
            };
            let reason = match (reason, self.orphans.get(&p.job_id)) {
                (Some(reason), _) => reason.to_owned(),
                (None, None) => "no attempt of this job waits for its worker here".to_owned(),
                // A wrong presentation leaves the orphan to its own worker.
                (None, Some(orphan)) if orphan.attempts != p.attempt => {
                    resume::Refusal::OtherAttempt {
                        current: orphan.attempts,
                    }
                    .reason()
                }
                (None, Some(orphan)) if orphan.lease != Some(p.lease) => {
                    resume::Refusal::WrongLease.reason()
                }
                (None, Some(_)) => {
                    if let Some(job) = self.orphans.remove(&p.job_id) {
                        claimed.push((p, job));
                    }
                    continue;
                }
            };
            tracing::info!(job = %p.job_id, attempt = p.attempt, %reason, "presented attempt refused");
            refused.push(RefusedAttempt {
                job_id: p.job_id,
                lease: p.lease,
                reason,
            });
        }
        if claimed.is_empty() {
            tracing::info!(worker = %msg.id, refused = refused.len(), "no presented attempt taken back");
            self.register(
                msg.id,
                msg.caps,
                msg.worker,
                0,
                Registered {
                    resumed: Vec::new(),
                    refused,
                },
            );
            return;
        }
        self.presenting.insert(
            msg.id,
            Presenting {
                caps: msg.caps,
                worker: msg.worker,
                refused,
            },
        );
        let store = self.store.clone();
        let addr = ctx.address();
        let worker = msg.id;
        actix::spawn(async move {
            let mut checked = Vec::with_capacity(claimed.len());
            for (presented, orphan) in claimed {
                let now = store.job(presented.job_id).await;
                let records = store.attempts(presented.job_id).await;
                let read = match (now, records) {
                    (Ok(job), Ok(records)) => Ok((job, records)),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                };
                checked.push(Checked {
                    presented,
                    orphan,
                    read,
                });
            }
            addr.do_send(PresentationChecked { worker, checked });
        });
    }
}

/// One claimed presentation and what the store holds of its job now.
struct Checked {
    presented: PresentedAttempt,
    orphan: Job,
    read: StoreResult<(Option<Job>, Vec<AttemptRecord>)>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct PresentationChecked {
    worker: WorkerId,
    checked: Vec<Checked>,
}

impl Handler<PresentationChecked> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, msg: PresentationChecked, ctx: &mut Self::Context) {
        let Some(presenting) = self.presenting.remove(&msg.worker) else {
            // The worker left while its attempts were checked.
            for c in msg.checked {
                self.return_orphan(c.orphan, ctx);
            }
            return;
        };
        let Presenting {
            caps,
            worker,
            mut refused,
        } = presenting;
        let mut resumed = Vec::new();
        let now = self.config.clock.now();
        for c in msg.checked {
            let p = c.presented;
            let refuse = |reason: String| RefusedAttempt {
                job_id: p.job_id,
                lease: p.lease,
                reason,
            };
            let (job, records) = match c.read {
                Ok(read) => read,
                Err(e) => {
                    tracing::warn!(job = %p.job_id, error = %e, "could not check a presented attempt");
                    refused.push(refuse(format!("the store could not be read: {e}")));
                    self.return_orphan(c.orphan, ctx);
                    continue;
                }
            };
            let deadline = self.config.deadline(c.orphan.spec.kind);
            let verdict = match self.epoch {
                Some(epoch) if resumed.len() < caps.slots as usize => {
                    resume::judge(&p, job.as_ref(), &records, deadline, now)
                        .map(|r| (r, epoch))
                        .map_err(|r| r.reason())
                }
                Some(_) => Err("more attempts presented than the worker has slots".into()),
                None => Err("this node does not run the active scheduler".into()),
            };
            let verdict = match (job, verdict) {
                (Some(job), Ok(v)) => Ok((job, v)),
                (_, Err(reason)) => Err(reason),
                (None, Ok(_)) => Err(resume::Refusal::UnknownJob.reason()),
            };
            let (job, (verdict, epoch)) = match verdict {
                Ok(v) => v,
                Err(reason) => {
                    tracing::info!(job = %p.job_id, attempt = p.attempt, %reason, "presented attempt refused");
                    // It waits again, or is lost now once the grace is
                    // over (a no-op in the store for one that ended).
                    if self.epoch.is_some() {
                        self.return_orphan(c.orphan, ctx);
                    }
                    refused.push(refuse(reason));
                    continue;
                }
            };
            let user = job.user_id;
            let Some(actor) = JobActor::resumed(
                job.clone(),
                verdict,
                msg.worker,
                worker.clone(),
                self.handle.clone(),
                self.wallets.clone(),
                self.store.clone(),
                self.config.clone(),
                self.observer.clone(),
                epoch,
            ) else {
                refused.push(refuse("the job holds no lease".into()));
                continue;
            };
            let actor = actor.with_files(self.files.clone()).start();
            // Before the welcome, so the worker's first report about it
            // already finds its attempt.
            worker.adopt.do_send(Adopt {
                job_id: p.job_id,
                lease: p.lease,
                reply_to: actor.clone().recipient(),
            });
            self.queue.mark_running(user);
            self.in_flight.insert(
                p.job_id,
                InFlight {
                    actor,
                    worker: msg.worker,
                    worker_name: caps.name.clone(),
                    job: QueuedJob::from_job(&job, &self.config),
                },
            );
            tracing::info!(job = %p.job_id, attempt = p.attempt, worker = %msg.worker, "presented attempt taken back");
            resumed.push(AttemptId {
                job_id: p.job_id,
                lease: p.lease,
            });
        }
        let occupied = u32::try_from(resumed.len()).unwrap_or(u32::MAX);
        self.register(
            msg.worker,
            caps,
            worker,
            occupied,
            Registered { resumed, refused },
        );
    }
}

/// Attempts of an earlier term, still in flight in the store at this
/// term's start: their workers may present them within the grace.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Orphaned {
    pub epoch: u64,
    pub jobs: Vec<Job>,
}

impl Handler<Orphaned> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, msg: Orphaned, _ctx: &mut Self::Context) {
        if self.epoch != Some(msg.epoch) {
            return;
        }
        self.grace_over = false;
        for job in msg.jobs {
            self.orphans.insert(job.id, job);
        }
    }
}

/// The grace is over: the orphans no worker presented, to be declared
/// lost; from now on an orphan handed back is lost at once.
#[derive(Message)]
#[rtype(result = "Vec<Job>")]
pub struct GraceOver {
    pub epoch: u64,
}

impl Handler<GraceOver> for SchedulerActor {
    type Result = MessageResult<GraceOver>;

    fn handle(&mut self, msg: GraceOver, _ctx: &mut Self::Context) -> Self::Result {
        if self.epoch != Some(msg.epoch) {
            return MessageResult(Vec::new());
        }
        self.grace_over = true;
        MessageResult(std::mem::take(&mut self.orphans).into_values().collect())
    }
}

/// Settles an attempt lost with the previous scheduler as a system failure
/// (retried, or refunded after the last attempt) and puts a retried job
/// back in line. The lease makes this a no-op for an attempt that ended.
pub async fn lose(
    wallets: &WalletRegistry,
    config: &OrchestratorConfig,
    scheduler: &Option<Addr<SchedulerActor>>,
    job: Job,
) {
    match settle_lost(wallets, config, &job).await {
        Ok(Some(queued)) => {
            if let Some(s) = scheduler {
                s.do_send(Recover(vec![queued]));
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "could not settle an attempt lost with the previous scheduler")
        }
    }
}

/// The settlement itself: the job again when it waits for a retry.
pub async fn settle_lost(
    wallets: &WalletRegistry,
    config: &OrchestratorConfig,
    job: &Job,
) -> Result<Option<Job>, StoreError> {
    let (Some(lease), attempt) = (job.lease, job.attempts) else {
        return Ok(None);
    };
    let delay = config.retry_delay(attempt);
    let msg = Settle {
        attempt: crate::store::AttemptRef {
            job_id: job.id,
            attempt,
            lease,
        },
        outcome: crate::domain::job::AttemptOutcome::SystemFailure {
            message: "the attempt was lost when the scheduler restarted or changed".into(),
            retry_at: config.clock.now() + chrono::Duration::from_std(delay).unwrap_or_default(),
        },
    };
    match wallets.settle(job.user_id, msg).await {
        Ok(settled) if settled.job.state == JobState::Queued => Ok(Some(settled.job)),
        Ok(_) | Err(StoreError::StaleTransition { .. }) | Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Handler<WorkerDraining> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, msg: WorkerDraining, _ctx: &mut Self::Context) {
        if let Some(w) = self.workers.get_mut(&msg.id) {
            w.draining = true;
        }
    }
}

impl Handler<WorkerLeft> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, msg: WorkerLeft, _ctx: &mut Self::Context) {
        // Its attempts are reported lost by the worker actor itself; they
        // end through `AttemptEnded` like any other. One still presenting
        // hands its claims back when the check returns.
        self.presenting.remove(&msg.id);
        if self.workers.remove(&msg.id).is_some() {
            tracing::info!(worker = %msg.id, "worker left");
        }
    }
}

impl Handler<AttemptEnded> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, msg: AttemptEnded, ctx: &mut Self::Context) {
        let mut ran = None;
        if let Some(f) = self.in_flight.get(&msg.job_id) {
            if f.worker == msg.worker {
                ran = self.in_flight.remove(&msg.job_id);
            }
        }
        if let (Some((result, run)), Some(f)) = (msg.result, ran) {
            if let (AttemptResult::Succeeded, Some(run)) = (result, run) {
                self.queue.observe_runtime(&f.job, run);
            }
            self.record_health(f.worker_name, result, ctx);
        }
        if let Some(w) = self.workers.get_mut(&msg.worker) {
            w.free = (w.free + 1).min(w.caps.slots);
            w.freed_at = Some(self.config.clock.instant());
        }
        self.queue.finished(msg.user_id);
        match msg.next {
            NextStep::Done => {}
            NextStep::Retry { mut job, delay } => {
                if crate::planted::active(crate::planted::Bug::RetryLosesItsPlace) {
                    // The planted bug: a fresh place at the back of the line.
                    job.seq = job.seq.saturating_add(u64::MAX / 2);
                }
                self.enqueue_after(job, delay, ctx)
            }
            NextStep::Requeue(job) => self.enqueue_after(job, REQUEUE_AFTER_STORE_ERROR, ctx),
        }
        self.dispatch();
    }
}

/// Jobs found in the store at start-up or by reconciliation.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Recover(pub Vec<Job>);

impl Handler<Recover> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, msg: Recover, ctx: &mut Self::Context) {
        if self.epoch.is_none() {
            return;
        }
        let now = self.config.clock.now();
        for job in msg.0 {
            if job.state != JobState::Queued || self.knows(job.id) {
                continue;
            }
            let delay = job
                .retry_at
                .and_then(|at| (at - now).to_std().ok())
                .unwrap_or_default();
            self.enqueue_after(QueuedJob::from_job(&job, &self.config), delay, ctx);
        }
        self.dispatch();
    }
}

/// Hands the store's waiting jobs to `scheduler` a page of `page` at a
/// time by submission order, each page taken in before the next is read:
/// a large backlog is never held twice in memory (as rows and as the
/// line), and the scheduler dispatches between the pages. Returns how
/// many it read. Recovery at start-up and reconciliation both use it.
pub async fn hand_over_waiting(
    store: &dyn Store,
    scheduler: &Addr<SchedulerActor>,
    page: usize,
) -> Result<usize, crate::error::OrchestratorError> {
    let mut read = 0;
    let mut after_seq = 0;
    loop {
        let jobs = store.queued_jobs_after(after_seq, page).await?;
        let full = jobs.len() >= page;
        read += jobs.len();
        let Some(last) = jobs.last().map(|j| j.seq) else {
            return Ok(read);
        };
        after_seq = last;
        scheduler
            .send(Recover(jobs))
            .await
            .map_err(|e| crate::error::OrchestratorError::Internal(format!("scheduler: {e}")))?;
        if !full {
            return Ok(read);
        }
    }
}

/// A reconciliation pass: the store's waiting jobs are compared with the
/// line, and any it does not know are put in it.
#[derive(Message)]
#[rtype(result = "()")]
struct Reconcile;

impl Handler<Reconcile> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, _: Reconcile, ctx: &mut Self::Context) {
        let store = self.store.clone();
        let addr = ctx.address();
        actix::spawn(async move {
            if let Err(e) = hand_over_waiting(store.as_ref(), &addr, RECONCILE_PAGE).await {
                tracing::warn!(error = %e, "reconciliation could not read the store");
            }
            addr.do_send(Reconciled);
        });
    }
}

/// A reconciliation pass ended; the next may start.
#[derive(Message)]
#[rtype(result = "()")]
struct Reconciled;

impl Handler<Reconciled> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, _: Reconciled, _ctx: &mut Self::Context) {
        self.reconciling = false;
    }
}

/// What an operator sees of one worker.
#[derive(Clone, Debug)]
pub struct WorkerView {
    pub id: WorkerId,
    pub caps: Capabilities,
    pub busy_slots: u32,
    pub warm_models: Vec<String>,
    pub draining: bool,
    /// How much longer its quarantine lasts, if it is quarantined.
    pub quarantined_for: Option<Duration>,
    /// System failures since its last success.
    pub consecutive_failures: u32,
    pub worker: WorkerHandle,
}

#[derive(Message)]
#[rtype(result = "Vec<WorkerView>")]
pub struct ListWorkers;

impl Handler<ListWorkers> for SchedulerActor {
    type Result = MessageResult<ListWorkers>;

    fn handle(&mut self, _: ListWorkers, _ctx: &mut Self::Context) -> Self::Result {
        let mut list: Vec<WorkerView> = self
            .workers
            .iter()
            .map(|(id, w)| {
                let mut warm: Vec<String> = w.warm.iter().map(|m| m.to_string()).collect();
                warm.sort();
                let health = self.health.get(&w.caps.name);
                WorkerView {
                    quarantined_for: health
                        .and_then(|h| h.until)
                        .map(|u| u.saturating_duration_since(self.config.clock.instant())),
                    consecutive_failures: health.map_or(0, |h| h.consecutive_failures),
                    id: *id,
                    caps: w.caps.clone(),
                    busy_slots: w.caps.slots.saturating_sub(w.free),
                    warm_models: warm,
                    draining: w.draining,
                    worker: w.worker.clone(),
                }
            })
            .collect();
        list.sort_by(|a, b| a.caps.name.cmp(&b.caps.name).then(a.id.cmp(&b.id)));
        MessageResult(list)
    }
}

/// An operator drains a worker: it gets nothing new and is told to finish.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct DrainWorker(pub WorkerId);

impl Handler<DrainWorker> for SchedulerActor {
    type Result = bool;

    fn handle(&mut self, msg: DrainWorker, _ctx: &mut Self::Context) -> bool {
        match self.workers.get_mut(&msg.0) {
            Some(w) => {
                w.draining = true;
                w.worker.drain.do_send(Drain);
                true
            }
            None => false,
        }
    }
}

/// An operator lifts a worker's quarantine: it takes jobs again, with a
/// clean record. False when no such worker is connected.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct LiftQuarantine(pub WorkerId);

impl Handler<LiftQuarantine> for SchedulerActor {
    type Result = bool;

    fn handle(&mut self, msg: LiftQuarantine, ctx: &mut Self::Context) -> bool {
        let Some(name) = self.workers.get(&msg.0).map(|w| w.caps.name.clone()) else {
            return false;
        };
        self.end_quarantine(&name, true, ctx);
        true
    }
}

/// Which models some connected worker serves (quarantined or draining
/// ones included: they are there, just not taking work right now).
#[derive(Message)]
#[rtype(result = "Vec<bool>")]
pub struct ModelsServed(pub Vec<(crate::domain::job::JobKind, String, u32)>);

impl Handler<ModelsServed> for SchedulerActor {
    type Result = MessageResult<ModelsServed>;

    fn handle(&mut self, msg: ModelsServed, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(
            msg.0
                .iter()
                .map(|(kind, model, vram)| {
                    self.workers
                        .values()
                        .any(|w| w.caps.serves(*kind, model, *vram))
                })
                .collect(),
        )
    }
}

/// A snapshot for `/v1/admin/stats` and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub waiting_by_tier: PerTier<usize>,
    pub retrying: usize,
    pub in_flight: usize,
    pub workers: usize,
    pub busy_slots: u32,
    pub idle_slots: u32,
    /// Dispatches per tier over the last [`RECENT_WINDOW`].
    pub recent_dispatches: PerTier<u64>,
    /// How long the longest-waiting job of each tier has waited.
    pub oldest_wait: PerTier<Duration>,
    pub quarantined_workers: usize,
}

/// How far back "recent dispatches" look.
pub const RECENT_WINDOW: Duration = Duration::from_secs(300);
const RECENT_BUCKET: Duration = Duration::from_secs(10);

/// Dispatch counts per tier in 10-second buckets, for the share of recent
/// dispatches each tier got (constant memory, whatever the rate).
struct RecentDispatches {
    buckets: std::collections::VecDeque<(Instant, PerTier<u64>)>,
}

impl RecentDispatches {
    fn new() -> RecentDispatches {
        RecentDispatches {
            buckets: std::collections::VecDeque::new(),
        }
    }

    fn record(&mut self, tier: crate::domain::tier::Tier, now: Instant) {
        match self.buckets.back_mut() {
            Some((start, counts)) if now.duration_since(*start) < RECENT_BUCKET => {
                counts[tier] += 1
            }
            _ => {
                let mut counts = PerTier::splat(0);
                counts[tier] = 1;
                self.buckets.push_back((now, counts));
            }
        }
        while self
            .buckets
            .front()
            .is_some_and(|(start, _)| now.duration_since(*start) > RECENT_WINDOW)
        {
            self.buckets.pop_front();
        }
    }

    fn totals(&self, now: Instant) -> PerTier<u64> {
        let mut totals = PerTier::splat(0);
        for (start, counts) in &self.buckets {
            if now.duration_since(*start) <= RECENT_WINDOW {
                for (t, total) in totals.iter_mut() {
                    *total += counts[t];
                }
            }
        }
        totals
    }
}

#[derive(Message)]
#[rtype(result = "SchedulerStats")]
pub struct GetStats;

impl Handler<GetStats> for SchedulerActor {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _ctx: &mut Self::Context) -> Self::Result {
        let now = self.config.clock.now();
        let idle: u32 = self
            .workers
            .values()
            .filter(|w| !w.draining)
            .map(|w| w.free)
            .sum();
        let busy: u32 = self
            .workers
            .values()
            .map(|w| w.caps.slots.saturating_sub(w.free))
            .sum();
        MessageResult(SchedulerStats {
            waiting_by_tier: self.queue.waiting_by_tier(),
            retrying: self.delayed.len(),
            in_flight: self.in_flight.len(),
            workers: self.workers.len(),
            busy_slots: busy,
            idle_slots: idle,
            recent_dispatches: self.recent.totals(self.config.clock.instant()),
            oldest_wait: self.queue.oldest_by_tier().map(|o| {
                o.and_then(|at| (now - at).to_std().ok())
                    .unwrap_or_default()
            }),
            quarantined_workers: self.workers.values().filter(|w| w.quarantined).count(),
        })
    }
}
