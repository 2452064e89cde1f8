//! Figures of a run, computed from the recorder's raw events and the jobs
//! read back from the API: HDR histograms of latencies, per-second series,
//! dispatch shares while every tier is backlogged, and the backlog sweep.

use std::collections::{HashMap, HashSet};

use admedia_actors::domain::ids::JobId;
use admedia_actors::domain::job::JobState;
use admedia_actors::domain::tier::{PerTier, Tier};
use hdrhistogram::Histogram;
use serde::{Serialize, Serializer};

use crate::cli::in_tier_order;
use crate::recorder::Data;

/// Latencies are recorded in microseconds, up to an hour.
const MAX_US: u64 = 3_600_000_000;

#[derive(Clone, Debug, Default, Serialize)]
pub struct HistSummary {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

impl Hist {
    pub fn new() -> Hist {
        // Constant bounds: 1 µs to an hour, 3 significant digits.
        Hist(Histogram::new_with_bounds(1, MAX_US, 3).expect("constant histogram bounds are valid"))
    }

    pub fn record(&mut self, us: u64) {
        let _ = self.0.record(us.clamp(1, MAX_US));
    }

    pub fn summary(&self) -> HistSummary {
        let h = &self.0;
        let ms = |v: u64| v as f64 / 1000.0;
        if h.is_empty() {
            return HistSummary::default();
        }
        HistSummary {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    /// (percentile, ms) points for a percentile-distribution chart.
    pub fn curve(&self) -> Vec<(f64, f64)> {
        if self.0.is_empty() {
            return vec![];
        }
        [
            0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
        ]
        .iter()
        .map(|&p| (p, self.0.value_at_percentile(p) as f64 / 1000.0))
        .collect()
    }
}

/// The jobs read back at the end, with their user's tier at submission.
#[derive(Clone, Debug)]
pub struct FinalJob {
    pub id: JobId,
    pub tier: Tier,
    pub state: JobState,
    /// Unix µs.
    pub created_us: Option<i64>,
    pub started_us: Option<i64>,
    pub finished_us: Option<i64>,
}

/// One tier's figures; its name is the tier they are kept under.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TierFigures {
    pub submitted: u64,
    pub accepted: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub dispatches: u64,
    pub queue_wait: HistSummary,
    pub end_to_end: HistSummary,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Shares {
    /// Dispatches counted: those made while every tier had a job waiting.
    pub dispatches: u64,
    /// Seconds during which every tier was backlogged.
    pub backlogged_s: f64,
    #[serde(serialize_with = "in_tier_order")]
    pub counts: PerTier<u64>,
    #[serde(serialize_with = "in_tier_order")]
    pub observed: PerTier<f64>,
    #[serde(serialize_with = "in_tier_order")]
    pub expected: PerTier<f64>,
    /// Largest |observed − expected| in percentage points.
    pub max_deviation_pp: f64,
    /// Jain's fairness index of dispatches between the users of each tier
    /// (1 = perfectly even), over the same dispatches.
    #[serde(serialize_with = "in_tier_order")]
    pub within_tier_jain: PerTier<Option<f64>>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Series {
    /// Second offsets.
    pub t_s: Vec<f64>,
    pub submitted: Vec<f64>,
    pub dispatched: Vec<f64>,
    pub finished: Vec<f64>,
    pub submit_p50_ms: Vec<Option<f64>>,
    pub submit_p99_ms: Vec<Option<f64>>,
    pub wait_p50_ms: Vec<Option<f64>>,
    pub wait_p99_ms: Vec<Option<f64>>,
    /// From `/v1/admin/stats` polls: (t_s, waiting per tier, running).
    pub queue_t_s: Vec<f64>,
    #[serde(serialize_with = "in_tier_order")]
    pub queue: PerTier<Vec<f64>>,
    pub running: Vec<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BacklogLevel {
    pub backlog: u64,
    pub accepted: u64,
    pub fill_s: f64,
    pub fill_rate_per_s: f64,
    /// Over the first `window_dispatches` dispatches after the workers
    /// connected, while the backlog was still almost whole.
    pub window_dispatches: u64,
    pub window_throughput_per_s: f64,
    pub window_dispatch_latency: HistSummary,
    pub drain_s: f64,
    pub drain_throughput_per_s: f64,
    pub drain_dispatch_latency: HistSummary,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Figures {
    pub load_s: f64,
    pub offered_per_s: Option<f64>,
    pub submitted: u64,
    pub accepted: u64,
    pub submit_latency: HistSummary,
    pub submit_service: HistSummary,
    pub prefill_submit_latency: HistSummary,
    pub queue_wait: HistSummary,
    pub dispatch_latency: HistSummary,
    pub end_to_end: HistSummary,
    pub succeeded_per_s: f64,
    pub dispatched_per_s: f64,
    pub accepted_per_s: f64,
    pub peak_finished_per_s: f64,
    #[serde(serialize_with = "named_in_tier_order")]
    pub tiers: PerTier<TierFigures>,
    pub shares: Shares,
    pub series: Series,
    #[serde(skip)]
    pub curves: Vec<(String, Vec<(f64, f64)>)>,
}

/// The tiers' figures in tier order, each with its tier's name (`"tier":
/// "free"` first), as the report's JSON lists them.
fn named_in_tier_order<S: Serializer>(v: &PerTier<TierFigures>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Named<'a> {
        tier: Tier,
        #[serde(flatten)]
        figures: &'a TierFigures,
    }
    s.collect_seq(v.iter().map(|(tier, figures)| Named { tier, figures }))
}

fn pct(sorted: &[u64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)] as f64 / 1000.0)
}

/// Dispatch shares while every tier with users had work waiting: replays
/// acknowledgements, first assignments and cancels-while-waiting in time
/// order and counts each assignment made while all four tiers waited.
///
/// The harness sees a job waiting from its acknowledgement to its
/// assignment, which includes the moment the scheduler takes to hand it
/// to a free slot: under a load the workers keep up with, every tier
/// "waits" like that at once while no tier waits for another, and the
/// shares follow the arrivals, not the weights. Nor do the weights decide
/// while slots stand idle and jobs wait only for their users' running
/// limits or for a server short of CPU. A dispatch is a choice between
/// tiers only while the server's own queue holds jobs of every tier and
/// no slot is idle, so its stats samples on both sides of it must show
/// both: a server that stalled for a moment holds a queue of every tier
/// with its slots full at one sample and then dispatches the whole of it
/// in a burst, in the weights' order but in the arrivals' shares, and the
/// next sample shows the queue drained. (A run without samples has only
/// the harness's view.)
pub fn shares(data: &Data, weights: PerTier<u32>, window: Option<(u64, u64)>) -> Shares {
    let full_and_queued: Vec<(u64, bool)> = data
        .stats
        .iter()
        .map(|s| {
            let every = Tier::ALL
                .into_iter()
                .all(|t| s.stats.queue.get(t.as_str()).copied().unwrap_or(0) > 0);
            (s.t_us, every && s.stats.workers.idle_slots == 0)
        })
        .collect();
    let server_had_to_choose = |t: u64| {
        if full_and_queued.is_empty() {
            return true;
        }
        let i = full_and_queued.partition_point(|&(at, _)| at <= t);
        let before = i.checked_sub(1).map(|b| full_and_queued[b].1);
        let after = full_and_queued.get(i).map(|a| a.1);
        before == Some(true) && after == Some(true)
    };
    #[derive(Clone, Copy)]
    enum Ev {
        Ack(JobId),
        Assign(JobId),
        Unqueue(JobId),
    }
    let mut events: Vec<(u64, u8, Ev)> = Vec::new();
    for s in &data.submissions {
        if let (Some(job), Some(t)) = (s.job_id, s.answered_us) {
            events.push((t, 1, Ev::Ack(job)));
        }
    }
    for a in &data.assigns {
        events.push((a.t_us, 0, Ev::Assign(a.job_id)));
    }
    for c in &data.cancels {
        if c.status == 200 && c.charge == Some(admedia_actors::domain::job::Charge::Voided) {
            events.push((c.acked_us, 2, Ev::Unqueue(c.job_id)));
        }
    }
    events.sort_by_key(|(t, order, _)| (*t, *order));
    let tier_of = |job: &JobId| data.by_job.get(job).map(|&i| &data.submissions[i]);
    let mut waiting: PerTier<HashSet<JobId>> = PerTier::default();
    let mut assigned: HashSet<JobId> = HashSet::new();
    let mut counts: PerTier<u64> = PerTier::splat(0);
    let mut per_user: HashMap<usize, u64> = HashMap::new();
    let mut backlogged_since: Option<u64> = None;
    let mut backlogged_us = 0u64;
    let in_window = |t: u64| window.is_none_or(|(a, b)| t >= a && t <= b);
    for (t, _, ev) in events {
        let all = waiting.values().all(|w| !w.is_empty()) && server_had_to_choose(t);
        match ev {
            Ev::Ack(job) => {
                if !assigned.contains(&job) {
                    if let Some(s) = tier_of(&job) {
                        waiting[s.tier].insert(job);
                    }
                }
            }
            Ev::Unqueue(job) => {
                for (_, w) in waiting.iter_mut() {
                    w.remove(&job);
                }
            }
            Ev::Assign(job) => {
                assigned.insert(job);
                if let Some(s) = tier_of(&job) {
                    if all && in_window(t) {
                        counts[s.tier] += 1;
                        *per_user.entry(s.user).or_insert(0) += 1;
                    }
                    waiting[s.tier].remove(&job);
                }
            }
        }
        let now_all = waiting.values().all(|w| !w.is_empty()) && server_had_to_choose(t);
        match (backlogged_since, now_all) {
            (None, true) => backlogged_since = Some(t),
            (Some(since), false) => {
                backlogged_us += t.saturating_sub(since);
                backlogged_since = None;
            }
            _ => {}
        }
    }
    let total: u64 = counts.values().sum();
    let wsum: f64 = weights.values().map(|&w| f64::from(w)).sum();
    let expected = weights.map(|w| f64::from(w) / wsum);
    let observed = counts.map(|c| {
        if total == 0 {
            0.0
        } else {
            c as f64 / total as f64
        }
    });
    let max_deviation_pp = if total == 0 {
        0.0
    } else {
        Tier::ALL
            .into_iter()
            .map(|t| (observed[t] - expected[t]).abs() * 100.0)
            .fold(0.0, f64::max)
    };
    let mut within_tier_jain = PerTier::splat(None);
    let mut users_by_tier: PerTier<Vec<u64>> = PerTier::default();
    let mut tier_of_user: HashMap<usize, Tier> = HashMap::new();
    for s in &data.submissions {
        tier_of_user.insert(s.user, s.tier);
    }
    for (user, tier) in &tier_of_user {
        users_by_tier[*tier].push(per_user.get(user).copied().unwrap_or(0));
    }
    for (t, xs) in users_by_tier.iter() {
        let sum: f64 = xs.iter().map(|&x| x as f64).sum();
        let sq: f64 = xs.iter().map(|&x| (x as f64).powi(2)).sum();
        if sum > 0.0 && !xs.is_empty() {
            within_tier_jain[t] = Some(sum * sum / (xs.len() as f64 * sq));
        }
    }
    Shares {
        dispatches: total,
        backlogged_s: backlogged_us as f64 / 1e6,
        counts,
        observed,
        expected,
        max_deviation_pp,
        within_tier_jain,
    }
}

/// How many of the harness's accepted jobs were waiting for their first
/// dispatch, after each event: (time, waiting).
pub fn waiting_timeline(data: &Data) -> Vec<(u64, u64)> {
    let mut events: Vec<(u64, u8, JobId)> = Vec::new();
    for s in &data.submissions {
        if let (Some(job), Some(t)) = (s.job_id, s.answered_us) {
            events.push((t, 1, job));
        }
    }
    for a in &data.assigns {
        events.push((a.t_us, 0, a.job_id));
    }
    for c in &data.cancels {
        if c.status == 200 && c.charge == Some(admedia_actors::domain::job::Charge::Voided) {
            events.push((c.acked_us, 2, c.job_id));
        }
    }
    events.sort_by_key(|&(t, order, _)| (t, order));
    let mut waiting: HashSet<JobId> = HashSet::new();
    let mut seen: HashSet<JobId> = HashSet::new();
    let mut out = Vec::with_capacity(events.len());
    for (t, kind, job) in events {
        match kind {
            1 => {
                if !seen.contains(&job) {
                    waiting.insert(job);
                }
            }
            0 => {
                seen.insert(job);
                waiting.remove(&job);
            }
            _ => {
                waiting.remove(&job);
            }
        }
        out.push((t, waiting.len() as u64));
    }
    out
}

/// Everything about the load phase(s) named in `load_phases`.
pub fn figures(
    data: &Data,
    jobs: &[FinalJob],
    wall0_us: i64,
    load_phases: &[usize],
    prefill_phases: &[usize],
    weights: PerTier<u32>,
    run_end_us: u64,
) -> Figures {
    let in_load = |phase: usize| load_phases.contains(&phase);
    let (load_start, load_end) = load_phases
        .iter()
        .filter_map(|&p| data.phases.get(p))
        .fold((u64::MAX, 0u64), |(a, b), p| {
            (a.min(p.start_us), b.max(p.end_us.unwrap_or(run_end_us)))
        });
    let load_s = if load_end > load_start {
        (load_end - load_start) as f64 / 1e6
    } else {
        0.0
    };

    let mut f = Figures {
        load_s,
        ..Figures::default()
    };
    let mut submit = Hist::new();
    let mut service = Hist::new();
    let mut pre = Hist::new();
    let mut wait = Hist::new();
    let mut disp = Hist::new();
    let mut e2e = Hist::new();
    let mut tier_wait: PerTier<Hist> = PerTier::default();
    let mut tier_e2e: PerTier<Hist> = PerTier::default();
    let mut tiers: PerTier<TierFigures> = PerTier::default();

    let mut first_assign: HashMap<JobId, u64> = HashMap::new();
    for a in &data.assigns {
        first_assign
            .entry(a.job_id)
            .and_modify(|t| *t = (*t).min(a.t_us))
            .or_insert(a.t_us);
        if let Some(&i) = data.by_job.get(&a.job_id) {
            tiers[data.submissions[i].tier].dispatches += 1;
        }
    }
    let final_by_id: HashMap<JobId, &FinalJob> = jobs.iter().map(|j| (j.id, j)).collect();

    for s in &data.submissions {
        let tier = s.tier;
        if prefill_phases.contains(&s.phase) {
            if let Some(a) = s.answered_us {
                pre.record(a.saturating_sub(s.intended_us));
            }
        }
        if !in_load(s.phase) {
            continue;
        }
        f.submitted += 1;
        tiers[tier].submitted += 1;
        if let Some(a) = s.answered_us {
            submit.record(a.saturating_sub(s.intended_us));
            service.record(a.saturating_sub(s.sent_us));
        }
        let Some(job) = s.job_id else { continue };
        f.accepted += 1;
        tiers[tier].accepted += 1;
        if let Some(&fa) = first_assign.get(&job) {
            let w = fa.saturating_sub(s.sent_us);
            wait.record(w);
            tier_wait[tier].record(w);
        }
        if let Some(j) = final_by_id.get(&job) {
            match j.state {
                JobState::Succeeded => {
                    tiers[tier].succeeded += 1;
                    if let Some(fin) = j.finished_us {
                        let intended_wall = wall0_us + s.intended_us as i64;
                        let d = (fin - intended_wall).max(0) as u64;
                        e2e.record(d);
                        tier_e2e[tier].record(d);
                    }
                }
                JobState::Failed => tiers[tier].failed += 1,
                JobState::Cancelled => tiers[tier].cancelled += 1,
                _ => {}
            }
        }
    }
    // A slot standing free counts as dispatch latency only when a job was
    // waiting when it became free (otherwise it is just idle).
    let timeline = waiting_timeline(data);
    let waiting_at = |t: u64| -> u64 {
        match timeline.partition_point(|&(at, _)| at <= t) {
            0 => 0,
            i => timeline[i - 1].1,
        }
    };
    for &(t, lat) in &data.refills {
        if t >= load_start && t <= load_end && waiting_at(t.saturating_sub(lat)) > 0 {
            disp.record(lat);
        }
    }
    for (tier, tf) in tiers.iter_mut() {
        tf.queue_wait = tier_wait[tier].summary();
        tf.end_to_end = tier_e2e[tier].summary();
    }
    f.submit_latency = submit.summary();
    f.submit_service = service.summary();
    f.prefill_submit_latency = pre.summary();
    f.queue_wait = wait.summary();
    f.dispatch_latency = disp.summary();
    f.end_to_end = e2e.summary();
    f.curves = vec![
        ("submit (from intended send)".into(), submit.curve()),
        ("queue wait".into(), wait.curve()),
        ("end to end".into(), e2e.curve()),
    ];
    f.tiers = tiers;

    // --- per-second series over the whole run ---
    let secs = (run_end_us / 1_000_000 + 1) as usize;
    let mut submitted = vec![0f64; secs];
    let mut dispatched = vec![0f64; secs];
    let mut finished = vec![0f64; secs];
    let mut sub_lat: Vec<Vec<u64>> = vec![Vec::new(); secs];
    let mut wait_lat: Vec<Vec<u64>> = vec![Vec::new(); secs];
    let bucket = |us: u64| ((us / 1_000_000) as usize).min(secs - 1);
    for s in &data.submissions {
        if let (Some(a), Some(job)) = (s.answered_us, s.job_id) {
            submitted[bucket(a)] += 1.0;
            sub_lat[bucket(s.intended_us)].push(a.saturating_sub(s.intended_us));
            if let Some(&fa) = first_assign.get(&job) {
                wait_lat[bucket(fa)].push(fa.saturating_sub(s.sent_us));
            }
        }
    }
    for a in &data.assigns {
        dispatched[bucket(a.t_us)] += 1.0;
    }
    let mut in_load_finished = 0u64;
    for j in jobs {
        if j.state != JobState::Succeeded {
            continue;
        }
        if let Some(fin) = j.finished_us {
            let rel = fin - wall0_us;
            if rel >= 0 {
                finished[bucket(rel as u64)] += 1.0;
                if (rel as u64) >= load_start && (rel as u64) <= load_end {
                    in_load_finished += 1;
                }
            }
        }
    }
    let dispatched_in_load = data
        .assigns
        .iter()
        .filter(|a| a.t_us >= load_start && a.t_us <= load_end)
        .count();
    if load_s > 0.0 {
        f.succeeded_per_s = in_load_finished as f64 / load_s;
        f.dispatched_per_s = dispatched_in_load as f64 / load_s;
        f.accepted_per_s = f.accepted as f64 / load_s;
    }
    f.peak_finished_per_s = finished.iter().copied().fold(0.0, f64::max);
    for v in sub_lat.iter_mut().chain(wait_lat.iter_mut()) {
        v.sort_unstable();
    }
    f.series = Series {
        t_s: (0..secs).map(|s| s as f64).collect(),
        submitted,
        dispatched,
        finished,
        submit_p50_ms: sub_lat.iter().map(|v| pct(v, 0.5)).collect(),
        submit_p99_ms: sub_lat.iter().map(|v| pct(v, 0.99)).collect(),
        wait_p50_ms: wait_lat.iter().map(|v| pct(v, 0.5)).collect(),
        wait_p99_ms: wait_lat.iter().map(|v| pct(v, 0.99)).collect(),
        queue_t_s: data.stats.iter().map(|s| s.t_us as f64 / 1e6).collect(),
        queue: PerTier::from_fn(|t| {
            data.stats
                .iter()
                .map(|s| s.stats.queue.get(t.as_str()).copied().unwrap_or(0) as f64)
                .collect()
        }),
        running: data
            .stats
            .iter()
            .map(|s| {
                (s.stats.jobs.get("running").copied().unwrap_or(0)
                    + s.stats.jobs.get("assigned").copied().unwrap_or(0)) as f64
            })
            .collect(),
    };
    f.shares = shares(data, weights, None);
    f
}

/// One level of the backlog sweep: the fill phase, then the drain phase
/// (workers connected at its start).
pub fn backlog_level(
    data: &Data,
    backlog: u64,
    fill_phase: usize,
    drain_phase: usize,
) -> BacklogLevel {
    let (Some(fill), Some(drain)) = (data.phases.get(fill_phase), data.phases.get(drain_phase))
    else {
        return BacklogLevel {
            backlog,
            ..BacklogLevel::default()
        };
    };
    let fill_end = fill.end_us.unwrap_or(drain.start_us);
    let drain_end = drain.end_us.unwrap_or(fill_end);
    let accepted = data
        .submissions
        .iter()
        .filter(|s| s.phase == fill_phase && s.job_id.is_some())
        .count() as u64;
    let fill_s = (fill_end.saturating_sub(fill.start_us)) as f64 / 1e6;
    let mut assigns: Vec<u64> = data
        .assigns
        .iter()
        .filter(|a| a.t_us >= drain.start_us && a.t_us <= drain_end)
        .map(|a| a.t_us)
        .collect();
    assigns.sort_unstable();
    // The window: the first 20% of the backlog (at most 5000 dispatches),
    // timed from the first dispatch, so the backlog is still ≥ 80% whole.
    let k = ((backlog / 5).clamp(1, 5000) as usize).min(assigns.len());
    let mut level = BacklogLevel {
        backlog,
        accepted,
        fill_s,
        fill_rate_per_s: if fill_s > 0.0 {
            accepted as f64 / fill_s
        } else {
            0.0
        },
        ..BacklogLevel::default()
    };
    if k >= 2 {
        let (a, b) = (assigns[0], assigns[k - 1]);
        level.window_dispatches = k as u64;
        let secs = (b.saturating_sub(a)) as f64 / 1e6;
        if secs > 0.0 {
            level.window_throughput_per_s = (k - 1) as f64 / secs;
        }
        let mut h = Hist::new();
        for &(t, lat) in &data.refills {
            if t >= a && t <= b {
                h.record(lat);
            }
        }
        level.window_dispatch_latency = h.summary();
    }
    if let (Some(&first), Some(&last)) = (assigns.first(), assigns.last()) {
        level.drain_s = (last.saturating_sub(first)) as f64 / 1e6;
        if level.drain_s > 0.0 {
            level.drain_throughput_per_s = (assigns.len() - 1) as f64 / level.drain_s;
        }
        let mut h = Hist::new();
        for &(t, lat) in &data.refills {
            if t >= first && t <= last {
                h.record(lat);
            }
        }
        level.drain_dispatch_latency = h.summary();
    }
    level
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::StatsDto;
    use crate::recorder::{Assign, StatsSample, Submission};

    fn sub(data: &mut Data, tier: Tier, user: usize, acked: u64) -> JobId {
        let job = JobId::generate();
        data.submissions.push(Submission {
            key: format!("k{}", data.submissions.len()),
            user,
            tier,
            phase: 0,
            intended_us: acked,
            sent_us: acked,
            answered_us: Some(acked),
            status: Some(202),
            job_id: Some(job),
            tries: 1,
        });
        data.by_job.insert(job, data.submissions.len() - 1);
        job
    }

    /// A first attempt assigned at `t` (µs).
    fn assign(job: JobId, t: u64) -> Assign {
        Assign {
            t_us: t,
            job_id: job,
            attempt: 1,
            worker: 0,
            lease: None,
        }
    }

    /// A stats poll at `t_us` (µs) with `depth` jobs queued in every tier.
    fn sample(t_us: u64, depth: u64) -> StatsSample {
        StatsSample {
            t_us,
            stats: StatsDto {
                queue: Tier::ALL
                    .into_iter()
                    .map(|t| (t.as_str().to_owned(), depth))
                    .collect(),
                ..StatsDto::default()
            },
        }
    }

    #[test]
    fn shares_count_only_dispatches_while_every_tier_waits() {
        let mut data = Data::default();
        // Two jobs per tier waiting; then dispatch enterprise, enterprise
        // (now empty), free.
        let mut ids = vec![];
        for t in Tier::ALL {
            ids.push(sub(&mut data, t, t.index(), 10));
            ids.push(sub(&mut data, t, t.index(), 10));
        }
        data.assigns.push(assign(ids[6], 100));
        data.assigns.push(assign(ids[7], 200));
        data.assigns.push(assign(ids[0], 300));
        let s = shares(&data, PerTier::from([1, 2, 4, 8]), None);
        // The first two assigns happened with all tiers waiting; the third
        // after enterprise had emptied.
        assert_eq!(s.counts, PerTier::from([0, 0, 0, 2]));
        assert_eq!(s.dispatches, 2);
        assert!((s.expected[Tier::Enterprise] - 8.0 / 15.0).abs() < 1e-9);
    }

    /// Every tier's job waits in the harness's eyes between its
    /// acknowledgement and its assignment; only the server's queue says
    /// whether the scheduler had to choose between them.
    #[test]
    fn shares_count_only_dispatches_while_the_server_queues_every_tier_on_a_full_fleet() {
        let mut data = Data::default();
        let mut ids = vec![];
        for t in Tier::ALL {
            ids.push(sub(&mut data, t, t.index(), 10));
        }
        // The server's queue is empty: the workers keep up, no choice.
        data.stats = vec![sample(50, 0), sample(250, 0)];
        data.assigns.push(assign(ids[3], 100));
        let s = shares(&data, PerTier::from([1, 2, 4, 8]), None);
        assert_eq!(s.dispatches, 0, "{s:?}");
        // Before the first sample nothing is known of the server's queue.
        data.stats = vec![sample(150, 4), sample(250, 4)];
        let s = shares(&data, PerTier::from([1, 2, 4, 8]), None);
        assert_eq!(s.dispatches, 0, "{s:?}");
        // The server queues every tier before and after: the dispatch was
        // a choice.
        data.stats = vec![sample(50, 4), sample(250, 4)];
        let s = shares(&data, PerTier::from([1, 2, 4, 8]), None);
        assert_eq!(s.counts, PerTier::from([0, 0, 0, 1]));
        // Every tier queued but a slot idle: the jobs wait for their
        // users' running limits, not for the scheduler's choice.
        for sample in &mut data.stats {
            sample.stats.workers.idle_slots = 1;
        }
        let s = shares(&data, PerTier::from([1, 2, 4, 8]), None);
        assert_eq!(s.dispatches, 0, "{s:?}");
        // One tier's queue is empty at the server: no choice.
        for sample in &mut data.stats {
            sample.stats.workers.idle_slots = 0;
            sample.stats.queue.insert("free".into(), 0);
        }
        let s = shares(&data, PerTier::from([1, 2, 4, 8]), None);
        assert_eq!(s.dispatches, 0, "{s:?}");
    }

    /// A server that stalled shows every tier queued on a full fleet, then
    /// dispatches the whole queue at once: the next sample finds it
    /// drained, and the burst followed the arrivals, not the weights.
    #[test]
    fn shares_leave_out_a_burst_that_drains_the_servers_queue() {
        let mut data = Data::default();
        let mut ids = vec![];
        for t in Tier::ALL {
            ids.push(sub(&mut data, t, t.index(), 10));
        }
        data.assigns.push(assign(ids[3], 100));
        data.stats = vec![sample(50, 4), sample(250, 0)];
        let s = shares(&data, PerTier::from([1, 2, 4, 8]), None);
        assert_eq!(s.dispatches, 0, "drained by the next sample: {s:?}");
        // No sample after it yet: not known to be a choice either.
        data.stats = vec![sample(50, 4)];
        let s = shares(&data, PerTier::from([1, 2, 4, 8]), None);
        assert_eq!(s.dispatches, 0, "{s:?}");
    }

    #[test]
    fn tier_figures_are_listed_in_tier_order_under_their_names() {
        let mut f = Figures::default();
        f.tiers[Tier::Basic].submitted = 3;
        let json = serde_json::to_value(&f).expect("figures serialize");
        let tiers = json["tiers"].as_array().expect("a list");
        let names: Vec<_> = tiers.iter().map(|t| t["tier"].as_str()).collect();
        assert_eq!(
            names,
            [
                Some("free"),
                Some("basic"),
                Some("professional"),
                Some("enterprise")
            ]
        );
        assert_eq!(tiers[1]["submitted"], 3);
        assert_eq!(tiers[0]["submitted"], 0);
    }

    #[test]
    fn histograms_summarize_in_milliseconds() {
        let mut h = Hist::new();
        for us in [1_000, 2_000, 3_000, 4_000] {
            h.record(us);
        }
        let s = h.summary();
        assert_eq!(s.count, 4);
        assert!((s.max_ms - 4.0).abs() < 0.01);
        assert!(s.p50_ms >= 1.99 && s.p50_ms <= 3.01);
    }
}
