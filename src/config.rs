//! Typed configuration from `ADMEDIA_*` variables (and flags), with an
//! optional TOML file for the tier and price tables. Every value has a
//! default that works on a laptop; start-up prints what it chose.

use std::path::PathBuf;
use std::time::Duration;

use admedia_actors::actors::worker::SimProfile;
use admedia_actors::config::{JobRetention, WaitLimits};
use admedia_actors::domain::content::outputs::OutputThresholds;
use admedia_actors::domain::content::{CategoryScores, Score};
use admedia_actors::domain::email::EmailRules;
use admedia_actors::domain::material::{ByteSize, TierQuotas, TierRetention};
use admedia_actors::domain::payments::GiftOverrides;
use admedia_actors::domain::pricing::PriceTable;
use admedia_actors::domain::tier::{PerTier, Tier, TierTable};
use admedia_actors::domain::wallet::Credits;
use admedia_actors::OrchestratorConfig;
use admedia_process::telemetry::LogFormat;
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

#[derive(Parser, Debug)]
#[command(
    name = "admedia",
    version,
    about = "AdMedia orchestrator: credits, fair scheduling and GPU workers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `admedia` with no subcommand serves.
    #[command(flatten)]
    pub serve: Settings,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the orchestrator (the default).
    Serve(Box<Settings>),
    /// Apply the database migrations in `schema/` and exit.
    Migrate {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
    },
}

/// An embedded server's scratch object directory is named this and its
/// process id, in the system's temp dir.
pub const SCRATCH_OBJECTS_PREFIX: &str = "admedia-objects-";

