//! Simulated GPU workers speaking the real WebSocket protocol
//! (docs/worker-protocol.md), with fault injection:
//!
//! - crash: the worker accepts an attempt and drops its connection part way
//!   through it (no close frame), then reconnects as a new worker;
//! - hang: the worker stops heartbeating and answering anything, holding
//!   its attempts, until the server drops it after the lease (the harness
//!   notes it as an anomaly if the server never does);
//! - slow attempts, system errors, user errors;
//! - late duplicates: a final report (`complete`/`fail`) sent a second time
//!   after a delay; the server must refuse it and change nothing.
//!
//! Every `assign` received is recorded (job, attempt, time) for the
//! dispatch-share and ran-after-cancel checks, and every time a slot is
//! refilled the time it stood free is recorded as dispatch latency.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use admedia_actors::domain::ids::{JobId, LeaseToken};
use admedia_actors::domain::job::{FailureClass, JobKind, JobParams, Output};
use admedia_actors::wire::{FromWorker, ToWorker};
use admedia_worker::placeholder;
use admedia_worker::socket::{self, send, Socket, CONNECT_TIMEOUT, WELCOME_TIMEOUT};
use awc::http::header::HeaderValue;
use awc::ws::{CloseCode, Frame, Message};
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};

use crate::cli::Faults;
use crate::recorder::{Outcome, Recorder};

const RECONNECT_DELAY: Duration = Duration::from_millis(200);

#[derive(Clone, Debug)]
pub struct WorkerSpec {
    pub url: String,
    pub token: String,
    pub slots: u32,
    /// How long an attempt runs when the profile does not say.
    pub job_time: Duration,
    pub jitter: f64,
    pub faults: Faults,
    pub seed: u64,
    /// Leave Nagle's algorithm on, as plain awc does (the worker agent
    /// sets TCP_NODELAY, through the same `socket::connector`).
    pub nagle: bool,
    /// What the worker says it is; `None`: the all-round worker of the
    /// other scenarios (any kind, any model, 80 GB).
    pub profile: Option<Profile>,
}

/// A worker of a heterogeneous fleet: its capabilities as sent in
/// `hello`, how long each model really takes on it, and whether it is the
/// broken machine that fails every attempt.
#[derive(Clone, Debug)]
pub struct Profile {
    pub name: String,
    pub kinds: Vec<JobKind>,
    /// The models it serves (never empty here: an empty list means any).
    pub models: Vec<String>,
    pub vram_mb: u32,
    /// Real milliseconds per unit (image, or second of video) per model;
    /// a model not listed runs the spec's `job_time`.
    pub ms_per_unit: Vec<(String, u64)>,
    /// Fails every attempt as a system failure after `broken_after`.
    pub broken: bool,
    pub broken_after: Duration,
}

impl Profile {
    /// How long an attempt of this job runs here, before jitter: the
    /// model's time per unit, times the units, doubled for the large size
    /// classes (as the registry estimates it).
    pub fn attempt_ms(
        &self,
        model: &str,
        params: &JobParams,
        kind: JobKind,
        fallback: Duration,
    ) -> f64 {
        let Some(&(_, per_unit)) = self.ms_per_unit.iter().find(|(m, _)| m == model) else {
            return millis(fallback);
        };
        let units = match kind {
            JobKind::Image => params.count.unwrap_or(1),
            JobKind::Video => params.duration_s.unwrap_or(1),
        }
        .max(1);
        let large =
            match admedia_actors::domain::job::SizeClass::of(kind, params.width, params.height) {
                Some(
                    admedia_actors::domain::job::SizeClass::ImageLarge
                    | admedia_actors::domain::job::SizeClass::VideoHd,
                ) => 2,
                _ => 1,
            };
        (per_unit * u64::from(units) * large) as f64
    }
}

/// Milliseconds, fractional: the unit attempt times are drawn in.
fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub struct WorkerPool {
    stop: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl WorkerPool {
    /// Starts `n` workers numbered from `first`; each reconnects until stopped.
    pub fn start(spec: &WorkerSpec, n: usize, first: usize, rec: &Rc<Recorder>) -> WorkerPool {
        let (stop, stop_rx) = watch::channel(false);
        let handles = (first..first + n)
            .map(|idx| {
                let spec = spec.clone();
                let rec = Rc::clone(rec);
                let stop = stop_rx.clone();
                actix_rt::spawn(async move { run_worker(idx, spec, rec, stop).await })
            })
            .collect();
        WorkerPool { stop, handles }
    }

    /// Asks every worker to close its connection, and waits a little for it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for h in self.handles {
            let abort = h.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), h)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

enum End {
    Stopped,
    Lost(String),
    /// The node does not run the active scheduler: connect there instead.
    Redirect(String),
}

