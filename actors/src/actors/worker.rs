//! `WorkerActor`: one per connected GPU worker. It owns what is sent to the
//! worker and checks every message coming back against the attempt's lease
//! before it reaches the job. A worker is reached through a [`WorkerLink`]:
//! a WebSocket session for a remote worker, or the in-process
//! [`SimulatedGpu`], so both take exactly the same path.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::actors::messages::{
    Adopt, Assign, AttemptEvent, Drain, LastHeard, Registered, Revoke, SchedulerHandle,
    WorkerDraining, WorkerHandle, WorkerJoined, WorkerLeft,
};
use crate::clock::{Clock, Random};
use crate::domain::ids::{JobId, LeaseToken, WorkerId};
use crate::domain::job::{FailureClass, JobKind, Output};
use crate::observer::Observer;
use crate::wire::{Capabilities, FromWorker, PresentedAttempt, ToWorker};

/// The way to the worker itself.
pub trait WorkerLink: Send + 'static {
    /// False when the worker can no longer be reached.
    fn send(&mut self, msg: ToWorker) -> bool;
}

impl Handler<Registered> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: Registered, _ctx: &mut Self::Context) {
        if let Some(lease) = self.lease {
            self.link.send(ToWorker::Welcome {
                worker_id: self.id,
                heartbeat_ms: u64::try_from((lease / 3).as_millis()).unwrap_or(5_000),
                lease_ms: u64::try_from(lease.as_millis()).unwrap_or(15_000),
                resumed: msg.resumed,
                refused: msg.refused,
            });
        }
    }
}

impl Handler<Adopt> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: Adopt, _ctx: &mut Self::Context) {
        self.assignments.insert(
            msg.job_id,
            Assignment {
                lease: msg.lease,
                reply_to: msg.reply_to,
            },
        );
    }
}

impl Handler<Drain> for WorkerActor {
    type Result = ();

    fn handle(&mut self, _: Drain, _ctx: &mut Self::Context) {
        self.link.send(ToWorker::Drain);
    }
}

impl Handler<LastHeard> for WorkerActor {
    type Result = MessageResult<LastHeard>;

    fn handle(&mut self, _: LastHeard, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.clock.since(self.last_heard))
    }
}

/// The link is gone (socket closed): the worker leaves.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkClosed;

struct Assignment {
    lease: LeaseToken,
    reply_to: Recipient<AttemptEvent>,
}

pub struct WorkerActor {
    id: WorkerId,
    caps: Capabilities,
    link: Box<dyn WorkerLink>,
    scheduler: SchedulerHandle,
    observer: Arc<dyn Observer>,
    /// Ordered, so a disconnect loses its attempts in one order every run.
    assignments: BTreeMap<JobId, Assignment>,
    /// A worker silent for this long has lost its attempts; `None` for
    /// in-process workers, which cannot go silent without the process.
    lease: Option<Duration>,
    last_heard: Instant,
    /// What its `hello` presented, for the scheduler to check.
    presented: Vec<PresentedAttempt>,
    clock: Clock,
}

impl WorkerActor {
    pub fn new(
        id: WorkerId,
        caps: Capabilities,
        link: Box<dyn WorkerLink>,
        scheduler: SchedulerHandle,
        observer: Arc<dyn Observer>,
        lease: Option<Duration>,
    ) -> WorkerActor {
        WorkerActor {
            id,
            caps,
            link,
            scheduler,
            observer,
            assignments: BTreeMap::new(),
            lease,
            last_heard: Clock::system().instant(),
            presented: Vec::new(),
            clock: Clock::system(),
        }
    }

    /// The actor reads `clock` (the orchestrator's) for the heartbeat
    /// lease instead of the process's.
    pub fn with_clock(mut self, clock: Clock) -> WorkerActor {
        self.last_heard = clock.instant();
        self.clock = clock;
        self
    }

