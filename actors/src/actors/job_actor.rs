//! `JobActor`: one per attempt in flight. It owns the attempt's lease and
//! deadline, records each step in the store (conditionally, so a late
//! message changes nothing), asks the user's wallet to settle the money when
//! the attempt ends, and tells the scheduler exactly once that it is over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;

use crate::actors::messages::{
    Assign, AttemptEnded, AttemptEvent, CancelAttempt, Deposed, NextStep, Revoke, SchedulerHandle,
    Settle, WorkerHandle,
};
use crate::actors::wallet::WalletRegistry;
use crate::attempt_files::{AttemptFiles, AttemptPlan};
use crate::config::OrchestratorConfig;
use crate::domain::events::{JobEvent, JobEventKind};
use crate::domain::ids::{LeaseToken, WorkerId};
use crate::domain::job::{AttemptOutcome, FailureClass, Job, JobSpec, JobState, Output};
use crate::observer::{AttemptResult, Observer};
use crate::scheduler::queue::QueuedJob;
use crate::scheduler::resume::Resumed;
use crate::store::{AttemptRef, Store, StoreError};

/// The longest wait between two writes of an attempt's end; the first is
/// `config.settle_retry`, doubling per try.
const SETTLE_RETRY_MAX: Duration = Duration::from_secs(30);
/// Writes of the outcome the worker reported before it is given up for a
/// system failure: a write the store keeps refusing (a bug, a value it
/// cannot hold) must not keep the job in flight.
const SETTLE_TRIES: u32 = 3;
/// What the attempt ends as when its reported outcome cannot be recorded.
const UNRECORDABLE: &str = "the attempt's outcome could not be recorded; ended as a system failure";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Assigning,
    Assigned,
    Running,
    /// The end is being recorded; further worker messages are ignored.
    Ending,
}

pub struct JobActor {
    job: QueuedJob,
    attempt: AttemptRef,
    worker_id: WorkerId,
    worker: WorkerHandle,
    scheduler: SchedulerHandle,
    wallets: WalletRegistry,
    store: Arc<dyn Store>,
    config: Arc<OrchestratorConfig>,
    observer: Arc<dyn Observer>,
    phase: Phase,
    ready_since: Instant,
    started_at: Option<Instant>,
    ended: bool,
    /// How the attempt ended on the worker and how long it ran, for the
    /// scheduler's worker health and runtime estimates.
    result: Option<(AttemptResult, Option<Duration>)>,
    /// The scheduler term that dispatched this attempt.
    epoch: u64,
    /// Every log line about this attempt carries its job, user, attempt
    /// and worker.
    span: tracing::Span,
    /// Signs the attempt's file URLs and checks its uploads; `None` (bench,
    /// tests of the scheduling alone) trusts what the worker names.
    files: Option<Arc<dyn AttemptFiles>>,
    /// The job as assigned.
    assigned: Option<Job>,
    /// Taken back from a worker that presented it after a restart or a
    /// failover: nothing is assigned, it goes on where it was.
    resumed: Option<Resumed>,
}

