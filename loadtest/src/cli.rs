//! Command line and scenarios. A scenario names a set of defaults; every
//! flag given explicitly wins over its scenario's value. `Plan` is the
//! resolved, checked configuration the run follows.

use std::path::PathBuf;
use std::time::Duration;

use admedia_actors::config::{JobRetention, WaitLimits};
use admedia_actors::domain::price_schedule::{parse_duration, parse_millis};
use admedia_actors::domain::tier::{PerTier, Tier};
use clap::{Parser, ValueEnum};
use serde::{Serialize, Serializer};

use crate::setting;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Small and quick (≤ 20 s): a little of every fault, replays, cancels.
    Smoke,
    /// Every tier backlogged: dispatch shares against the weights 1:2:4:8.
    Fairness,
    /// Faults on; with `--spawn --database-url`, the server is SIGKILLed and
    /// restarted every `--chaos-kill-every` seconds.
    Chaos,
    /// Closed loop against fast workers; `--backlog` adds a backlog sweep.
    Throughput,
    /// A heterogeneous fleet with a broken worker, jobs no worker can run,
    /// long and short jobs, every tier backlogged: GPU-time shares,
    /// utilisation, head-of-line waiting, quarantine and expiry.
    Fleet,
    /// Open loop at a steady rate for a long time, with a short retention
    /// on a spawned server: samples the server's RSS, the database size
    /// (PostgreSQL) and the store's job counts and queue depth over time,
    /// to show memory and storage stay flat once old jobs are pruned.
    Soak,
}

impl Scenario {
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Smoke => "smoke",
            Scenario::Fairness => "fairness",
            Scenario::Chaos => "chaos",
            Scenario::Throughput => "throughput",
            Scenario::Fleet => "fleet",
            Scenario::Soak => "soak",
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "admedia-loadtest",
    version,
    about = "Load tester for the AdMedia orchestrator: open/closed-loop load, simulated GPU \
             workers with fault injection, an invariant audit and an HTML report",
    after_help = "Examples:\n  admedia-loadtest --spawn --scenario smoke\n  admedia-loadtest --spawn --scenario fairness --out fairness-report\n  admedia-loadtest --spawn --database-url postgres://… --scenario chaos --chaos-kill-every 8\n  admedia-loadtest --spawn --scenario throughput --backlog 10000,100000\n  admedia-loadtest --url http://127.0.0.1:8080 --admin-token … --worker-token … --rate 50"
)]
pub struct Cli {
    /// Named scenario: sets the defaults of the options below.
    #[arg(long, value_enum, default_value_t = Scenario::Smoke)]
    pub scenario: Scenario,