async fn run_worker(
    idx: usize,
    mut spec: WorkerSpec,
    rec: Rc<Recorder>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(spec.seed.wrapping_add(idx as u64 * 0x9E37_79B9));
    let mut connections = 0u64;
    loop {
        if *stop.borrow() {
            return;
        }
        if connections > 0 {
            rec.faults(|f| f.reconnects += 1);
        }
        connections += 1;
        match session(idx, &spec, &rec, &mut rng, &mut stop).await {
            End::Stopped => return,
            End::Lost(_reason) => {}
            End::Redirect(url) => {
                rec.anomaly(format!("worker {idx}: redirected to {url}"));
                spec.url = url;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_DELAY) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn connect(spec: &WorkerSpec) -> Result<Socket, String> {
    let client = if spec.nagle {
        awc::Client::builder().timeout(CONNECT_TIMEOUT).finish()
    } else {
        awc::Client::builder()
            .connector(socket::connector())
            .timeout(CONNECT_TIMEOUT)
            .finish()
    };
    let authorization = HeaderValue::from_str(&format!("Bearer {}", spec.token))
        .map_err(|_| "connect: the worker token is not a valid header value".to_owned())?;
    socket::dial(&client, &spec.url, authorization)
        .await
        .map_err(|e| format!("connect: {e}"))
}

/// Sends `hello`, waits for `welcome`: (heartbeat, lease).
async fn handshake(
    ws: &mut Socket,
    idx: usize,
    slots: u32,
    profile: Option<&Profile>,
) -> Result<(Duration, Duration), End> {
    let hello = match profile {
        Some(p) => FromWorker::Hello {
            name: p.name.clone(),
            slots,
            gpu_model: "simulated".into(),
            vram_mb: p.vram_mb,
            kinds: p.kinds.clone(),
            models: p.models.clone(),
            loaded_models: vec![],
            // A load-test worker starts from scratch on every connection.
            attempts: vec![],
        },
        None => FromWorker::Hello {
            name: format!("loadtest-{idx}"),
            slots,
            gpu_model: "simulated".into(),
            vram_mb: 80_000,
            kinds: vec![JobKind::Image, JobKind::Video],
            models: vec![],
            loaded_models: vec![],
            // A load-test worker starts from scratch on every connection.
            attempts: vec![],
        },
    };
    send(ws, &hello).await.map_err(End::Lost)?;
    let lost = |m: &str| End::Lost(m.to_owned());
    let wait = async {
        loop {
            match ws.next().await {
                None => return Err(lost("closed before welcome")),
                Some(Err(e)) => return Err(End::Lost(format!("before welcome: {e}"))),
                Some(Ok(Frame::Text(text))) => match serde_json::from_slice::<ToWorker>(&text) {
                    Ok(ToWorker::Welcome {
                        heartbeat_ms,
                        lease_ms,
                        ..
                    }) => {
                        return Ok((
                            Duration::from_millis(heartbeat_ms.max(50)),
                            Duration::from_millis(lease_ms),
                        ))
                    }
                    Ok(ToWorker::Redirect { url }) => return Err(End::Redirect(url)),
                    Ok(ToWorker::Error { message }) => {
                        return Err(End::Lost(format!("hello refused: {message}")))
                    }
                    _ => {}
                },
                Some(Ok(Frame::Close(_))) => return Err(lost("closed before welcome")),
                Some(Ok(_)) => {}
            }
        }
    };
    tokio::time::timeout(WELCOME_TIMEOUT, wait)
        .await
        .map_err(|_| lost("no welcome"))?
}

enum Event {
    Finish {
        job_id: JobId,
        lease: LeaseToken,
        msg: FromWorker,
        outcome: Outcome,
    },
    Crash,
    Duplicate {
        job_id: JobId,
        msg: FromWorker,
        outcome: Outcome,
    },
}

fn later(tx: &mpsc::UnboundedSender<Event>, after: Duration, ev: Event) {
    if after.is_zero() {
        let _ = tx.send(ev);
        return;
    }
    let tx = tx.clone();
    actix_rt::spawn(async move {
        tokio::time::sleep(after).await;
        let _ = tx.send(ev);
    });
}

/// After `after`, uploads a placeholder to each output slot (as a real
/// worker uploads what it generated), then delivers `ev`. A failed upload
/// still delivers it: the server then refuses the completion, which the
/// audit sees as a retried system failure.
fn upload_then(
    tx: &mpsc::UnboundedSender<Event>,
    after: Duration,
    slots: Vec<admedia_actors::attempt_files::OutputSlot>,
    kind: JobKind,
    ev: Event,
) {
    let tx = tx.clone();
    actix_rt::spawn(async move {
        tokio::time::sleep(after).await;
        let client = awc::Client::default();
        for slot in &slots {
            // A failure shows in the audit as the server's refusal.
            let _ = client
                .put(&slot.upload_url)
                .send_body(placeholder::of(kind).0)
                .await;
        }
        let _ = tx.send(ev);
    });
}

async fn session(
    idx: usize,
    spec: &WorkerSpec,
    rec: &Rc<Recorder>,
    rng: &mut StdRng,
    stop: &mut watch::Receiver<bool>,
) -> End {
    let mut ws = tokio::select! {
        r = connect(spec) => match r {
            Ok(ws) => ws,
            Err(e) => return End::Lost(e),
        },
        _ = stop.changed() => return End::Stopped,
    };
    let (heartbeat, lease) = match handshake(&mut ws, idx, spec.slots, spec.profile.as_ref()).await
    {
        Ok(v) => v,
        Err(end) => return end,
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut held: HashMap<JobId, LeaseToken> = HashMap::new();
    let connected = Instant::now();
    let mut free_since: VecDeque<Instant> = (0..spec.slots).map(|_| connected).collect();
    let mut hung: Option<Instant> = None;
    let hang_limit = lease * 3 + Duration::from_secs(2);
    let mut ticks = tokio::time::interval(heartbeat);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let f = &spec.faults;
    loop {
        let sent: Result<(), String> = tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    let _ = ws.send(Message::Close(Some(CloseCode::Normal.into()))).await;
                    let _ = ws.close().await;
                    return End::Stopped;
                }
                Ok(())
            }
            frame = ws.next() => {
                let text = match frame {
                    None | Some(Err(_)) | Some(Ok(Frame::Close(_))) => {
                        if hung.is_some() {
                            rec.faults(|f| f.hang_dropped_by_server += 1);
                        }
                        return End::Lost("connection closed by the server".into());
                    }
                    Some(Ok(Frame::Ping(p))) => {
                        if hung.is_none() {
                            if let Err(e) = ws.send(Message::Pong(p)).await {
                                return End::Lost(e.to_string());
                            }
                        }
                        continue;
                    }
                    Some(Ok(Frame::Text(t))) => t,
                    Some(Ok(_)) => continue,
                };
                let msg = match serde_json::from_slice::<ToWorker>(&text) {
                    Ok(m) => m,
                    Err(e) => {
                        rec.anomaly(format!("worker {idx}: unreadable message from the server: {e}"));
                        continue;
                    }
                };
                match msg {
                    ToWorker::Assign { job_id, attempt, lease: job_lease, deadline_ms, outputs: slots, kind, model, params, .. } => {
                        rec.assign(job_id, attempt, idx, job_lease);
                        if hung.is_some() {
                            continue;
                        }
                        if held.get(&job_id) == Some(&job_lease) {
                            rec.anomaly(format!("worker {idx}: job {job_id} assigned twice with one lease"));
                            continue;
                        }
                        if held.len() >= spec.slots as usize {
                            rec.anomaly(format!(
                                "worker {idx}: assigned job {job_id} beyond its {} slots", spec.slots
                            ));
                            let fail = FromWorker::Fail {
                                job_id,
                                lease: job_lease,
                                class: FailureClass::System,
                                message: "no free slot".into(),
                            };
                            send(&mut ws, &fail).await
                        } else {
                            if let Some(since) = free_since.pop_front() {
                                rec.refill(since);
                            }
                            let roll: f64 = rng.random();
                            if roll < f.hang_rate {
                                rec.faults(|c| c.hangs += 1);
                                hung = Some(Instant::now());
                                continue;
                            }
                            held.insert(job_id, job_lease);
                            let mut ms = match &spec.profile {
                                Some(p) if p.broken => millis(p.broken_after),
                                Some(p) => p.attempt_ms(&model, &params, kind, spec.job_time),
                                None => millis(spec.job_time),
                            };
                            let broken = spec.profile.as_ref().is_some_and(|p| p.broken);
                            if spec.jitter > 0.0 && !broken {
                                ms *= 1.0 + spec.jitter * (2.0 * rng.random::<f64>() - 1.0);
                            }
                            if rng.random::<f64>() < f.slow_rate {
                                rec.faults(|c| c.slow += 1);
                                ms *= f.slow_factor;
                            }
                            // Stay inside the attempt's deadline: a late
                            // report would be refused as a stale lease.
                            let ms = ms.clamp(0.0, deadline_ms.saturating_sub(100) as f64);
                            let dur = Duration::from_micros((ms * 1000.0) as u64);
                            if roll < f.hang_rate + f.crash_rate {
                                rec.faults(|c| c.crashes += 1);
                                let at = dur.mul_f64(rng.random::<f64>());
                                later(&tx, at, Event::Crash);
                            } else {
                                let r: f64 = rng.random();
                                let (msg, outcome) = if broken {
                                    (FromWorker::Fail {
                                        job_id,
                                        lease: job_lease,
                                        class: FailureClass::System,
                                        message: "loadtest: this worker's GPU is broken".into(),
                                    }, Outcome::SystemError)
                                } else if r < f.system_error_rate {
                                    (FromWorker::Fail {
                                        job_id,
                                        lease: job_lease,
                                        class: FailureClass::System,
                                        message: "loadtest: injected system error".into(),
                                    }, Outcome::SystemError)
                                } else if r < f.system_error_rate + f.user_error_rate {
                                    (FromWorker::Fail {
                                        job_id,
                                        lease: job_lease,
                                        class: FailureClass::User,
                                        message: "loadtest: injected user error".into(),
                                    }, Outcome::UserError)
                                } else {
                                    // The server counts a completion only with
                                    // its outputs uploaded to the signed slots.
                                    (FromWorker::Complete {
                                        job_id,
                                        lease: job_lease,
                                        outputs: slots
                                            .iter()
                                            .map(|s| Output::new(s.key.clone(), placeholder::of(kind).1.mime()))
                                            .collect(),
                                    }, Outcome::Complete)
                                };
                                if matches!(outcome, Outcome::Complete) && !slots.is_empty() {
                                    upload_then(&tx, dur, slots, kind, Event::Finish { job_id, lease: job_lease, msg, outcome });
                                } else {
                                    later(&tx, dur, Event::Finish { job_id, lease: job_lease, msg, outcome });
                                }
                            }
                            send(&mut ws, &FromWorker::Accept { job_id, lease: job_lease }).await
                        }
                    }
                    ToWorker::Cancel { job_id, lease: job_lease } => {
                        rec.faults(|c| c.cancels_received += 1);
                        if held.get(&job_id) == Some(&job_lease) {
                            held.remove(&job_id);
                            free_since.push_back(Instant::now());
                            rec.release(job_id, idx);
                        }
                        Ok(())
                    }
                    ToWorker::Error { .. } => {
                        rec.faults(|c| c.server_errors_received += 1);
                        Ok(())
                    }
                    ToWorker::Drain => {
                        rec.anomaly(format!("worker {idx}: the server asked it to drain"));
                        Ok(())
                    }
                    ToWorker::Welcome { .. } => {
                        rec.anomaly(format!("worker {idx}: a second welcome"));
                        Ok(())
                    }
                    ToWorker::Redirect { url } => {
                        let _ = ws.close().await;
                        return End::Redirect(url);
                    }
                    // A message type newer than this harness.
                    #[allow(unreachable_patterns)]
                    other => {
                        rec.anomaly(format!("worker {idx}: unexpected message {other:?}"));
                        Ok(())
                    }
                }
            }
            Some(ev) = rx.recv() => {
                if hung.is_some() {
                    continue;
                }
                match ev {
                    Event::Crash => {
                        // Drop the socket without a close frame.
                        return End::Lost("crash injected".into());
                    }
                    Event::Finish { job_id, lease: job_lease, msg, outcome } => {
                        if held.get(&job_id) != Some(&job_lease) {
                            // Cancelled meanwhile: say nothing more about it.
                            continue;
                        }
                        held.remove(&job_id);
                        free_since.push_back(Instant::now());
                        rec.release(job_id, idx);
                        match outcome {
                            Outcome::SystemError => rec.faults(|c| c.system_errors += 1),
                            Outcome::UserError => rec.faults(|c| c.user_errors += 1),
                            Outcome::Complete => {}
                        }
                        rec.final_sent(job_id, outcome, false);
                        if rng.random::<f64>() < f.duplicate_rate {
                            later(
                                &tx,
                                f.duplicate_delay,
                                Event::Duplicate { job_id, msg: msg.clone(), outcome },
                            );
                        }
                        send(&mut ws, &msg).await
                    }
                    Event::Duplicate { job_id, msg, outcome } => {
                        rec.faults(|c| c.duplicates_sent += 1);
                        rec.final_sent(job_id, outcome, true);
                        send(&mut ws, &msg).await
                    }
                }
            }
            _ = ticks.tick() => {
                match hung {
                    Some(since) if since.elapsed() > hang_limit => {
                        rec.anomaly(format!(
                            "worker {idx}: hung for {:?} and the server never dropped it (lease {:?})",
                            since.elapsed(), lease
                        ));
                        return End::Lost("hang not detected".into());
                    }
                    Some(_) => Ok(()),
                    None => send(&mut ws, &FromWorker::Heartbeat).await,
                }
            }
        };
        if let Err(e) = sent {
            return End::Lost(e);
        }
    }
}
