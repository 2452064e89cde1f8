//! The waiting line, placement-aware.
//!
//! Jobs are grouped by requirement class (kind, model, GPU memory): a class
//! is runnable while some idle slot can serve it, and dispatch looks only at
//! the runnable classes, so a job no connected worker can run never stands
//! in front of one that can, and the work per dispatch grows with the
//! number of classes, not with the backlog.
//!
//! Between tiers: stride scheduling over the tiers with a runnable job.
//! Each dispatch advances its tier's pass by the job's cost over the tier's
//! weight, and the tier with the lowest pass goes next, so with every tier
//! backlogged each gets its weight's share of the cost. The cost is the
//! job's estimated GPU time (the model's expected runtime, corrected by a
//! moving average of what its class actually took) or, configured so, one
//! per job. A tier with nothing runnable is lifted to the current pass when
//! others dispatch, so it cannot bank a share while idle.
//!
//! Within a tier: the user served least recently among those with a
//! runnable job goes next, one job per turn (a round robin that skips the
//! users whose jobs no idle slot can take).
//!
//! Within a user: their own jobs' priority (high, normal, low), then
//! submission order (`seq`), among their runnable jobs; a retried job
//! re-enters with its original priority and `seq` and keeps its place.
//! Priority only orders the user's own line: it never gives the user an
//! extra turn, so it cannot change their share against other users or
//! tiers.
//!
//! A user at their running limit is parked (out of every class's ready
//! set) until one of their jobs ends, so dispatch never looks at them.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::config::{FairnessUnit, OrchestratorConfig};
use crate::domain::ids::{JobId, UserId, WorkerId};
use crate::domain::job::{Job, JobKind, Priority, SizeClass};

use crate::domain::tier::{PerTier, Tier, TierTable};

/// What a job needs of a worker; jobs of one class are placed alike.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct JobClass {
    pub kind: JobKind,
    pub model: Arc<str>,
    pub vram_mb: u32,
}

/// What the scheduler needs to know of a waiting job: ids and numbers,
/// never the prompt (the job actor reads the job when it is assigned).
/// The model name is shared: the queue keeps one copy per class.
#[derive(Clone, Debug)]
pub struct QueuedJob {
    pub job_id: JobId,
    pub user_id: UserId,
    pub seq: u64,
    pub tier: Tier,
    pub kind: JobKind,
    /// Orders it among its user's own waiting jobs only.
    pub priority: Priority,
    pub model: Arc<str>,
    pub size: SizeClass,
    /// GPU memory it needs (its model's or its size's, the larger).
    pub vram_mb: u32,
    /// The registry's estimate of its GPU time.
    pub estimate: Duration,
    /// Attempts already made; the next one is `attempts + 1`.
    pub attempts: u32,
    /// When it (re-)entered the line, for queue-wait metrics.
    pub enqueued_at: Instant,
    /// Since when it waits, for the tier's waiting limit: its submission,
    /// or the end of its retry delay.
    pub waiting_since: DateTime<Utc>,
    /// The worker its last attempt failed on; another is preferred.
    pub avoid: Option<WorkerId>,
}

impl QueuedJob {
    pub fn from_job(job: &Job, config: &OrchestratorConfig) -> QueuedJob {
        let waiting_since = if job.attempts == 0 {
            job.created_at
        } else {
            job.retry_at.unwrap_or_else(|| config.clock.now())
        };
        QueuedJob {
            job_id: job.id,
            user_id: job.user_id,
            seq: job.seq,
            tier: job.tier,
            kind: job.spec.kind,
            priority: job.spec.priority,
            model: Arc::from(job.spec.model.as_str()),
            size: job.spec.size_class(),
            vram_mb: config.vram_needed(&job.spec),
            estimate: config.expected_runtime(&job.spec),
            attempts: job.attempts,
            enqueued_at: config.clock.instant(),
            waiting_since,
            avoid: None,
        }
    }

    pub fn class(&self) -> JobClass {
        JobClass {
            kind: self.kind,
            model: self.model.clone(),
            vram_mb: self.vram_mb,
        }
    }
}

/// Fixed-point scale of a tier's pass, so a cost of one millisecond over
/// the largest weight still moves it.
const PASS_SCALE: u128 = 1 << 20;
/// The cost of one dispatch when tiers share dispatches.
const JOB_COST_MS: u128 = 1_000;
/// How much one observed run moves a class's correction.
const RUNTIME_SMOOTHING: f64 = 0.2;

struct ClassQueue {
    class: JobClass,
    /// Per tier, the users with a waiting job of this class who are below
    /// their running limit, least recently served first.
    ready: PerTier<BTreeSet<(u64, UserId)>>,
    /// Moving average of observed over estimated GPU time.
    correction: f64,
}

/// Where a job stands in its user's line: higher priority first, then
/// submission order.
type LineOrder = (Reverse<Priority>, u64);

fn line_order(priority: Priority, seq: u64) -> LineOrder {
    (Reverse(priority), seq)
}

/// A waiting job as its line keeps it: only what the line (user, tier),
/// the class (kind, model, GPU memory) and the line's order (priority,
/// seq) do not already say, in numbers, so a million waiting jobs cost
/// a small fixed record each. `pop_next` rebuilds the full `QueuedJob`.
struct Waiting {
    job_id: JobId,
    /// `enqueued_at` as nanoseconds from the queue's `base` instant
    /// (signed: a job may have been stamped before the first one pushed).
    enqueued: i64,
    waiting_since: DateTime<Utc>,
    /// Boxed: only a retried job avoids a worker.
    avoid: Option<Box<WorkerId>>,
    /// The estimate of its GPU time, in milliseconds.
    estimate_ms: u32,
    attempts: u32,
    size: SizeClass,
}