    // --- target ---
    /// Start the server binary as a child process on a free local port.
    #[arg(long, conflicts_with = "url")]
    pub spawn: bool,
    /// Base URL of a running server (it must run no simulated workers of
    /// its own for the dispatch figures to mean anything).
    #[arg(long)]
    pub url: Option<String>,
    /// Admin token of the server at `--url` (with `--spawn` one is made up).
    #[arg(long, env = "ADMEDIA_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Worker token of the server at `--url`.
    #[arg(long, env = "ADMEDIA_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<String>,
    /// Server binary for `--spawn` (default: target/release/admedia, then
    /// target/debug/admedia of this workspace).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// With `--spawn`: run the server on PostgreSQL instead of the embedded store.
    #[arg(long)]
    pub database_url: Option<String>,
    /// With `--spawn`: a server TOML config (ADMEDIA_CONFIG) to use as is,
    /// instead of the one the harness writes (default tier weights and
    /// per-user limits opened wide so they do not cap the load).
    #[arg(long)]
    pub server_config: Option<PathBuf>,
    /// With `--spawn`: keep the server's default per-user running/waiting
    /// limits instead of opening them.
    #[arg(long)]
    pub server_limits: bool,
    /// With `--spawn`: do not build the server when no binary is found.
    #[arg(long)]
    pub no_build: bool,
    /// With `--spawn`: the heartbeat lease in milliseconds
    /// (ADMEDIA_WORKER_LEASE_MS); a hung worker is dropped after it.
    #[arg(long = "lease-ms", value_name = "MS", value_parser = parse_millis)]
    pub lease: Option<Duration>,
    /// With `--spawn`: first retry delay in milliseconds (ADMEDIA_RETRY_BASE_MS).
    #[arg(long = "retry-base-ms", value_name = "MS", value_parser = parse_millis)]
    pub retry_base: Option<Duration>,
    /// With `--spawn`: the waiting limits per tier (ADMEDIA_MAX_WAIT), e.g.
    /// `free=18s,enterprise=12s`; the fleet scenario sets short ones so
    /// the jobs no worker can run expire during the run. Read as the server
    /// reads it: unnamed tiers keep the server's default.
    #[arg(long)]
    pub max_wait: Option<WaitLimits>,
    /// With `--spawn`: system failures in a row that quarantine a worker
    /// (ADMEDIA_QUARANTINE_AFTER).
    #[arg(long)]
    pub quarantine_after: Option<u32>,
    /// With `--spawn`: the first quarantine's length (ADMEDIA_QUARANTINE_BASE),
    /// e.g. `2s` or `1500ms`.
    #[arg(long, value_parser = parse_duration)]
    pub quarantine_base: Option<Duration>,
    /// With `--spawn`: how long finished jobs are kept in full
    /// (ADMEDIA_JOB_RETENTION), e.g. `succeeded=2m,cancelled=2m,failed=2m`;
    /// the soak scenario sets a short one so pruning reaches a steady state.
    /// Unnamed states keep the server's default; each at least a minute.
    #[arg(long)]
    pub job_retention: Option<JobRetention>,
    /// With `--spawn` on the embedded store: finished jobs kept in full at
    /// most (ADMEDIA_MAX_FINISHED_IN_MEMORY); past that the oldest are
    /// pruned at once, whatever the retention.
    #[arg(long)]
    pub max_finished_in_memory: Option<u64>,
    /// With `--spawn`: how long an Idempotency-Key protects a submission
    /// (ADMEDIA_IDEMPOTENCY_WINDOW), at least `1m`; each key keeps its job
    /// as first returned, so the soak scenario shortens it to reach a
    /// steady state as it shortens retention.
    #[arg(long, value_parser = parse_duration)]
    pub idempotency_window: Option<Duration>,
    /// With `--spawn`: how often the platform sweep (which prunes) runs
    /// (ADMEDIA_GIFT_SWEEP), e.g. `2s`.
    #[arg(long, value_parser = parse_duration)]
    pub sweep_every: Option<Duration>,
    /// With `--spawn`: how long every tier's stored files (outputs and
    /// materials) are kept (ADMEDIA_RETENTION for all four tiers), e.g.
    /// `2m`; the soak scenario sets a short one so the object store reaches
    /// a steady state as the jobs do.
    #[arg(long, value_parser = parse_duration)]
    pub output_retention: Option<Duration>,
    /// With `--spawn`: how often expired files are deleted
    /// (ADMEDIA_OBJECT_SWEEP), e.g. `5s`.
    #[arg(long, value_parser = parse_duration)]
    pub object_sweep: Option<Duration>,
    /// With `--spawn`: how old history must be before the ledger archive
    /// moves it to object storage (ADMEDIA_LEDGER_ARCHIVE_AFTER), at least
    /// `1m`; the soak scenario sets a short one so the store reaches a
    /// steady state.
    #[arg(long, value_parser = parse_duration)]
    pub archive_after: Option<Duration>,
    /// With `--spawn`: how often the ledger archive runs
    /// (ADMEDIA_LEDGER_ARCHIVE_EVERY), e.g. `5s`.
    #[arg(long, value_parser = parse_duration)]
    pub archive_every: Option<Duration>,
    /// Soak: seconds into the load from which the server is taken to be in
    /// its steady state (default: a third of the duration); the report
    /// compares memory and database size there and at the end.
    #[arg(long)]
    pub steady_after: Option<f64>,

    // --- users ---
    /// Users to create.
    #[arg(long)]
    pub users: Option<usize>,
    /// Relative numbers of users per tier, Free,Basic,Professional,Enterprise.
    #[arg(long, value_parser = per_tier_numbers)]
    pub tier_mix: Option<PerTier<u32>>,
    /// Credits granted to each user (as a purchase).
    #[arg(long)]
    pub credits: Option<i64>,
    /// The server's tier weights, for the expected dispatch shares.
    #[arg(long, default_value = "1,2,4,8", value_parser = per_tier_numbers)]
    pub tier_weights: PerTier<u32>,

    // --- workers and faults ---
    /// Simulated GPU workers connected over the WebSocket protocol.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Slots of each worker.
    #[arg(long)]
    pub slots: Option<u32>,
    /// Mean time of one attempt on a worker, in milliseconds.
    #[arg(long = "job-ms", value_name = "MS", value_parser = parse_millis)]
    pub job_time: Option<Duration>,
    /// Spread of the attempt time: uniform in job-ms × (1 ± jitter).
    #[arg(long)]
    pub job_jitter: Option<f64>,
    /// Probability, per attempt, that the worker drops its connection mid-job.
    #[arg(long)]
    pub crash_rate: Option<f64>,
    /// Probability, per attempt, that the worker hangs: it stops
    /// heartbeating and answering until the server drops it.
    #[arg(long)]
    pub hang_rate: Option<f64>,
    /// Probability that an attempt is slow (job-ms × slow-factor).
    #[arg(long)]
    pub slow_rate: Option<f64>,
    #[arg(long)]
    pub slow_factor: Option<f64>,
    /// Probability that an attempt fails with a system error (retried, refunded at the end).
    #[arg(long)]
    pub system_error_rate: Option<f64>,
    /// Probability that an attempt fails by the user's input (charged).
    #[arg(long)]
    pub user_error_rate: Option<f64>,
    /// Probability that a final report (complete/fail) is sent again later.
    #[arg(long)]
    pub duplicate_rate: Option<f64>,
    /// How much later a duplicate report is sent, in milliseconds.
    #[arg(long = "duplicate-delay-ms", value_name = "MS", value_parser = parse_millis)]
    pub duplicate_delay: Option<Duration>,
    /// Leave Nagle's algorithm on for the workers' sockets, as plain awc
    /// does; by default the harness sets TCP_NODELAY, as the
    /// `admedia-worker` agent does, so small frames are not held for the
    /// peer's delayed ACK.
    #[arg(long)]
    pub worker_nagle: bool,

