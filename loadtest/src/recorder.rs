//! What the harness observes during a run, as raw timestamped events.
//! Histograms and series are built from these afterwards, so any phase of
//! the run (a backlog level, the load itself) can be sliced out by time.
//!
//! The harness runs on one thread (actix), so the recorder is shared as an
//! `Rc` with interior mutability.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use admedia_actors::domain::ids::{JobId, LeaseToken};
use admedia_actors::domain::job::{Charge, JobState};
use admedia_actors::domain::tier::Tier;

use crate::api::StatsDto;

/// Anomalies kept verbatim (the rest are only counted).
const MAX_ANOMALIES: usize = 200;

#[derive(Clone, Debug)]
pub struct Submission {
    pub key: String,
    pub user: usize,
    pub tier: Tier,
    pub phase: usize,
    /// When it should have been sent (open loop: its Poisson arrival).
    pub intended_us: u64,
    /// When it was actually first sent.
    pub sent_us: u64,
    /// When a definite answer arrived (after any resubmissions).
    pub answered_us: Option<u64>,
    pub status: Option<u16>,
    pub job_id: Option<JobId>,
    /// Sends, including resubmissions after a lost answer.
    pub tries: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct Assign {
    pub t_us: u64,
    pub job_id: JobId,
    pub attempt: u32,
    pub worker: usize,
    /// The attempt's lease: a UUIDv7 the scheduler makes as it decides, so
    /// leases sort in the order dispatches were decided, whatever order
    /// the `assign`s then reached the workers in.
    pub lease: Option<LeaseToken>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    SystemError,
    UserError,
}

#[derive(Clone, Copy, Debug)]
pub struct Final {
    pub t_us: u64,
    pub job_id: JobId,
    pub outcome: Outcome,
    pub duplicate: bool,
}

#[derive(Clone, Debug)]
pub struct CancelObs {
    pub job_id: JobId,
    pub sent_us: u64,
    pub acked_us: u64,
    pub status: u16,
    pub state: Option<JobState>,
    pub charge: Option<Charge>,
    pub attempts: u32,
}

#[derive(Clone, Debug)]
pub struct ReplayObs {
    pub key: String,
    pub first_job: JobId,
    pub replay_job: Option<JobId>,
    pub status: u16,
    pub header: bool,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FaultCounts {
    pub crashes: u64,
    pub hangs: u64,
    pub slow: u64,
    pub system_errors: u64,
    pub user_errors: u64,
    pub duplicates_sent: u64,
    pub cancels_received: u64,
    pub server_errors_received: u64,
    pub reconnects: u64,
    pub hang_dropped_by_server: u64,
}

/// An attempt ended on a worker (as it saw it): its slot is free again.
#[derive(Clone, Copy, Debug)]
pub struct Release {
    pub t_us: u64,
    pub job_id: JobId,
    pub worker: usize,
}

/// One worker as `/v1/admin/workers` listed it at `t_us`.
#[derive(Clone, Debug)]
pub struct WorkerPoll {
    pub t_us: u64,
    pub name: String,
    pub quarantined: bool,
    pub quarantine_left_ms: Option<u64>,
    pub consecutive_failures: u32,
}

#[derive(Clone, Debug)]
pub struct StatsSample {
    pub t_us: u64,
    pub stats: StatsDto,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Phase {
    pub name: String,
    pub start_us: u64,
    pub end_us: Option<u64>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Kill {
    pub killed_at_us: u64,
    pub ready_at_us: Option<u64>,
}

#[derive(Default)]
pub struct Data {
    pub submissions: Vec<Submission>,
    pub by_job: HashMap<JobId, usize>,
    pub assigns: Vec<Assign>,
    pub finals: Vec<Final>,
    /// (when a slot was refilled, how long it had been free), per worker slot.
    pub refills: Vec<(u64, u64)>,
    /// A worker gave a slot back (its attempt ended or was cancelled).
    pub releases: Vec<Release>,
    /// `/v1/admin/workers` polls (the fleet scenario's quarantine record).
    pub worker_polls: Vec<WorkerPoll>,
    pub cancels: Vec<CancelObs>,
    pub replays: Vec<ReplayObs>,
    pub faults: FaultCounts,
    pub anomalies: Vec<String>,
    pub anomaly_count: u64,
    pub stats: Vec<StatsSample>,
    pub stats_errors: u64,
    /// Answers to submissions by status and problem type.
    pub statuses: BTreeMap<String, u64>,
    pub phases: Vec<Phase>,
    pub kills: Vec<Kill>,
    pub resubmits: u64,
}

pub struct Recorder {
    t0: Instant,
    wall0_us: i64,
    pub data: RefCell<Data>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        let wall0_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        Recorder {
            t0: Instant::now(),
            wall0_us,
            data: RefCell::new(Data::default()),
        }
    }

    pub fn start(&self) -> Instant {
        self.t0
    }

    /// Microseconds since the start of the run.
    /// The instant the run's times count from.
    pub fn t0(&self) -> Instant {
        self.t0
    }

    pub fn now_us(&self) -> u64 {
        self.us_of(Instant::now())
    }

    pub fn us_of(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.t0).as_micros() as u64
    }

    /// Unix time (µs) of the run's start, to place server timestamps.
    pub fn wall0_us(&self) -> i64 {
        self.wall0_us
    }

    pub fn anomaly(&self, what: String) {
        let mut d = self.data.borrow_mut();
        d.anomaly_count += 1;
        if d.anomalies.len() < MAX_ANOMALIES {
            d.anomalies.push(what);
        }
    }

    pub fn phase_start(&self, name: &str) -> usize {
        let mut d = self.data.borrow_mut();
        let now = self.now_us();
        if let Some(last) = d.phases.last_mut() {
            if last.end_us.is_none() {
                last.end_us = Some(now);
            }
        }
        d.phases.push(Phase {
            name: name.to_owned(),
            start_us: now,
            end_us: None,
        });
        d.phases.len() - 1
    }

    pub fn phase_end(&self) {
        let now = self.now_us();
        let mut d = self.data.borrow_mut();
        if let Some(last) = d.phases.last_mut() {
            if last.end_us.is_none() {
                last.end_us = Some(now);
            }
        }
    }

    pub fn status(&self, label: String) {
        *self.data.borrow_mut().statuses.entry(label).or_insert(0) += 1;
    }

    pub fn faults(&self, f: impl FnOnce(&mut FaultCounts)) {
        f(&mut self.data.borrow_mut().faults);
    }

    pub fn assign(&self, job_id: JobId, attempt: u32, worker: usize, lease: LeaseToken) {
        let t_us = self.now_us();
        self.data.borrow_mut().assigns.push(Assign {
            t_us,
            job_id,
            attempt,
            worker,
            lease: Some(lease),
        });
    }

    pub fn final_sent(&self, job_id: JobId, outcome: Outcome, duplicate: bool) {
        let t_us = self.now_us();
        self.data.borrow_mut().finals.push(Final {
            t_us,
            job_id,
            outcome,
            duplicate,
        });
    }

    pub fn release(&self, job_id: JobId, worker: usize) {
        let t_us = self.now_us();
        self.data.borrow_mut().releases.push(Release {
            t_us,
            job_id,
            worker,
        });
    }

    pub fn refill(&self, free_since: Instant) {
        let now = Instant::now();
        let t = self.us_of(now);
        let lat = now.saturating_duration_since(free_since).as_micros() as u64;
        self.data.borrow_mut().refills.push((t, lat));
    }
}