/// One user's waiting jobs of one tier, by class.
struct Line {
    /// The dispatch tick of the user's last turn in this tier.
    stamp: u64,
    /// At the running limit: in no ready set.
    parked: bool,
    /// Boxed: B-tree nodes filled in submission order stay about half
    /// full, so inline records would leave half of every node's record
    /// space empty; a pointer per slot wastes little.
    jobs: HashMap<usize, BTreeMap<LineOrder, Box<Waiting>>>,
    count: usize,
}

type LineKey = (UserId, Tier);

/// Where a waiting job is: its line, class and order. Its waiting time
/// is in its record, so the index entry stays at 48 bytes.
#[derive(Clone, Copy)]
struct Place {
    seq: u64,
    user: UserId,
    class: u32,
    tier: Tier,
    priority: Priority,
}

impl Place {
    fn order(&self) -> LineOrder {
        line_order(self.priority, self.seq)
    }

    fn class(&self) -> usize {
        self.class as usize
    }
}

pub struct FairQueue {
    tiers: TierTable,
    unit: FairnessUnit,
    weights: PerTier<u128>,
    pass: PerTier<u128>,
    tick: u64,
    classes: Vec<ClassQueue>,
    class_ids: HashMap<JobClass, usize>,
    lines: HashMap<LineKey, Line>,
    /// Jobs assigned or running, per user.
    running: HashMap<UserId, u32>,
    waiting: PerTier<usize>,
    /// Per tier, waiting jobs by how long they wait, for the limit.
    oldest: PerTier<BTreeSet<(DateTime<Utc>, JobId)>>,
    index: HashMap<JobId, Place>,
    /// The instant waiting records count their enqueue time from: the
    /// first pushed job's (instants come from the configured clock).
    base: Option<Instant>,
}

