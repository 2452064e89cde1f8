//! The waiting line.
//!
//! Between tiers: smooth weighted round-robin (the nginx algorithm) over the
//! tiers that have a dispatchable job, so with every tier backlogged each
//! gets exactly its weight's share of every cycle, an idle tier's share goes
//! to the others, and Free waits at most one cycle for its turn.
//!
//! Within a tier: round-robin between users, one job per user per turn, so
//! a user with 10,000 waiting jobs does not block the others.
//!
//! Within a user: submission order (`seq`); a retried job re-enters with its
//! original `seq` and so keeps its place in line.
//!
//! A user at their running limit is parked (out of the rings) until one of
//! their jobs ends, so dispatch never scans users who cannot run.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use crate::ids::{JobId, UserId};
use crate::job::{Job, JobKind};
use crate::pricing::SizeClass;
use crate::tier::{Tier, TierTable};

/// What the scheduler needs to know of a waiting job.
#[derive(Clone, Debug)]
pub struct QueuedJob {
    pub job_id: JobId,
    pub user_id: UserId,
    pub seq: u64,
    pub tier: Tier,
    pub kind: JobKind,
    pub model: String,
    pub size: SizeClass,
    /// Attempts already made; the next one is `attempts + 1`.
    pub attempts: u32,
    /// When it (re-)entered the line, for queue-wait metrics.
    pub enqueued_at: Instant,
}

