//! What the actors say to one another, and the handles they say it through.
//!
//! An actor reaches another only through this module: a wallet, a worker
//! or a job actor reaches the scheduler through a [`SchedulerHandle`]; the
//! scheduler and the job actors reach a worker through a [`WorkerHandle`].
//! Both are made of `Recipient`s, so no actor names another's type to talk
//! to it: the dependencies run one way (these messages; the worker and the
//! wallet; the job actor; the scheduler, which starts the job actors), every
//! actor is built whole with the handles it needs, and a test can hand an
//! actor a stand-in that records what it is sent.
//!
//! Messages only the front door (`Orchestrator`) or a worker's link sends
//! stay beside the actor that handles them.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::attempt_files::AttemptPlan;
use crate::domain::ids::{JobId, LeaseToken, UserId, WorkerId};
use crate::domain::job::{AttemptOutcome, FailureClass, Job, JobSpec, Output};
use crate::observer::AttemptResult;
use crate::scheduler::queue::QueuedJob;
use crate::store::{AttemptRef, Settlement, StoreError};
use crate::wire::{AttemptId, Capabilities, PresentedAttempt, RefusedAttempt};

// ---- to the scheduler

/// A job was accepted and waits for a slot.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Enqueue(pub QueuedJob);

/// A waiting job was cancelled: take it out of the line.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Withdraw(pub JobId);

/// A job in flight was cancelled by its user: stop its attempt.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelInFlight(pub JobId);

/// A worker's actor started: the scheduler may register it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerJoined {
    pub id: WorkerId,
    pub caps: Capabilities,
    pub worker: WorkerHandle,
    /// Attempts it says it still holds from an earlier connection.
    pub presented: Vec<PresentedAttempt>,
}

/// The worker takes no new attempts (it is shutting down).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerDraining {
    pub id: WorkerId,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerLeft {
    pub id: WorkerId,
}

/// A dispatched attempt is over; exactly one per `JobActor`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttemptEnded {
    pub job_id: JobId,
    pub user_id: UserId,
    pub worker: WorkerId,
    pub next: NextStep,
    /// How the attempt ended, when it ran to an end on the worker, and how
    /// long it ran: the worker's health and the GPU-time estimates learn
    /// from it.
    pub result: Option<(AttemptResult, Option<Duration>)>,
}

pub enum NextStep {
    /// Finished, cancelled, or fenced off: nothing more to schedule.
    Done,
    /// A system failure with attempts left: back in line after `delay`.
    Retry { job: QueuedJob, delay: Duration },
    /// Never started (the store was unreachable): back in line as it was.
    Requeue(QueuedJob),
}

/// An assignment was refused because a newer term exists.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deposed {
    pub current: u64,
}

// ---- to a worker

/// Run one attempt on this worker.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Assign {
    pub job_id: JobId,
    pub attempt: u32,
    pub lease: LeaseToken,
    pub spec: JobSpec,
    pub deadline: Duration,
    pub reply_to: Recipient<AttemptEvent>,
    /// Signed URLs for the attempt's inputs and outputs.
    pub files: AttemptPlan,
}

/// Take an attempt back (cancelled, timed out); the worker is told to stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Revoke {
    pub job_id: JobId,
    pub lease: LeaseToken,
}

/// The scheduler knows the worker now: a remote worker is welcomed, so a
/// welcome means "you may be assigned work from here on". It names the
/// presented attempts taken back (already adopted) and those refused.
#[derive(Message, Default)]
#[rtype(result = "()")]
pub struct Registered {
    pub resumed: Vec<AttemptId>,
    pub refused: Vec<RefusedAttempt>,
}

/// A presented attempt taken back: it is this worker's again, with no
/// `assign` sent (the worker runs it already); its reports go to
/// `reply_to`, the job actor re-attached to it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Adopt {
    pub job_id: JobId,
    pub lease: LeaseToken,
    pub reply_to: Recipient<AttemptEvent>,
}

/// Tell the worker to finish what it runs and take nothing new.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

/// How long ago the worker was last heard from.
#[derive(Message)]
#[rtype(result = "Duration")]
pub struct LastHeard;

// ---- to a job actor

/// What happened to an attempt, as the job actor hears it.
#[derive(Clone, Debug, Message)]
#[rtype(result = "()")]
pub enum AttemptEvent {
    Accepted,
    Progress {
        percent: u8,
    },
    Completed {
        outputs: Vec<Output>,
        /// From an in-process simulated GPU, whose outputs are placeholders
        /// (`sim://…`) that were never uploaded.
        simulated: bool,
    },
    Failed {
        class: FailureClass,
        message: String,
    },
    /// The worker went away with the attempt.
    Lost {
        reason: String,
    },
}

/// The user cancelled the job while it was in flight; the store already
/// says `cancelled`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelAttempt;

// ---- to a wallet (through its registry)

/// Record how an attempt ended and move the money with it.
#[derive(Message)]
#[rtype(result = "Result<Settlement, StoreError>")]
pub struct Settle {
    pub attempt: AttemptRef,
    pub outcome: AttemptOutcome,
}

/// A waiting job passed its tier's waiting limit: it fails as expired and
/// its hold is voided (a system-side failure, refunded).
#[derive(Message)]
#[rtype(result = "Result<Job, StoreError>")]
pub struct Expire {
    pub job_id: JobId,
}