impl JobActor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job: QueuedJob,
        lease: LeaseToken,
        worker_id: WorkerId,
        worker: WorkerHandle,
        scheduler: SchedulerHandle,
        wallets: WalletRegistry,
        store: Arc<dyn Store>,
        config: Arc<OrchestratorConfig>,
        observer: Arc<dyn Observer>,
        ready_since: Instant,
        epoch: u64,
    ) -> JobActor {
        let attempt = AttemptRef {
            job_id: job.job_id,
            attempt: job.attempts + 1,
            lease,
        };
        let (job_id, user_id, attempt_no) = (job.job_id, job.user_id, job.attempts + 1);
        JobActor {
            job,
            attempt,
            worker_id,
            worker,
            scheduler,
            wallets,
            store,
            config,
            observer,
            phase: Phase::Assigning,
            ready_since,
            started_at: None,
            ended: false,
            result: None,
            epoch,
            span: tracing::info_span!("attempt", job = %job_id, user = %user_id, attempt = attempt_no, worker = %worker_id),
            files: None,
            assigned: None,
            resumed: None,
        }
    }

    /// The actor of an attempt a worker presented again after a restart or
    /// a failover (see `scheduler::resume`): it is already assigned (and
    /// perhaps started) in the store and runs on `worker`, so nothing is
    /// assigned; its deadline keeps counting from the original assignment.
    #[allow(clippy::too_many_arguments)]
    pub fn resumed(
        job: Job,
        resumed: Resumed,
        worker_id: WorkerId,
        worker: WorkerHandle,
        scheduler: SchedulerHandle,
        wallets: WalletRegistry,
        store: Arc<dyn Store>,
        config: Arc<OrchestratorConfig>,
        observer: Arc<dyn Observer>,
        epoch: u64,
    ) -> Option<JobActor> {
        let lease = job.lease?;
        let config_clock_instant = config.clock.instant();
        let mut queued = QueuedJob::from_job(&job, &config);
        // `new` counts the attempt as the one after `attempts`.
        queued.attempts = job.attempts.checked_sub(1)?;
        let mut actor = JobActor::new(
            queued,
            lease,
            worker_id,
            worker,
            scheduler,
            wallets,
            store,
            config,
            observer,
            config_clock_instant,
            epoch,
        );
        actor.assigned = Some(job);
        actor.resumed = Some(resumed);
        Some(actor)
    }

    /// The attempt must end within `after`, or it is revoked and ends as a
    /// system failure.
    fn arm_deadline(&mut self, after: Duration, ctx: &mut Context<Self>) {
        ctx.run_later(after, |act, ctx| {
            act.worker.revoke.do_send(Revoke {
                job_id: act.attempt.job_id,
                lease: act.attempt.lease,
            });
            let outcome = act.system_failure("the attempt passed its deadline".into());
            act.settle(outcome, AttemptResult::TimedOut, ctx);
        });
    }

    /// The attempt's inputs and outputs go through `files`.
    pub fn with_files(mut self, files: Option<Arc<dyn AttemptFiles>>) -> JobActor {
        self.files = files;
        self
    }

    /// Signs the attempt's files, then hands it to the worker.
    fn prepare_and_assign(&mut self, job: Job, ctx: &mut Context<Self>) {
        let Some(files) = self.files.clone() else {
            self.assign(job.spec, AttemptPlan::default(), ctx);
            return;
        };
        let attempt = self.attempt.attempt;
        let fut = async move {
            let plan = files.prepare(&job, attempt).await;
            (job, plan)
        };
        ctx.wait(fut.into_actor(self).map(|(job, plan), act, ctx| match plan {
            Ok(plan) => act.assign(job.spec, plan, ctx),
            Err(reason) => {
                tracing::warn!(job = %job.id, %reason, "the attempt's files could not be prepared");
                let outcome = act.system_failure(format!("inputs unavailable: {reason}"));
                act.settle(outcome, AttemptResult::SystemFailure, ctx);
            }
        }));
    }

    fn assign(&mut self, spec: JobSpec, files: AttemptPlan, ctx: &mut Context<Self>) {
        let deadline = self.config.deadline(self.job.kind);
        // `send`, not `do_send`: if the worker went away before handling
        // it, the attempt is lost now rather than at its deadline.
        let delivery = self.worker.assign.send(Assign {
            job_id: self.attempt.job_id,
            attempt: self.attempt.attempt,
            lease: self.attempt.lease,
            spec,
            deadline,
            reply_to: ctx.address().recipient(),
            files,
        });
        ctx.wait(delivery.into_actor(self).map(|res, act, ctx| {
            if res.is_err() {
                let outcome = act.system_failure("the worker left before taking the job".into());
                act.settle(outcome, AttemptResult::LeaseLost, ctx);
            }
        }));
        self.arm_deadline(deadline, ctx);
    }

    /// A completion counts only with every expected output, each uploaded
    /// and of an allowed type; otherwise it is a system failure, retried and
    /// finally voided, so the user never pays for missing outputs.
    fn complete(&mut self, outputs: Vec<Output>, simulated: bool, ctx: &mut Context<Self>) {
        let Some(job) = self.assigned.clone() else {
            return;
        };
        let expected = job.spec.params.expected_outputs() as usize;
        if outputs.len() != expected {
            let outcome = self.system_failure(format!(
                "the worker reported {} outputs; the job asked for {expected}",
                outputs.len()
            ));
            self.settle(outcome, AttemptResult::SystemFailure, ctx);
            return;
        }
        let files = match (&self.files, simulated) {
            (Some(files), false) => files.clone(),
            _ => {
                self.deliver(outputs, ctx);
                return;
            }
        };
        let attempt = self.attempt.attempt;
        let fut = async move { files.accept(&job, attempt, &outputs).await };
        ctx.wait(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(outputs) => act.deliver(outputs, ctx),
            Err(reason) => {
                tracing::warn!(job = %act.job.job_id, attempt = act.attempt.attempt, %reason,
                    "completion refused: outputs missing or invalid");
                let outcome = act.system_failure(format!("outputs refused: {reason}"));
                act.settle(outcome, AttemptResult::SystemFailure, ctx);
            }
        }));
    }

    /// Settles a completion whose outputs are all there: outputs whose
    /// safety labels reach their thresholds are withheld, and a job whose
    /// every output was withheld delivered nothing.
    fn deliver(&mut self, mut outputs: Vec<Output>, ctx: &mut Context<Self>) {
        for output in &mut outputs {
            output.judge_safety(&self.config.platform.output_thresholds);
        }
        let withheld = outputs.iter().filter(|o| o.withheld.is_some()).count();
        if withheld > 0 {
            tracing::warn!(parent: &self.span, withheld, outputs = outputs.len(),
                "outputs withheld by the content checks");
        }
        if withheld > 0 && withheld == outputs.len() {
            self.settle(
                AttemptOutcome::Withheld { outputs },
                AttemptResult::Withheld,
                ctx,
            );
        } else {
            self.settle(
                AttemptOutcome::Succeeded { outputs },
                AttemptResult::Succeeded,
                ctx,
            );
        }
    }

    /// Tells the scheduler the attempt is over and stops. Called once.
    fn end(&mut self, next: NextStep, ctx: &mut Context<Self>) {
        if !self.ended {
            self.ended = true;
            self.scheduler.attempt_ended.do_send(AttemptEnded {
                job_id: self.job.job_id,
                user_id: self.job.user_id,
                worker: self.worker_id,
                next,
                result: self.result,
            });
        }
        ctx.stop();
    }

    /// Records how the attempt ended, through the user's wallet actor so the
    /// money moves serialized with the user's other mutations.
    fn settle(&mut self, outcome: AttemptOutcome, result: AttemptResult, ctx: &mut Context<Self>) {
        if self.phase == Phase::Ending {
            return;
        }
        self.phase = Phase::Ending;
        let run = self.started_at.map(|s| self.config.clock.since(s));
        self.observer.attempt_finished(self.job.kind, result, run);
        self.result = Some((result, run));
        let retry_at = self.retry_at();
        let outcome = crate::domain::diagnostic::storable(outcome, retry_at);
        self.try_settle(outcome, 1, ctx);
    }

    /// Writes the outcome, retrying a failed write with backoff. After
    /// [`SETTLE_TRIES`] failures the reported outcome is replaced by a system
    /// failure with a fixed message, which the store can always keep; that
    /// one is retried until the store takes it, since only the store can
    /// release the hold exactly once. While the store stays unreachable the
    /// attempt keeps its slot (nothing can be dispatched then anyway); a
    /// restart meanwhile settles it as lost with the previous scheduler.
    fn try_settle(&mut self, outcome: AttemptOutcome, tries: u32, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        let wallets = self.wallets.clone();
        let msg = Settle {
            attempt: self.attempt,
            outcome: outcome.clone(),
        };
        let user = self.job.user_id;
        let fut = async move { wallets.settle(user, msg).await };
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(settlement) => {
                let job = settlement.job;
                let next = if job.state == JobState::Queued {
                    let delay = job
                        .retry_at
                        .and_then(|at| (at - act.config.clock.now()).to_std().ok())
                        .unwrap_or_default();
                    let mut next = QueuedJob::from_job(&job, &act.config);
                    next.avoid = Some(act.worker_id);
                    NextStep::Retry { job: next, delay }
                } else {
                    act.observer
                        .job_finished(job.spec.kind, job.tier, job.state);
                    NextStep::Done
                };
                act.end(next, ctx);
            }
            Err(StoreError::StaleTransition { .. }) | Err(StoreError::NotFound(_)) => {
                // Cancelled meanwhile, or an older attempt: nothing to record.
                act.end(NextStep::Done, ctx);
            }
            Err(e) => {
                let fallback = act.system_failure(UNRECORDABLE.into());
                let given_up = tries >= SETTLE_TRIES
                    && !matches!(&outcome, AttemptOutcome::SystemFailure { message, .. } if message == UNRECORDABLE);
                let next = if given_up {
                    tracing::error!(job = %act.job.job_id, attempt = act.attempt.attempt, error = %e, tries,
                        "the attempt's outcome could not be recorded; ending it as a system failure");
                    fallback
                } else {
                    tracing::warn!(job = %act.job.job_id, attempt = act.attempt.attempt, error = %e, tries,
                        "could not record the attempt's end; retrying");
                    outcome
                };
                let delay = act
                    .config
                    .settle_retry
                    .saturating_mul(1 << tries.min(6).saturating_sub(1))
                    .min(SETTLE_RETRY_MAX);
                ctx.run_later(delay, move |act, ctx| act.try_settle(next, tries + 1, ctx));
            }
        }));
    }

    fn retry_at(&self) -> chrono::DateTime<Utc> {
        let delay = self.config.retry_delay(self.attempt.attempt);
        self.config.clock.now() + chrono::Duration::from_std(delay).unwrap_or_default()
    }

    fn system_failure(&self, message: String) -> AttemptOutcome {
        AttemptOutcome::SystemFailure {
            message,
            retry_at: self.retry_at(),
        }
    }
}