impl QueuedJob {
    pub fn from_job(job: &Job) -> QueuedJob {
        QueuedJob {
            job_id: job.id,
            user_id: job.user_id,
            seq: job.seq,
            tier: job.tier,
            kind: job.spec.kind,
            model: job.spec.model.clone(),
            size: job.spec.size_class(),
            attempts: job.attempts,
            enqueued_at: Instant::now(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LineStatus {
    /// Empty, in no ring.
    Idle,
    InRing,
    /// Has jobs, but the user is at their running limit.
    Parked,
}

/// One user's jobs of one tier.
struct Line {
    jobs: BTreeMap<u64, QueuedJob>,
    status: LineStatus,
}

type LineKey = (UserId, Tier);

pub struct FairQueue {
    tiers: TierTable,
    weights: [i64; 4],
    current: [i64; 4],
    rings: [VecDeque<UserId>; 4],
    lines: HashMap<LineKey, Line>,
    /// Jobs assigned or running, per user.
    running: HashMap<UserId, u32>,
    waiting: [usize; 4],
    index: HashMap<JobId, (LineKey, u64)>,
}

impl FairQueue {
    pub fn new(tiers: TierTable) -> FairQueue {
        FairQueue {
            weights: tiers.weights().map(i64::from),
            tiers,
            current: [0; 4],
            rings: Default::default(),
            lines: HashMap::new(),
            running: HashMap::new(),
            waiting: [0; 4],
            index: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn waiting_by_tier(&self) -> [usize; 4] {
        self.waiting
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

    /// Adds a job (new, recovered or retried) to its user's line.
    pub fn push(&mut self, job: QueuedJob) {
        let key = (job.user_id, job.tier);
        if self.index.contains_key(&job.job_id) {
            return;
        }
        self.index.insert(job.job_id, (key, job.seq));
        self.waiting[job.tier.index()] += 1;
        let can_run = self.running_of(job.user_id) < self.limit(job.tier);
        let line = self.lines.entry(key).or_insert_with(|| Line {
            jobs: BTreeMap::new(),
            status: LineStatus::Idle,
        });
        line.jobs.insert(job.seq, job);
        if line.status == LineStatus::Idle {
            if can_run {
                line.status = LineStatus::InRing;
                self.rings[key.1.index()].push_back(key.0);
            } else {
                line.status = LineStatus::Parked;
            }
        }
    }

    /// Removes a waiting job (cancelled, or its user suspended).
    pub fn remove(&mut self, job: JobId) -> Option<QueuedJob> {
        let (key, seq) = self.index.remove(&job)?;
        let line = self.lines.get_mut(&key)?;
        let removed = line.jobs.remove(&seq);
        if removed.is_some() {
            self.waiting[key.1.index()] -= 1;
        }
        // An emptied line leaves its ring lazily, when its turn comes.
        if line.jobs.is_empty() && line.status == LineStatus::Parked {
            line.status = LineStatus::Idle;
        }
        removed
    }

    /// The next job to dispatch among those `fits` accepts (a free worker
    /// slot can take it); counts it as running for its user.
    pub fn pop_next(&mut self, mut fits: impl FnMut(&QueuedJob) -> bool) -> Option<QueuedJob> {
        let mut candidates: Vec<usize> = (0..4).filter(|&t| !self.rings[t].is_empty()).collect();
        if candidates.is_empty() {
            return None;
        }
        // Smooth WRR: the tier with the highest current + weight goes first;
        // ties go to the heavier tier. Only a tier that yields a job is
        // charged for the turn.
        candidates.sort_by_key(|&t| std::cmp::Reverse((self.current[t] + self.weights[t], t)));
        for &tier in &candidates {
            if let Some(job) = self.pop_from_tier(tier, &mut fits) {
                let eligible: Vec<usize> = (0..4)
                    .filter(|&t| !self.rings[t].is_empty() || t == tier)
                    .collect();
                let total: i64 = eligible.iter().map(|&t| self.weights[t]).sum();
                for &t in &eligible {
                    self.current[t] += self.weights[t];
                }
                self.current[tier] -= total;
                return Some(job);
            }
        }
        None
    }

    fn pop_from_tier(
        &mut self,
        tier: usize,
        fits: &mut impl FnMut(&QueuedJob) -> bool,
    ) -> Option<QueuedJob> {
        let turns = self.rings[tier].len();
        for _ in 0..turns {
            let user = self.rings[tier].pop_front()?;
            let key = (user, Tier::ALL[tier]);
            let running = self.running_of(user);
            let limit = self.limit(key.1);
            let Some(line) = self.lines.get_mut(&key) else {
                continue;
            };
            let Some((&seq, head)) = line.jobs.first_key_value() else {
                line.status = LineStatus::Idle;
                continue;
            };
            if running >= limit {
                line.status = LineStatus::Parked;
                continue;
            }
            if !fits(head) {
                self.rings[tier].push_back(user);
                continue;
            }
            let Some(job) = line.jobs.remove(&seq) else {
                continue;
            };
            self.index.remove(&job.job_id);
            self.waiting[tier] -= 1;
            let running = running + 1;
            self.running.insert(user, running);
            if line.jobs.is_empty() {
                line.status = LineStatus::Idle;
            } else if running >= limit {
                line.status = LineStatus::Parked;
            } else {
                self.rings[tier].push_back(user);
            }
            return Some(job);
        }
        None
    }

    /// Counts a job as running that did not come through `pop_next`
    /// (recovered at start-up).
    pub fn mark_running(&mut self, user: UserId) {
        *self.running.entry(user).or_default() += 1;
    }

    /// One of the user's jobs left the running set; their parked lines
    /// return to the rings if they are now below the limit.
    pub fn finished(&mut self, user: UserId) {
        let running = match self.running.get_mut(&user) {
            Some(r) if *r > 1 => {
                *r -= 1;
                *r
            }
            _ => {
                self.running.remove(&user);
                0
            }
        };
        for tier in Tier::ALL {
            let key = (user, tier);
            let limit = self.limit(tier);
            if let Some(line) = self.lines.get_mut(&key) {
                if line.status == LineStatus::Parked && running < limit {
                    if line.jobs.is_empty() {
                        line.status = LineStatus::Idle;
                    } else {
                        line.status = LineStatus::InRing;
                        self.rings[tier.index()].push_back(user);
                    }
                }
            }
        }
        // Forget empty lines so memory follows the users with work, not
        // every user ever seen.
        for tier in Tier::ALL {
            let key = (user, tier);
            if self
                .lines
                .get(&key)
                .is_some_and(|l| l.status == LineStatus::Idle && l.jobs.is_empty())
            {
                self.lines.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier::TierPolicy;
    use proptest::prelude::*;

    fn job(user: UserId, tier: Tier, seq: u64) -> QueuedJob {
        QueuedJob {
            job_id: JobId::generate(),
            user_id: user,
            seq,
            tier,
            kind: JobKind::Image,
            model: "m".into(),
            size: SizeClass::ImageStandard,
            attempts: 0,
            enqueued_at: Instant::now(),
        }
    }

    fn table(weights: [u32; 4], max_running: u32) -> TierTable {
        let p = |w| TierPolicy {
            weight: w,
            max_running,
            max_waiting: 1_000_000,
        };
        TierTable {
            free: p(weights[0]),
            basic: p(weights[1]),
            professional: p(weights[2]),
            enterprise: p(weights[3]),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// With every tier backlogged, each tier's share of 10,000
        /// dispatches is within 5% of its weight's share.
        #[test]
        fn backlogged_shares_follow_weights(
            weights in prop::array::uniform4(1u32..=10),
            users in prop::array::uniform4(1usize..=5),
        ) {
            let mut q = FairQueue::new(table(weights, u32::MAX));
            let mut seq = 0;
            for tier in Tier::ALL {
                for _ in 0..users[tier.index()] {
                    let u = UserId::generate();
                    for _ in 0..10_000 {
                        seq += 1;
                        q.push(job(u, tier, seq));
                    }
                }
            }
            let mut counts = [0usize; 4];
            for _ in 0..10_000 {
                let j = q.pop_next(|_| true).unwrap();
                counts[j.tier.index()] += 1;
                q.finished(j.user_id);
            }
            let total: u32 = weights.iter().sum();
            for t in 0..4 {
                let expected = 10_000.0 * f64::from(weights[t]) / f64::from(total);
                let got = counts[t] as f64;
                prop_assert!((got - expected).abs() <= expected * 0.05 + 1.0,
                    "tier {t}: {got} dispatches, expected {expected}");
            }
        }

        /// Within a tier, users take turns: in every window of `n`
        /// consecutive dispatches each of the `n` backlogged users appears once.
        #[test]
        fn users_of_a_tier_take_turns(n in 2usize..8, jobs_each in 5usize..30) {
            let mut q = FairQueue::new(table([1, 2, 4, 8], u32::MAX));
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
            weights in prop::array::uniform4(1u32..=10),
            free_users in 1usize..5,
        ) {
            let mut q = FairQueue::new(table(weights, u32::MAX));
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
            let total: u32 = weights.iter().sum();
            let cycle = total.div_ceil(weights[0]) as usize + 1;
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
            let mut q = FairQueue::new(limits);
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
        let mut q = FairQueue::new(table([1, 1, 1, 1], 1));
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
    fn removed_job_is_never_dispatched() {
        let mut q = FairQueue::new(TierTable::default());
        let u = UserId::generate();
        let a = job(u, Tier::Free, 1);
        let b = job(u, Tier::Free, 2);
        q.push(a.clone());
        q.push(b.clone());
        assert!(q.remove(a.job_id).is_some());
        assert_eq!(q.waiting_by_tier()[0], 1);
        assert_eq!(q.pop_next(|_| true).unwrap().job_id, b.job_id);
        assert!(q.pop_next(|_| true).is_none());
    }

    #[test]
    fn job_that_fits_no_slot_waits_without_blocking_others() {
        let mut q = FairQueue::new(TierTable::default());
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
}