#[derive(Args, Debug, Clone)]
pub struct Settings {
    /// Address to serve HTTP on.
    #[arg(long, env = "ADMEDIA_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// PostgreSQL URL; without it the embedded in-memory store is used.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Redis URL; without it rate limits are per process.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// What every Redis key and channel of this deployment starts with
    /// (default `admedia:db<N>`, N the Redis URL's database number). Nodes
    /// of one deployment share it; deployments sharing a Redis server need
    /// their own.
    #[arg(long, env = "ADMEDIA_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
    /// Bearer token of the admin API; random (and printed) when unset.
    #[arg(long, env = "ADMEDIA_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Bearer token GPU workers present; random (and printed) when unset.
    #[arg(long, env = "ADMEDIA_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<String>,
    /// In-process simulated GPU workers (default 4 on the embedded store, 0 otherwise).
    #[arg(long, env = "ADMEDIA_SIM_WORKERS")]
    pub sim_workers: Option<usize>,
    /// Slots of each simulated worker.
    #[arg(long, env = "ADMEDIA_SIM_SLOTS", default_value_t = 2)]
    pub sim_slots: u32,
    /// How long a simulated attempt takes, in milliseconds.
    #[arg(long = "sim-job-ms", env = "ADMEDIA_SIM_JOB_MS", value_name = "MS", default_value = "500", value_parser = parse_millis)]
    pub sim_job_time: Duration,
    /// Probability that a simulated attempt fails with a system error.
    #[arg(long, env = "ADMEDIA_SIM_FAILURE_RATE", default_value_t = 0.0)]
    pub sim_failure_rate: f64,
    /// Probability that a simulated attempt fails because of its input.
    #[arg(long, env = "ADMEDIA_SIM_USER_ERROR_RATE", default_value_t = 0.0)]
    pub sim_user_error_rate: f64,
    /// Credits granted at registration.
    #[arg(long, env = "ADMEDIA_REGISTRATION_CREDITS", default_value_t = 100)]
    pub registration_credits: i64,
    /// Attempts per job before it fails and is refunded.
    #[arg(long, env = "ADMEDIA_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// First retry delay in milliseconds (doubles per attempt, with jitter).
    #[arg(long = "retry-base-ms", env = "ADMEDIA_RETRY_BASE_MS", value_name = "MS", default_value = "1000", value_parser = parse_millis)]
    pub retry_base: Duration,
    /// Longest retry delay, in milliseconds.
    #[arg(long = "retry-max-ms", env = "ADMEDIA_RETRY_MAX_MS", value_name = "MS", default_value = "60000", value_parser = parse_millis)]
    pub retry_max: Duration,
    /// Deadline of one image attempt, in milliseconds.
    #[arg(long = "image-deadline-ms", env = "ADMEDIA_IMAGE_DEADLINE_MS", value_name = "MS", default_value = "120000", value_parser = parse_millis)]
    pub image_deadline: Duration,
    /// Deadline of one video attempt, in milliseconds.
    #[arg(long = "video-deadline-ms", env = "ADMEDIA_VIDEO_DEADLINE_MS", value_name = "MS", default_value = "900000", value_parser = parse_millis)]
    pub video_deadline: Duration,
    /// A remote worker silent for this many milliseconds loses its attempts.
    #[arg(long = "worker-lease-ms", env = "ADMEDIA_WORKER_LEASE_MS", value_name = "MS", default_value = "15000", value_parser = parse_millis)]
    pub worker_lease: Duration,
    /// Let webhooks target loopback and private addresses (tests, labs).
    #[arg(long, env = "ADMEDIA_WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_allow_private: bool,
    /// First webhook retry delay in milliseconds (doubles per retry).
    #[arg(long = "webhook-retry-base-ms", env = "ADMEDIA_WEBHOOK_RETRY_BASE_MS", value_name = "MS", default_value = "1000", value_parser = parse_millis)]
    pub webhook_retry_base: Duration,
    /// This node's name in the cluster (default: host name and pid).
    #[arg(long, env = "ADMEDIA_NODE_ID")]
    pub node_id: Option<String>,
    /// The URL other nodes and workers reach this node at (default
    /// `http://` + the bound address).
    #[arg(long, env = "ADMEDIA_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// How soon a standby takes over from a dead leader, e.g. `10s`,
    /// `2500ms` (a plain number is seconds).
    #[arg(long, env = "ADMEDIA_LEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub leader_timeout: Duration,
    /// Tier weights Free,Basic,Professional,Enterprise, e.g. `1,2,4,8`.
    #[arg(long, env = "ADMEDIA_TIER_WEIGHTS")]
    pub tier_weights: Option<TierWeights>,
    /// A TOML file with `[tiers.<tier>]` and `[prices]` tables.
    #[arg(long, env = "ADMEDIA_CONFIG")]
    pub config_file: Option<PathBuf>,
    /// `pretty` for people, `json` for log pipelines.
    #[arg(long, env = "ADMEDIA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
    /// Submissions per minute per user by tier, e.g.
    /// `free=60,basic=300,professional=1200,enterprise=6000` (0: unlimited).
    #[arg(long, env = "ADMEDIA_RATE_LIMITS", default_value = "")]
    pub rate_limits: crate::ratelimit::RateLimits,
    /// Connections in the PostgreSQL pool.
    #[arg(long, env = "ADMEDIA_DB_POOL", default_value_t = 16)]
    pub db_pool: usize,
    /// Group-commit writers, each committing one batch at a time on a
    /// pooled connection (docs/storage.md).
    #[arg(long, env = "ADMEDIA_DB_WRITERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub db_writers: u16,
    /// The most operations one group commit takes.
    #[arg(long, env = "ADMEDIA_DB_MAX_BATCH", default_value_t = 512, value_parser = clap::value_parser!(u16).range(1..=10000))]
    pub db_max_batch: u16,
    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "ADMEDIA_HTTP_WORKERS")]
    pub http_workers: Option<usize>,
    // ---- platform rules (docs/platform-rules.md)
    /// Key that signs payment events (`whsec_` + base64, or raw base64);
    /// without it `POST /v1/payments/webhook` answers 503.
    #[arg(long, env = "ADMEDIA_PAYMENT_SECRET", hide_env_values = true)]
    pub payment_secret: Option<String>,
    /// How far a payment event's timestamp may be from now, in seconds.
    #[arg(long, env = "ADMEDIA_PAYMENT_TOLERANCE_SECS", default_value_t = 300)]
    pub payment_tolerance_secs: u64,
    /// Least notice of a price change (ToS 4.5): `7d`, `36h`, `3600s` or seconds.
    #[arg(long, env = "ADMEDIA_PRICE_NOTICE", default_value = "7d", value_parser = parse_duration)]
    pub price_notice: Duration,
    /// Gift credits per paid membership month, e.g.
    /// `basic=200,professional=1000,enterprise=5000` (unnamed tiers keep their default).
    #[arg(long, env = "ADMEDIA_MEMBERSHIP_GIFTS", default_value = "")]
    pub membership_gifts: GiftOverrides,
    /// How often due membership gifts are granted, prices reloaded,
    /// idempotency keys expired and finished jobs pruned.
    #[arg(long, env = "ADMEDIA_GIFT_SWEEP", default_value = "60s", value_parser = parse_duration)]
    pub gift_sweep: Duration,
    /// A content rules file (TOML or JSON); default: the rules shipped in
    /// `actors/rules/content.toml`.
    #[arg(long, env = "ADMEDIA_CONTENT_RULES")]
    pub content_rules: Option<PathBuf>,
    /// Refused prompts within the window that suspend the account (0: never).
    #[arg(long, env = "ADMEDIA_VIOLATIONS_BEFORE_SUSPEND", default_value_t = 5)]
    pub violations_before_suspend: u32,
    /// The window refused prompts are counted in: `24h`, `30m`, seconds.
    #[arg(long, env = "ADMEDIA_VIOLATION_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub violation_window: Duration,
    // ---- abuse limits per client address (docs/platform-rules.md)
    /// Failed authentications (admin API, console sign-in, worker connect)
    /// per client address and minute before it is answered 429 (0: no limit).
    #[arg(long, env = "ADMEDIA_AUTH_FAILURES_PER_MINUTE", default_value_t = 10)]
    pub auth_failures_per_minute: u32,
    /// Registrations per client address and hour (0: no limit).
    #[arg(long, env = "ADMEDIA_REGISTRATIONS_PER_HOUR", default_value_t = 10)]
    pub registrations_per_hour: u32,
    /// Mail domains whose mailboxes ignore dots in the local part, so
    /// `j.doe@` and `jdoe@` count as one address (comma-separated).
    #[arg(
        long,
        env = "ADMEDIA_DOTLESS_EMAIL_DOMAINS",
        default_value = "gmail.com,googlemail.com"
    )]
    pub dotless_email_domains: EmailRules,
    // ---- scheduling (docs/worker-protocol.md)
    /// What tiers share by weight: `gpu_seconds` (estimated GPU time) or
    /// `jobs` (dispatches).
    #[arg(long, env = "ADMEDIA_FAIRNESS_UNIT", default_value = "gpu_seconds")]
    pub fairness_unit: admedia_actors::config::FairnessUnit,
    /// Longest wait per tier before a job expires (refunded), e.g.
    /// `free=24h,enterprise=30m` (unnamed tiers keep their default).
    #[arg(long, env = "ADMEDIA_MAX_WAIT", default_value = "")]
    pub max_wait: WaitLimits,
    /// System failures in a row that quarantine a worker.
    #[arg(long, env = "ADMEDIA_QUARANTINE_AFTER", default_value_t = 3)]
    pub quarantine_after: u32,
    /// After a restart or a failover, how long an attempt still in flight
    /// may wait for its worker to present it again before it counts as
    /// lost. Keep it above the agent's return time (25 s): see
    /// docs/worker-protocol.md.
    #[arg(long, env = "ADMEDIA_REPRESENT_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub represent_grace: Duration,
    /// The first quarantine's length (doubling while failures continue).
    #[arg(long, env = "ADMEDIA_QUARANTINE_BASE", default_value = "60s", value_parser = parse_duration)]
    pub quarantine_base: Duration,
    /// At most this percentage of the connected workers is quarantined at
    /// once (0: none ever is).
    #[arg(long, env = "ADMEDIA_QUARANTINE_MAX_PERCENT", default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub quarantine_max_percent: u8,
    /// Only refusals at least this sure (0..=1) count toward suspension.
    #[arg(long, env = "ADMEDIA_SUSPEND_MIN_CONFIDENCE", default_value = "0.9")]
    pub suspend_min_confidence: Score,
    /// The safety-label score that withholds an output (0..=1).
    #[arg(long, env = "ADMEDIA_OUTPUT_THRESHOLD", default_value = "0.5")]
    pub output_threshold: Score,
    /// Per-category output thresholds, e.g. `sexual-minors=0.1,violence=0.8`.
    #[arg(long, env = "ADMEDIA_OUTPUT_THRESHOLDS", default_value = "")]
    pub output_thresholds: CategoryScores,
    /// A moderation provider (`http://host:port`, requests go to
    /// `/v1/moderations`); unset: the built-in rules alone.
    #[arg(long, env = "ADMEDIA_MODERATION_URL")]
    pub moderation_url: Option<String>,
    #[arg(long, env = "ADMEDIA_MODERATION_API_KEY", hide_env_values = true)]
    pub moderation_api_key: Option<String>,
    /// The provider's `model` field, when it wants one.
    #[arg(long, env = "ADMEDIA_MODERATION_MODEL")]
    pub moderation_model: Option<String>,
    #[arg(long, env = "ADMEDIA_MODERATION_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub moderation_timeout: Duration,
    /// Per-category score thresholds, e.g. `sexual/minors=0.1,violence=0.7`.
    #[arg(long, env = "ADMEDIA_MODERATION_THRESHOLDS", default_value = "")]
    pub moderation_thresholds: CategoryScores,
    /// The threshold of categories not named above; unset: the provider's
    /// own flags decide them.
    #[arg(long, env = "ADMEDIA_MODERATION_DEFAULT_THRESHOLD")]
    pub moderation_default_threshold: Option<Score>,
    /// Provider answers kept by prompt hash.
    #[arg(long, env = "ADMEDIA_MODERATION_CACHE", default_value_t = 10_000)]
    pub moderation_cache: usize,
    /// When the provider is down: `refuse`, `rules`, or per tier, e.g.
    /// `free=refuse,basic=refuse,professional=rules,enterprise=rules`.
    #[arg(long, env = "ADMEDIA_MODERATION_WHEN_DOWN", default_value = "refuse")]
    pub moderation_when_down: crate::moderation::WhenDownByTier,
    // ---- materials and outputs (docs/materials.md)
    /// Where materials and outputs are kept: `s3://<bucket>`, `file:///<dir>`
    /// or a directory. Default: `./data/objects` with DATABASE_URL; on the
    /// embedded store, `admedia-objects-<pid>` in the system's temp dir,
    /// removed when the server stops.
    #[arg(long, env = "ADMEDIA_OBJECT_STORE")]
    pub object_store: Option<String>,
    /// An S3-compatible service's URL, e.g. `http://127.0.0.1:9000` (AWS when unset).
    #[arg(long, env = "ADMEDIA_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "ADMEDIA_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    #[arg(long, env = "ADMEDIA_S3_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: Option<String>,
    #[arg(long, env = "ADMEDIA_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,
    /// Path-style S3 requests (`endpoint/bucket/key`), as most
    /// S3-compatible servers want; `false` for virtual-hosted style.
    #[arg(long, env = "ADMEDIA_S3_PATH_STYLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub s3_path_style: bool,
    /// Signs the server's own object URLs (local directory); random per
    /// process when unset, so nodes sharing a directory must set it.
    #[arg(long, env = "ADMEDIA_OBJECT_SECRET", hide_env_values = true)]
    pub object_secret: Option<String>,
    /// Storage quota per tier, e.g. `free=500MB,basic=5GB` (unnamed tiers keep their default).
    #[arg(long, env = "ADMEDIA_STORAGE_QUOTAS", default_value = "")]
    pub storage_quotas: TierQuotas,
    /// Retention per tier, e.g. `free=7d,enterprise=90d`.
    #[arg(long, env = "ADMEDIA_RETENTION", default_value = "")]
    pub retention: TierRetention,
    /// Largest material upload, e.g. `1GB`, `20MB` or bytes.
    #[arg(long, env = "ADMEDIA_MAX_MATERIAL_SIZE", default_value = "1GB")]
    pub max_material_size: ByteSize,
    /// Largest output a worker may upload.
    #[arg(long, env = "ADMEDIA_MAX_OUTPUT_SIZE", default_value = "4GB")]
    pub max_output_size: ByteSize,
    /// How long a download URL stays valid.
    #[arg(long, env = "ADMEDIA_SIGNED_URL_TTL", default_value = "15m", value_parser = parse_duration)]
    pub signed_url_ttl: Duration,
    /// How often expired and deleted objects are purged.
    #[arg(long, env = "ADMEDIA_OBJECT_SWEEP", default_value = "60s", value_parser = parse_duration)]
    pub object_sweep: Duration,
    // ---- retention of finished jobs (docs/storage.md)
    /// How long a finished job is kept in full, by the state it ended in,
    /// e.g. `succeeded=7d,cancelled=7d,failed=30d` (unnamed states keep
    /// their default); then its prompt, result, attempts and events are
    /// pruned and its money record stays.
    #[arg(
        long,
        env = "ADMEDIA_JOB_RETENTION",
        default_value = "succeeded=7d,cancelled=7d,failed=30d"
    )]
    pub job_retention: JobRetention,
    /// How old a user's history must be before the ledger archive moves
    /// it to object storage (its entries, and the thin records of jobs
    /// pruned and resolved inside it), e.g. `90d`; `off` keeps it live
    /// for ever. The ledger API reads on into the archive.
    #[arg(
        long,
        env = "ADMEDIA_LEDGER_ARCHIVE_AFTER",
        default_value = "90d",
        value_parser = parse_archive_after
    )]
    pub ledger_archive_after: ArchiveAfter,
    /// How often the ledger archive looks for history to close.
    #[arg(long, env = "ADMEDIA_LEDGER_ARCHIVE_EVERY", default_value = "60s", value_parser = parse_duration)]
    pub ledger_archive_every: Duration,
    /// Finished jobs the embedded store keeps in full at most; past that
    /// the oldest-finished are pruned at once (PostgreSQL: no cap).
    #[arg(
        long,
        env = "ADMEDIA_MAX_FINISHED_IN_MEMORY",
        default_value_t = 100_000
    )]
    pub max_finished_in_memory: usize,
    /// How long an `Idempotency-Key` protects a submission, e.g. `24h`
    /// (at least a minute); a replay after that is a new submission.
    #[arg(
        long,
        env = "ADMEDIA_IDEMPOTENCY_WINDOW",
        default_value = "24h",
        value_parser = parse_duration
    )]
    pub idempotency_window: Duration,
}

