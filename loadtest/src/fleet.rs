//! The `fleet` scenario: a heterogeneous fleet of simulated workers
//! (image-only and video-capable, with different GPU memory and models,
//! and one broken machine that fails every attempt as a system failure),
//! every tier kept backlogged with long and short jobs of every runnable
//! requirement class, and jobs for a registered model that no worker
//! serves, at the head of every user's line and trickled in later.
//!
//! This module holds what the scenario is (models, workers, job shapes)
//! and the pure analysis of what was observed; the run itself is in
//! [`crate::run`]. The analysis answers:
//!
//! - **GPU-time share per tier**: the slot time (assign to the worker's
//!   final report, as the worker saw it) of every attempt dispatched while
//!   every tier had a waiting job of every runnable class, per tier,
//!   against the weights;
//! - **utilisation while runnable work waits**: per healthy worker, the
//!   share of its slot time busy while some job it can run was waiting;
//! - **head-of-line waiting**: the longest time a runnable job waited
//!   behind an unrunnable one (defined at [`analyse`]);
//! - **quarantines** seen in `/v1/admin/workers`, and **expired** jobs,
//!   each of which must have been voided.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use admedia_actors::domain::ids::JobId;
use admedia_actors::domain::job::{Charge, JobKind, JobState};
use admedia_actors::domain::ledger::EntryKind;
use admedia_actors::domain::tier::{PerTier, Tier};
use serde::Serialize;
use serde_json::{json, Value};

use crate::audit::Violation;
use crate::workers::Profile;

/// A model of the scenario's registry (written into a spawned server's
/// configuration; a server at `--url` must serve the same).
#[derive(Clone, Debug)]
pub struct FleetModel {
    pub name: &'static str,
    pub kind: JobKind,
    pub vram_mb: u32,
    /// What the registry says a unit takes.
    pub expected_ms_per_unit: u64,
    /// What a unit really takes on the simulated workers: the scheduler
    /// has to learn the difference from observed runtimes.
    pub real_ms_per_unit: u64,
}

/// The model registered but served by no worker of the fleet.
pub const ORPHAN_MODEL: &str = "fleet-orphan";

/// The runnable classes, in the order of [`CLASS_SHAPES`], then the orphan.
pub fn models() -> Vec<FleetModel> {
    vec![
        FleetModel {
            name: "fleet-sd",
            kind: JobKind::Image,
            vram_mb: 8_000,
            expected_ms_per_unit: 250,
            real_ms_per_unit: 250,
        },
        FleetModel {
            name: "fleet-xl",
            kind: JobKind::Image,
            vram_mb: 16_000,
            expected_ms_per_unit: 500,
            // Really 20 % slower than registered.
            real_ms_per_unit: 600,
        },
        FleetModel {
            name: "fleet-vid",
            kind: JobKind::Video,
            vram_mb: 24_000,
            expected_ms_per_unit: 300,
            real_ms_per_unit: 300,
        },
        FleetModel {
            name: ORPHAN_MODEL,
            kind: JobKind::Image,
            vram_mb: 8_000,
            expected_ms_per_unit: 250,
            real_ms_per_unit: 250,
        },
    ]
}

/// Runnable requirement classes (the orphan's is not one).
pub const CLASSES: usize = 3;

/// The `[[models]]` of the server configuration.
pub fn registry_toml() -> String {
    let mut out = String::from("# The fleet scenario's model registry.\n");
    for m in models() {
        out.push_str(&format!(
            "[[models]]\nname = \"{}\"\nkind = \"{}\"\nvram_mb = {}\nprice_factor = 1\nexpected_ms_per_unit = {}\n\n",
            m.name,
            match m.kind {
                JobKind::Image => "image",
                JobKind::Video => "video",
            },
            m.vram_mb,
            m.expected_ms_per_unit
        ));
    }
    out
}

/// A worker of the fleet and its slots.
#[derive(Clone, Debug)]
pub struct FleetWorker {
    pub profile: Profile,
    pub slots: u32,
}

impl FleetWorker {
    /// Whether it can run a job of runnable class `class` (as placement
    /// decides: kind, model, GPU memory).
    pub fn serves(&self, class: usize) -> bool {
        let Some(shape) = CLASS_SHAPES.get(class) else {
            return false;
        };
        let m = &models()[class];
        self.profile.kinds.contains(&m.kind)
            && self.profile.models.iter().any(|n| n == m.name)
            && self.profile.vram_mb >= shape.vram_needed_mb
    }
}

/// The fleet: two image-only 12 GB workers serving only the small model,
/// two 24 GB image workers serving both image models, two 48 GB workers
/// serving everything but the orphan model, and the broken one (last).
pub fn fleet() -> Vec<FleetWorker> {
    let real: Vec<(String, u64)> = models()
        .iter()
        .map(|m| (m.name.to_owned(), m.real_ms_per_unit))
        .collect();
    let w =
        |name: String, kinds: Vec<JobKind>, models: &[&str], vram_mb, slots, broken| FleetWorker {
            profile: Profile {
                name,
                kinds,
                models: models.iter().map(|m| (*m).to_owned()).collect(),
                vram_mb,
                ms_per_unit: real.clone(),
                broken,
                broken_after: Duration::from_millis(50),
            },
            slots,
        };
    let mut out = Vec::new();
    for i in 0..2 {
        out.push(w(
            format!("fleet-image-small-{i}"),
            vec![JobKind::Image],
            &["fleet-sd"],
            12_000,
            3,
            false,
        ));
    }
    for i in 0..2 {
        out.push(w(
            format!("fleet-image-large-{i}"),
            vec![JobKind::Image],
            &["fleet-sd", "fleet-xl"],
            24_000,
            3,
            false,
        ));
    }
    for i in 0..2 {
        out.push(w(
            format!("fleet-video-{i}"),
            vec![JobKind::Image, JobKind::Video],
            &["fleet-sd", "fleet-xl", "fleet-vid"],
            48_000,
            2,
            false,
        ));
    }
    out.push(w(
        "fleet-broken".into(),
        vec![JobKind::Image, JobKind::Video],
        &["fleet-sd", "fleet-xl", "fleet-vid"],
        48_000,
        2,
        true,
    ));
    out
}