    /// Attempts the worker says it still holds from an earlier connection.
    pub fn with_presented(mut self, presented: Vec<PresentedAttempt>) -> WorkerActor {
        self.presented = presented;
        self
    }

    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// The attempt a message is about, if its lease is the current one.
    /// Anything else is refused with an error frame and counted: it can
    /// never touch a job this worker does not hold.
    fn current(&mut self, job_id: JobId, lease: LeaseToken) -> Option<&Assignment> {
        if matches!(self.assignments.get(&job_id), Some(a) if a.lease == lease) {
            return self.assignments.get(&job_id);
        }
        self.observer.stale_worker_message();
        tracing::debug!(worker = %self.id, job = %job_id, "ignored message for an attempt this worker does not hold");
        self.link.send(ToWorker::Error {
            message: format!(
                "job {job_id}: no current attempt with this lease on this worker; ignored"
            ),
        });
        None
    }
}

impl Actor for WorkerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.scheduler.worker_joined.do_send(WorkerJoined {
            id: self.id,
            caps: self.caps.clone(),
            worker: WorkerHandle::of(&ctx.address()),
            presented: std::mem::take(&mut self.presented),
        });
        if let Some(lease) = self.lease {
            ctx.run_interval(lease / 4, move |act, ctx| {
                if act.clock.since(act.last_heard) > lease {
                    tracing::warn!(worker = %act.id, name = %act.caps.name, "worker missed its heartbeat lease; its attempts are lost");
                    act.link.send(ToWorker::Error {
                        message: "heartbeat lease expired; reconnect".into(),
                    });
                    ctx.stop();
                }
            });
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for (_, a) in std::mem::take(&mut self.assignments) {
            a.reply_to.do_send(AttemptEvent::Lost {
                reason: "worker disconnected".into(),
            });
        }
        self.scheduler
            .worker_left
            .do_send(WorkerLeft { id: self.id });
    }
}

impl Handler<Assign> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: Assign, ctx: &mut Self::Context) {
        let sent = self.link.send(ToWorker::Assign {
            job_id: msg.job_id,
            attempt: msg.attempt,
            lease: msg.lease,
            kind: msg.spec.kind,
            model: msg.spec.model,
            prompt: msg.spec.prompt,
            params: msg.spec.params,
            deadline_ms: u64::try_from(msg.deadline.as_millis()).unwrap_or(u64::MAX),
            inputs: msg.files.inputs,
            outputs: msg.files.outputs,
        });
        self.assignments.insert(
            msg.job_id,
            Assignment {
                lease: msg.lease,
                reply_to: msg.reply_to,
            },
        );
        if !sent {
            ctx.stop();
        }
    }
}

impl Handler<Revoke> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: Revoke, _ctx: &mut Self::Context) {
        if matches!(self.assignments.get(&msg.job_id), Some(a) if a.lease == msg.lease) {
            self.assignments.remove(&msg.job_id);
            self.link.send(ToWorker::Cancel {
                job_id: msg.job_id,
                lease: msg.lease,
            });
        }
    }
}

impl Handler<LinkClosed> for WorkerActor {
    type Result = ();

    fn handle(&mut self, _: LinkClosed, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<FromWorker> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: FromWorker, _ctx: &mut Self::Context) {
        self.last_heard = self.clock.instant();
        match msg {
            FromWorker::Heartbeat => {}
            FromWorker::Hello { .. } => {
                self.link.send(ToWorker::Error {
                    message: "hello was already received on this connection; ignored".into(),
                });
            }
            FromWorker::Drain => {
                tracing::info!(worker = %self.id, name = %self.caps.name, running = self.assignments.len(), "worker draining");
                self.scheduler
                    .worker_draining
                    .do_send(WorkerDraining { id: self.id });
            }
            FromWorker::Accept { job_id, lease } => {
                if let Some(a) = self.current(job_id, lease) {
                    a.reply_to.do_send(AttemptEvent::Accepted);
                }
            }
            FromWorker::Progress {
                job_id,
                lease,
                percent,
                ..
            } => {
                if let Some(a) = self.current(job_id, lease) {
                    a.reply_to.do_send(AttemptEvent::Progress {
                        percent: percent.min(100),
                    });
                }
            }
            FromWorker::Complete {
                job_id,
                lease,
                outputs,
            } => {
                // The planted bug (simulation tests only): the job id
                // alone is taken to name the current attempt.
                let late_accepted =
                    crate::planted::active(crate::planted::Bug::LateCompleteAccepted)
                        && self.assignments.contains_key(&job_id);
                if self.current(job_id, lease).is_some() || late_accepted {
                    if let Some(a) = self.assignments.remove(&job_id) {
                        a.reply_to.do_send(AttemptEvent::Completed {
                            outputs,
                            // Only an in-process worker has no lease.
                            simulated: self.lease.is_none(),
                        });
                    }
                }
            }
            FromWorker::Fail {
                job_id,
                lease,
                class,
                message,
            } => {
                if self.current(job_id, lease).is_some() {
                    if let Some(a) = self.assignments.remove(&job_id) {
                        a.reply_to.do_send(AttemptEvent::Failed { class, message });
                    }
                }
            }
        }
    }
}