/// The ledger archive's age, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchiveAfter(pub Option<Duration>);

/// Shorter than this, a job could leave before a client saw it finish.
const SHORTEST_ARCHIVE_AGE: Duration = Duration::from_secs(60);

fn parse_archive_after(raw: &str) -> Result<ArchiveAfter, String> {
    if raw.trim().eq_ignore_ascii_case("off") {
        return Ok(ArchiveAfter(None));
    }
    let age = parse_duration(raw)?;
    if age < SHORTEST_ARCHIVE_AGE {
        return Err(format!(
            "{raw:?}: the ledger archive's age is at least 1m (or `off`)"
        ));
    }
    Ok(ArchiveAfter(Some(age)))
}

/// Why the command line and environment could not be read.
pub enum CliError {
    /// Help, version, or a usage error clap explains itself.
    Exit(clap::Error),
    /// A bad value, named as the operator set it: the variable when it
    /// came from the environment, the flag when it was given as one.
    Invalid(String),
}

impl Cli {
    /// Parses the process's arguments and `ADMEDIA_*` variables.
    pub fn from_env_and_args() -> Result<Cli, CliError> {
        Self::from_iter_named(std::env::args_os())
    }

    pub fn from_iter_named<I, T>(args: I) -> Result<Cli, CliError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        Cli::try_parse_from(&args).map_err(|e| name_the_variable(e, &args))
    }
}