// ---- the handles

/// The scheduler as the wallets, the workers and the job actors reach it:
/// one recipient for each message they send it. A clone shares them.
#[derive(Clone, Debug)]
pub struct SchedulerHandle(Arc<SchedulerRecipients>);

/// What a [`SchedulerHandle`] holds.
#[derive(Debug)]
pub struct SchedulerRecipients {
    pub enqueue: Recipient<Enqueue>,
    pub withdraw: Recipient<Withdraw>,
    pub cancel_in_flight: Recipient<CancelInFlight>,
    pub worker_joined: Recipient<WorkerJoined>,
    pub worker_draining: Recipient<WorkerDraining>,
    pub worker_left: Recipient<WorkerLeft>,
    pub attempt_ended: Recipient<AttemptEnded>,
    pub deposed: Recipient<Deposed>,
}

impl SchedulerHandle {
    /// The handle of `scheduler`: the scheduler actor, or any actor that
    /// takes the same messages (a test's stand-in).
    pub fn of<A>(scheduler: &Addr<A>) -> SchedulerHandle
    where
        A: Actor<Context = Context<A>>
            + Handler<Enqueue>
            + Handler<Withdraw>
            + Handler<CancelInFlight>
            + Handler<WorkerJoined>
            + Handler<WorkerDraining>
            + Handler<WorkerLeft>
            + Handler<AttemptEnded>
            + Handler<Deposed>,
    {
        SchedulerHandle(Arc::new(SchedulerRecipients {
            enqueue: scheduler.clone().recipient(),
            withdraw: scheduler.clone().recipient(),
            cancel_in_flight: scheduler.clone().recipient(),
            worker_joined: scheduler.clone().recipient(),
            worker_draining: scheduler.clone().recipient(),
            worker_left: scheduler.clone().recipient(),
            attempt_ended: scheduler.clone().recipient(),
            deposed: scheduler.clone().recipient(),
        }))
    }
}

impl Deref for SchedulerHandle {
    type Target = SchedulerRecipients;

    fn deref(&self) -> &SchedulerRecipients {
        &self.0
    }
}

/// A worker as the scheduler, its job actors and the operator views reach
/// it. A clone shares the recipients.
#[derive(Clone, Debug)]
pub struct WorkerHandle(Arc<WorkerRecipients>);

/// What a [`WorkerHandle`] holds.
#[derive(Debug)]
pub struct WorkerRecipients {
    pub assign: Recipient<Assign>,
    pub revoke: Recipient<Revoke>,
    pub registered: Recipient<Registered>,
    pub adopt: Recipient<Adopt>,
    pub drain: Recipient<Drain>,
    pub last_heard: Recipient<LastHeard>,
}

impl WorkerHandle {
    /// The handle of `worker`: a worker actor, or any actor that takes the
    /// same messages.
    pub fn of<A>(worker: &Addr<A>) -> WorkerHandle
    where
        A: Actor<Context = Context<A>>
            + Handler<Assign>
            + Handler<Revoke>
            + Handler<Registered>
            + Handler<Adopt>
            + Handler<Drain>
            + Handler<LastHeard>,
    {
        WorkerHandle(Arc::new(WorkerRecipients {
            assign: worker.clone().recipient(),
            revoke: worker.clone().recipient(),
            registered: worker.clone().recipient(),
            adopt: worker.clone().recipient(),
            drain: worker.clone().recipient(),
            last_heard: worker.clone().recipient(),
        }))
    }
}

impl Deref for WorkerHandle {
    type Target = WorkerRecipients;

    fn deref(&self) -> &WorkerRecipients {
        &self.0
    }
}

/// A stand-in for any actor in a test: it passes every message it is sent
/// on to the test, which reads them in order with [`Recorded::next`].
#[cfg(test)]
pub(crate) mod recorder {
    use std::any::Any;

    use actix::prelude::*;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

    pub struct Recorder(UnboundedSender<Box<dyn Any + Send>>);

    /// What a [`Recorder`] was sent.
    pub struct Recorded(UnboundedReceiver<Box<dyn Any + Send>>);

    impl Recorder {
        pub fn spawn() -> (Addr<Recorder>, Recorded) {
            let (tx, rx) = unbounded_channel();
            (Recorder(tx).start(), Recorded(rx))
        }
    }

    impl Actor for Recorder {
        type Context = Context<Self>;
    }

    impl<M> Handler<M> for Recorder
    where
        M: Message<Result = ()> + Send + 'static,
    {
        type Result = ();

        fn handle(&mut self, msg: M, _ctx: &mut Self::Context) {
            let _ = self.0.send(Box::new(msg));
        }
    }

    impl Recorded {
        /// The next message; panics when it is not an `M`, so a test
        /// names the order it expects.
        pub async fn next<M: 'static>(&mut self) -> M {
            let msg = self.0.recv().await.expect("the recorder stopped");
            match msg.downcast::<M>() {
                Ok(m) => *m,
                Err(_) => panic!(
                    "the next message recorded is not a {}",
                    std::any::type_name::<M>()
                ),
            }
        }

        /// Nothing more was sent so far.
        pub fn is_empty(&mut self) -> bool {
            self.0.try_recv().is_err()
        }
    }
}