    // --- load ---
    /// Open loop: Poisson arrivals at this many submissions per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Closed loop: `--concurrency` clients submit back to back.
    #[arg(long)]
    pub closed_loop: bool,
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Closed loop: each client submits this many jobs per request, through
    /// `POST /v1/jobs/batch` (1..=100; 1 submits one by one).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Seconds of load (after any prefill).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Stop after this many submissions (with --duration: whichever comes first).
    #[arg(long)]
    pub jobs: Option<u64>,
    /// Fraction of submissions sent again with the same Idempotency-Key.
    #[arg(long)]
    pub replay_fraction: Option<f64>,
    /// Fraction of accepted jobs cancelled a little later.
    #[arg(long)]
    pub cancel_fraction: Option<f64>,
    /// Fraction of submissions that are video jobs (the rest are images).
    #[arg(long)]
    pub video_fraction: Option<f64>,
    /// Jobs submitted before any worker connects, split across tiers in
    /// proportion to the weights, so every tier starts backlogged.
    #[arg(long)]
    pub prefill: Option<u64>,
    /// Backlog sweep: for each size, fill that many waiting jobs with no
    /// worker connected, then connect the workers and measure throughput
    /// and dispatch latency, e.g. `10000,100000`.
    #[arg(long, value_delimiter = ',')]
    pub backlog: Vec<u64>,
    /// SIGKILL and restart the spawned server every SECS during the load
    /// (needs `--spawn --database-url`).
    #[arg(long)]
    pub chaos_kill_every: Option<f64>,
    /// How long to wait for every job to finish after the load.
    #[arg(long)]
    pub drain_timeout: Option<f64>,
    /// Seed of the random choices (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Directory of the report (report.json, report.html, server.log).
    #[arg(long, default_value = "loadtest-report")]
    pub out: PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub struct Faults {
    pub crash_rate: f64,
    pub hang_rate: f64,
    pub slow_rate: f64,
    pub slow_factor: f64,
    pub system_error_rate: f64,
    pub user_error_rate: f64,
    pub duplicate_rate: f64,
    #[serde(rename = "duplicate_delay_ms", serialize_with = "as_millis")]
    pub duplicate_delay: Duration,
}

/// A setting's duration in report.json: milliseconds, as it was given.
fn as_millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_millis())
}

/// Per-tier values in report.json: a list in `Tier::ALL` order.
pub fn in_tier_order<T: Serialize, S: Serializer>(v: &PerTier<T>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.values())
}

#[derive(Clone, Debug, Serialize)]
pub enum Target {
    Spawn {
        server_bin: Option<PathBuf>,
        database_url: Option<String>,
        server_config: Option<PathBuf>,
        open_limits: bool,
        build: bool,
    },
    Url {
        url: String,
        admin_token: String,
        worker_token: String,
    },
}

#[derive(Clone, Debug, Serialize)]
pub enum Load {
    Open {
        rate: f64,
    },
    /// `batch` jobs per request (1: `POST /v1/jobs`, more: the batch
    /// endpoint).
    Closed {
        concurrency: usize,
        batch: usize,
    },
}

/// The resolved configuration of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub scenario: Scenario,
    #[serde(skip)]
    pub target: Target,
    pub mode: String,
    #[serde(rename = "lease_ms", serialize_with = "as_millis")]
    pub lease: Duration,
    #[serde(rename = "retry_base_ms", serialize_with = "as_millis")]
    pub retry_base: Duration,
    // The server's settings below are written to report.json as the text
    // the spawned server was given (`setting::Setting`).
    #[serde(serialize_with = "setting::as_setting")]
    pub max_wait: Option<WaitLimits>,
    pub quarantine_after: Option<u32>,
    #[serde(serialize_with = "setting::as_setting")]
    pub quarantine_base: Option<Duration>,
    #[serde(serialize_with = "setting::as_setting")]
    pub job_retention: Option<JobRetention>,
    #[serde(serialize_with = "setting::as_setting")]
    pub sweep_every: Option<Duration>,
    #[serde(serialize_with = "setting::as_setting")]
    pub idempotency_window: Option<Duration>,
    #[serde(serialize_with = "setting::as_setting")]
    pub output_retention: Option<Duration>,
    #[serde(serialize_with = "setting::as_setting")]
    pub object_sweep: Option<Duration>,
    #[serde(serialize_with = "setting::as_setting")]
    pub archive_after: Option<Duration>,
    #[serde(serialize_with = "setting::as_setting")]
    pub archive_every: Option<Duration>,
    pub max_finished_in_memory: Option<u64>,
    pub steady_after_s: Option<f64>,
    pub users: usize,
    #[serde(serialize_with = "in_tier_order")]
    pub tier_mix: PerTier<u32>,
    pub credits: i64,
    #[serde(serialize_with = "in_tier_order")]
    pub weights: PerTier<u32>,
    pub workers: usize,
    pub slots: u32,
    #[serde(rename = "job_ms", serialize_with = "as_millis")]
    pub job_time: Duration,
    pub job_jitter: f64,
    pub worker_nagle: bool,
    pub faults: Faults,
    pub load: Load,
    pub duration_s: Option<f64>,
    pub jobs: Option<u64>,
    pub replay_fraction: f64,
    pub cancel_fraction: f64,
    pub video_fraction: f64,
    pub prefill: u64,
    pub backlog: Vec<u64>,
    pub chaos_kill_every_s: Option<f64>,
    pub drain_timeout_s: f64,
    pub seed: u64,
    #[serde(skip)]
    pub out: PathBuf,
}