/// Clap names the flag (`--image-deadline-ms <IMAGE_DEADLINE_MS>`) even
/// when the value came from `ADMEDIA_IMAGE_DEADLINE_MS`; an operator who
/// set the variable looks for the variable.
fn name_the_variable(e: clap::Error, args: &[std::ffi::OsString]) -> CliError {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::CommandFactory;
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return CliError::Exit(e);
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return CliError::Exit(e);
    };
    let long = arg.split_whitespace().next().unwrap_or_default();
    let given_as_flag = args
        .iter()
        .filter_map(|a| a.to_str())
        .any(|a| a == long || a.starts_with(&format!("{long}=")));
    let command = Cli::command();
    let env = command
        .get_arguments()
        .chain(command.get_subcommands().flat_map(|c| c.get_arguments()))
        .find(|a| a.get_long().is_some_and(|l| format!("--{l}") == long))
        .and_then(|a| a.get_env())
        .and_then(|v| v.to_str())
        .map(str::to_owned);
    let value = match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => v.clone(),
        _ => String::new(),
    };
    let name = match env {
        Some(var) if !given_as_flag => var,
        _ => long.to_owned(),
    };
    // Clap's own sentence, without its usage footer and the flag's name.
    let reason = std::error::Error::source(&e)
        .map(|s| s.to_string())
        .unwrap_or_else(|| "not a valid value".to_owned());
    CliError::Invalid(format!("{name}: invalid value {value:?}: {reason}"))
}

impl Default for Settings {
    fn default() -> Self {
        // The defaults of the flags above, for tests and embedding.
        match Cli::try_parse_from(["admedia"]) {
            Ok(cli) => cli.serve,
            Err(e) => panic!("flag defaults must parse: {e}"),
        }
    }
}

/// `10s`, `2500ms`, `1m`, `1d12h`, or a plain number of seconds.
pub use admedia_actors::domain::price_schedule::parse_duration;

/// The variable an operator sets for a setting the orchestrator refused.
fn variable_of(setting: admedia_actors::config::Setting) -> Option<&'static str> {
    use admedia_actors::config::Setting as S;
    Some(match setting {
        S::MaxAttempts => "ADMEDIA_MAX_ATTEMPTS",
        S::WorkerLease => "ADMEDIA_WORKER_LEASE_MS",
        S::RetryBase => "ADMEDIA_RETRY_BASE_MS",
        S::MaxWait => "ADMEDIA_MAX_WAIT",
        S::QuarantineAfter => "ADMEDIA_QUARANTINE_AFTER",
        S::QuarantineMaxPercent => "ADMEDIA_QUARANTINE_MAX_PERCENT",
        S::QuarantineBase => "ADMEDIA_QUARANTINE_BASE",
        S::IdempotencyWindow => "ADMEDIA_IDEMPOTENCY_WINDOW",
        S::Other => return None,
    })
}

/// A whole number of milliseconds, the unit of every `*_MS` setting.
pub use admedia_actors::domain::price_schedule::parse_millis;

/// `500MB`, `5GB`, `64KB` (powers of 1024) or a number of bytes.
pub use admedia_actors::domain::material::parse_size;

/// The tiers' weights, one whole number per tier in `Tier::ALL` order,
/// comma-separated: `1,2,4,8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierWeights(pub PerTier<u32>);

impl std::str::FromStr for TierWeights {
    type Err = String;
    fn from_str(raw: &str) -> Result<TierWeights, String> {
        let expected = || {
            let tiers: Vec<&str> = Tier::ALL.iter().map(|t| t.as_str()).collect();
            format!(
                "expected {} whole numbers, the weights of {}",
                Tier::COUNT,
                tiers.join(",")
            )
        };
        let weights: Vec<u32> = raw
            .split(',')
            .map(|w| w.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| expected())?;
        let weights = <[u32; Tier::COUNT]>::try_from(weights).map_err(|_| expected())?;
        // As the tier table requires: a zero weight starves its tier.
        if weights.iter().any(|w| !(1..=1000).contains(w)) {
            return Err("every weight must be 1..=1000".into());
        }
        Ok(TierWeights(PerTier::from(weights)))
    }
}

/// Output thresholds: `default` unless the category has its own.
fn output_thresholds(per_category: &CategoryScores, default: Score) -> OutputThresholds {
    OutputThresholds {
        default,
        per_category: per_category.0.clone(),
    }
}

impl Settings {
    /// The moderation provider's settings, when one is configured.
    pub fn moderation_provider(&self) -> Result<Option<crate::moderation::ProviderConfig>, String> {
        let Some(url) = self
            .moderation_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
        else {
            return Ok(None);
        };
        crate::moderation::ProviderConfig::parse(
            url,
            self.moderation_api_key.clone(),
            self.moderation_model.clone(),
            self.moderation_timeout,
            self.moderation_thresholds.clone(),
            self.moderation_default_threshold,
            self.moderation_cache,
            self.moderation_when_down,
        )
        .map(Some)
    }

