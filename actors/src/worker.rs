//! `WorkerActor`: one per connected GPU worker. It owns what is sent to the
//! worker and checks every message coming back against the attempt's lease
//! before it reaches the job. A worker is reached through a [`WorkerLink`]:
//! a WebSocket session for a remote worker, or the in-process
//! [`SimulatedGpu`], so both take exactly the same path.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::clock::{Clock, Random};
use crate::ids::{JobId, LeaseToken, WorkerId};
use crate::job::{FailureClass, JobKind, JobSpec, Output};
use crate::observer::Observer;
use crate::scheduler::actor::{SchedulerActor, WorkerDraining, WorkerJoined, WorkerLeft};
use crate::wire::{AttemptId, FromWorker, PresentedAttempt, RefusedAttempt, ToWorker};

/// What a worker can run.
#[derive(Clone, Debug)]
pub struct Capabilities {
    pub name: String,
    pub slots: u32,
    pub gpu_model: String,
    /// GPU memory; a job goes only to a worker with what its size needs.
    pub vram_mb: u32,
    pub kinds: Vec<JobKind>,
    /// Empty means any model.
    pub models: Vec<String>,
    pub loaded_models: Vec<String>,
}

impl Capabilities {
    pub fn serves(&self, kind: JobKind, model: &str, vram_needed_mb: u32) -> bool {
        self.kinds.contains(&kind)
            && (self.models.is_empty() || self.models.iter().any(|m| m == model))
            && self.vram_mb >= vram_needed_mb
    }
}

/// The way to the worker itself.
pub trait WorkerLink: Send + 'static {
    /// False when the worker can no longer be reached.
    fn send(&mut self, msg: ToWorker) -> bool;
}

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
    pub files: crate::attempt_files::AttemptPlan,
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

/// Tell the worker to finish what it runs and take nothing new.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

impl Handler<Drain> for WorkerActor {
    type Result = ();

    fn handle(&mut self, _: Drain, _ctx: &mut Self::Context) {
        self.link.send(ToWorker::Drain);
    }
}

/// How long ago the worker was last heard from.
#[derive(Message)]
#[rtype(result = "Duration")]
pub struct LastHeard;

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
    scheduler: Addr<SchedulerActor>,
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
        scheduler: Addr<SchedulerActor>,
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
        self.scheduler.do_send(WorkerJoined {
            id: self.id,
            caps: self.caps.clone(),
            addr: ctx.address(),
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
        self.scheduler.do_send(WorkerLeft { id: self.id });
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
                self.scheduler.do_send(WorkerDraining { id: self.id });
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
    scheduler: Addr<SchedulerActor>,
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