impl Plan {
    /// The server's longest retry delay (ADMEDIA_RETRY_MAX_MS of a
    /// spawned server).
    pub fn retry_max(&self) -> Duration {
        (self.retry_base.saturating_mul(8)).max(Duration::from_millis(500))
    }

    /// Seconds into the load from which a soak is in its steady state.
    pub fn steady_after(&self) -> f64 {
        self.steady_after_s
            .unwrap_or_else(|| self.duration_s.unwrap_or(0.0) / 3.0)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.drain_timeout_s)
    }

    pub fn faults_on(&self) -> bool {
        let f = &self.faults;
        [
            f.crash_rate,
            f.hang_rate,
            f.slow_rate,
            f.system_error_rate,
            f.user_error_rate,
            f.duplicate_rate,
        ]
        .iter()
        .any(|&r| r > 0.0)
    }
}

/// A scenario's defaults.
struct Defaults {
    users: usize,
    tier_mix: PerTier<u32>,
    credits: i64,
    workers: usize,
    slots: u32,
    job_time: Duration,
    job_jitter: f64,
    faults: Faults,
    rate: f64,
    closed_loop: bool,
    concurrency: usize,
    duration_s: f64,
    replay: f64,
    cancel: f64,
    video: f64,
    prefill: u64,
    lease: Duration,
    drain_timeout_s: f64,
    max_wait: Option<WaitLimits>,
    quarantine_after: Option<u32>,
    quarantine_base: Option<Duration>,
    job_retention: Option<JobRetention>,
    sweep_every: Option<Duration>,
    idempotency_window: Option<Duration>,
    output_retention: Option<Duration>,
    object_sweep: Option<Duration>,
    archive_after: Option<Duration>,
    archive_every: Option<Duration>,
}

fn no_faults() -> Faults {
    Faults {
        crash_rate: 0.0,
        hang_rate: 0.0,
        slow_rate: 0.0,
        slow_factor: 5.0,
        system_error_rate: 0.0,
        user_error_rate: 0.0,
        duplicate_rate: 0.0,
        duplicate_delay: Duration::from_millis(300),
    }
}