    /// The content policy (ToS 3.2): the rules file named by
    /// `ADMEDIA_CONTENT_RULES`, or the one shipped with the server.
    pub fn content_policy(&self) -> Result<admedia_actors::domain::content::RulesPolicy, String> {
        match &self.content_rules {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("ADMEDIA_CONTENT_RULES {}: {e}", path.display()))?;
                admedia_actors::domain::content::RulesPolicy::parse(&text)
                    .map_err(|e| format!("ADMEDIA_CONTENT_RULES {}: {e}", path.display()))
            }
            None => admedia_actors::domain::content::RulesPolicy::builtin(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    tiers: Option<TierTable>,
    prices: Option<PriceTable>,
    /// Membership gift credits per paid month (ToS 5.3).
    gifts: Option<admedia_actors::domain::payments::GiftTable>,
    /// `[[models]]`: the model registry (replaces the default one).
    models: Option<Vec<admedia_actors::domain::model_registry::ModelSpec>>,
}

impl Settings {
    /// The orchestrator's rules, checked; an error names the bad setting.
    pub fn orchestrator(&self) -> Result<OrchestratorConfig, String> {
        self.durations_are_positive()?;
        if self.max_finished_in_memory == 0 {
            return Err(
                "ADMEDIA_MAX_FINISHED_IN_MEMORY: must be at least 1 (0 would prune every job as it finishes)"
                    .into(),
            );
        }
        let file: FileConfig = match &self.config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("ADMEDIA_CONFIG {}: {e}", path.display()))?;
                toml::from_str(&text)
                    .map_err(|e| format!("ADMEDIA_CONFIG {}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let mut tiers = file.tiers.unwrap_or_default();
        if let Some(weights) = self.tier_weights {
            for (tier, weight) in weights.0.iter() {
                tiers[tier].weight = *weight;
            }
        }
        let config = OrchestratorConfig {
            tiers,
            prices: file.prices.unwrap_or_default(),
            registration_credits: Credits::new(self.registration_credits)
                .map_err(|e| format!("ADMEDIA_REGISTRATION_CREDITS: {e}"))?,
            max_attempts: self.max_attempts,
            retry_base: self.retry_base,
            retry_max: self.retry_max,
            image_deadline: self.image_deadline,
            video_deadline: self.video_deadline,
            worker_lease: self.worker_lease,
            email_rules: self.dotless_email_domains.clone(),
            platform: admedia_actors::policy::PlatformConfig {
                price_notice: self.price_notice,
                gifts: gifts(&self.membership_gifts, file.gifts.unwrap_or_default())?,
                violations_before_suspend: self.violations_before_suspend,
                violation_window: self.violation_window,
                suspend_min_confidence: self.suspend_min_confidence,
                output_thresholds: output_thresholds(
                    &self.output_thresholds,
                    self.output_threshold,
                ),
                sweep_every: self.gift_sweep,
            },
            models: file
                .models
                .map(admedia_actors::domain::model_registry::ModelRegistry::new)
                .unwrap_or_default(),
            fairness: self.fairness_unit,
            max_wait: self.max_wait,
            quarantine_after: self.quarantine_after,
            quarantine_base: self.quarantine_base,
            represent_grace: self.represent_grace,
            quarantine_max_percent: self.quarantine_max_percent,
            job_retention: self.job_retention,
            idempotency_window: self.idempotency_window,
            ..OrchestratorConfig::default()
        };
        config
            .validate()
            .map_err(|e| match variable_of(e.setting) {
                Some(var) => format!("{var}: {}", e.why),
                None => e.why,
            })?;
        Ok(config)
    }

    /// The Redis key and channel prefix: `ADMEDIA_REDIS_PREFIX`, or one
    /// derived from the logical database, since pub/sub channels are shared
    /// by all of a server's databases while keys are not.
    pub fn redis_prefix(&self) -> Result<String, String> {
        if let Some(prefix) = &self.redis_prefix {
            let ok = !prefix.is_empty()
                && prefix.len() <= 64
                && prefix.chars().all(|c| c.is_ascii_graphic());
            if !ok {
                return Err(format!(
                    "ADMEDIA_REDIS_PREFIX {prefix:?}: expected 1..=64 visible ASCII characters"
                ));
            }
            return Ok(prefix.clone());
        }
        let db = match &self.redis_url {
            Some(raw) => {
                let url = url::Url::parse(raw).map_err(|e| format!("REDIS_URL: {e}"))?;
                let path = url.path().trim_matches('/');
                if path.is_empty() {
                    0
                } else {
                    path.parse::<u32>()
                        .map_err(|_| format!("REDIS_URL: {path:?} is not a database number"))?
                }
            }
            None => 0,
        };
        Ok(format!("admedia:db{db}"))
    }

    /// A zero deadline fails every job, a zero lease drops every worker, a
    /// zero sweep or timeout spins: each is refused, naming its variable.
    fn durations_are_positive(&self) -> Result<(), String> {
        let millis = [
            ("ADMEDIA_IMAGE_DEADLINE_MS", self.image_deadline),
            ("ADMEDIA_VIDEO_DEADLINE_MS", self.video_deadline),
            ("ADMEDIA_WORKER_LEASE_MS", self.worker_lease),
            ("ADMEDIA_RETRY_BASE_MS", self.retry_base),
            ("ADMEDIA_RETRY_MAX_MS", self.retry_max),
            ("ADMEDIA_WEBHOOK_RETRY_BASE_MS", self.webhook_retry_base),
        ];
        for (name, span) in millis {
            if span.is_zero() {
                return Err(format!(
                    "{name}: must be a positive number of milliseconds, got 0"
                ));
            }
        }
        let spans = [
            ("ADMEDIA_LEADER_TIMEOUT", self.leader_timeout),
            ("ADMEDIA_GIFT_SWEEP", self.gift_sweep),
            ("ADMEDIA_VIOLATION_WINDOW", self.violation_window),
            // Users are told of a price change before it applies: a zero
            // notice would let a change apply at once.
            ("ADMEDIA_PRICE_NOTICE", self.price_notice),
        ];
        for (name, span) in spans {
            if span.is_zero() {
                return Err(format!("{name}: must be a positive duration, got 0"));
            }
        }
        if self.retry_max < self.retry_base {
            return Err(format!(
                "ADMEDIA_RETRY_MAX_MS ({}) must be at least ADMEDIA_RETRY_BASE_MS ({})",
                self.retry_max.as_millis(),
                self.retry_base.as_millis()
            ));
        }
        Ok(())
    }

    pub fn sim_profile(&self) -> Result<SimProfile, String> {
        let rates = [self.sim_failure_rate, self.sim_user_error_rate];
        if rates.iter().any(|r| !(0.0..=1.0).contains(r)) || rates.iter().sum::<f64>() > 1.0 {
            return Err("ADMEDIA_SIM_FAILURE_RATE and ADMEDIA_SIM_USER_ERROR_RATE must be in 0..=1 and sum to at most 1".into());
        }
        Ok(SimProfile {
            job_time: self.sim_job_time,
            failure_rate: self.sim_failure_rate,
            user_error_rate: self.sim_user_error_rate,
        })
    }

    /// Simulated workers: 4 by default on the embedded store, so a job
    /// submitted to a fresh `cargo run` completes; none by default once a
    /// database is configured (real workers are expected there).
    pub fn sim_worker_count(&self) -> usize {
        self.sim_workers
            .unwrap_or(if self.database_url.is_some() { 0 } else { 4 })
    }
}

/// The membership gifts: the table of the configuration file (or the
/// default), with the tiers `ADMEDIA_MEMBERSHIP_GIFTS` names changed.
/// Those were checked as they were read, so a bad gift here is the file's.
fn gifts(
    overrides: &GiftOverrides,
    base: admedia_actors::domain::payments::GiftTable,
) -> Result<admedia_actors::domain::payments::GiftTable, String> {
    let gifts = overrides.over(base);
    gifts
        .validate()
        .map_err(|e| format!("ADMEDIA_CONFIG [gifts]: {e}"))?;
    Ok(gifts)
}

impl Settings {
    /// Where objects are kept; see `object_store`.
    pub fn object_settings(&self) -> Result<crate::objects::ObjectSettings, String> {
        let s3 = crate::objects::S3Settings {
            bucket: String::new(),
            endpoint: self.s3_endpoint.clone().filter(|e| !e.trim().is_empty()),
            region: self.s3_region.clone(),
            access_key_id: self.s3_access_key_id.clone(),
            secret_access_key: self.s3_secret_access_key.clone(),
            path_style: self.s3_path_style,
        };
        match self
            .object_store
            .as_deref()
            .filter(|s| !s.trim().is_empty())
        {
            Some(raw) => crate::objects::ObjectSettings::parse(raw, s3),
            None => Ok(crate::objects::ObjectSettings::Local {
                root: self
                    .scratch_objects()
                    .unwrap_or_else(|| PathBuf::from("data/objects")),
            }),
        }
    }