/// A job shape of a runnable class: size, and what GPU memory the
/// server's size table asks for it (the defaults).
pub struct ClassShape {
    pub width: u32,
    pub height: u32,
    pub vram_needed_mb: u32,
}

pub const CLASS_SHAPES: [ClassShape; CLASSES] = [
    // fleet-sd at 1024²: standard image (8 GB).
    ClassShape {
        width: 1024,
        height: 1024,
        vram_needed_mb: 8_000,
    },
    // fleet-xl at 1536²: a large image (16 GB, twice the time per unit).
    ClassShape {
        width: 1536,
        height: 1536,
        vram_needed_mb: 16_000,
    },
    // fleet-vid at 720p: a standard video (24 GB).
    ClassShape {
        width: 1280,
        height: 720,
        vram_needed_mb: 24_000,
    },
];

/// Units (images, or video seconds) of a job of `class` from `tier`:
/// lower tiers send the longer jobs, so sharing dispatches would not
/// share GPU time and the two can be told apart.
pub fn units(tier: Tier, class: usize) -> u32 {
    match (class, tier) {
        (0, Tier::Free | Tier::Basic) => 2,
        (0, _) => 1,
        (2, Tier::Free) => 4,
        (2, Tier::Basic) => 3,
        (2, Tier::Professional) => 2,
        (2, Tier::Enterprise) => 1,
        _ => 1,
    }
}

/// The request body (without its prompt) of a job of `class` (`None`: the
/// orphan model) from `tier`.
pub fn body(tier: Tier, class: Option<usize>, seed: u32) -> Value {
    let all = models();
    match class {
        Some(c) if c < CLASSES => {
            let s = &CLASS_SHAPES[c];
            let m = &all[c];
            match m.kind {
                JobKind::Image => json!({"kind": "image", "model": m.name,
                    "params": {"width": s.width, "height": s.height,
                               "count": units(tier, c), "seed": seed}}),
                JobKind::Video => json!({"kind": "video", "model": m.name,
                    "params": {"width": s.width, "height": s.height,
                               "duration_s": units(tier, c), "seed": seed}}),
            }
        }
        _ => json!({"kind": "image", "model": ORPHAN_MODEL,
                    "params": {"width": 1024, "height": 1024, "count": 1, "seed": seed}}),
    }
}

/// Waiting jobs the feeder keeps per tier and class, per unit of the
/// tier's weight: every tier stays backlogged in every class, and the
/// queue stays short enough that runnable jobs wait well under the
/// waiting limits while the orphans reach them.
pub const DEPTH_PER_WEIGHT: u32 = 3;

/// How many more jobs of (`tier`, class) to submit now.
pub fn top_up(weight: u32, waiting: u64) -> u64 {
    u64::from(DEPTH_PER_WEIGHT * weight.max(1)).saturating_sub(waiting)
}

// ---------------------------------------------------------------- analysis

/// One job of the run, as the analysis needs it. Times are µs since the
/// start of the run (server timestamps converted with the run's wall
/// clock origin; both run on the same machine).
#[derive(Clone, Debug)]
pub struct FleetJob {
    pub id: JobId,
    pub user: usize,
    pub tier: Tier,
    /// Runnable class, `None` for the orphan model.
    pub class: Option<usize>,
    /// Server-side creation: the job's place in its user's line.
    pub created_us: i64,
    /// When the harness had the 202 (the server had queued it by then).
    pub acked_us: Option<u64>,
    pub state: JobState,
    pub charge: Charge,
    pub expired: bool,
    /// When it ended (server), for an expired job its leaving the line.
    pub finished_us: Option<i64>,
}

#[derive(Clone, Copy, Debug)]
pub struct SeenAssign {
    pub t_us: u64,
    pub job: JobId,
    pub worker: usize,
    /// The decision order (the lease, a UUIDv7 made at the decision).
    pub decided: Option<u128>,
}

#[derive(Clone, Copy, Debug)]
pub struct SeenRelease {
    pub t_us: u64,
    pub job: JobId,
    pub worker: usize,
}

#[derive(Clone, Debug)]
pub struct SeenPoll {
    pub t_us: u64,
    pub name: String,
    pub quarantined: bool,
    /// Quarantine time left: a rise between two polls is a new quarantine
    /// (one that began within a poll interval of the last one ending).
    pub left_ms: Option<u64>,
}

