//! `JobActor`: one per attempt in flight. It owns the attempt's lease and
//! deadline, records each step in the store (conditionally, so a late
//! message changes nothing), asks the user's wallet to settle the money when
//! the attempt ends, and tells the scheduler exactly once that it is over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;

use crate::attempt_files::{AttemptFiles, AttemptPlan};
use crate::config::OrchestratorConfig;
use crate::events::{JobEvent, JobEventKind};
use crate::ids::{LeaseToken, WorkerId};
use crate::job::{AttemptOutcome, FailureClass, Job, JobSpec, JobState, Output};
use crate::observer::{AttemptResult, Observer};
use crate::scheduler::actor::{AttemptEnded, Deposed, NextStep, SchedulerActor};
use crate::scheduler::queue::QueuedJob;
use crate::store::{AttemptRef, Store, StoreError};
use crate::wallet::{Settle, WalletRegistry};
use crate::worker::{Assign, AttemptEvent, Revoke, WorkerActor};

/// How long to wait before trying again to record an attempt's end while
/// the store is unreachable. The attempt holds its slot meanwhile.
const SETTLE_RETRY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Assigning,
    Assigned,
    Running,
    /// The end is being recorded; further worker messages are ignored.
    Ending,
}

/// The user cancelled the job while it was in flight; the store already
/// says `cancelled`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelAttempt;

pub struct JobActor {
    job: QueuedJob,
    attempt: AttemptRef,
    worker_id: WorkerId,
    worker: Addr<WorkerActor>,
    scheduler: Addr<SchedulerActor>,
    wallets: WalletRegistry,
    store: Arc<dyn Store>,
    config: Arc<OrchestratorConfig>,
    observer: Arc<dyn Observer>,
    phase: Phase,
    ready_since: Instant,
    started_at: Option<Instant>,
    ended: bool,
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
}

impl JobActor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job: QueuedJob,
        lease: LeaseToken,
        worker_id: WorkerId,
        worker: Addr<WorkerActor>,
        scheduler: Addr<SchedulerActor>,
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
            epoch,
            span: tracing::info_span!("attempt", job = %job_id, user = %user_id, attempt = attempt_no, worker = %worker_id),
            files: None,
            assigned: None,
        }
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
        let delivery = self.worker.send(Assign {
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
        ctx.run_later(deadline, |act, ctx| {
            act.worker.do_send(Revoke {
                job_id: act.attempt.job_id,
                lease: act.attempt.lease,
            });
            let outcome = act.system_failure("the attempt passed its deadline".into());
            act.settle(outcome, AttemptResult::TimedOut, ctx);
        });
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
                self.settle(
                    AttemptOutcome::Succeeded { outputs },
                    AttemptResult::Succeeded,
                    ctx,
                );
                return;
            }
        };
        let attempt = self.attempt.attempt;
        let fut = async move { files.accept(&job, attempt, &outputs).await };
        ctx.wait(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(outputs) => act.settle(
                AttemptOutcome::Succeeded { outputs },
                AttemptResult::Succeeded,
                ctx,
            ),
            Err(reason) => {
                tracing::warn!(job = %act.job.job_id, attempt = act.attempt.attempt, %reason,
                    "completion refused: outputs missing or invalid");
                let outcome = act.system_failure(format!("outputs refused: {reason}"));
                act.settle(outcome, AttemptResult::SystemFailure, ctx);
            }
        }));
    }

    /// Tells the scheduler the attempt is over and stops. Called once.
    fn end(&mut self, next: NextStep, ctx: &mut Context<Self>) {
        if !self.ended {
            self.ended = true;
            self.scheduler.do_send(AttemptEnded {
                job_id: self.job.job_id,
                user_id: self.job.user_id,
                worker: self.worker_id,
                next,
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
        let run = self.started_at.map(|s| s.elapsed());
        self.observer.attempt_finished(self.job.kind, result, run);
        self.try_settle(outcome, ctx);
    }

    fn try_settle(&mut self, outcome: AttemptOutcome, ctx: &mut Context<Self>) {
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
                        .and_then(|at| (at - Utc::now()).to_std().ok())
                        .unwrap_or_default();
                    NextStep::Retry {
                        job: QueuedJob::from_job(&job),
                        delay,
                    }
                } else {
                    act.observer
                        .job_finished(job.spec.kind, job.tier, job.state.as_str());
                    NextStep::Done
                };
                act.end(next, ctx);
            }
            Err(StoreError::StaleTransition { .. }) | Err(StoreError::NotFound(_)) => {
                // Cancelled meanwhile, or an older attempt: nothing to record.
                act.end(NextStep::Done, ctx);
            }
            Err(e) => {
                tracing::warn!(job = %act.job.job_id, attempt = act.attempt.attempt, error = %e,
                    "could not record the attempt's end; retrying");
                ctx.run_later(SETTLE_RETRY, move |act, ctx| act.try_settle(outcome, ctx));
            }
        }));
    }

    fn system_failure(&self, message: String) -> AttemptOutcome {
        let delay = self.config.retry_delay(self.attempt.attempt);
        let retry_at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
        AttemptOutcome::SystemFailure { message, retry_at }
    }
}