impl FairQueue {
    pub fn new(tiers: TierTable, unit: FairnessUnit) -> FairQueue {
        FairQueue {
            weights: tiers.weights().map(|w| u128::from(w.max(1))),
            tiers,
            unit,
            pass: PerTier::splat(0),
            tick: 0,
            classes: Vec::new(),
            class_ids: HashMap::new(),
            lines: HashMap::new(),
            running: HashMap::new(),
            waiting: PerTier::splat(0),
            oldest: Default::default(),
            index: HashMap::new(),
            base: None,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn waiting_by_tier(&self) -> PerTier<usize> {
        self.waiting
    }

    /// Since when the longest-waiting job of each tier waits.
    pub fn oldest_by_tier(&self) -> PerTier<Option<DateTime<Utc>>> {
        PerTier::from_fn(|t| self.oldest[t].first().map(|(at, _)| *at))
    }

    pub fn contains(&self, job: JobId) -> bool {
        self.index.contains_key(&job)
    }

    pub fn running_of(&self, user: UserId) -> u32 {
        self.running.get(&user).copied().unwrap_or(0)
    }

    fn limit(&self, tier: Tier) -> u32 {
        self.tiers.policy(tier).max_running
    }

    fn class_id(&mut self, class: JobClass) -> usize {
        if let Some(&id) = self.class_ids.get(&class) {
            return id;
        }
        let id = self.classes.len();
        self.classes.push(ClassQueue {
            class: class.clone(),
            ready: Default::default(),
            correction: 1.0,
        });
        self.class_ids.insert(class, id);
        id
    }

    /// Adds a job (new, recovered or retried) to its user's line.
    pub fn push(&mut self, job: QueuedJob) {
        if self.index.contains_key(&job.job_id) {
            return;
        }
        let job_id = job.job_id;
        let class = self.class_id(job.class());
        let key = (job.user_id, job.tier);
        let parked = self.running_of(job.user_id) >= self.limit(job.tier);
        let place = Place {
            seq: job.seq,
            user: job.user_id,
            // Classes are (kind, model, GPU memory) triples the registry
            // knows: far fewer than four billion.
            class: u32::try_from(class).unwrap_or(u32::MAX),
            tier: job.tier,
            priority: job.priority,
        };
        let waiting = self.keep(&job);
        let tick = self.tick;
        let line = self.lines.entry(key).or_insert_with(|| Line {
            stamp: tick,
            parked,
            jobs: HashMap::new(),
            count: 0,
        });
        let of_class = line.jobs.entry(class).or_default();
        let first_of_class = of_class.is_empty();
        of_class.insert(place.order(), Box::new(waiting));
        line.count += 1;
        if first_of_class && !line.parked {
            self.classes[class].ready[key.1].insert((line.stamp, key.0));
        }
        self.waiting[key.1] += 1;
        self.oldest[key.1].insert((job.waiting_since, job_id));
        self.index.insert(job_id, place);
    }

    /// The record a line keeps of `job`.
    fn keep(&mut self, job: &QueuedJob) -> Waiting {
        let base = *self.base.get_or_insert(job.enqueued_at);
        let enqueued = match job.enqueued_at.checked_duration_since(base) {
            Some(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
            None => i64::try_from(base.duration_since(job.enqueued_at).as_nanos())
                .map_or(i64::MIN, |before| -before),
        };
        Waiting {
            job_id: job.job_id,
            enqueued,
            waiting_since: job.waiting_since,
            avoid: job.avoid.map(Box::new),
            estimate_ms: u32::try_from(job.estimate.as_millis()).unwrap_or(u32::MAX),
            attempts: job.attempts,
            size: job.size,
        }
    }

    /// The full job from its record and where it stood.
    fn rebuild(&self, kept: Waiting, place: &Place) -> Option<QueuedJob> {
        let class = &self.classes[place.class()].class;
        let offset = Duration::from_nanos(kept.enqueued.unsigned_abs());
        // A record exists only once a push has set the base.
        let base = self.base?;
        let enqueued_at = if kept.enqueued >= 0 {
            base.checked_add(offset).unwrap_or(base)
        } else {
            base.checked_sub(offset).unwrap_or(base)
        };
        Some(QueuedJob {
            job_id: kept.job_id,
            user_id: place.user,
            seq: place.seq,
            tier: place.tier,
            kind: class.kind,
            priority: place.priority,
            // One copy of the model's name per class, however many wait.
            model: class.model.clone(),
            size: kept.size,
            vram_mb: class.vram_mb,
            estimate: Duration::from_millis(u64::from(kept.estimate_ms)),
            attempts: kept.attempts,
            enqueued_at,
            waiting_since: kept.waiting_since,
            avoid: kept.avoid.map(|w| *w),
        })
    }

    /// Removes a waiting job (cancelled, expired, or its user suspended).
    pub fn remove(&mut self, job: JobId) -> Option<QueuedJob> {
        let place = self.index.remove(&job)?;
        self.take(job, place)
    }

    fn take(&mut self, job: JobId, place: Place) -> Option<QueuedJob> {
        let key = (place.user, place.tier);
        let t = place.tier;
        let class = place.class();
        self.waiting[t] -= 1;
        let line = self.lines.get_mut(&key)?;
        let of_class = line.jobs.get_mut(&class)?;
        let removed = of_class.remove(&place.order()).map(|j| *j);
        if of_class.is_empty() {
            line.jobs.remove(&class);
            if !line.parked {
                self.classes[class].ready[t].remove(&(line.stamp, place.user));
            }
        }
        if removed.is_some() {
            line.count -= 1;
        }
        if line.count == 0 {
            // Memory follows the users with work, not every user ever seen.
            self.lines.remove(&key);
        }
        let kept = removed?;
        self.oldest[t].remove(&(kept.waiting_since, job));
        self.rebuild(kept, &place)
    }

    /// Jobs that have waited longer than their tier allows, taken out of
    /// the line, oldest first.
    pub fn take_expired(
        &mut self,
        limits: &PerTier<Duration>,
        now: DateTime<Utc>,
    ) -> Vec<QueuedJob> {
        let mut out = Vec::new();
        for t in Tier::ALL {
            let limit = chrono::Duration::from_std(limits[t]).unwrap_or(chrono::Duration::MAX);
            while let Some(&(since, job)) = self.oldest[t].first() {
                if now.signed_duration_since(since) <= limit {
                    break;
                }
                match self.remove(job) {
                    Some(j) => out.push(j),
                    None => {
                        self.oldest[t].remove(&(since, job));
                    }
                }
            }
        }
        out
    }

    /// The next job to dispatch among the classes `servable` accepts (an
    /// idle slot can take a job of that class); counts it as running for
    /// its user. `servable` is asked once per class with runnable jobs.
    pub fn pop_next(&mut self, mut servable: impl FnMut(&JobClass) -> bool) -> Option<QueuedJob> {
        let open: Vec<usize> = (0..self.classes.len())
            .filter(|&c| {
                let q = &self.classes[c];
                q.ready.values().any(|r| !r.is_empty()) && servable(&q.class)
            })
            .collect();
        if open.is_empty() {
            return None;
        }
        let mut runnable = PerTier::splat(false);
        for &c in &open {
            for (t, ready) in self.classes[c].ready.iter() {
                runnable[t] |= !ready.is_empty();
            }
        }
        // Lowest pass first; ties go to the heavier tier.
        let tier = Tier::ALL
            .into_iter()
            .filter(|&t| runnable[t])
            .min_by_key(|&t| (self.pass[t], std::cmp::Reverse((self.weights[t], t))))?;
        // The user of this tier served least recently among those with a
        // job some idle slot can take.
        let turn = open
            .iter()
            .filter_map(|&c| self.classes[c].ready[tier].first().copied())
            .min()?;
        let (stamp, user) = turn;
        let key = (user, tier);
        let line = self.lines.get(&key)?;
        // Their first job among the servable classes: highest priority,
        // then oldest.
        let class = open
            .iter()
            .copied()
            .filter(|&c| self.classes[c].ready[tier].first() == Some(&turn))
            .min_by_key(|c| {
                line.jobs
                    .get(c)
                    .and_then(|j| j.first_key_value())
                    .map_or((Reverse(Priority::Low), u64::MAX), |(order, _)| *order)
            })?;
        let job_id = line.jobs.get(&class)?.first_key_value()?.1.job_id;
        let place = self.index.remove(&job_id)?;
        // The turn is taken: the user moves to the back in every class.
        self.tick += 1;
        let tick = self.tick;
        if let Some(line) = self.lines.get_mut(&key) {
            for &c in line.jobs.keys() {
                if self.classes[c].ready[tier].remove(&(stamp, user)) {
                    self.classes[c].ready[tier].insert((tick, user));
                }
            }
            line.stamp = tick;
        }
        let job = self.take(job_id, place)?;
        *self.running.entry(user).or_default() += 1;
        self.repark(user);
        self.charge(tier, &job, runnable);
        Some(job)
    }

    fn cost(&self, job: &QueuedJob) -> u128 {
        match self.unit {
            FairnessUnit::Jobs => JOB_COST_MS,
            FairnessUnit::GpuSeconds => {
                let correction = self
                    .class_ids
                    .get(&job.class())
                    .map_or(1.0, |&c| self.classes[c].correction);
                let ms = job.estimate.as_secs_f64() * 1000.0 * correction;
                (ms.max(1.0)) as u128
            }
        }
    }

    fn charge(&mut self, tier: Tier, job: &QueuedJob, runnable: PerTier<bool>) {
        let now = self.pass[tier];
        let cost = self.cost(job);
        self.pass[tier] = now.saturating_add(cost * PASS_SCALE / self.weights[tier]);
        // A tier with nothing runnable does not bank credit while it idles.
        for (t, pass) in self.pass.iter_mut() {
            if !runnable[t] && *pass < now {
                *pass = now;
            }
        }
    }

    /// An attempt of `job`'s class took `ran` on the GPU: the class's
    /// estimates follow what its jobs actually take.
    pub fn observe_runtime(&mut self, job: &QueuedJob, ran: Duration) {
        let Some(&c) = self.class_ids.get(&job.class()) else {
            return;
        };
        let estimate = job.estimate.as_secs_f64();
        if estimate <= 0.0 {
            return;
        }
        let ratio = (ran.as_secs_f64() / estimate).clamp(0.01, 100.0);
        let q = &mut self.classes[c];
        q.correction = q.correction * (1.0 - RUNTIME_SMOOTHING) + ratio * RUNTIME_SMOOTHING;
    }

    /// The estimated GPU time of `job` as fair sharing counts it now.
    pub fn estimated_runtime(&self, job: &QueuedJob) -> Duration {
        let correction = self
            .class_ids
            .get(&job.class())
            .map_or(1.0, |&c| self.classes[c].correction);
        job.estimate.mul_f64(correction)
    }

    /// Parks or unparks the user's lines to match their running count.
    fn repark(&mut self, user: UserId) {
        let running = self.running_of(user);
        for tier in Tier::ALL {
            let should = running >= self.limit(tier);
            let Some(line) = self.lines.get_mut(&(user, tier)) else {
                continue;
            };
            if line.parked == should {
                continue;
            }
            line.parked = should;
            for &c in line.jobs.keys() {
                let ready = &mut self.classes[c].ready[tier];
                if should {
                    ready.remove(&(line.stamp, user));
                } else {
                    ready.insert((line.stamp, user));
                }
            }
        }
    }

    /// Counts a job as running that did not come through `pop_next`
    /// (recovered at start-up).
    pub fn mark_running(&mut self, user: UserId) {
        *self.running.entry(user).or_default() += 1;
        self.repark(user);
    }

    /// One of the user's jobs left the running set; their parked lines
    /// return if they are now below the limit.
    pub fn finished(&mut self, user: UserId) {
        match self.running.get_mut(&user) {
            Some(r) if *r > 1 => *r -= 1,
            _ => {
                self.running.remove(&user);
            }
        }
        self.repark(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tier::TierPolicy;
    use proptest::prelude::*;

    fn job(user: UserId, tier: Tier, seq: u64) -> QueuedJob {
        QueuedJob {
            job_id: JobId::generate(),
            user_id: user,
            seq,
            tier,
            kind: JobKind::Image,
            priority: Priority::Normal,
            model: "m".into(),
            size: SizeClass::ImageStandard,
            vram_mb: 8_000,
            estimate: Duration::from_secs(4),
            attempts: 0,
            enqueued_at: crate::clock::Clock::system().instant(),
            waiting_since: crate::clock::Clock::system().now(),
            avoid: None,
        }
    }

    fn jobs_queue(tiers: TierTable) -> FairQueue {
        FairQueue::new(tiers, FairnessUnit::Jobs)
    }

    fn table(weights: PerTier<u32>, max_running: u32) -> TierTable {
        TierTable(weights.map(|weight| TierPolicy {
            weight,
            max_running,
            max_waiting: 1_000_000,
        }))
    }

    /// A weight per tier, as the property tests draw them.
    fn tier_weights(range: std::ops::RangeInclusive<u32>) -> impl Strategy<Value = PerTier<u32>> {
        prop::array::uniform4(range).prop_map(PerTier::from)
    }

    /// The line keeps a waiting job as a compact record; what comes out
    /// is the job that went in, field for field, whether it waited from
    /// before the queue existed or retried after failing on a worker.
    #[test]
    fn a_waiting_job_comes_out_as_it_went_in() {
        let clock = crate::clock::Clock::system();
        let user = UserId::generate();
        let mut early = job(user, Tier::Basic, 1);
        early.enqueued_at = clock
            .instant()
            .checked_sub(Duration::from_secs(30))
            .unwrap_or_else(|| clock.instant());
        let mut retried = job(user, Tier::Basic, 2);
        retried.priority = Priority::High;
        retried.kind = JobKind::Video;
        retried.model = "video-model".into();
        retried.size = SizeClass::VideoStandard;
        retried.vram_mb = 24_000;
        retried.estimate = Duration::from_millis(61_250);
        retried.attempts = 2;
        retried.avoid = Some(WorkerId::generate());
        retried.enqueued_at = clock.instant() + Duration::from_millis(1_500);
        let mut q = jobs_queue(TierTable::default());
        q.push(early.clone());
        q.push(retried.clone());
        let first = q.pop_next(|_| true).expect("the high-priority job");
        let second = q.pop_next(|_| true).expect("the other job");
        for (got, want) in [(first, retried), (second, early)] {
            assert_eq!(got.job_id, want.job_id);
            assert_eq!(got.user_id, want.user_id);
            assert_eq!(
                (got.seq, got.tier, got.priority),
                (want.seq, want.tier, want.priority)
            );
            assert_eq!(
                (got.kind, got.size, got.vram_mb),
                (want.kind, want.size, want.vram_mb)
            );
            assert_eq!(got.model, want.model);
            assert_eq!((got.estimate, got.attempts), (want.estimate, want.attempts));
            assert_eq!(got.enqueued_at, want.enqueued_at);
            assert_eq!(got.waiting_since, want.waiting_since);
            assert_eq!(got.avoid, want.avoid);
        }
        assert!(q.is_empty());
        assert_eq!(q.oldest_by_tier()[Tier::Basic], None);
    }

    /// A removed job leaves nothing behind: not its place in the
    /// oldest-first set, not its user's line.
    #[test]
    fn a_removed_job_leaves_no_trace() {
        let user = UserId::generate();
        let a = job(user, Tier::Free, 1);
        let b = job(user, Tier::Free, 2);
        let mut q = jobs_queue(TierTable::default());
        q.push(a.clone());
        q.push(b.clone());
        assert_eq!(q.remove(a.job_id).map(|j| j.job_id), Some(a.job_id));
        assert!(q.remove(a.job_id).is_none());
        assert_eq!(q.oldest_by_tier()[Tier::Free], Some(b.waiting_since));
        assert_eq!(q.remove(b.job_id).map(|j| j.seq), Some(2));
        assert_eq!(q.oldest_by_tier()[Tier::Free], None);
        assert!(q.is_empty() && q.lines.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// With every tier backlogged, each tier's share of 10,000
        /// dispatches is within 5% of its weight's share.
        #[test]
        fn backlogged_shares_follow_weights(
            weights in tier_weights(1..=10),
            users in prop::array::uniform4(1usize..=5).prop_map(PerTier::from),
        ) {
            let mut q = jobs_queue(table(weights, u32::MAX));
            let mut seq = 0;
            for tier in Tier::ALL {
                for _ in 0..users[tier] {
                    let u = UserId::generate();
                    for _ in 0..10_000 {
                        seq += 1;
                        q.push(job(u, tier, seq));
                    }
                }
            }
            let mut counts: PerTier<usize> = PerTier::splat(0);
            for _ in 0..10_000 {
                let j = q.pop_next(|_| true).unwrap();
                counts[j.tier] += 1;
                q.finished(j.user_id);
            }
            let total: u32 = weights.values().sum();
            for tier in Tier::ALL {
                let expected = 10_000.0 * f64::from(weights[tier]) / f64::from(total);
                let got = counts[tier] as f64;
                prop_assert!((got - expected).abs() <= expected * 0.05 + 1.0,
                    "tier {tier}: {got} dispatches, expected {expected}");
            }
        }

        /// Within a tier, users take turns: in every window of `n`
        /// consecutive dispatches each of the `n` backlogged users appears once.
        #[test]
        fn users_of_a_tier_take_turns(n in 2usize..8, jobs_each in 5usize..30) {
            let mut q = jobs_queue(table(PerTier::from([1, 2, 4, 8]), u32::MAX));
            let users: Vec<UserId> = (0..n).map(|_| UserId::generate()).collect();
            let mut seq = 0;
            // The first user submits everything first: order of arrival must
            // not let them run ahead.
            for u in &users {
                for _ in 0..jobs_each {
                    seq += 1;
                    q.push(job(*u, Tier::Basic, seq));
                }
            }
            let order: Vec<UserId> = std::iter::from_fn(|| {
                let j = q.pop_next(|_| true)?;
                q.finished(j.user_id);
                Some(j.user_id)
            }).collect();
            prop_assert_eq!(order.len(), n * jobs_each);
            for window in order.chunks(n) {
                let mut w = window.to_vec();
                w.sort();
                w.dedup();
                prop_assert_eq!(w.len(), n);
            }
        }

        /// A Free job submitted behind heavy backlogs in every other tier is
        /// dispatched within one weight cycle per Free user ahead of it.
        #[test]
        fn free_job_is_dispatched_within_a_bound(
            weights in tier_weights(1..=10),
            free_users in 1usize..5,
        ) {
            let mut q = jobs_queue(table(weights, u32::MAX));
            let mut seq = 0;
            for tier in [Tier::Basic, Tier::Professional, Tier::Enterprise] {
                let u = UserId::generate();
                for _ in 0..5_000 {
                    seq += 1;
                    q.push(job(u, tier, seq));
                }
            }
            for _ in 0..free_users - 1 {
                let u = UserId::generate();
                for _ in 0..100 {
                    seq += 1;
                    q.push(job(u, Tier::Free, seq));
                }
            }
            // Warm the rotation up so the bound holds from any phase.
            for _ in 0..37 {
                let j = q.pop_next(|_| true).unwrap();
                q.finished(j.user_id);
            }
            let late = UserId::generate();
            seq += 1;
            q.push(job(late, Tier::Free, seq));
            let total: u32 = weights.values().sum();
            let cycle = total.div_ceil(weights[Tier::Free]) as usize + 1;
            let bound = cycle * free_users;
            let mut dispatched_at = None;
            for i in 1..=bound {
                let j = q.pop_next(|_| true).unwrap();
                q.finished(j.user_id);
                if j.user_id == late {
                    dispatched_at = Some(i);
                    break;
                }
            }
            prop_assert!(dispatched_at.is_some(), "not dispatched within {bound}");
        }

        /// Under any interleaving of submissions, dispatches and completions,
        /// no user ever has more running jobs than their tier allows, and no
        /// job is lost or dispatched twice.
        #[test]
        fn per_user_running_limit_holds(
            ops in prop::collection::vec((0u8..3, 0usize..6, 0usize..4), 1..400),
        ) {
            let limits = TierTable::default();
            let mut q = jobs_queue(limits);
            let users: Vec<UserId> = (0..6).map(|_| UserId::generate()).collect();
            let mut running: Vec<(UserId, JobId)> = Vec::new();
            let mut seq = 0;
            let mut pushed = 0usize;
            let mut popped = std::collections::HashSet::new();
            for (op, u, t) in ops {
                match op {
                    0 => {
                        seq += 1;
                        pushed += 1;
                        // A user's tier is fixed per user, as at submission.
                        q.push(job(users[u], Tier::ALL[u % 4], seq));
                        let _ = t;
                    }
                    1 => {
                        if let Some(j) = q.pop_next(|_| true) {
                            prop_assert!(popped.insert(j.job_id), "dispatched twice");
                            running.push((j.user_id, j.job_id));
                            let n = running.iter().filter(|(r, _)| *r == j.user_id).count() as u32;
                            prop_assert!(n <= limits.policy(j.tier).max_running);
                            prop_assert_eq!(q.running_of(j.user_id), n);
                        }
                    }
                    _ => {
                        if !running.is_empty() {
                            let (user, _) = running.remove(t % running.len());
                            q.finished(user);
                        }
                    }
                }
            }
            // Drain: everything pushed comes out exactly once.
            loop {
                match q.pop_next(|_| true) {
                    Some(j) => {
                        prop_assert!(popped.insert(j.job_id));
                        q.finished(j.user_id);
                    }
                    None if running.is_empty() => break,
                    None => {
                        let (user, _) = running.remove(0);
                        q.finished(user);
                    }
                }
            }
            prop_assert_eq!(popped.len(), pushed);
            prop_assert!(q.is_empty());
        }
    }

    #[test]
    fn retried_job_keeps_its_place_in_line() {
        let mut q = jobs_queue(table(PerTier::splat(1), 1));
        let u = UserId::generate();
        let first = job(u, Tier::Free, 1);
        q.push(first.clone());
        q.push(job(u, Tier::Free, 2));
        let j = q.pop_next(|_| true).unwrap();
        assert_eq!(j.job_id, first.job_id);
        // It failed; it comes back with its original seq.
        q.finished(u);
        q.push(j);
        assert_eq!(q.pop_next(|_| true).unwrap().job_id, first.job_id);
    }

    #[test]
    fn high_priority_goes_first_within_its_user_only() {
        let mut q = jobs_queue(table(PerTier::splat(1), u32::MAX));
        let (a, b) = (UserId::generate(), UserId::generate());
        let mut seq = 0;
        let mut push = |q: &mut FairQueue, user, priority| {
            seq += 1;
            let mut j = job(user, Tier::Basic, seq);
            j.priority = priority;
            q.push(j.clone());
            j
        };
        let a_low = push(&mut q, a, Priority::Low);
        let a_normal = push(&mut q, a, Priority::Normal);
        let b_first = push(&mut q, b, Priority::Normal);
        let b_second = push(&mut q, b, Priority::Normal);
        let a_high = push(&mut q, a, Priority::High);
        let popped: Vec<QueuedJob> = std::iter::from_fn(|| {
            let j = q.pop_next(|_| true)?;
            q.finished(j.user_id);
            Some(j)
        })
        .collect();
        // Turns still alternate between the two users: a's high job takes
        // a's turn, never b's.
        let users: Vec<UserId> = popped.iter().map(|j| j.user_id).collect();
        let first = users[0];
        let other = if first == a { b } else { a };
        assert_eq!(users, vec![first, other, first, other, a]);
        // Within each user: priority, then submission order.
        let of = |u: UserId| -> Vec<JobId> {
            popped
                .iter()
                .filter(|j| j.user_id == u)
                .map(|j| j.job_id)
                .collect()
        };
        assert_eq!(of(a), vec![a_high.job_id, a_normal.job_id, a_low.job_id]);
        assert_eq!(of(b), vec![b_first.job_id, b_second.job_id]);
    }

    #[test]
    fn priority_changes_no_share_between_tiers() {
        // The same backlog with and without priorities: the tiers take the
        // same turns, whatever the users ask for their own jobs.
        let run = |with_priority: bool| -> Vec<Tier> {
            let mut q = jobs_queue(table(PerTier::from([1, 2, 4, 8]), u32::MAX));
            let mut seq = 0;
            for tier in Tier::ALL {
                let u = UserId::generate();
                for i in 0..50 {
                    seq += 1;
                    let mut j = job(u, tier, seq);
                    if with_priority && tier == Tier::Free {
                        j.priority = [Priority::High, Priority::Low][i % 2];
                    }
                    q.push(j);
                }
            }
            std::iter::from_fn(|| {
                let j = q.pop_next(|_| true)?;
                q.finished(j.user_id);
                Some(j.tier)
            })
            .collect()
        };
        assert_eq!(run(true), run(false));
    }

    #[test]
    fn removed_job_is_never_dispatched() {
        let mut q = jobs_queue(TierTable::default());
        let u = UserId::generate();
        let a = job(u, Tier::Free, 1);
        let b = job(u, Tier::Free, 2);
        q.push(a.clone());
        q.push(b.clone());
        assert!(q.remove(a.job_id).is_some());
        assert_eq!(q.waiting_by_tier()[Tier::Free], 1);
        assert_eq!(q.pop_next(|_| true).unwrap().job_id, b.job_id);
        assert!(q.pop_next(|_| true).is_none());
    }

    #[test]
    fn job_that_fits_no_slot_waits_without_blocking_others() {
        let mut q = jobs_queue(TierTable::default());
        let (a, b) = (UserId::generate(), UserId::generate());
        let mut video = job(a, Tier::Basic, 1);
        video.kind = JobKind::Video;
        q.push(video.clone());
        q.push(job(b, Tier::Basic, 2));
        let j = q.pop_next(|j| j.kind == JobKind::Image).unwrap();
        assert_eq!(j.user_id, b);
        assert!(q.pop_next(|j| j.kind == JobKind::Image).is_none());
        assert_eq!(q.pop_next(|_| true).unwrap().job_id, video.job_id);
    }

    /// A worker of a random fleet: what it serves and its free slots.
    #[derive(Clone, Debug)]
    struct SimWorker {
        kinds: Vec<JobKind>,
        models: Vec<String>,
        vram_mb: u32,
        free: u32,
    }

    impl SimWorker {
        fn serves(&self, c: &JobClass) -> bool {
            self.kinds.contains(&c.kind)
                && (self.models.is_empty() || self.models.iter().any(|m| **m == *c.model))
                && self.vram_mb >= c.vram_mb
        }
    }

    const MODELS: [&str; 4] = ["sdxl", "flux", "v1", "nobody-serves-this"];

    fn arb_worker() -> impl Strategy<Value = SimWorker> {
        (
            prop::sample::subsequence(JobKind::ALL.to_vec(), 1..=2),
            prop::sample::subsequence(MODELS[..3].to_vec(), 0..=2),
            prop::sample::select(vec![8_000u32, 16_000, 24_000, 48_000]),
            1u32..4,
        )
            .prop_map(|(kinds, models, vram_mb, free)| SimWorker {
                kinds,
                models: models.into_iter().map(String::from).collect(),
                vram_mb,
                free,
            })
    }

    /// (user, tier, kind, model, vram)
    fn arb_job() -> impl Strategy<Value = (usize, usize, JobKind, usize, u32)> {
        (
            0usize..6,
            0usize..4,
            prop::sample::select(JobKind::ALL.to_vec()),
            0usize..MODELS.len(),
            prop::sample::select(vec![8_000u32, 16_000, 40_000, 80_000]),
        )
    }

    /// The scheduler's dispatch loop over a simulated fleet: pop while an
    /// idle slot can serve some class, place on a fitting worker.
    fn dispatch_all(q: &mut FairQueue, fleet: &mut [SimWorker]) -> Vec<(QueuedJob, usize)> {
        let mut placed = Vec::new();
        loop {
            let snapshot = fleet.to_vec();
            let Some(j) = q.pop_next(|c| snapshot.iter().any(|w| w.free > 0 && w.serves(c))) else {
                break;
            };
            let class = j.class();
            let w = fleet
                .iter()
                .position(|w| w.free > 0 && w.serves(&class))
                .expect("pop_next returned a job no idle slot serves");
            fleet[w].free -= 1;
            placed.push((j, w));
        }
        placed
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the fleet and the mix of jobs, after dispatch no job
        /// whose user is below their running limit waits while an idle slot
        /// could run it, and every job went to a worker that serves it.
        #[test]
        fn no_runnable_job_waits_beside_a_fitting_idle_slot(
            mut fleet in prop::collection::vec(arb_worker(), 0..5),
            mix in prop::collection::vec(arb_job(), 0..80),
            max_running in 1u32..4,
            rounds in 1usize..4,
        ) {
            let mut q = jobs_queue(table(PerTier::from([1, 2, 4, 8]), max_running));
            let users: Vec<UserId> = (0..6).map(|_| UserId::generate()).collect();
            let mut waiting: HashMap<JobId, QueuedJob> = HashMap::new();
            let mut running: Vec<(QueuedJob, usize)> = Vec::new();
            let chunk = mix.len().div_ceil(rounds).max(1);
            for (round, part) in mix.chunks(chunk).enumerate() {
                for (i, &(u, t, kind, m, vram)) in part.iter().enumerate() {
                    let mut j = job(users[u], Tier::ALL[(u + t) % Tier::COUNT], (round * 1000 + i) as u64);
                    j.kind = kind;
                    j.model = MODELS[m].into();
                    j.vram_mb = vram;
                    waiting.insert(j.job_id, j.clone());
                    q.push(j);
                }
                for (j, w) in dispatch_all(&mut q, &mut fleet) {
                    prop_assert!(waiting.remove(&j.job_id).is_some(), "dispatched a job not waiting");
                    running.push((j, w));
                }
                for (j, _) in &running {
                    prop_assert!(q.running_of(j.user_id) <= max_running);
                }
                for j in waiting.values() {
                    if q.running_of(j.user_id) < max_running {
                        let class = j.class();
                        prop_assert!(
                            !fleet.iter().any(|w| w.free > 0 && w.serves(&class)),
                            "a runnable job waits beside an idle slot that serves it: {:?}", class
                        );
                    }
                }
                // Half of what runs ends: its slot and its user's turn free up.
                let ending = running.len() / 2;
                for (j, w) in running.drain(..ending) {
                    fleet[w].free += 1;
                    q.finished(j.user_id);
                }
            }
            prop_assert_eq!(q.len(), waiting.len());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]

        /// Every tier backlogged with a mix of short and long jobs on a
        /// random fleet: the GPU time each tier actually got is within 5%
        /// of its weight's share, even though the registry's estimates are
        /// off by a per-class factor the queue has to learn.
        #[test]
        fn gpu_time_shares_follow_weights(
            weights in tier_weights(1..=8),
            fleet in prop::collection::vec(arb_worker(), 1..5),
            real_factor in prop::array::uniform3(0.5f64..2.0),
            mix in prop::array::uniform4(prop::array::uniform3(1usize..=4)).prop_map(PerTier::from),
        ) {
            let classes = [
                (JobKind::Image, "sdxl", 8_000u32, 2u64),
                (JobKind::Image, "flux", 16_000, 6),
                (JobKind::Video, "v1", 24_000, 40),
            ];
            // Every class served by someone, so every tier can use every slot.
            let mut fleet = fleet;
            fleet.push(SimWorker { kinds: JobKind::ALL.to_vec(), models: vec![], vram_mb: 48_000, free: 2 });
            let mut q = FairQueue::new(table(weights, u32::MAX), FairnessUnit::GpuSeconds);
            let mut seq = 0;
            // Each tier has its own mix of short and long jobs (`mix[t][c]`
            // of class `c` in every cycle), so sharing dispatches would not
            // share GPU time.
            let mut total: PerTier<[u32; 3]> = PerTier::splat([0; 3]);
            for tier in Tier::ALL {
                let cycle: Vec<usize> = (0..3).flat_map(|c| std::iter::repeat_n(c, mix[tier][c])).collect();
                for _ in 0..2 {
                    let u = UserId::generate();
                    for i in 0..250 * weights[tier] as usize * cycle.len() {
                        let c = cycle[i % cycle.len()];
                        total[tier][c] += 1;
                        let (kind, model, vram, secs) = classes[c];
                        seq += 1;
                        let mut j = job(u, tier, seq);
                        j.kind = kind;
                        j.model = model.into();
                        j.vram_mb = vram;
                        j.estimate = Duration::from_secs(secs);
                        q.push(j);
                    }
                }
            }
            let real = |j: &QueuedJob| {
                let c = classes.iter().position(|c| *c.1 == *j.model).unwrap_or(0);
                j.estimate.mul_f64(real_factor[c])
            };
            // Discrete-event run: slots end in time order and are refilled.
            let mut clock = Duration::ZERO;
            let mut ends: std::collections::BinaryHeap<std::cmp::Reverse<(Duration, usize, u64)>> = Default::default();
            let mut in_flight: HashMap<u64, (QueuedJob, usize)> = HashMap::new();
            let mut gpu: PerTier<f64> = PerTier::splat(0.0);
            let mut n = 0u64;
            // The run stops while every class of every tier is still
            // backlogged.
            let mut taken: PerTier<[u32; 3]> = PerTier::splat([0; 3]);
            let backlogged = |taken: &PerTier<[u32; 3]>| {
                Tier::ALL.into_iter().all(|t| (0..3).all(|c| taken[t][c] * 5 < total[t][c] * 4))
            };
            while backlogged(&taken) {
                for (j, w) in dispatch_all(&mut q, &mut fleet) {
                    let r = real(&j);
                    let c = classes.iter().position(|c| *c.1 == *j.model).unwrap_or(0);
                    taken[j.tier][c] += 1;
                    // Counted after a warm-up, once estimates settled.
                    if n > 300 {
                        gpu[j.tier] += r.as_secs_f64();
                    }
                    n += 1;
                    ends.push(std::cmp::Reverse((clock + r, w, n)));
                    in_flight.insert(n, (j, w));
                }
                let Some(std::cmp::Reverse((at, w, id))) = ends.pop() else { break };
                clock = at;
                if let Some((j, _)) = in_flight.remove(&id) {
                    q.observe_runtime(&j, real(&j));
                    q.finished(j.user_id);
                }
                fleet[w].free += 1;
            }
            let total_w: u32 = weights.values().sum();
            let total: f64 = gpu.values().sum();
            for tier in Tier::ALL {
                let expected = total * f64::from(weights[tier]) / f64::from(total_w);
                prop_assert!((gpu[tier] - expected).abs() <= expected * 0.05,
                    "tier {}: {:.0} GPU-s, expected {:.0} (weights {:?})", tier, gpu[tier], expected, weights);
            }
        }

        /// Round robin within a tier holds among runnable jobs: users whose
        /// lines mix jobs no slot can take with jobs it can still take turns.
        #[test]
        fn turns_skip_what_cannot_run(n in 2usize..6, jobs_each in 4usize..20, every in 2usize..4) {
            let mut q = jobs_queue(table(PerTier::from([1, 2, 4, 8]), u32::MAX));
            let users: Vec<UserId> = (0..n).map(|_| UserId::generate()).collect();
            let mut seq = 0;
            for u in &users {
                for i in 0..jobs_each {
                    seq += 1;
                    let mut j = job(*u, Tier::Basic, seq);
                    if i % every == 0 {
                        j.kind = JobKind::Video;
                    }
                    q.push(j);
                }
            }
            let order: Vec<UserId> = std::iter::from_fn(|| {
                let j = q.pop_next(|c| c.kind == JobKind::Image)?;
                q.finished(j.user_id);
                Some(j.user_id)
            }).collect();
            let images = jobs_each - jobs_each.div_ceil(every);
            prop_assert_eq!(order.len(), n * images);
            for window in order.chunks(n) {
                let mut w = window.to_vec();
                w.sort();
                w.dedup();
                prop_assert_eq!(w.len(), n);
            }
            prop_assert_eq!(q.len(), n * jobs_each.div_ceil(every));
        }
    }

    #[test]
    fn unrunnable_head_of_line_does_not_block_the_same_user() {
        // One image-only worker, a video job first, then three images, all
        // from one user: the images go, the video waits.
        let mut q = jobs_queue(table(PerTier::from([1, 2, 4, 8]), 10));
        let u = UserId::generate();
        let mut video = job(u, Tier::Free, 1);
        video.kind = JobKind::Video;
        q.push(video.clone());
        for s in 2..5 {
            q.push(job(u, Tier::Free, s));
        }
        for _ in 0..3 {
            let j = q.pop_next(|c| c.kind == JobKind::Image).unwrap();
            assert_eq!(j.kind, JobKind::Image);
        }
        assert!(q.pop_next(|c| c.kind == JobKind::Image).is_none());
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop_next(|_| true).unwrap().job_id, video.job_id);
    }

    #[test]
    fn jobs_past_their_tier_limit_are_taken_out_oldest_first() {
        let mut q = jobs_queue(TierTable::default());
        let u = UserId::generate();
        let now = crate::clock::Clock::system().now();
        let mut old = job(u, Tier::Free, 1);
        old.waiting_since = now - chrono::Duration::seconds(100);
        let mut older = job(u, Tier::Free, 2);
        older.waiting_since = now - chrono::Duration::seconds(200);
        let fresh = job(u, Tier::Free, 3);
        let mut pro = job(UserId::generate(), Tier::Professional, 4);
        pro.waiting_since = now - chrono::Duration::seconds(100);
        for j in [old.clone(), older.clone(), fresh.clone(), pro.clone()] {
            q.push(j);
        }
        assert_eq!(q.oldest_by_tier()[Tier::Free], Some(older.waiting_since));
        let limits = PerTier::from([
            Duration::from_secs(50),
            Duration::from_secs(50),
            Duration::from_secs(500),
            Duration::from_secs(50),
        ]);
        let expired: Vec<JobId> = q
            .take_expired(&limits, now)
            .iter()
            .map(|j| j.job_id)
            .collect();
        assert_eq!(expired, vec![older.job_id, old.job_id]);
        assert_eq!(q.len(), 2);
        assert!(q.take_expired(&limits, now).is_empty());
        assert_eq!(q.oldest_by_tier()[Tier::Free], Some(fresh.waiting_since));
        assert_eq!(q.pop_next(|_| true).unwrap().job_id, pro.job_id);
    }
}