/// How a simulated GPU behaves.
#[derive(Clone, Copy, Debug)]
pub struct SimProfile {
    pub job_time: Duration,
    /// Probability that an attempt fails with a system error.
    pub failure_rate: f64,
    /// Probability that an attempt fails because of the input.
    pub user_error_rate: f64,
}

/// An in-process stand-in for a GPU worker: accepts every assignment, takes
/// `job_time`, then completes or fails by the profile's rates. It talks to
/// its `WorkerActor` only through the wire messages a remote worker sends.
pub struct SimulatedGpu {
    profile: SimProfile,
    worker: Recipient<FromWorker>,
    running: HashMap<JobId, SpawnHandle>,
    random: Random,
}

impl SimulatedGpu {
    pub fn new(profile: SimProfile, worker: Recipient<FromWorker>, random: Random) -> SimulatedGpu {
        SimulatedGpu {
            profile,
            worker,
            running: HashMap::new(),
            random,
        }
    }

    fn outcome(
        random: &Random,
        profile: SimProfile,
        job_id: JobId,
        lease: LeaseToken,
        kind: JobKind,
        count: u32,
    ) -> FromWorker {
        let draw: f64 = random.unit();
        if draw < profile.failure_rate {
            FromWorker::Fail {
                job_id,
                lease,
                class: FailureClass::System,
                message: "simulated GPU fault".into(),
            }
        } else if draw < profile.failure_rate + profile.user_error_rate {
            FromWorker::Fail {
                job_id,
                lease,
                class: FailureClass::User,
                message: "simulated rejection of the input".into(),
            }
        } else {
            let (ext, content_type, n) = match kind {
                JobKind::Image => ("png", "image/png", count.max(1)),
                JobKind::Video => ("mp4", "video/mp4", 1),
            };
            FromWorker::Complete {
                job_id,
                lease,
                outputs: (0..n)
                    .map(|i| Output::new(format!("sim://outputs/{job_id}/{i}.{ext}"), content_type))
                    .collect(),
            }
        }
    }
}

impl Actor for SimulatedGpu {
    type Context = Context<Self>;
}

impl Handler<ToWorker> for SimulatedGpu {
    type Result = ();

    fn handle(&mut self, msg: ToWorker, ctx: &mut Self::Context) {
        match msg {
            ToWorker::Assign {
                job_id,
                lease,
                kind,
                params,
                ..
            } => {
                self.worker.do_send(FromWorker::Accept { job_id, lease });
                let profile = self.profile;
                let count = params.count.unwrap_or(1);
                if profile.job_time.is_zero() {
                    self.worker.do_send(Self::outcome(
                        &self.random,
                        profile,
                        job_id,
                        lease,
                        kind,
                        count,
                    ));
                    return;
                }
                let handle = ctx.run_later(profile.job_time, move |act, _| {
                    act.running.remove(&job_id);
                    act.worker.do_send(Self::outcome(
                        &act.random,
                        profile,
                        job_id,
                        lease,
                        kind,
                        count,
                    ));
                });
                self.running.insert(job_id, handle);
            }
            ToWorker::Cancel { job_id, .. } => {
                if let Some(handle) = self.running.remove(&job_id) {
                    ctx.cancel_future(handle);
                }
            }
            ToWorker::Drain
            | ToWorker::Welcome { .. }
            | ToWorker::Error { .. }
            | ToWorker::Redirect { .. } => {}
        }
    }
}