impl Actor for JobActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        if let Some(resumed) = self.resumed.take() {
            tracing::info!(
                ran_ms = resumed.ran.as_millis() as u64,
                remaining_ms = resumed.remaining.as_millis() as u64,
                "attempt resumed on the worker that presented it"
            );
            self.arm_deadline(resumed.remaining, ctx);
            if resumed.started {
                self.phase = Phase::Running;
                self.started_at = self.config.clock.instant().checked_sub(resumed.ran);
            } else {
                // The worker runs it, so it was accepted; the start was
                // not recorded before the restart: record it now.
                self.phase = Phase::Assigned;
                ctx.notify(AttemptEvent::Accepted);
            }
            return;
        }
        let store = self.store.clone();
        let attempt = self.attempt;
        let worker = self.worker_id;
        let epoch = self.epoch;
        let now = self.config.clock.now();
        let fut = async move { store.assign_job(attempt, worker, epoch, now).await };
        ctx.wait(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(job) => act.go_on_assigned(job, ctx),
            Err(StoreError::StaleTransition { .. }) | Err(StoreError::NotFound(_)) => {
                // Cancelled or already handled: the slot goes back.
                act.end(NextStep::Done, ctx);
            }
            Err(StoreError::Deposed { current }) => {
                // Another node leads now: this scheduler must stop.
                tracing::warn!(job = %act.job.job_id, epoch = act.epoch, current,
                    "assignment refused: scheduler deposed");
                act.scheduler.deposed.do_send(Deposed { current });
                act.end(NextStep::Done, ctx);
            }
            Err(e) => {
                tracing::warn!(job = %act.job.job_id, error = %e, "could not assign; checking whether it was recorded");
                act.confirm_assignment(1, ctx);
            }
        }));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Whatever stopped us, the scheduler must get its slot back.
        if !self.ended {
            self.ended = true;
            self.scheduler.attempt_ended.do_send(AttemptEnded {
                job_id: self.job.job_id,
                user_id: self.job.user_id,
                worker: self.worker_id,
                next: NextStep::Done,
                result: self.result,
            });
        }
    }
}