impl Actor for JobActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let _span = self.span.clone().entered();
        let store = self.store.clone();
        let attempt = self.attempt;
        let worker = self.worker_id;
        let epoch = self.epoch;
        let fut = async move { store.assign_job(attempt, worker, epoch, Utc::now()).await };
        ctx.wait(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(job) => {
                act.phase = Phase::Assigned;
                tracing::info!(job = %job.id, user = %job.user_id, attempt = job.attempts,
                    worker = %act.worker_id, "attempt assigned");
                act.observer.dispatched(
                    act.job.tier,
                    act.job.enqueued_at.elapsed(),
                    Some(act.ready_since.elapsed()),
                );
                act.assigned = Some(job.clone());
                act.prepare_and_assign(job, ctx);
            }
            Err(StoreError::StaleTransition { .. }) | Err(StoreError::NotFound(_)) => {
                // Cancelled or already handled: the slot goes back.
                act.end(NextStep::Done, ctx);
            }
            Err(StoreError::Deposed { current }) => {
                // Another node leads now: this scheduler must stop.
                tracing::warn!(job = %act.job.job_id, epoch = act.epoch, current,
                    "assignment refused: scheduler deposed");
                act.scheduler.do_send(Deposed { current });
                act.end(NextStep::Done, ctx);
            }
            Err(e) => {
                tracing::warn!(job = %act.job.job_id, error = %e, "could not assign; back in line");
                let job = act.job.clone();
                act.end(NextStep::Requeue(job), ctx);
            }
        }));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Whatever stopped us, the scheduler must get its slot back.
        if !self.ended {
            self.ended = true;
            self.scheduler.do_send(AttemptEnded {
                job_id: self.job.job_id,
                user_id: self.job.user_id,
                worker: self.worker_id,
                next: NextStep::Done,
            });
        }
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
                self.started_at = Some(Instant::now());
                let store = self.store.clone();
                let attempt = self.attempt;
                let fut = async move { store.start_job(attempt, Utc::now()).await };
                // `wait`: a completion right behind the acceptance is only
                // handled once the start is recorded.
                ctx.wait(fut.into_actor(self).map(|res, act, ctx| {
                    if let Err(e) = res {
                        match e {
                            StoreError::StaleTransition { .. } | StoreError::NotFound(_) => {
                                act.worker.do_send(Revoke {
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
                    at: Utc::now(),
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
        self.worker.do_send(Revoke {
            job_id: self.attempt.job_id,
            lease: self.attempt.lease,
        });
        self.observer.attempt_finished(
            self.job.kind,
            AttemptResult::Cancelled,
            self.started_at.map(|s| s.elapsed()),
        );
        self.end(NextStep::Done, ctx);
    }
}