/// Reaches a [`SimulatedGpu`] in process.
pub struct SimLink(pub Addr<SimulatedGpu>);

impl WorkerLink for SimLink {
    fn send(&mut self, msg: ToWorker) -> bool {
        if !self.0.connected() {
            return false;
        }
        self.0.do_send(msg);
        true
    }
}

/// Starts a simulated worker (its `WorkerActor` and GPU) in the current
/// arbiter. It serves every kind and model and has the memory for any size.
pub fn start_simulated_worker(
    name: String,
    slots: u32,
    profile: SimProfile,
    scheduler: SchedulerHandle,
    observer: Arc<dyn Observer>,
    clock: Clock,
    random: Random,
) -> Addr<WorkerActor> {
    WorkerActor::create(move |ctx| {
        let gpu = SimulatedGpu::new(profile, ctx.address().recipient(), random).start();
        let caps = Capabilities {
            name,
            slots,
            gpu_model: "simulated".into(),
            vram_mb: u32::MAX,
            kinds: JobKind::ALL.to_vec(),
            models: Vec::new(),
            loaded_models: Vec::new(),
        };
        WorkerActor::new(
            WorkerId::generate(),
            caps,
            Box::new(SimLink(gpu)),
            scheduler,
            observer,
            None,
        )
        .with_clock(clock)
    })
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

    use super::*;
    use crate::actors::messages::recorder::Recorder;
    use crate::observer::NoopObserver;

    /// A remote worker's connection, as the frames sent on it.
    struct Frames(UnboundedSender<ToWorker>);

    impl WorkerLink for Frames {
        fn send(&mut self, msg: ToWorker) -> bool {
            self.0.send(msg).is_ok()
        }
    }

    fn remote_worker(
        scheduler: SchedulerHandle,
    ) -> (Addr<WorkerActor>, UnboundedReceiver<ToWorker>) {
        let (tx, rx) = unbounded_channel();
        let caps = Capabilities {
            name: "gpu-a".into(),
            slots: 2,
            gpu_model: "test".into(),
            vram_mb: 24_000,
            kinds: JobKind::ALL.to_vec(),
            models: Vec::new(),
            loaded_models: Vec::new(),
        };
        let worker = WorkerActor::new(
            WorkerId::generate(),
            caps,
            Box::new(Frames(tx)),
            scheduler,
            Arc::new(NoopObserver),
            Some(Duration::from_secs(60)),
        )
        .start();
        (worker, rx)
    }

    /// The worker actor driven with a stand-in for the scheduler: what it
    /// tells the scheduler, what it tells its worker, and what it tells a
    /// job when its connection closes.
    #[actix_rt::test]
    async fn a_worker_joins_is_welcomed_drains_and_leaves_with_its_attempts() {
        let (scheduler, mut told) = Recorder::spawn();
        let (worker, mut frames) = remote_worker(SchedulerHandle::of(&scheduler));

        let joined = told.next::<WorkerJoined>().await;
        assert_eq!(joined.caps.name, "gpu-a");
        assert!(joined.presented.is_empty());
        joined.worker.registered.do_send(Registered::default());
        let welcome = frames.recv().await.unwrap();
        assert!(
            matches!(welcome, ToWorker::Welcome { worker_id, lease_ms: 60_000, .. } if worker_id == joined.id),
            "{welcome:?}"
        );

        // An attempt taken back after a restart: the job hears of its loss.
        let (job, mut job_heard) = Recorder::spawn();
        joined.worker.adopt.do_send(Adopt {
            job_id: JobId::generate(),
            lease: LeaseToken::generate(),
            reply_to: job.recipient(),
        });

        worker.do_send(FromWorker::Drain);
        let draining = told.next::<WorkerDraining>().await;
        assert_eq!(draining.id, joined.id);

        worker.do_send(LinkClosed);
        let lost = job_heard.next::<AttemptEvent>().await;
        assert!(matches!(lost, AttemptEvent::Lost { .. }), "{lost:?}");
        let left = told.next::<WorkerLeft>().await;
        assert_eq!(left.id, joined.id);
        assert!(told.is_empty());
    }
}