impl JobActor {
    /// The assignment is recorded: the worker gets the attempt.
    fn go_on_assigned(&mut self, job: Job, ctx: &mut Context<Self>) {
        self.phase = Phase::Assigned;
        tracing::info!(job = %job.id, user = %job.user_id, attempt = job.attempts,
            worker = %self.worker_id, "attempt assigned");
        self.observer.dispatched(
            self.job.tier,
            self.config.clock.since(self.job.enqueued_at),
            Some(self.config.clock.since(self.ready_since)),
        );
        self.assigned = Some(job.clone());
        self.prepare_and_assign(job, ctx);
    }

    /// The store failed the assignment, but a failed write may still have
    /// committed (the connection dropped after the commit): the job, read
    /// again, says which. Assigned with this lease, the attempt goes on;
    /// still waiting, it goes back in line; anything else (cancelled
    /// meanwhile) frees the slot. Requeued blindly, a committed assignment
    /// would leave the job assigned to an attempt nobody runs (the
    /// simulation's ambiguous commits found it). While the store cannot
    /// be read the attempt keeps its slot and asks again with backoff.
    fn confirm_assignment(&mut self, tries: u32, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let id = self.attempt.job_id;
        let fut = async move { store.job(id).await };
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(Some(job))
                if job.state == JobState::Assigned
                    && job.lease == Some(act.attempt.lease)
                    && job.attempts == act.attempt.attempt =>
            {
                act.go_on_assigned(job, ctx)
            }
            Ok(Some(job)) if job.state == JobState::Queued => {
                let queued = act.job.clone();
                act.end(NextStep::Requeue(queued), ctx);
            }
            Ok(_) => act.end(NextStep::Done, ctx),
            Err(e) => {
                let delay = act
                    .config
                    .settle_retry
                    .saturating_mul(1 << tries.min(6).saturating_sub(1))
                    .min(SETTLE_RETRY_MAX);
                tracing::warn!(job = %id, error = %e, tries, "could not read the job after a failed assignment; asking again");
                ctx.run_later(delay, move |act, ctx| act.confirm_assignment(tries + 1, ctx));
            }
        }));
    }
}