pub struct FleetInput<'a> {
    pub weights: PerTier<u32>,
    /// Users per tier.
    pub users_per_tier: PerTier<usize>,
    pub workers: &'a [FleetWorker],
    pub jobs: &'a [FleetJob],
    pub assigns: &'a [SeenAssign],
    pub releases: &'a [SeenRelease],
    pub polls: &'a [SeenPoll],
    /// (job id, ledger entry kind) for every entry naming a job.
    pub ledger: &'a [(String, EntryKind)],
    /// The load phase: utilisation and shares are measured inside it.
    pub window: (u64, u64),
    /// A system-failed attempt's job is back in line at most this long
    /// after its failure (the server's longest retry delay).
    pub retry_max_us: u64,
    /// `admedia_worker_quarantines_total` at the end, when read.
    pub quarantines_metric: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TierShare {
    pub tier: String,
    pub weight: u32,
    pub expected: f64,
    pub gpu_s: f64,
    pub gpu_share: f64,
    /// (observed − expected) / expected, in percent.
    pub gpu_deviation_pct: f64,
    pub dispatches: u64,
    pub dispatch_share: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct WorkerUse {
    pub name: String,
    pub slots: u32,
    pub broken: bool,
    /// Seconds during which some job it can run was waiting.
    pub demand_s: f64,
    /// Busy share of its slots over those seconds.
    pub utilisation: f64,
    pub attempts: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Quarantine {
    pub worker: String,
    pub at_s: f64,
    /// When the poll first saw it taking work again.
    pub lifted_at_s: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct HeadOfLine {
    /// The target (0): the longest time a runnable job waited behind an
    /// unrunnable one, as defined at [`analyse`].
    pub longest_wait_ms: f64,
    pub episodes: u64,
    /// Jobs dispatched from a user's line while its oldest waiting job
    /// was unrunnable: the line moved past it (evidence the check ran).
    pub dispatched_past_unrunnable_head: u64,
    /// Unrunnable jobs that headed a line with runnable work behind it.
    pub unrunnable_heads: u64,
    /// For context, not a target: the longest gap between two dispatches
    /// of a user whose oldest job was unrunnable (its turn coming round;
    /// this includes the dispatch round trip and the tier's other users).
    pub longest_turn_gap_ms: f64,
    /// The first episodes, for the report.
    pub detail: Vec<Episode>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Episode {
    pub user: usize,
    pub tier: String,
    pub from_s: f64,
    pub ms: f64,
    /// Dispatches of the tier's other users that passed it.
    pub passed_by: u64,
    pub head_job: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Expiry {
    pub expired: u64,
    pub expired_orphans: u64,
    pub expired_runnable: u64,
    /// Runnable expired jobs per class (fleet-sd, fleet-xl, fleet-vid).
    pub expired_runnable_by_class: [u64; CLASSES],
    pub voided: u64,
    pub orphans: u64,
    /// Orphan jobs that ended otherwise than expired.
    pub orphans_not_expired: u64,
    #[serde(serialize_with = "crate::cli::in_tier_order")]
    pub by_tier: PerTier<u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetFigures {
    /// Seconds of the load phase during which every tier had a waiting
    /// job of every runnable class.
    pub backlogged_s: f64,
    pub shares: Vec<TierShare>,
    pub max_gpu_deviation_pct: f64,
    pub utilisation: f64,
    pub workers: Vec<WorkerUse>,
    pub head_of_line: HeadOfLine,
    pub quarantines: Vec<Quarantine>,
    pub quarantines_metric: Option<u64>,
    pub healthy_quarantined: Vec<String>,
    pub expiry: Expiry,
}

/// What the fleet audit requires.
pub const MAX_GPU_DEVIATION_PCT: f64 = 5.0;
pub const MIN_UTILISATION: f64 = 0.98;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Ev {
    // At one instant: lines change before dispatches are judged.
    Leave,
    Release,
    Enter,
    /// A dispatch as decided, for the turn order (see [`analyse`]).
    Turn,
    Assign,
}

/// Runs the analysis.
///
/// **Waiting behind an unrunnable job.** The harness cannot see inside
/// the scheduler, and any measure of "a slot stood idle while a job it
/// could run waited" includes the dispatch round trip (the worker's
/// report reaching the server, the next `assign` coming back), so it is
/// never zero even for a perfect scheduler. The check therefore counts
/// only what the order of dispatches proves. Within a tier the scheduler
/// serves users in turn (least recently served first, among those with a
/// job some idle slot can take), so while user A has a waiting job that a
/// worker could run, at most *n − 1* dispatches of the tier's other users
/// can go to workers able to run it before A's turn (*n*: the tier's
/// users). A runnable job of A **waited behind an unrunnable one** when
/// A's oldest waiting job could run nowhere (a model no worker serves)
/// and *n* or more such dispatches of other users passed while A had a
/// runnable job waiting and got none: a line stopped at its unrunnable
/// head shows exactly that. The wait is counted from the first of those
/// dispatches to A's next dispatch (or until its head changes), and the
/// longest such wait is the figure; with no such episode it is 0. A job
/// counts as waiting from the harness's 202 (the server queued it before
/// answering), and after a system failure only from the end of the
/// longest retry delay, so the harness never thinks a job waits that the
/// server does not have in line. The check is only meaningful if lines
/// with an unrunnable head were served at all: that count is reported and
/// must be positive.
///
/// Turns are taken in the order the server decided its dispatches, not
/// the order the `assign`s reached the workers: the server records each
/// assignment before sending it, so when many slots fill at once (the
/// workers connecting, slots freed together) arrivals can come in another
/// order. Each attempt's lease is a UUIDv7 made as the dispatch is decided,
/// and UUIDv7s of one process sort by creation, so each dispatch is placed
/// at the earliest arrival of itself and every dispatch decided after it.
pub fn analyse(input: &FleetInput) -> FleetFigures {
    let jobs: HashMap<JobId, &FleetJob> = input.jobs.iter().map(|j| (j.id, j)).collect();
    let (w0, w1) = input.window;

    // Attempts in order, per job, to tell a retry from a last attempt.
    let mut assigns_of: HashMap<JobId, Vec<u64>> = HashMap::new();
    for a in input.assigns {
        assigns_of.entry(a.job).or_default().push(a.t_us);
    }
    for v in assigns_of.values_mut() {
        v.sort_unstable();
    }

    // --- the timeline of lines, dispatches and slots ---
    // (time, kind, decision rank of a turn, job, worker)
    let mut events: Vec<(u64, Ev, usize, JobId, usize)> = Vec::new();
    for j in input.jobs {
        let first = assigns_of.get(&j.id).and_then(|v| v.first().copied());
        if let Some(ack) = j.acked_us {
            // Assigned before the 202 came back: it never waited as far
            // as the harness can tell.
            if first.is_none_or(|f| f > ack) {
                events.push((ack, Ev::Enter, 0, j.id, usize::MAX));
            }
        }
        if j.expired {
            if let Some(fin) = j.finished_us {
                events.push((fin.max(0) as u64, Ev::Leave, 0, j.id, usize::MAX));
            }
        }
    }
    for a in input.assigns {
        events.push((a.t_us, Ev::Assign, 0, a.job, a.worker));
    }
    for r in input.releases {
        events.push((r.t_us, Ev::Release, 0, r.job, r.worker));
        // Back in line if another attempt followed.
        if let Some(next) = assigns_of
            .get(&r.job)
            .and_then(|v| v.iter().find(|&&t| t > r.t_us))
        {
            let back = r.t_us + input.retry_max_us;
            if back < *next {
                events.push((back, Ev::Enter, 0, r.job, usize::MAX));
            }
        }
    }
    for (i, (t, rank)) in decision_times(input.assigns).into_iter().enumerate() {
        let a = &input.assigns[i];
        events.push((t, Ev::Turn, rank, a.job, a.worker));
    }
    events.sort_by_key(|&(t, ev, rank, job, _)| (t, ev, rank, job));

    let n_workers = input.workers.len();
    let serves: Vec<[bool; CLASSES]> = input
        .workers
        .iter()
        .map(|w| std::array::from_fn(|c| w.serves(c)))
        .collect();
    let healthy_serves: [bool; CLASSES] = std::array::from_fn(|c| {
        (0..n_workers).any(|w| serves[w][c] && !input.workers[w].profile.broken)
    });

    // Waiting state.
    let mut waiting: HashSet<JobId> = HashSet::new();
    // Decided but not yet arrived at its worker.
    let mut turned: HashSet<JobId> = HashSet::new();
    let mut by_class: PerTier<[u64; CLASSES]> = PerTier::splat([0; CLASSES]);
    let mut lines: HashMap<usize, BTreeSet<(i64, JobId)>> = HashMap::new();
    let mut user_class: HashMap<(usize, usize), u64> = HashMap::new();
    let mut users_of_tier: PerTier<BTreeSet<usize>> = PerTier::default();
    for j in input.jobs {
        users_of_tier[j.tier].insert(j.user);
    }
    // Slots.
    let mut held = vec![0u32; n_workers];
    let mut held_jobs: Vec<HashMap<JobId, u64>> = vec![HashMap::new(); n_workers];
    let mut busy_us = vec![0u128; n_workers];
    let mut demand_us = vec![0u64; n_workers];
    let mut attempts = vec![0u64; n_workers];
    let mut last_t = w0;
    // Shares.
    let mut backlogged_us = 0u64;
    let mut gpu_us: PerTier<u128> = PerTier::splat(0);
    let mut dispatches: PerTier<u64> = PerTier::splat(0);
    // Head of line.
    let mut hol = HeadOfLine::default();
    let mut skips: HashMap<usize, (u64, u64)> = HashMap::new(); // user -> (count, since)
    let mut head_since: HashMap<usize, u64> = HashMap::new();
    let mut heads_seen: HashSet<JobId> = HashSet::new();
    // For the GPU time of an attempt: its release.
    let mut release_at: HashMap<(JobId, usize), Vec<u64>> = HashMap::new();
    for r in input.releases {
        release_at
            .entry((r.job, r.worker))
            .or_default()
            .push(r.t_us);
    }
    for v in release_at.values_mut() {
        v.sort_unstable();
    }

    let head_state = |lines: &HashMap<usize, BTreeSet<(i64, JobId)>>,
                      user_class: &HashMap<(usize, usize), u64>,
                      user: usize|
     -> Option<JobId> {
        // The unrunnable head of a line with runnable work behind it.
        let (_, head) = lines.get(&user)?.first()?;
        let j = jobs.get(head)?;
        let unrunnable = j.class.is_none_or(|c| !healthy_serves[c]);
        let runnable_behind = (0..CLASSES)
            .any(|c| healthy_serves[c] && user_class.get(&(user, c)).copied().unwrap_or(0) > 0);
        (unrunnable && runnable_behind).then_some(*head)
    };

    for &(t, ev, _, job_id, worker) in &events {
        // Integrate time-weighted figures over [last_t, t) inside the window.
        let (a, b) = (last_t.max(w0), t.min(w1));
        if b > a {
            let span = b - a;
            for w in 0..n_workers {
                let demand =
                    (0..CLASSES).any(|c| serves[w][c] && by_class.values().any(|b| b[c] > 0));
                if demand {
                    demand_us[w] += span;
                    busy_us[w] +=
                        u128::from(held[w].min(input.workers[w].slots)) * u128::from(span);
                }
            }
            let all = Tier::ALL.into_iter().all(|tier| {
                input.users_per_tier[tier] == 0
                    || (0..CLASSES).all(|c| !healthy_serves[c] || by_class[tier][c] > 0)
            });
            if all {
                backlogged_us += span;
            }
        }
        last_t = last_t.max(t);
        let Some(job) = jobs.get(&job_id) else {
            continue;
        };
        let tier = job.tier;
        let user = job.user;
        let before = head_state(&lines, &user_class, user);
        match ev {
            Ev::Enter => {
                if waiting.insert(job_id) {
                    lines
                        .entry(user)
                        .or_default()
                        .insert((job.created_us, job_id));
                    if let Some(c) = job.class {
                        by_class[tier][c] += 1;
                        *user_class.entry((user, c)).or_default() += 1;
                    }
                }
            }
            Ev::Leave => {
                if waiting.remove(&job_id) {
                    if let Some(c) = job.class {
                        by_class[tier][c] -= 1;
                    }
                    if !turned.remove(&job_id) {
                        take_from_line(&mut lines, &mut user_class, job);
                    }
                }
            }
            Ev::Release => {
                if held_jobs[worker].remove(&job_id).is_some() {
                    held[worker] = held[worker].saturating_sub(1);
                }
            }
            Ev::Assign => {
                if worker < n_workers {
                    held[worker] += 1;
                    held_jobs[worker].insert(job_id, t);
                    if t >= w0 && t <= w1 {
                        attempts[worker] += 1;
                    }
                }
                let all_backlogged = Tier::ALL.into_iter().all(|tt| {
                    input.users_per_tier[tt] == 0
                        || (0..CLASSES).all(|c| !healthy_serves[c] || by_class[tt][c] > 0)
                });
                if all_backlogged && t >= w0 && t <= w1 {
                    dispatches[tier] += 1;
                    let end = release_at
                        .get(&(job_id, worker))
                        .and_then(|v| v.iter().find(|&&r| r >= t).copied());
                    if let Some(end) = end {
                        gpu_us[tier] += u128::from(end - t);
                    }
                }
                if waiting.remove(&job_id) {
                    if let Some(c) = job.class {
                        by_class[tier][c] -= 1;
                    }
                    if !turned.remove(&job_id) {
                        take_from_line(&mut lines, &mut user_class, job);
                    }
                }
            }
            Ev::Turn => {
                // Head of line: this dispatch passes over every other user of
                // the tier with an unrunnable head and a job this worker
                // could run.
                for &other in &users_of_tier[tier] {
                    if other == user || head_state(&lines, &user_class, other).is_none() {
                        continue;
                    }
                    let could = worker < n_workers
                        && (0..CLASSES).any(|c| {
                            serves[worker][c]
                                && user_class.get(&(other, c)).copied().unwrap_or(0) > 0
                        });
                    if could {
                        let e = skips.entry(other).or_insert((0, t));
                        e.0 += 1;
                    }
                }
                if before.is_some() {
                    hol.dispatched_past_unrunnable_head += 1;
                    if let Some(since) = head_since.get(&user) {
                        hol.longest_turn_gap_ms =
                            hol.longest_turn_gap_ms.max((t - since) as f64 / 1000.0);
                    }
                }
                end_episode(
                    &mut skips,
                    &mut hol,
                    (user, job.tier, before),
                    t,
                    users_of_tier[tier].len(),
                );
                // Decided: out of its line for the turn order from now on,
                // though it still waits (for utilisation) until it arrives.
                if waiting.contains(&job_id) && turned.insert(job_id) {
                    take_from_line(&mut lines, &mut user_class, job);
                }
            }
        }
        let after = head_state(&lines, &user_class, user);
        if let Some(h) = after {
            if heads_seen.insert(h) {
                hol.unrunnable_heads += 1;
            }
            if before.is_none() || ev == Ev::Turn {
                head_since.insert(user, t);
            }
        } else {
            head_since.remove(&user);
            if ev != Ev::Turn {
                end_episode(
                    &mut skips,
                    &mut hol,
                    (user, job.tier, before),
                    t,
                    users_of_tier[tier].len(),
                );
            }
        }
    }

    // --- shares ---
    let wsum: f64 = Tier::ALL
        .into_iter()
        .filter(|&t| input.users_per_tier[t] > 0)
        .map(|t| f64::from(input.weights[t]))
        .sum();
    let gpu_total: f64 = gpu_us.values().map(|&g| g as f64).sum();
    let disp_total: u64 = dispatches.values().sum();
    let mut shares = Vec::new();
    let mut max_dev = 0f64;
    for tier in Tier::ALL {
        let t = tier;
        if input.users_per_tier[t] == 0 {
            continue;
        }
        let expected = f64::from(input.weights[t]) / wsum.max(1.0);
        let gpu_share = if gpu_total > 0.0 {
            gpu_us[t] as f64 / gpu_total
        } else {
            0.0
        };
        let dev = (gpu_share - expected) / expected * 100.0;
        max_dev = max_dev.max(dev.abs());
        shares.push(TierShare {
            tier: tier.as_str().to_owned(),
            weight: input.weights[t],
            expected,
            gpu_s: gpu_us[t] as f64 / 1e6,
            gpu_share,
            gpu_deviation_pct: dev,
            dispatches: dispatches[t],
            dispatch_share: if disp_total > 0 {
                dispatches[t] as f64 / disp_total as f64
            } else {
                0.0
            },
        });
    }
    if gpu_total <= 0.0 {
        max_dev = 100.0;
    }

    // --- utilisation of the healthy workers ---
    let mut workers = Vec::new();
    let (mut busy_all, mut cap_all) = (0u128, 0u128);
    for (w, fw) in input.workers.iter().enumerate() {
        let cap = u128::from(fw.slots) * u128::from(demand_us[w]);
        if !fw.profile.broken {
            busy_all += busy_us[w];
            cap_all += cap;
        }
        workers.push(WorkerUse {
            name: fw.profile.name.clone(),
            slots: fw.slots,
            broken: fw.profile.broken,
            demand_s: demand_us[w] as f64 / 1e6,
            utilisation: if cap > 0 {
                busy_us[w] as f64 / cap as f64
            } else {
                0.0
            },
            attempts: attempts[w],
        });
    }

    // --- quarantines from the polls ---
    let mut quarantines: Vec<Quarantine> = Vec::new();
    let mut state: HashMap<&str, (bool, Option<u64>)> = HashMap::new();
    let mut polls: Vec<&SeenPoll> = input.polls.iter().collect();
    polls.sort_by_key(|p| p.t_us);
    for p in polls {
        let (was, was_left) = state
            .insert(p.name.as_str(), (p.quarantined, p.left_ms))
            .unwrap_or((false, None));
        // The time left only falls during one quarantine; more left than
        // at the last poll means it ended and a new one (at least the
        // base length, far more than a poll interval) began in between.
        let renewed = matches!(
            (was, p.quarantined, was_left, p.left_ms),
            (true, true, Some(before), Some(now)) if now > before
        );
        if renewed {
            if let Some(q) = quarantines
                .iter_mut()
                .rev()
                .find(|q| q.worker == p.name && q.lifted_at_s.is_none())
            {
                q.lifted_at_s = Some(p.t_us as f64 / 1e6);
            }
            quarantines.push(Quarantine {
                worker: p.name.clone(),
                at_s: p.t_us as f64 / 1e6,
                lifted_at_s: None,
            });
        } else if p.quarantined && !was {
            quarantines.push(Quarantine {
                worker: p.name.clone(),
                at_s: p.t_us as f64 / 1e6,
                lifted_at_s: None,
            });
        } else if !p.quarantined && was {
            if let Some(q) = quarantines
                .iter_mut()
                .rev()
                .find(|q| q.worker == p.name && q.lifted_at_s.is_none())
            {
                q.lifted_at_s = Some(p.t_us as f64 / 1e6);
            }
        }
    }
    let broken: BTreeSet<&str> = input
        .workers
        .iter()
        .filter(|w| w.profile.broken)
        .map(|w| w.profile.name.as_str())
        .collect();
    let healthy_quarantined: BTreeSet<String> = quarantines
        .iter()
        .filter(|q| !broken.contains(q.worker.as_str()))
        .map(|q| q.worker.clone())
        .collect();

    // --- expiry ---
    let mut ledger: HashMap<&str, (u32, u32)> = HashMap::new();
    for (job, kind) in input.ledger {
        let e = ledger.entry(job.as_str()).or_default();
        match kind {
            EntryKind::Post => e.0 += 1,
            EntryKind::Void => e.1 += 1,
            _ => {}
        }
    }
    let mut expiry = Expiry::default();
    for j in input.jobs {
        if j.class.is_none() {
            expiry.orphans += 1;
            if !j.expired {
                expiry.orphans_not_expired += 1;
            }
        }
        if !j.expired {
            continue;
        }
        expiry.expired += 1;
        expiry.by_tier[j.tier] += 1;
        if j.class.is_none() {
            expiry.expired_orphans += 1;
        } else {
            expiry.expired_runnable += 1;
            if let Some(c) = j.class {
                expiry.expired_runnable_by_class[c] += 1;
            }
        }
        let (posts, voids) = ledger
            .get(j.id.to_string().as_str())
            .copied()
            .unwrap_or((0, 0));
        if j.state == JobState::Failed && j.charge == Charge::Voided && posts == 0 && voids == 1 {
            expiry.voided += 1;
        }
    }

    FleetFigures {
        backlogged_s: backlogged_us as f64 / 1e6,
        shares,
        max_gpu_deviation_pct: max_dev,
        utilisation: if cap_all > 0 {
            busy_all as f64 / cap_all as f64
        } else {
            0.0
        },
        workers,
        head_of_line: hol,
        quarantines,
        quarantines_metric: input.quarantines_metric,
        healthy_quarantined: healthy_quarantined.into_iter().collect(),
        expiry,
    }
}

fn take_from_line(
    lines: &mut HashMap<usize, BTreeSet<(i64, JobId)>>,
    user_class: &mut HashMap<(usize, usize), u64>,
    job: &FleetJob,
) {
    if let Some(l) = lines.get_mut(&job.user) {
        l.remove(&(job.created_us, job.id));
    }
    if let Some(c) = job.class {
        if let Some(n) = user_class.get_mut(&(job.user, c)) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Per assign (in input order), when it counts as decided: the earliest
/// arrival among it and every dispatch decided after it, so turns follow
/// the decision order and none is placed after its own arrival. Assigns
/// without a lease keep their arrival time.
/// Also its rank in the decision order, which orders turns placed at
/// one instant.
fn decision_times(assigns: &[SeenAssign]) -> Vec<(u64, usize)> {
    let mut out: Vec<(u64, usize)> = assigns.iter().map(|a| (a.t_us, 0)).collect();
    let mut order: Vec<usize> = (0..assigns.len())
        .filter(|&i| assigns[i].decided.is_some())
        .collect();
    order.sort_by_key(|&i| assigns[i].decided);
    let mut earliest = u64::MAX;
    for (rank, &i) in order.iter().enumerate().rev() {
        earliest = earliest.min(assigns[i].t_us);
        out[i] = (earliest, rank);
    }
    out
}

/// Closes `user`'s skip count at `t`: when `n` or more dispatches of the
/// tier's other users passed it, that was an episode of waiting behind
/// its unrunnable head.
fn end_episode(
    skips: &mut HashMap<usize, (u64, u64)>,
    hol: &mut HeadOfLine,
    (user, tier, head): (usize, Tier, Option<JobId>),
    t: u64,
    n: usize,
) {
    if let Some((count, since)) = skips.remove(&user) {
        if count >= n as u64 {
            hol.episodes += 1;
            let ms = (t - since) as f64 / 1000.0;
            hol.longest_wait_ms = hol.longest_wait_ms.max(ms);
            if hol.detail.len() < 20 {
                hol.detail.push(Episode {
                    user,
                    tier: tier.as_str().to_owned(),
                    from_s: since as f64 / 1e6,
                    ms,
                    passed_by: count,
                    head_job: head.map(|h| h.to_string()).unwrap_or_default(),
                });
            }
        }
    }
}

/// The fleet scenario's pass conditions, as audit violations.
pub fn violations(f: &FleetFigures, expired_ids_not_voided: &[String]) -> Vec<Violation> {
    let mut out = Vec::new();
    let v = |check: &str, ids: Vec<String>, detail: String| Violation {
        check: check.into(),
        ids,
        detail,
    };
    if f.head_of_line.dispatched_past_unrunnable_head == 0 {
        out.push(v(
            "fleet-head-of-line-not-exercised",
            vec![],
            "no line with an unrunnable job at its head was ever served: the check proved nothing"
                .into(),
        ));
    }
    if f.head_of_line.episodes > 0 {
        out.push(v(
            "fleet-waited-behind-unrunnable",
            vec![],
            format!(
                "{} times a user's runnable jobs waited behind an unrunnable head, the longest {:.1} ms",
                f.head_of_line.episodes, f.head_of_line.longest_wait_ms
            ),
        ));
    }
    if f.backlogged_s <= 0.0 || f.max_gpu_deviation_pct > MAX_GPU_DEVIATION_PCT {
        let detail: Vec<String> = f
            .shares
            .iter()
            .map(|s| format!("{} {:+.1}%", s.tier, s.gpu_deviation_pct))
            .collect();
        out.push(v(
            "fleet-gpu-share",
            vec![],
            format!(
                "GPU-time shares off the weights by more than {MAX_GPU_DEVIATION_PCT}% over {:.1} s all-backlogged: {}",
                f.backlogged_s,
                detail.join(", ")
            ),
        ));
    }
    if f.utilisation < MIN_UTILISATION {
        out.push(v(
            "fleet-utilisation",
            vec![],
            format!(
                "healthy slots busy {:.2}% of the time runnable work waited (at least {:.0}% required)",
                f.utilisation * 100.0,
                MIN_UTILISATION * 100.0
            ),
        ));
    }
    if f.expiry.expired == 0 || f.expiry.voided != f.expiry.expired {
        out.push(v(
            "fleet-expired-not-voided",
            expired_ids_not_voided.to_vec(),
            format!(
                "{} jobs expired, {} of them voided exactly once (every expired job must be)",
                f.expiry.expired, f.expiry.voided
            ),
        ));
    }
    if f.expiry.orphans_not_expired > 0 {
        out.push(v(
            "fleet-orphan-not-expired",
            vec![],
            format!(
                "{} jobs for a model no worker serves ended other than expired",
                f.expiry.orphans_not_expired
            ),
        ));
    }
    if !f
        .quarantines
        .iter()
        .any(|q| !f.healthy_quarantined.contains(&q.worker))
    {
        out.push(v(
            "fleet-broken-not-quarantined",
            vec![],
            "the worker failing every attempt was never seen quarantined".into(),
        ));
    }
    if !f.healthy_quarantined.is_empty() {
        out.push(v(
            "fleet-healthy-quarantined",
            f.healthy_quarantined.clone(),
            "a worker that fails nothing was quarantined".into(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two users of one tier on one small image worker (one slot), each
    /// with an unrunnable job at the head of its line and runnable jobs
    /// behind it; the orphans expire at 10 s.
    struct Trace {
        jobs: Vec<FleetJob>,
        assigns: Vec<SeenAssign>,
        releases: Vec<SeenRelease>,
        workers: Vec<FleetWorker>,
        ledger: Vec<(String, EntryKind)>,
    }

    fn job(user: usize, class: Option<usize>, created: i64) -> FleetJob {
        FleetJob {
            id: JobId::generate(),
            user,
            tier: Tier::Basic,
            class,
            created_us: created,
            acked_us: Some(created as u64 + 10),
            state: JobState::Succeeded,
            charge: Charge::Posted,
            expired: false,
            finished_us: None,
        }
    }

    fn trace() -> Trace {
        let mut workers = fleet();
        workers.truncate(1);
        workers[0].slots = 1;
        let mut jobs = Vec::new();
        let mut ledger = Vec::new();
        for user in 0..2 {
            let mut orphan = job(user, None, 100 + user as i64);
            orphan.expired = true;
            orphan.state = JobState::Failed;
            orphan.charge = Charge::Voided;
            orphan.finished_us = Some(10_000_000);
            ledger.push((orphan.id.to_string(), EntryKind::Hold));
            ledger.push((orphan.id.to_string(), EntryKind::Void));
            jobs.push(orphan);
            for k in 0..5 {
                jobs.push(job(user, Some(0), 1_000 + (k * 2 + user) as i64));
            }
        }
        Trace {
            jobs,
            assigns: Vec::new(),
            releases: Vec::new(),
            workers,
            ledger,
        }
    }

    impl Trace {
        /// Runs the runnable jobs of `order` (user, k-th runnable job) one
        /// after another from 1 s, each for 100 ms.
        fn run(&mut self, order: &[(usize, usize)]) {
            let mut t = 1_000_000u64;
            for &(user, k) in order {
                let j = self
                    .jobs
                    .iter()
                    .filter(|j| j.user == user && j.class.is_some())
                    .nth(k)
                    .map(|j| j.id)
                    .unwrap();
                self.assigns.push(SeenAssign {
                    t_us: t,
                    job: j,
                    worker: 0,
                    decided: Some(self.assigns.len() as u128),
                });
                t += 100_000;
                self.releases.push(SeenRelease {
                    t_us: t,
                    job: j,
                    worker: 0,
                });
                t += 1_000;
            }
        }

        fn analyse(&self, polls: &[SeenPoll]) -> FleetFigures {
            // The load: while the trace dispatches.
            let end = self.releases.last().map_or(20_000_000, |r| r.t_us);
            analyse(&FleetInput {
                weights: PerTier::from([1, 2, 4, 8]),
                users_per_tier: PerTier::from([0, 2, 0, 0]),
                workers: &self.workers,
                jobs: &self.jobs,
                assigns: &self.assigns,
                releases: &self.releases,
                polls,
                ledger: &self.ledger,
                window: (1_000_000, end),
                retry_max_us: 500_000,
                quarantines_metric: None,
            })
        }
    }

    #[test]
    fn lines_that_move_past_their_unrunnable_head_wait_behind_nothing() {
        let mut t = trace();
        // Turns alternate, as the round robin gives them.
        t.run(&[(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]);
        let f = t.analyse(&[]);
        let h = &f.head_of_line;
        assert_eq!(h.episodes, 0, "{:?}", h.detail);
        assert_eq!(h.longest_wait_ms, 0.0);
        assert_eq!(h.unrunnable_heads, 2);
        // The first dispatch fills the one slot: checking starts there.
        assert_eq!(h.dispatched_past_unrunnable_head, 6);
        assert!(violations(&f, &[])
            .iter()
            .all(|v| v.check != "fleet-waited-behind-unrunnable"
                && v.check != "fleet-head-of-line-not-exercised"));
        // One slot, busy 100 of every 101 ms while work waited.
        assert!(
            f.utilisation > 0.98 && f.utilisation < 1.0,
            "{}",
            f.utilisation
        );
    }

    #[test]
    fn a_line_stopped_at_its_unrunnable_head_is_caught_and_timed() {
        let mut t = trace();
        // User 1's line stands still while user 0 is served three times
        // in a row (a round robin of two users allows one).
        t.run(&[(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]);
        let f = t.analyse(&[]);
        let h = &f.head_of_line;
        assert_eq!(h.episodes, 1, "{:?}", h.detail);
        assert_eq!(h.detail[0].user, 1);
        assert_eq!(h.detail[0].passed_by, 4);
        // From the first dispatch that passed it (at 1 s) to its own
        // (1.404 s).
        assert!(
            (h.longest_wait_ms - 404.0).abs() < 0.01,
            "{}",
            h.longest_wait_ms
        );
        let v = violations(&f, &[]);
        assert!(v
            .iter()
            .any(|v| v.check == "fleet-waited-behind-unrunnable"));
    }

    #[test]
    fn turns_follow_the_decision_order_not_the_arrival_order() {
        let mut t = trace();
        t.run(&[(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]);
        // User 1's turns were decided in order, but reached its worker
        // only after user 0's next two: by arrival it looks passed over.
        let late = [1usize, 3];
        for &i in &late {
            t.assigns[i].t_us += 250_000;
        }
        let f = t.analyse(&[]);
        assert_eq!(f.head_of_line.episodes, 0, "{:?}", f.head_of_line.detail);
        // Without the decision order the same arrivals are an episode.
        for a in &mut t.assigns {
            a.decided = None;
        }
        let f = t.analyse(&[]);
        assert!(f.head_of_line.episodes > 0);
    }

    #[test]
    fn shares_are_slot_time_per_tier_and_expiries_must_be_voided() {
        let mut t = trace();
        t.run(&[(0, 0), (1, 0)]);
        let f = t.analyse(&[]);
        let basic = f.shares.iter().find(|s| s.tier == "basic").unwrap();
        // One tier with users: it has all of the GPU time it was given.
        assert!((basic.gpu_s - 0.2).abs() < 1e-9);
        assert_eq!(basic.expected, 1.0);
        assert_eq!(f.expiry.expired, 2);
        assert_eq!(f.expiry.voided, 2);
        assert_eq!(f.expiry.orphans_not_expired, 0);
        // An expiry that posted instead of voiding fails the check.
        let mut t = trace();
        let id = t.jobs[0].id.to_string();
        t.ledger.retain(|(j, _)| *j != id);
        t.ledger.push((id.clone(), EntryKind::Post));
        let f = t.analyse(&[]);
        assert_eq!(f.expiry.voided, 1);
        let v = violations(&f, &[id]);
        assert!(v.iter().any(|v| v.check == "fleet-expired-not-voided"));
    }

    #[test]
    fn a_quarantine_renewed_between_two_polls_is_counted() {
        let mut t = trace();
        t.workers = fleet();
        let poll = |t_us, quarantined, left_ms| SeenPoll {
            t_us,
            name: "fleet-broken".into(),
            quarantined,
            left_ms,
        };
        let polls = [
            poll(0, false, None),
            poll(250_000, true, Some(2_000)),
            poll(500_000, true, Some(1_750)),
            // Ended and began again within one poll interval.
            poll(2_250_000, true, Some(3_900)),
            poll(2_500_000, true, Some(3_650)),
            // The server measured a little later than the poll was sent:
            // still the same quarantine.
            poll(2_750_000, true, Some(3_640)),
            poll(6_500_000, false, None),
        ];
        let f = t.analyse(&polls);
        assert_eq!(f.quarantines.len(), 2, "{:?}", f.quarantines);
        assert_eq!(f.quarantines[0].lifted_at_s, Some(2.25));
        assert_eq!(f.quarantines[1].lifted_at_s, Some(6.5));
        assert!(f.healthy_quarantined.is_empty());
    }

    #[test]
    fn the_registry_and_fleet_fit_together() {
        let toml = registry_toml();
        assert_eq!(toml.matches("[[models]]").count(), 4);
        assert!(toml.contains(ORPHAN_MODEL));
        let fleet = fleet();
        // Every runnable class has a healthy worker; the orphan has none.
        for c in 0..CLASSES {
            assert!(fleet.iter().any(|w| !w.profile.broken && w.serves(c)));
        }
        assert!(fleet
            .iter()
            .all(|w| !w.profile.models.iter().any(|m| m == ORPHAN_MODEL)));
        assert_eq!(fleet.iter().filter(|w| w.profile.broken).count(), 1);
        // The small image workers serve only the small model.
        assert!(fleet[0].serves(0) && !fleet[0].serves(1) && !fleet[0].serves(2));
        assert_eq!(top_up(4, 5), 7);
        assert_eq!(top_up(1, 9), 0);
    }
}