fn defaults(s: Scenario) -> Defaults {
    match s {
        Scenario::Smoke => Defaults {
            users: 8,
            tier_mix: PerTier::from([1, 1, 1, 1]),
            credits: 10_000,
            workers: 3,
            slots: 4,
            job_time: Duration::from_millis(40),
            job_jitter: 0.5,
            faults: Faults {
                crash_rate: 0.01,
                hang_rate: 0.005,
                slow_rate: 0.05,
                slow_factor: 4.0,
                system_error_rate: 0.05,
                user_error_rate: 0.02,
                duplicate_rate: 0.05,
                duplicate_delay: Duration::from_millis(200),
            },
            rate: 40.0,
            closed_loop: false,
            concurrency: 8,
            duration_s: 6.0,
            replay: 0.1,
            cancel: 0.1,
            video: 0.1,
            prefill: 0,
            lease: Duration::from_millis(1_500),
            drain_timeout_s: 12.0,
            max_wait: None,
            quarantine_after: None,
            quarantine_base: None,
            job_retention: None,
            sweep_every: None,
            idempotency_window: None,
            output_retention: None,
            object_sweep: None,
            archive_after: None,
            archive_every: None,
        },
        Scenario::Fairness => Defaults {
            users: 15,
            tier_mix: PerTier::from([1, 2, 4, 8]),
            credits: 1_000_000,
            workers: 4,
            slots: 4,
            job_time: Duration::from_millis(50),
            job_jitter: 0.2,
            faults: no_faults(),
            rate: 400.0,
            closed_loop: false,
            concurrency: 32,
            duration_s: 10.0,
            replay: 0.0,
            cancel: 0.0,
            video: 0.0,
            prefill: 1_500,
            lease: Duration::from_millis(5_000),
            drain_timeout_s: 60.0,
            max_wait: None,
            quarantine_after: None,
            quarantine_base: None,
            job_retention: None,
            sweep_every: None,
            idempotency_window: None,
            output_retention: None,
            object_sweep: None,
            archive_after: None,
            archive_every: None,
        },
        Scenario::Chaos => Defaults {
            users: 8,
            tier_mix: PerTier::from([1, 1, 1, 1]),
            credits: 100_000,
            workers: 4,
            slots: 4,
            job_time: Duration::from_millis(100),
            job_jitter: 0.5,
            faults: Faults {
                crash_rate: 0.03,
                hang_rate: 0.01,
                slow_rate: 0.1,
                slow_factor: 5.0,
                system_error_rate: 0.1,
                user_error_rate: 0.03,
                duplicate_rate: 0.1,
                duplicate_delay: Duration::from_millis(300),
            },
            rate: 30.0,
            closed_loop: false,
            concurrency: 16,
            duration_s: 30.0,
            replay: 0.2,
            cancel: 0.15,
            video: 0.1,
            prefill: 0,
            lease: Duration::from_millis(2_000),
            drain_timeout_s: 120.0,
            max_wait: None,
            quarantine_after: None,
            quarantine_base: None,
            job_retention: None,
            sweep_every: None,
            idempotency_window: None,
            output_retention: None,
            object_sweep: None,
            archive_after: None,
            archive_every: None,
        },
        Scenario::Throughput => Defaults {
            users: 8,
            tier_mix: PerTier::from([1, 1, 1, 1]),
            credits: 10_000_000,
            workers: 8,
            slots: 16,
            job_time: Duration::from_millis(0),
            job_jitter: 0.0,
            faults: no_faults(),
            rate: 1_000.0,
            closed_loop: true,
            concurrency: 64,
            duration_s: 15.0,
            replay: 0.0,
            cancel: 0.0,
            video: 0.0,
            prefill: 0,
            lease: Duration::from_millis(15_000),
            drain_timeout_s: 600.0,
            max_wait: None,
            quarantine_after: None,
            quarantine_base: None,
            job_retention: None,
            sweep_every: None,
            idempotency_window: None,
            output_retention: None,
            object_sweep: None,
            archive_after: None,
            archive_every: None,
        },
        // The fleet (workers, slots, job times) is `fleet::fleet()`; the
        // load keeps every tier backlogged for `duration`.
        Scenario::Fleet => Defaults {
            users: 15,
            // At least two users per tier: the head-of-line check reasons
            // about turns between a tier's users.
            tier_mix: PerTier::from([2, 3, 4, 6]),
            credits: 10_000_000,
            workers: 7,
            slots: 3,
            job_time: Duration::from_millis(500),
            job_jitter: 0.2,
            faults: no_faults(),
            rate: 1.0,
            closed_loop: false,
            concurrency: 16,
            duration_s: 60.0,
            replay: 0.0,
            cancel: 0.0,
            video: 0.0,
            prefill: 0,
            lease: Duration::from_millis(5_000),
            drain_timeout_s: 90.0,
            max_wait: Some(WaitLimits(PerTier::from(
                [18, 16, 14, 12].map(Duration::from_secs),
            ))),
            quarantine_after: Some(3),
            quarantine_base: Some(Duration::from_secs(2)),
            job_retention: None,
            sweep_every: None,
            idempotency_window: None,
            output_retention: None,
            object_sweep: None,
            archive_after: None,
            archive_every: None,
        },
        // Steady open load on fast workers well above it, so the queue stays
        // short and what grows (or not) is what the store keeps.
        Scenario::Soak => Defaults {
            users: 40,
            tier_mix: PerTier::from([1, 1, 1, 1]),
            credits: 1_000_000_000,
            workers: 8,
            slots: 32,
            job_time: Duration::from_millis(20),
            job_jitter: 0.5,
            faults: no_faults(),
            rate: 2_000.0,
            closed_loop: false,
            concurrency: 64,
            duration_s: 600.0,
            replay: 0.0,
            cancel: 0.0,
            video: 0.0,
            prefill: 0,
            lease: Duration::from_millis(15_000),
            drain_timeout_s: 120.0,
            max_wait: None,
            quarantine_after: None,
            quarantine_base: None,
            job_retention: Some(JobRetention {
                succeeded: Duration::from_secs(120),
                failed: Duration::from_secs(120),
                cancelled: Duration::from_secs(120),
            }),
            sweep_every: Some(Duration::from_secs(2)),
            // A key keeps its job as first returned for the window: the
            // server's day would never reach a steady state.
            idempotency_window: Some(Duration::from_secs(60)),
            // Outputs outlive their pruned jobs for the tier's retention
            // (days): the soak's would fill the disk long before that.
            output_retention: Some(Duration::from_secs(120)),
            object_sweep: Some(Duration::from_secs(5)),
            // Pruned jobs and their entries leave the store this long
            // after: the soak then shows what a server holds for good.
            archive_after: Some(Duration::from_secs(180)),
            archive_every: Some(Duration::from_secs(5)),
        },
    }
}

fn fraction(name: &str, v: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("--{name} must be between 0 and 1, got {v}"))
    }
}

/// One whole number per tier, Free,Basic,Professional,Enterprise: `1,2,4,8`.
fn per_tier_numbers(raw: &str) -> Result<PerTier<u32>, String> {
    let expected = || {
        format!(
            "expected {} whole numbers (Free,Basic,Professional,Enterprise) like 1,2,4,8",
            Tier::COUNT
        )
    };
    let parsed: Vec<u32> = raw
        .split(',')
        .map(|w| w.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| expected())?;
    <[u32; Tier::COUNT]>::try_from(parsed)
        .map(PerTier::from)
        .map_err(|_| expected())
}