    /// The directory objects go to when nothing says where and nothing
    /// outlives the process: with the embedded store the catalogue dies
    /// with it, so its files are no one's afterwards and the server
    /// removes the directory when it stops. `None` when objects are kept
    /// (a database, or a store named by `ADMEDIA_OBJECT_STORE`).
    pub fn scratch_objects(&self) -> Option<PathBuf> {
        let named = self
            .object_store
            .as_deref()
            .is_some_and(|s| !s.trim().is_empty());
        (!named && self.database_url.is_none()).then(|| {
            std::env::temp_dir().join(format!("{SCRATCH_OBJECTS_PREFIX}{}", std::process::id()))
        })
    }

    /// Quotas, retention and size limits of stored files.
    pub fn storage_rules(&self) -> admedia_actors::domain::material::StorageRules {
        let mut rules = admedia_actors::domain::material::StorageRules::default()
            .with_tiers(&self.storage_quotas, &self.retention);
        rules.max_material_bytes = self.max_material_size.0;
        rules.max_output_bytes = self.max_output_size.0;
        rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings `args` give, or the error the operator would read.
    fn given(args: &[&str]) -> Result<Settings, String> {
        let all = std::iter::once("admedia").chain(args.iter().copied());
        match Cli::from_iter_named(all) {
            Ok(cli) => Ok(cli.serve),
            Err(CliError::Invalid(m)) => Err(m),
            Err(CliError::Exit(e)) => panic!("clap's own error: {e}"),
        }
    }

    #[test]
    fn storage_settings_parse_and_name_their_variable() {
        assert_eq!(parse_size("500MB"), Ok(500 << 20));
        assert_eq!(parse_size("2gb"), Ok(2 << 30));
        assert_eq!(parse_size("1234"), Ok(1234));
        assert!(parse_size("5XB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999TB").is_err());
        let s = given(&[
            "--storage-quotas=free=1MB,enterprise=2GB",
            "--retention=free=1d",
            "--max-material-size=20MB",
        ])
        .unwrap();
        let rules = s.storage_rules();
        assert_eq!(rules.free.quota_bytes, 1 << 20);
        assert_eq!(rules.enterprise.quota_bytes, 2 << 30);
        assert_eq!(rules.free.retention, Duration::from_secs(86_400));
        let default = admedia_actors::domain::material::StorageRules::default();
        assert_eq!(
            rules.basic, default.basic,
            "an unnamed tier keeps its rules"
        );
        assert_eq!(rules.max_material_bytes, 20 << 20);
        assert_eq!(rules.max_output_bytes, default.max_output_bytes);
        for (flag, bad) in [
            ("--storage-quotas", "gold=1MB"),
            ("--storage-quotas", "free=lots"),
            ("--retention", "free"),
            ("--retention", "free=soon"),
            ("--max-material-size", "5XB"),
            ("--max-output-size", "big"),
        ] {
            let e = given(&[&format!("{flag}={bad}")]).unwrap_err();
            assert!(e.starts_with(&format!("{flag}: invalid value")), "{e}");
        }
    }

    /// Only objects nothing can read after the process are scratch: the
    /// embedded store's default directory, not a database's, not one the
    /// operator named.
    #[test]
    fn only_the_embedded_default_directory_is_scratch() {
        let mut s = given(&[]).unwrap();
        s.database_url = None;
        let scratch = s
            .scratch_objects()
            .expect("the embedded default is scratch");
        assert!(
            scratch.starts_with(std::env::temp_dir()),
            "{}",
            scratch.display()
        );
        assert!(matches!(
            s.object_settings(),
            Ok(crate::objects::ObjectSettings::Local { root }) if root == scratch
        ));
        s.object_store = Some("  ".into());
        assert!(
            s.scratch_objects().is_some(),
            "a blank setting names nothing"
        );
        s.object_store = Some("/srv/objects".into());
        assert_eq!(s.scratch_objects(), None);
        s.object_store = None;
        s.database_url = Some("postgres://db/x".into());
        assert_eq!(s.scratch_objects(), None);
        assert!(matches!(
            s.object_settings(),
            Ok(crate::objects::ObjectSettings::Local { root }) if root.as_path() == std::path::Path::new("data/objects")
        ));
    }

    #[test]
    fn defaults_are_valid() {
        let mut s = Settings::default();
        // The test command exports DATABASE_URL; the default is without it.
        s.database_url = None;
        assert_eq!(s.bind, "127.0.0.1:8080");
        assert!(s.orchestrator().is_ok());
        assert_eq!(s.sim_worker_count(), 4);
    }

    #[test]
    fn bad_settings_are_refused_with_their_name() {
        for bad in ["1,2,x,8", "1,2,4", "1,2,4,8,16", "0,2,4,8", "1,2,4,1001"] {
            let e = given(&["--tier-weights", bad]).unwrap_err();
            assert!(e.starts_with("--tier-weights: invalid value"), "{bad}: {e}");
        }
        let e = given(&["--tier-weights", "0,2,4,8"]).unwrap_err();
        assert!(
            e.contains("1..=1000"),
            "a zero weight would starve Free: {e}"
        );
        let mut s = Settings::default();
        s.sim_failure_rate = 1.5;
        assert!(s.sim_profile().is_err());
        let mut s = Settings::default();
        s.registration_credits = -1;
        assert!(s.orchestrator().is_err());
    }

    #[test]
    fn millisecond_settings_are_durations() {
        let s = given(&[
            "--sim-job-ms=5",
            "--retry-base-ms=10",
            "--retry-max-ms=40",
            "--image-deadline-ms=1500",
            "--video-deadline-ms=2500",
            "--worker-lease-ms=120000",
            "--webhook-retry-base-ms=30",
        ])
        .unwrap();
        let ms = Duration::from_millis;
        assert_eq!(s.sim_profile().unwrap().job_time, ms(5));
        assert_eq!(s.webhook_retry_base, ms(30));
        let cfg = s.orchestrator().unwrap();
        assert_eq!(
            (cfg.retry_base, cfg.retry_max, cfg.worker_lease),
            (ms(10), ms(40), ms(120_000))
        );
        assert_eq!(
            (cfg.image_deadline, cfg.video_deadline),
            (ms(1500), ms(2500))
        );
        let d = Settings::default();
        assert_eq!(
            (
                d.sim_job_time,
                d.retry_base,
                d.retry_max,
                d.webhook_retry_base
            ),
            (ms(500), ms(1000), ms(60_000), ms(1000))
        );
        assert_eq!(
            (d.image_deadline, d.video_deadline, d.worker_lease),
            (ms(120_000), ms(900_000), ms(15_000))
        );
        for flag in ["--retry-base-ms", "--worker-lease-ms", "--sim-job-ms"] {
            for bad in ["-1", "1.5", "2s"] {
                let e = given(&[&format!("{flag}={bad}")]).unwrap_err();
                assert!(e.starts_with(&format!("{flag}: invalid value")), "{e}");
            }
        }
        let e = given(&["--retry-base-ms=500", "--retry-max-ms=100"])
            .unwrap()
            .orchestrator()
            .unwrap_err();
        assert_eq!(
            e,
            "ADMEDIA_RETRY_MAX_MS (100) must be at least ADMEDIA_RETRY_BASE_MS (500)"
        );
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2500ms"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn platform_settings_parse_and_refuse_nonsense() {
        let s = Settings::default();
        let cfg = s.orchestrator().unwrap();
        assert_eq!(cfg.platform.price_notice, Duration::from_secs(7 * 86_400));
        assert_eq!(cfg.platform.gifts.basic, 200);
        assert_eq!(cfg.platform.violations_before_suspend, 5);
        let s = given(&["--membership-gifts", "professional=1500, enterprise=0"]).unwrap();
        let gifts = s.orchestrator().unwrap().platform.gifts;
        assert_eq!(
            (gifts.basic, gifts.professional, gifts.enterprise),
            (200, 1500, 0)
        );
        for bad in [
            "gold=5",
            "basic",
            "basic=x",
            "basic=-1",
            "free=5",
            "enterprise=10000001",
        ] {
            let e = given(&["--membership-gifts", bad]).unwrap_err();
            assert!(
                e.starts_with("--membership-gifts: invalid value"),
                "{bad}: {e}"
            );
        }
        assert!(parse_duration("1d12h").is_ok());
        assert!(parse_duration("soon").is_err());
        assert!(Settings::default().content_policy().is_ok());
        let mut s = Settings::default();
        s.content_rules = Some("/nonexistent/rules.toml".into());
        assert!(s
            .content_policy()
            .err()
            .is_some_and(|e| e.contains("ADMEDIA_CONTENT_RULES")));
    }

    #[test]
    fn zero_durations_are_refused_with_their_variable() {
        let mut s = Settings::default();
        s.image_deadline = Duration::ZERO;
        let e = s.orchestrator().unwrap_err();
        assert!(e.contains("ADMEDIA_IMAGE_DEADLINE_MS"), "{e}");
        let mut s = Settings::default();
        s.webhook_retry_base = Duration::ZERO;
        let e = s.orchestrator().unwrap_err();
        assert!(e.contains("ADMEDIA_WEBHOOK_RETRY_BASE_MS"), "{e}");
        let mut s = Settings::default();
        s.worker_lease = Duration::ZERO;
        assert!(s
            .orchestrator()
            .unwrap_err()
            .contains("ADMEDIA_WORKER_LEASE_MS"));
        let mut s = Settings::default();
        s.gift_sweep = Duration::ZERO;
        assert!(s.orchestrator().unwrap_err().contains("ADMEDIA_GIFT_SWEEP"));
        let mut s = Settings::default();
        s.leader_timeout = Duration::ZERO;
        assert!(s
            .orchestrator()
            .unwrap_err()
            .contains("ADMEDIA_LEADER_TIMEOUT"));
    }

    #[test]
    fn a_bad_value_names_the_variable_it_came_from() {
        let named = |args: &[&str]| match Cli::from_iter_named(args.iter().copied()) {
            Err(CliError::Invalid(m)) => m,
            Err(CliError::Exit(e)) => panic!("clap's own error: {e}"),
            Ok(_) => panic!("accepted {args:?}"),
        };
        // Given as a flag, it is named as the flag.
        let m = named(&["admedia", "--max-attempts", "many"]);
        assert!(
            m.starts_with("--max-attempts: invalid value \"many\""),
            "{m}"
        );
        let m = named(&["admedia", "--leader-timeout=soon"]);
        assert!(m.starts_with("--leader-timeout:"), "{m}");
        // From the environment it is named by its variable: see
        // tests/configuration.rs, which sets it for a child process only.
    }

    #[test]
    fn the_redis_prefix_is_set_or_follows_the_logical_database() {
        let mut s = Settings::default();
        s.redis_url = Some("redis://127.0.0.1:6379/".into());
        assert_eq!(s.redis_prefix().unwrap(), "admedia:db0");
        s.redis_url = Some("redis://127.0.0.1:6379/3".into());
        assert_eq!(s.redis_prefix().unwrap(), "admedia:db3");
        s.redis_url = Some("redis://127.0.0.1:6379/x".into());
        assert!(s.redis_prefix().unwrap_err().contains("REDIS_URL"));
        s.redis_prefix = Some("shop-eu".into());
        assert_eq!(s.redis_prefix().unwrap(), "shop-eu");
        s.redis_prefix = Some("with space".into());
        assert!(s
            .redis_prefix()
            .unwrap_err()
            .contains("ADMEDIA_REDIS_PREFIX"));
    }

    #[test]
    fn job_retention_parses_and_refuses_nonsense_naming_its_variable() {
        let cfg = Settings::default().orchestrator().unwrap();
        let day = Duration::from_secs(86_400);
        assert_eq!(
            (
                cfg.job_retention.succeeded,
                cfg.job_retention.failed,
                cfg.job_retention.cancelled
            ),
            (7 * day, 30 * day, 7 * day)
        );
        let r = given(&["--job-retention", " failed=90d , succeeded=36h"])
            .unwrap()
            .job_retention;
        assert_eq!(
            (r.succeeded, r.failed, r.cancelled),
            (Duration::from_secs(36 * 3600), 90 * day, 7 * day),
            "an unnamed state keeps its default"
        );
        for (bad, why) in [
            ("succeeded", "state=duration"),
            ("done=7d", "unknown state"),
            ("queued=1d", "have not finished"),
            ("failed=soon", "failed=soon"),
            ("failed=1d,failed=2d", "named twice"),
            ("cancelled=0s", "at least 60 s"),
            ("succeeded=10s", "at least 60 s"),
        ] {
            let e = given(&["--job-retention", bad]).unwrap_err();
            assert!(e.starts_with("--job-retention"), "{bad}: {e}");
            assert!(e.contains(why), "{bad}: {e}");
        }
        let mut s = Settings::default();
        s.max_finished_in_memory = 0;
        assert!(s
            .orchestrator()
            .unwrap_err()
            .contains("ADMEDIA_MAX_FINISHED_IN_MEMORY"));
    }

    #[test]
    fn the_ledger_archive_age_parses_and_refuses_nonsense() {
        let day = Duration::from_secs(86_400);
        assert_eq!(
            Settings::default().ledger_archive_after,
            ArchiveAfter(Some(90 * day))
        );
        for (raw, want) in [
            ("off", None),
            (" OFF ", None),
            ("2m", Some(Duration::from_secs(120))),
        ] {
            let s = given(&["--ledger-archive-after", raw]).unwrap();
            assert_eq!(s.ledger_archive_after, ArchiveAfter(want), "{raw}");
        }
        for (bad, why) in [
            ("30s", "at least 1m"),
            ("soon", "expected a number"),
            ("", "empty"),
        ] {
            let e = given(&["--ledger-archive-after", bad]).unwrap_err();
            assert!(e.starts_with("--ledger-archive-after"), "{bad}: {e}");
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn tier_weights_override_the_table() {
        let s = given(&["--tier-weights", "1, 3, 9, 27"]).unwrap();
        assert_eq!(
            s.orchestrator().unwrap().tiers.weights(),
            PerTier::from([1, 3, 9, 27])
        );
        let s = Settings::default();
        assert_eq!(
            s.orchestrator().unwrap().tiers.weights(),
            TierTable::default().weights(),
            "unset, the table's weights"
        );
    }

    #[test]
    fn scheduling_settings_parse_and_refuse_nonsense() {
        let s = given(&[
            "--max-wait",
            "free=2h, enterprise=90s",
            "--fairness-unit",
            "jobs",
        ])
        .unwrap();
        let cfg = s.orchestrator().unwrap();
        use admedia_actors::domain::tier::Tier;
        assert_eq!(cfg.max_wait[Tier::Free], Duration::from_secs(7200));
        assert_eq!(cfg.max_wait[Tier::Enterprise], Duration::from_secs(90));
        assert_eq!(
            cfg.max_wait[Tier::Basic],
            admedia_actors::config::WaitLimits::default()[Tier::Basic]
        );
        assert_eq!(cfg.fairness, admedia_actors::config::FairnessUnit::Jobs);
        assert!("fast"
            .parse::<admedia_actors::config::FairnessUnit>()
            .is_err());
        for bad in ["free", "gold=1h", "free=soon", "free=0s"] {
            let e = given(&["--max-wait", bad]).unwrap_err();
            assert!(e.starts_with("--max-wait: invalid value"), "{bad}: {e}");
        }
        let mut s = Settings::default();
        s.quarantine_after = 0;
        assert!(s.orchestrator().is_err());
    }

    #[test]
    fn content_settings_are_read_at_start() {
        let s = given(&[
            "--output-thresholds",
            "sexual-minors=0.1, violence=0.8",
            "--output-threshold",
            "0.4",
            "--dotless-email-domains",
            "Example.org",
            "--rate-limits",
            "free=3",
        ])
        .unwrap();
        let cfg = s.orchestrator().unwrap();
        let t = &cfg.platform.output_thresholds;
        assert_eq!(t.default, Score::new(0.4).unwrap());
        assert_eq!(
            t.per_category.get("sexual-minors"),
            Some(&Score::new(0.1).unwrap())
        );
        assert_eq!(cfg.email_rules.dotless_domains, ["example.org"]);
        assert_eq!(s.rate_limits.0, PerTier::from([3, 300, 1200, 6000]));
        assert_eq!(
            Settings::default().dotless_email_domains,
            EmailRules::default(),
            "the documented default is the built-in one"
        );
        let provider = given(&[
            "--moderation-url=http://127.0.0.1:9",
            "--moderation-thresholds=sexual/minors=0.1",
            "--moderation-default-threshold=0.7",
            "--moderation-when-down=free=refuse,enterprise=rules",
        ])
        .unwrap()
        .moderation_provider()
        .unwrap()
        .unwrap();
        assert_eq!(provider.default_threshold, Score::new(0.7));
        assert_eq!(provider.thresholds.len(), 1);
        use crate::moderation::WhenDown;
        assert_eq!(provider.when_down[Tier::Enterprise], WhenDown::Rules);
        assert_eq!(provider.when_down[Tier::Basic], WhenDown::Refuse);
        for (flag, bad) in [
            ("--output-thresholds", "violence"),
            ("--output-thresholds", "violence=2"),
            ("--moderation-thresholds", "violence=high"),
            ("--moderation-default-threshold", "sure"),
            ("--moderation-when-down", "maybe"),
            ("--moderation-when-down", "gold=rules"),
            ("--dotless-email-domains", "jdoe@gmail.com"),
            ("--rate-limits", "gold=5"),
            ("--rate-limits", "free=x"),
        ] {
            // Refused at start, whether or not a provider is configured.
            let e = given(&[&format!("{flag}={bad}")]).unwrap_err();
            assert!(e.starts_with(&format!("{flag}: invalid value")), "{e}");
        }
    }
}
