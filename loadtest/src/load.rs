//! The load: submissions (open loop with Poisson arrivals, closed loop, or
//! a prefill), idempotent replays and cancels.
//!
//! Open loop measures latency from each job's intended send time, so a
//! server (or a harness) that falls behind shows up as latency instead of
//! silently lowering the offered rate (coordinated omission). A
//! submission whose answer is lost (connection refused or reset, e.g. while
//! the server is being killed) is sent again with the same Idempotency-Key
//! until it gets a definite answer.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use admedia_actors::domain::ids::JobId;
use admedia_actors::domain::job::{Charge, JobState};
use admedia_actors::domain::tier::{PerTier, Tier};
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};

use crate::api::{Api, ApiError, Response};
use crate::recorder::{CancelObs, Recorder, ReplayObs, Submission};

/// Prompts start with this, followed by the idempotency key.
pub const PROMPT_PREFIX: &str = "admedia-loadtest ";

#[derive(Clone, Debug)]
pub struct User {
    pub id: String,
    pub api_key: String,
    pub tier: Tier,
}

pub struct Ctx {
    pub api: Api,
    pub rec: Rc<Recorder>,
    pub users: Vec<User>,
    pub run_id: String,
    pub rng: RefCell<StdRng>,
    seq: Cell<u64>,
    /// How long a submission or cancel is retried when it gets no answer.
    pub answer_deadline: Duration,
    pub replay_fraction: f64,
    pub cancel_fraction: f64,
    pub video_fraction: f64,
    /// Cancels land within this long after acceptance.
    pub cancel_window: Duration,
    /// Cancels and replays still running.
    pub side_tasks: RefCell<Vec<tokio::task::JoinHandle<()>>>,
}

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        api: Api,
        rec: Rc<Recorder>,
        users: Vec<User>,
        run_id: String,
        rng: StdRng,
        answer_deadline: Duration,
        replay_fraction: f64,
        cancel_fraction: f64,
        video_fraction: f64,
        cancel_window: Duration,
    ) -> Ctx {
        Ctx {
            api,
            rec,
            users,
            run_id,
            rng: RefCell::new(rng),
            seq: Cell::new(0),
            answer_deadline,
            replay_fraction,
            cancel_fraction,
            video_fraction,
            cancel_window,
            side_tasks: RefCell::new(Vec::new()),
        }
    }

    fn roll(&self) -> f64 {
        self.rng.borrow_mut().random()
    }

    fn pick_user(&self) -> usize {
        self.rng.borrow_mut().random_range(0..self.users.len())
    }

    /// A job body as the server's OpenAPI document describes it (built as JSON, so a field added
    /// to the server's request type does not break the harness).
    fn body(&self, key: &str) -> Value {
        let mut rng = self.rng.borrow_mut();
        let prompt = format!("{PROMPT_PREFIX}{key}");
        if rng.random::<f64>() < self.video_fraction {
            json!({"kind": "video", "model": "svd-xt", "prompt": prompt,
                   "params": {"width": 1280, "height": 720,
                              "duration_s": rng.random_range(1..=3), "seed": rng.random::<u32>()}})
        } else {
            json!({"kind": "image", "model": "sdxl", "prompt": prompt,
                   "params": {"width": 1024, "height": 1024,
                              "count": rng.random_range(1..=2), "seed": rng.random::<u32>()}})
        }
    }

    /// Waits for every cancel and replay started so far.
    pub async fn join_side_tasks(&self) {
        loop {
            let tasks: Vec<_> = self.side_tasks.borrow_mut().drain(..).collect();
            if tasks.is_empty() {
                return;
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    }
}

fn label(res: &Response) -> String {
    match res.problem_type() {
        Some(t) => format!("{} {t}", res.status),
        None => res.status.to_string(),
    }
}

fn job_id_of(body: &Value) -> Option<JobId> {
    body.get("id")?.as_str()?.parse().ok()
}

/// Retries `call` while it gets no answer or a 5xx, until `deadline`.
pub(crate) async fn until_answered<F, Fut>(
    deadline: Instant,
    mut call: F,
) -> (Result<Response, ApiError>, u32)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Response, ApiError>>,
{
    let mut tries = 0u32;
    let mut pause = Duration::from_millis(50);
    loop {
        tries += 1;
        let res = call().await;
        let retry = match &res {
            Err(ApiError::Transport(_)) => true,
            Ok(r) => r.status >= 500,
            Err(_) => false,
        };
        if !retry || Instant::now() + pause >= deadline {
            return (res, tries);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// One logical submission, resubmitted with the same key until answered.
/// `extras`: may also be replayed and cancelled.
pub async fn submit_one(ctx: Rc<Ctx>, user: usize, phase: usize, intended: Instant, extras: bool) {
    submit(ctx, user, phase, intended, extras, None).await;
}

/// A submission of a body of the caller's (`kind`, `model`, `params`; the
/// prompt carrying the idempotency key is added here), no replays or
/// cancels. The job id when accepted.
pub async fn submit_shaped(ctx: Rc<Ctx>, user: usize, phase: usize, shape: Value) -> Option<JobId> {
    submit(ctx, user, phase, Instant::now(), false, Some(shape)).await
}

async fn submit(
    ctx: Rc<Ctx>,
    user: usize,
    phase: usize,
    intended: Instant,
    extras: bool,
    shape: Option<Value>,
) -> Option<JobId> {
    let n = ctx.seq.get();
    ctx.seq.set(n + 1);
    let key = format!("lt-{}-{n}", ctx.run_id);
    let body = match shape {
        Some(mut b) => {
            if let Some(obj) = b.as_object_mut() {
                obj.insert(
                    "prompt".into(),
                    Value::String(format!("{PROMPT_PREFIX}{key}")),
                );
            }
            b
        }
        None => ctx.body(&key),
    };
    let u = &ctx.users[user];
    let sent = Instant::now();
    let idx = {
        let mut d = ctx.rec.data.borrow_mut();
        d.submissions.push(Submission {
            key: key.clone(),
            user,
            tier: u.tier,
            phase,
            intended_us: ctx.rec.us_of(intended),
            sent_us: ctx.rec.us_of(sent),
            answered_us: None,
            status: None,
            job_id: None,
            tries: 0,
        });
        d.submissions.len() - 1
    };
    let deadline = sent + ctx.answer_deadline;
    let (res, tries) = until_answered(deadline, || ctx.api.submit(&u.api_key, &body, &key)).await;
    let answered = ctx.rec.now_us();
    let mut accepted: Option<JobId> = None;
    {
        let mut d = ctx.rec.data.borrow_mut();
        d.resubmits += u64::from(tries.saturating_sub(1));
        let s = &mut d.submissions[idx];
        s.tries = tries;
        if let Ok(r) = &res {
            s.answered_us = Some(answered);
            s.status = Some(r.status);
            if r.status == 202 {
                s.job_id = job_id_of(&r.body);
                accepted = s.job_id;
            }
        }
        if let Some(job) = accepted {
            d.by_job.entry(job).or_insert(idx);
        }
    }
    match &res {
        Ok(r) if r.status == 202 && accepted.is_none() => {
            ctx.rec.status("202 without a job id".into());
            ctx.rec.anomaly(format!(
                "submission {key}: 202 without a readable job id: {}",
                r.body
            ));
        }
        Ok(r) => ctx.rec.status(label(r)),
        Err(ApiError::Transport(_)) => ctx.rec.status("no answer".into()),
        Err(e) => ctx.rec.status(format!("error: {e}")),
    }
    let job = accepted?;
    if !extras {
        return Some(job);
    }
    if ctx.roll() < ctx.replay_fraction {
        let delay = Duration::from_millis(ctx.rng.borrow_mut().random_range(0..300));
        let ctx2 = Rc::clone(&ctx);
        let (key, body, api_key) = (key.clone(), body.clone(), u.api_key.clone());
        let h = actix_rt::spawn(async move {
            tokio::time::sleep(delay).await;
            let deadline = Instant::now() + ctx2.answer_deadline;
            let (res, _) =
                until_answered(deadline, || ctx2.api.submit(&api_key, &body, &key)).await;
            match res {
                Ok(r) => ctx2.rec.data.borrow_mut().replays.push(ReplayObs {
                    key,
                    first_job: job,
                    replay_job: job_id_of(&r.body),
                    status: r.status,
                    header: r.replayed,
                }),
                Err(e) => ctx2.rec.anomaly(format!("replay of {key}: {e}")),
            }
        });
        ctx.side_tasks.borrow_mut().push(h);
    }
    if ctx.roll() < ctx.cancel_fraction {
        let window = ctx.cancel_window.as_micros().max(1) as u64;
        let delay = Duration::from_micros(ctx.rng.borrow_mut().random_range(0..window));
        let ctx2 = Rc::clone(&ctx);
        let api_key = u.api_key.clone();
        let h = actix_rt::spawn(async move {
            tokio::time::sleep(delay).await;
            let sent = ctx2.rec.now_us();
            let job_s = job.to_string();
            let deadline = Instant::now() + ctx2.answer_deadline;
            let (res, _) = until_answered(deadline, || ctx2.api.cancel(&api_key, &job_s)).await;
            let acked = ctx2.rec.now_us();
            match res {
                Ok(r) => {
                    let state = r
                        .body
                        .get("state")
                        .and_then(|s| serde_json::from_value::<JobState>(s.clone()).ok());
                    let charge = r
                        .body
                        .get("charge")
                        .and_then(|s| serde_json::from_value::<Charge>(s.clone()).ok());
                    let attempts =
                        r.body.get("attempts").and_then(Value::as_u64).unwrap_or(0) as u32;
                    if r.status == 200 && (state.is_none() || charge.is_none()) {
                        ctx2.rec.anomaly(format!(
                            "cancel of {job}: 200 without state/charge: {}",
                            r.body
                        ));
                    }
                    ctx2.rec.data.borrow_mut().cancels.push(CancelObs {
                        job_id: job,
                        sent_us: sent,
                        acked_us: acked,
                        status: r.status,
                        state,
                        charge,
                        attempts,
                    });
                }
                Err(e) => ctx2.rec.anomaly(format!("cancel of {job}: {e}")),
            }
        });
        ctx.side_tasks.borrow_mut().push(h);
    }
    Some(job)
}

async fn join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

/// Poisson arrivals at `rate` per second until `duration` or `max_jobs`.
pub async fn open_loop(
    ctx: Rc<Ctx>,
    phase: usize,
    rate: f64,
    duration: Option<Duration>,
    max_jobs: Option<u64>,
) {
    let start = Instant::now();
    let end = duration.map(|d| start + d);
    let mut t = start;
    let mut n = 0u64;
    let mut handles = Vec::new();
    loop {
        let u: f64 = ctx.rng.borrow_mut().random();
        t += Duration::from_secs_f64(-(1.0 - u).ln() / rate);
        if end.is_some_and(|e| t >= e) || max_jobs.is_some_and(|m| n >= m) {
            break;
        }
        tokio::time::sleep_until(t.into()).await;
        let user = ctx.pick_user();
        handles.push(actix_rt::spawn(submit_one(
            Rc::clone(&ctx),
            user,
            phase,
            t,
            true,
        )));
        n += 1;
        // Reap finished tasks now and then so the list stays short.
        if handles.len() >= 4096 {
            handles.retain(|h| !h.is_finished());
        }
    }
    join(handles).await;
}

/// `batch` jobs of one user in one request, each with its own idempotency
/// key, sent again whole until answered (the keys make that safe). Each
/// item is recorded as a submission of its own, answered with its item's
/// status. No replays or cancels.
pub async fn submit_batch(ctx: Rc<Ctx>, user: usize, phase: usize, batch: usize) {
    let u = &ctx.users[user];
    let sent = Instant::now();
    let mut keys = Vec::with_capacity(batch);
    let mut items = Vec::with_capacity(batch);
    let first = {
        let mut d = ctx.rec.data.borrow_mut();
        let first = d.submissions.len();
        for _ in 0..batch {
            let n = ctx.seq.get();
            ctx.seq.set(n + 1);
            let key = format!("lt-{}-{n}", ctx.run_id);
            items.push(json!({"idempotency_key": key, "job": ctx.body(&key)}));
            d.submissions.push(Submission {
                key: key.clone(),
                user,
                tier: u.tier,
                phase,
                intended_us: ctx.rec.us_of(sent),
                sent_us: ctx.rec.us_of(sent),
                answered_us: None,
                status: None,
                job_id: None,
                tries: 0,
            });
            keys.push(key);
        }
        first
    };
    let items = Value::Array(items);
    let deadline = sent + ctx.answer_deadline;
    let (res, tries) = until_answered(deadline, || ctx.api.submit_batch(&u.api_key, &items)).await;
    let answered = ctx.rec.now_us();
    let results = match &res {
        Ok(r) if r.status == 200 => r.body.get("results").and_then(Value::as_array).cloned(),
        _ => None,
    };
    let mut labels = Vec::with_capacity(batch);
    let mut anomalies = Vec::new();
    {
        let mut d = ctx.rec.data.borrow_mut();
        d.resubmits += u64::from(tries.saturating_sub(1));
        for (i, key) in keys.iter().enumerate() {
            let idx = first + i;
            let item = results.as_ref().and_then(|rs| {
                rs.iter()
                    .find(|r| r.get("index").and_then(Value::as_u64) == Some(i as u64))
            });
            let status = match (item, &res) {
                (Some(item), _) => item.get("status").and_then(Value::as_u64).map(|v| v as u16),
                (None, Ok(r)) => Some(r.status),
                (None, Err(_)) => None,
            };
            let job = item
                .filter(|_| status == Some(202))
                .and_then(|item| item.get("job"))
                .and_then(job_id_of);
            let s = &mut d.submissions[idx];
            s.tries = tries;
            s.answered_us = status.map(|_| answered);
            s.status = status;
            s.job_id = job;
            if let Some(job) = job {
                d.by_job.entry(job).or_insert(idx);
            } else if status == Some(202) {
                anomalies.push(format!("batch item {key}: 202 without a readable job id"));
            }
            labels.push(match (item, &res) {
                (Some(item), _) => {
                    let code = status.unwrap_or(0);
                    match item
                        .get("problem")
                        .and_then(|p| p.get("type"))
                        .and_then(Value::as_str)
                    {
                        Some(t) => format!("{code} {t}"),
                        None => code.to_string(),
                    }
                }
                (None, Ok(r)) => label(r),
                (None, Err(ApiError::Transport(_))) => "no answer".into(),
                (None, Err(e)) => format!("error: {e}"),
            });
        }
    }
    for l in labels {
        ctx.rec.status(l);
    }
    for a in anomalies {
        ctx.rec.anomaly(a);
    }
}

/// `concurrency` clients, each submitting as soon as its last answer came:
/// one job per request, or `batch` at once.
pub async fn closed_loop(
    ctx: Rc<Ctx>,
    phase: usize,
    concurrency: usize,
    batch: usize,
    duration: Option<Duration>,
    max_jobs: Option<u64>,
) {
    let end = duration.map(|d| Instant::now() + d);
    let issued = Rc::new(Cell::new(0u64));
    let handles = (0..concurrency)
        .map(|_| {
            let ctx = Rc::clone(&ctx);
            let issued = Rc::clone(&issued);
            actix_rt::spawn(async move {
                loop {
                    if end.is_some_and(|e| Instant::now() >= e)
                        || max_jobs.is_some_and(|m| issued.get() >= m)
                    {
                        return;
                    }
                    let user = ctx.pick_user();
                    if batch > 1 {
                        let left = max_jobs.map_or(batch as u64, |m| m - issued.get());
                        let n = (batch as u64).min(left) as usize;
                        issued.set(issued.get() + n as u64);
                        submit_batch(Rc::clone(&ctx), user, phase, n).await;
                    } else {
                        issued.set(issued.get() + 1);
                        submit_one(Rc::clone(&ctx), user, phase, Instant::now(), true).await;
                    }
                }
            })
        })
        .collect();
    join(handles).await;
}

/// `total` jobs split across the tiers in proportion to `weights` (tiers
/// without users get none), round-robin over each tier's users, sent by
/// `concurrency` clients. No replays or cancels.
pub async fn prefill(
    ctx: Rc<Ctx>,
    phase: usize,
    total: u64,
    weights: PerTier<u32>,
    concurrency: usize,
) {
    let mut by_tier: PerTier<Vec<usize>> = PerTier::default();
    for (i, u) in ctx.users.iter().enumerate() {
        by_tier[u.tier].push(i);
    }
    let live: u64 = by_tier
        .iter()
        .filter(|(_, users)| !users.is_empty())
        .map(|(t, _)| u64::from(weights[t]))
        .sum();
    if live == 0 {
        return;
    }
    let mut plan: Vec<usize> = Vec::new();
    let mut left = total;
    let last = Tier::ALL
        .into_iter()
        .rev()
        .find(|&t| !by_tier[t].is_empty());
    for (t, users) in by_tier.iter() {
        if users.is_empty() {
            continue;
        }
        // The heaviest-numbered tier takes the rounding remainder.
        let n = if Some(t) == last {
            left
        } else {
            total * u64::from(weights[t]) / live
        };
        left -= n.min(left);
        plan.extend((0..n as usize).map(|i| users[i % users.len()]));
    }
    // Interleave the tiers so every tier is submitted throughout.
    let mut order: Vec<(u64, usize)> = plan
        .into_iter()
        .enumerate()
        .map(|(i, u)| (ctx.rng.borrow_mut().random::<u64>() ^ i as u64, u))
        .collect();
    order.sort_unstable();
    let queue = Rc::new(RefCell::new(
        order.into_iter().map(|(_, u)| u).collect::<Vec<_>>(),
    ));
    let handles = (0..concurrency.max(1))
        .map(|_| {
            let ctx = Rc::clone(&ctx);
            let queue = Rc::clone(&queue);
            actix_rt::spawn(async move {
                loop {
                    let next = queue.borrow_mut().pop();
                    let Some(user) = next else { return };
                    submit_one(Rc::clone(&ctx), user, phase, Instant::now(), false).await;
                }
            })
        })
        .collect();
    join(handles).await;
}