impl Cli {
    /// Applies the scenario's defaults and checks every value.
    pub fn plan(&self) -> Result<Plan, String> {
        let d = defaults(self.scenario);
        let target = if let Some(url) = &self.url {
            let url = url.trim_end_matches('/').to_owned();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("--url {url:?}: expected http://host:port"));
            }
            let admin_token = self.admin_token.clone().ok_or(
                "--url needs --admin-token (or ADMEDIA_ADMIN_TOKEN): users, credits and stats are admin calls",
            )?;
            let worker_token = self.worker_token.clone().ok_or(
                "--url needs --worker-token (or ADMEDIA_WORKER_TOKEN) for the simulated workers",
            )?;
            Target::Url {
                url,
                admin_token,
                worker_token,
            }
        } else if self.spawn {
            Target::Spawn {
                server_bin: self.server_bin.clone(),
                database_url: self.database_url.clone(),
                server_config: self.server_config.clone(),
                open_limits: !self.server_limits,
                build: !self.no_build,
            }
        } else {
            return Err("say where the server is: --spawn (start one) or --url URL".into());
        };
        if !self.spawn && self.database_url.is_some() {
            return Err(
                "--database-url applies to --spawn (a server at --url has its own database)".into(),
            );
        }
        let mode = match &target {
            Target::Spawn {
                database_url: Some(_),
                ..
            } => "spawned, PostgreSQL",
            Target::Spawn { .. } => "spawned, embedded store",
            Target::Url { .. } => "external server",
        }
        .to_owned();

        let mut chaos = self.chaos_kill_every;
        if chaos.is_none()
            && self.scenario == Scenario::Chaos
            && self.spawn
            && self.database_url.is_some()
        {
            chaos = Some(10.0);
        }
        if let Some(secs) = chaos {
            if !(secs.is_finite() && secs >= 1.0) {
                return Err(format!(
                    "--chaos-kill-every must be at least 1 second, got {secs}"
                ));
            }
            if !self.spawn {
                return Err(
                    "--chaos-kill-every needs --spawn: the harness kills its own child".into(),
                );
            }
            if self.database_url.is_none() {
                return Err("--chaos-kill-every needs --database-url: the embedded store loses everything at a kill, so there would be nothing to audit".into());
            }
        }

        let f = &d.faults;
        let faults = Faults {
            crash_rate: fraction("crash-rate", self.crash_rate.unwrap_or(f.crash_rate))?,
            hang_rate: fraction("hang-rate", self.hang_rate.unwrap_or(f.hang_rate))?,
            slow_rate: fraction("slow-rate", self.slow_rate.unwrap_or(f.slow_rate))?,
            slow_factor: self.slow_factor.unwrap_or(f.slow_factor),
            system_error_rate: fraction(
                "system-error-rate",
                self.system_error_rate.unwrap_or(f.system_error_rate),
            )?,
            user_error_rate: fraction(
                "user-error-rate",
                self.user_error_rate.unwrap_or(f.user_error_rate),
            )?,
            duplicate_rate: fraction(
                "duplicate-rate",
                self.duplicate_rate.unwrap_or(f.duplicate_rate),
            )?,
            duplicate_delay: self.duplicate_delay.unwrap_or(f.duplicate_delay),
        };
        if !(faults.slow_factor.is_finite() && faults.slow_factor >= 1.0) {
            return Err("--slow-factor must be at least 1".into());
        }
        if faults.system_error_rate + faults.user_error_rate > 1.0 {
            return Err("--system-error-rate and --user-error-rate must sum to at most 1".into());
        }

        let closed = self.closed_loop || (d.closed_loop && self.rate.is_none());
        let load = if closed {
            let concurrency = self.concurrency.unwrap_or(d.concurrency);
            if concurrency == 0 || concurrency > 10_000 {
                return Err("--concurrency must be 1..=10000".into());
            }
            let batch = self.batch.unwrap_or(1);
            if !(1..=100).contains(&batch) {
                return Err(format!("--batch must be 1..=100, got {batch}"));
            }
            Load::Closed { concurrency, batch }
        } else {
            if self.batch.is_some() {
                return Err("--batch needs the closed loop (--closed-loop)".into());
            }
            let rate = self.rate.unwrap_or(d.rate);
            if !(rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0) {
                return Err(format!(
                    "--rate must be a positive number of jobs per second, got {rate}"
                ));
            }
            Load::Open { rate }
        };
        let (duration_s, jobs) = match (self.duration, self.jobs) {
            (None, None) => (Some(d.duration_s), None),
            other => other,
        };
        if let Some(s) = duration_s {
            if !(s.is_finite() && (0.0..=86_400.0).contains(&s)) {
                return Err(format!("--duration must be 0..=86400 seconds, got {s}"));
            }
        }
        let users = self.users.unwrap_or(d.users);
        if users == 0 || users > 100_000 {
            return Err("--users must be 1..=100000".into());
        }
        let tier_mix = self.tier_mix.unwrap_or(d.tier_mix);
        if tier_mix.values().all(|&m| m == 0) {
            return Err("--tier-mix must give at least one tier some users".into());
        }
        let weights = self.tier_weights;
        // As the server's ADMEDIA_TIER_WEIGHTS, which a spawned server is
        // given: a weight outside 1..=1000 would stop it at start-up.
        if weights.values().any(|w| !(1..=1000).contains(w)) {
            return Err("--tier-weights must each be 1..=1000".into());
        }
        let workers = self.workers.unwrap_or(d.workers);
        let slots = self.slots.unwrap_or(d.slots);
        if workers == 0 || workers > 1_000 {
            return Err("--workers must be 1..=1000".into());
        }
        if slots == 0 || slots > 256 {
            return Err("--slots must be 1..=256 (the protocol's limit)".into());
        }
        let credits = self.credits.unwrap_or(d.credits);
        if credits < 0 {
            return Err("--credits must not be negative".into());
        }
        let job_jitter = self.job_jitter.unwrap_or(d.job_jitter);
        fraction("job-jitter", job_jitter)?;
        let drain_timeout_s = self.drain_timeout.unwrap_or(d.drain_timeout_s);
        if !(drain_timeout_s.is_finite() && drain_timeout_s > 0.0) {
            return Err("--drain-timeout must be a positive number of seconds".into());
        }
        if self.backlog.contains(&0) {
            return Err("--backlog sizes must be positive".into());
        }
        if self.scenario == Scenario::Fleet && (chaos.is_some() || !self.backlog.is_empty()) {
            return Err("--scenario fleet takes neither --chaos-kill-every nor --backlog".into());
        }
        if let Some(s) = self.steady_after {
            if !(s.is_finite() && s >= 0.0) {
                return Err(format!(
                    "--steady-after must be a number of seconds, got {s}"
                ));
            }
        }
        if let Some(n) = self.quarantine_after {
            if !(1..=100).contains(&n) {
                return Err("--quarantine-after must be 1..=100".into());
            }
        }
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(42)
        });
        Ok(Plan {
            scenario: self.scenario,
            target,
            mode,
            lease: self
                .lease
                .unwrap_or(d.lease)
                .max(Duration::from_millis(100)),
            retry_base: self.retry_base.unwrap_or(Duration::from_millis(50)),
            max_wait: self.max_wait.or(d.max_wait),
            quarantine_after: self.quarantine_after.or(d.quarantine_after),
            quarantine_base: self.quarantine_base.or(d.quarantine_base),
            job_retention: self.job_retention.or(d.job_retention),
            sweep_every: self.sweep_every.or(d.sweep_every),
            // The soak's keys would otherwise pile up for the server's day.
            idempotency_window: self.idempotency_window.or(d.idempotency_window),
            output_retention: self.output_retention.or(d.output_retention),
            object_sweep: self.object_sweep.or(d.object_sweep),
            archive_after: self.archive_after.or(d.archive_after),
            archive_every: self.archive_every.or(d.archive_every),
            max_finished_in_memory: self.max_finished_in_memory,
            steady_after_s: self.steady_after,
            users,
            tier_mix,
            credits,
            weights,
            workers,
            slots,
            job_time: self.job_time.unwrap_or(d.job_time),
            job_jitter,
            worker_nagle: self.worker_nagle,
            faults,
            load,
            duration_s,
            jobs,
            replay_fraction: fraction("replay-fraction", self.replay_fraction.unwrap_or(d.replay))?,
            cancel_fraction: fraction("cancel-fraction", self.cancel_fraction.unwrap_or(d.cancel))?,
            video_fraction: fraction("video-fraction", self.video_fraction.unwrap_or(d.video))?,
            prefill: self.prefill.unwrap_or(d.prefill),
            backlog: self.backlog.clone(),
            chaos_kill_every_s: chaos,
            drain_timeout_s,
            seed,
            out: self.out.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Plan, String> {
        let mut all = vec!["admedia-loadtest"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map_err(|e| e.to_string())?.plan()
    }

    #[test]
    fn scenario_defaults_apply_and_flags_win() {
        let p = parse(&["--spawn", "--scenario", "throughput"]).unwrap();
        assert!(matches!(
            p.load,
            Load::Closed {
                concurrency: 64,
                batch: 1
            }
        ));
        let p = parse(&["--spawn", "--closed-loop", "--batch", "100"]).unwrap();
        assert!(matches!(p.load, Load::Closed { batch: 100, .. }));
        for bad in [
            &["--spawn", "--closed-loop", "--batch", "0"][..],
            &["--spawn", "--closed-loop", "--batch", "101"],
            &["--spawn", "--rate", "10", "--batch", "5"],
        ] {
            assert!(parse(bad).unwrap_err().contains("--batch"), "{bad:?}");
        }
        let p = parse(&["--spawn", "--scenario", "throughput", "--rate", "10"]).unwrap();
        assert!(matches!(p.load, Load::Open { rate } if rate == 10.0));
        let p = parse(&["--spawn", "--scenario", "smoke", "--workers", "9"]).unwrap();
        assert_eq!(p.workers, 9);
        assert!(p.faults_on());
        let p = parse(&["--spawn", "--jobs", "10"]).unwrap();
        assert_eq!((p.duration_s, p.jobs), (None, Some(10)));
        let p = parse(&["--spawn", "--scenario", "fleet"]).unwrap();
        assert_eq!(p.quarantine_after, Some(3));
        assert_eq!(
            p.max_wait.map(|w| w[Tier::Enterprise]),
            Some(Duration::from_secs(12))
        );
        assert_eq!(p.quarantine_base, Some(Duration::from_secs(2)));
        assert!(p.tier_mix.values().all(|&m| m >= 2));
        let p = parse(&["--spawn", "--scenario", "soak", "--duration", "30"]).unwrap();
        assert!(matches!(p.load, Load::Open { rate } if rate == 2_000.0));
        assert_eq!(
            p.job_retention.map(|r| r.failed),
            Some(Duration::from_secs(120))
        );
        assert_eq!(p.sweep_every, Some(Duration::from_secs(2)));
        assert_eq!(p.idempotency_window, Some(Duration::from_secs(60)));
        assert_eq!(p.output_retention, Some(Duration::from_secs(120)));
        assert_eq!(p.object_sweep, Some(Duration::from_secs(5)));
        assert_eq!(p.archive_after, Some(Duration::from_secs(180)));
        assert_eq!(p.archive_every, Some(Duration::from_secs(5)));
        assert_eq!(p.steady_after(), 10.0);
        let p = parse(&["--spawn", "--scenario", "soak", "--steady-after", "5"]).unwrap();
        assert_eq!(p.steady_after(), 5.0);
        let p = parse(&["--spawn", "--scenario", "fleet", "--max-wait", "free=1m"]).unwrap();
        let w = p.max_wait.expect("a waiting limit");
        assert_eq!(w[Tier::Free], Duration::from_secs(60));
        assert_eq!(w[Tier::Basic], WaitLimits::default()[Tier::Basic]);
        assert!(
            parse(&["--spawn", "--scenario", "fleet", "--backlog", "10"])
                .unwrap_err()
                .contains("fleet")
        );
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        assert!(parse(&[]).unwrap_err().contains("--spawn"));
        assert!(parse(&["--spawn", "--crash-rate", "2"])
            .unwrap_err()
            .contains("crash-rate"));
        assert!(parse(&["--spawn", "--tier-mix", "1,2"])
            .unwrap_err()
            .contains("tier-mix"));
        for bad in ["1,0,4,8", "1,2,4,1001"] {
            assert!(parse(&["--spawn", "--tier-weights", bad])
                .unwrap_err()
                .contains("1..=1000"));
        }
        assert!(parse(&["--spawn", "--tier-weights", "1,2,4,1000"]).is_ok());
        for flag in [
            "--job-ms",
            "--lease-ms",
            "--retry-base-ms",
            "--duplicate-delay-ms",
        ] {
            assert!(
                parse(&["--spawn", flag, "1s"]).unwrap_err().contains(flag),
                "{flag}"
            );
        }
        assert!(parse(&["--spawn", "--chaos-kill-every", "5"])
            .unwrap_err()
            .contains("database-url"));
        assert!(parse(&["--url", "http://x:1"])
            .unwrap_err()
            .contains("admin"));
        assert!(
            parse(&["--spawn", "--scenario", "soak", "--steady-after=-1"])
                .unwrap_err()
                .contains("steady-after")
        );
        assert!(parse(&["--spawn", "--rate", "0"])
            .unwrap_err()
            .contains("rate"));
    }

    /// The server's settings are read as the server reads them, so a value
    /// the server would refuse is refused before a server is started.
    #[test]
    fn server_settings_are_checked_as_the_server_checks_them() {
        for (flag, bad) in [
            ("--max-wait", "free=50ms"),
            ("--max-wait", "gold=1m"),
            ("--quarantine-base", "2x"),
            ("--job-retention", "succeeded=10s"),
            ("--job-retention", "running=1h"),
            ("--sweep-every", "soon"),
        ] {
            let err = parse(&["--spawn", flag, bad]).unwrap_err();
            assert!(err.contains(flag), "{flag} {bad}: {err}");
        }
        let p = parse(&[
            "--spawn",
            "--quarantine-base=1500ms",
            "--sweep-every=1m",
            "--job-retention=failed=1h",
        ])
        .unwrap();
        assert_eq!(p.quarantine_base, Some(Duration::from_millis(1500)));
        assert_eq!(p.sweep_every, Some(Duration::from_secs(60)));
        let r = p.job_retention.expect("a retention");
        assert_eq!(r.failed, Duration::from_secs(3600));
        assert_eq!(r.succeeded, JobRetention::default().succeeded);
    }

    #[test]
    fn millisecond_flags_are_durations_and_the_report_keeps_milliseconds() {
        let p = parse(&[
            "--spawn",
            "--job-ms=70",
            "--lease-ms=2500",
            "--retry-base-ms=20",
            "--duplicate-delay-ms=150",
            "--tier-mix=1,0,0,3",
        ])
        .unwrap();
        let ms = Duration::from_millis;
        assert_eq!(
            (p.job_time, p.lease, p.retry_base),
            (ms(70), ms(2500), ms(20))
        );
        assert_eq!(p.faults.duplicate_delay, ms(150));
        assert_eq!(p.retry_max(), ms(500), "at least 500 ms");
        assert_eq!(p.tier_mix[Tier::Enterprise], 3);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["job_ms"], 70);
        assert_eq!(json["lease_ms"], 2500);
        assert_eq!(json["retry_base_ms"], 20);
        assert_eq!(json["faults"]["duplicate_delay_ms"], 150);
        assert_eq!(json["tier_mix"], serde_json::json!([1, 0, 0, 3]));
        assert_eq!(json["weights"], serde_json::json!([1, 2, 4, 8]));
        let p = parse(&["--spawn", "--lease-ms=5"]).unwrap();
        assert_eq!(p.lease, ms(100), "a lease is at least 100 ms");
    }
}