impl Handler<AttemptEvent> for JobActor {
    type Result = ();

    fn handle(&mut self, msg: AttemptEvent, ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        if self.phase == Phase::Ending {
            return;
        }
        match msg {
            AttemptEvent::Accepted => {
                if self.phase != Phase::Assigned {
                    return;
                }
                self.phase = Phase::Running;
                self.started_at = Some(self.config.clock.instant());
                let store = self.store.clone();
                let attempt = self.attempt;
                let now = self.config.clock.now();
                let fut = async move { store.start_job(attempt, now).await };
                // Not waited for: a completion right behind the acceptance
                // goes to the store behind the start, usually in the same
                // group commit, instead of one commit later. A finish is
                // recorded from `assigned` as well, so the order in which
                // the two commit does not matter; a start that finds the
                // attempt already ended is refused and ignored.
                ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
                    if act.phase == Phase::Ending {
                        return;
                    }
                    if let Err(e) = res {
                        match e {
                            StoreError::StaleTransition { .. } | StoreError::NotFound(_) => {
                                act.worker.revoke.do_send(Revoke {
                                    job_id: act.attempt.job_id,
                                    lease: act.attempt.lease,
                                });
                                act.phase = Phase::Ending;
                                act.end(NextStep::Done, ctx);
                            }
                            // The finish records the outcome from `assigned`
                            // as well, so an unrecorded start loses nothing.
                            other => tracing::warn!(job = %act.job.job_id, error = %other,
                                "could not record the start"),
                        }
                    }
                }));
            }
            AttemptEvent::Progress { percent } => {
                self.observer.job_event(&JobEvent {
                    job_id: self.attempt.job_id,
                    user_id: self.job.user_id,
                    attempt: self.attempt.attempt,
                    at: self.config.clock.now(),
                    kind: JobEventKind::Progress { percent },
                });
            }
            AttemptEvent::Completed { outputs, simulated } => {
                self.complete(outputs, simulated, ctx);
            }
            AttemptEvent::Failed {
                class: FailureClass::User,
                message,
            } => {
                self.settle(
                    AttemptOutcome::UserFailure { message },
                    AttemptResult::UserFailure,
                    ctx,
                );
            }
            AttemptEvent::Failed {
                class: FailureClass::System,
                message,
            } => {
                let outcome = self.system_failure(message);
                self.settle(outcome, AttemptResult::SystemFailure, ctx);
            }
            AttemptEvent::Lost { reason } => {
                let outcome = self.system_failure(reason);
                self.settle(outcome, AttemptResult::LeaseLost, ctx);
            }
        }
    }
}

impl Handler<CancelAttempt> for JobActor {
    type Result = ();

    fn handle(&mut self, _: CancelAttempt, ctx: &mut Self::Context) {
        if self.phase == Phase::Ending {
            return;
        }
        self.phase = Phase::Ending;
        self.worker.revoke.do_send(Revoke {
            job_id: self.attempt.job_id,
            lease: self.attempt.lease,
        });
        self.observer.attempt_finished(
            self.job.kind,
            AttemptResult::Cancelled,
            self.started_at.map(|s| self.config.clock.since(s)),
        );
        self.end(NextStep::Done, ctx);
    }
}
