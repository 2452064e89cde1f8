//! The orchestrator's rules as configuration: tiers, prices, retries and
//! timeouts. The server fills this from `ADMEDIA_*` variables and an
//! optional TOML file; every field has a default that works on a laptop.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::job::{JobKind, JobSpec, SizeClass};
use crate::domain::model_registry::ModelRegistry;
use crate::domain::pricing::PriceTable;
use crate::domain::tier::{PerTier, Tier, TierTable};
use crate::domain::wallet::Credits;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OrchestratorConfig {
    pub tiers: TierTable,
    pub prices: PriceTable,
    pub registration_credits: Credits,
    /// Attempts per job before the hold is voided (refund).
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with jitter.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long one attempt of an image or video job may take.
    pub image_deadline: Duration,
    pub video_deadline: Duration,
    /// A wallet actor with nothing to do for this long is stopped.
    pub wallet_idle: Duration,
    /// A remote worker silent for this long loses its attempts.
    pub worker_lease: Duration,
    /// After a restart or a failover, how long an attempt of the previous
    /// term waits for its worker to present it again (see `wire`'s
    /// `AGENT_RETURN_WITHIN`) before it counts as lost.
    #[serde(default = "default_represent_grace")]
    pub represent_grace: Duration,
    /// GPU memory a job of each size class needs.
    pub vram: VramTable,
    /// First wait before writing an attempt's end again after the store
    /// refused it; doubles per try (see `actors::job_actor`).
    #[serde(default = "default_settle_retry")]
    pub settle_retry: Duration,
    /// How e-mail addresses are compared for one account per person.
    #[serde(default)]
    pub email_rules: crate::domain::email::EmailRules,
    /// Price notice, membership gifts, content violations (ToS 3.2, 4.5, 5).
    #[serde(default)]
    pub platform: crate::policy::PlatformConfig,
    /// The models served; a submission naming another is refused.
    #[serde(default)]
    pub models: ModelRegistry,
    /// What tiers share by weight: estimated GPU time, or dispatches.
    #[serde(default)]
    pub fairness: FairnessUnit,
    /// How long a job of each tier may wait for its first (or next)
    /// attempt before it fails as expired and is refunded.
    #[serde(default)]
    pub max_wait: WaitLimits,
    /// Consecutive system failures that quarantine a worker.
    pub quarantine_after: u32,
    /// The first quarantine's length; it doubles while failures continue.
    pub quarantine_base: Duration,
    pub quarantine_max: Duration,
    /// At most this percentage of the connected workers is quarantined at
    /// once, so failures spread over the whole fleet (a bad model, a bad
    /// deploy) slow it down instead of stopping it. A lone worker is never
    /// quarantined below 100.
    #[serde(default = "default_quarantine_max_percent")]
    pub quarantine_max_percent: u8,
    /// How long a finished job is kept in full, by the state it ended in.
    #[serde(default)]
    pub job_retention: JobRetention,
    /// How long an `Idempotency-Key` protects a submission; a replay after
    /// that is a new submission. Each key keeps the job as first returned,
    /// so this bounds what a server at a steady rate holds for them.
    #[serde(default = "default_idempotency_window")]
    pub idempotency_window: Duration,
    /// Where every actor reads the time: the process's clocks, unless the
    /// simulation injects its own (`crate::clock`). Not read from files.
    #[serde(skip)]
    pub clock: crate::clock::Clock,
    /// Where every actor draws random numbers (retry jitter, simulated
    /// GPUs, API keys): the process's generator unless a seeded one is
    /// injected. Not read from files.
    #[serde(skip)]
    pub random: crate::clock::Random,
}

fn default_quarantine_max_percent() -> u8 {
    50
}

/// A day, as Stripe keeps its keys.
fn default_idempotency_window() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// Below this a client retrying over a slow network could be charged
/// twice for one request.
const MIN_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(60);

/// How long a finished job keeps its prompt, parameters, result, error,
/// attempt records and events, by the state it ended in; after that the
/// platform sweep prunes them. What the money needs is kept for ever.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRetention {
    pub succeeded: Duration,
    pub failed: Duration,
    pub cancelled: Duration,
}

impl Default for JobRetention {
    fn default() -> Self {
        let days = |n: u64| Duration::from_secs(n * 86_400);
        JobRetention {
            succeeded: days(7),
            // A failure is what a user comes back to ask about.
            failed: days(30),
            cancelled: days(7),
        }
    }
}

impl JobRetention {
    /// The retention of jobs that ended in `state`; `None` while the job
    /// has not ended.
    pub fn of(&self, state: crate::domain::job::JobState) -> Option<Duration> {
        use crate::domain::job::JobState;
        match state {
            JobState::Succeeded => Some(self.succeeded),
            JobState::Failed => Some(self.failed),
            JobState::Cancelled => Some(self.cancelled),
            JobState::Queued | JobState::Assigned | JobState::Running => None,
        }
    }

    /// Jobs that ended before these instants are pruned at `now`.
    pub fn cutoffs(&self, now: chrono::DateTime<chrono::Utc>) -> crate::store::FinishedBefore {
        let before =
            |d: Duration| now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX / 2);
        crate::store::FinishedBefore {
            succeeded: before(self.succeeded),
            failed: before(self.failed),
            cancelled: before(self.cancelled),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        // A retention shorter than a minute prunes what a client polling
        // for the result has not read yet.
        let least = Duration::from_secs(60);
        for (state, d) in [
            ("succeeded", self.succeeded),
            ("failed", self.failed),
            ("cancelled", self.cancelled),
        ] {
            if d < least {
                return Err(format!(
                    "the retention of {state} jobs must be at least 60 s"
                ));
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for JobRetention {
    type Err = String;

    /// `succeeded=7d,failed=30d`: the final states named get that
    /// retention, the others keep their default.
    fn from_str(raw: &str) -> Result<JobRetention, String> {
        let mut retention = JobRetention::default();
        let mut named: Vec<&str> = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (state, span) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected state=duration, e.g. failed=30d"))?;
            let state = state.trim();
            let span = crate::domain::price_schedule::parse_duration(span.trim())
                .map_err(|e| format!("{part:?}: {e}"))?;
            let slot = match state {
                "succeeded" => &mut retention.succeeded,
                "failed" => &mut retention.failed,
                "cancelled" => &mut retention.cancelled,
                "queued" | "assigned" | "running" => {
                    return Err(format!(
                        "{part:?}: {state} jobs have not finished; only succeeded, failed and cancelled jobs are pruned"
                    ))
                }
                other => {
                    return Err(format!(
                        "unknown state {other:?} (succeeded, failed, cancelled)"
                    ))
                }
            };
            if named.contains(&state) {
                return Err(format!("{state} is named twice"));
            }
            named.push(state);
            *slot = span;
        }
        retention.validate()?;
        Ok(retention)
    }
}

/// The longest wait per tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WaitLimits(pub PerTier<Duration>);

impl Default for WaitLimits {
    fn default() -> Self {
        let h = |n: u64| Duration::from_secs(n * 3600);
        WaitLimits(PerTier::from([h(24), h(12), h(6), h(6)]))
    }
}

/// The shortest wait a tier may be given: less expires a job before any
/// worker could take it.
pub const MIN_WAIT: Duration = Duration::from_millis(100);

impl std::str::FromStr for WaitLimits {
    type Err = String;

    /// `free=24h,enterprise=30m`: the tiers named get that waiting limit,
    /// the others keep their default.
    fn from_str(raw: &str) -> Result<Self, String> {
        let named = crate::domain::tier::parse_tier_pairs(raw, "tier=duration", |text| {
            let limit = crate::domain::price_schedule::parse_duration(text)?;
            if limit < MIN_WAIT {
                return Err("a waiting limit must be at least 100 ms".into());
            }
            Ok(limit)
        })?;
        Ok(WaitLimits(named.or(WaitLimits::default().0)))
    }
}

impl std::ops::Index<Tier> for WaitLimits {
    type Output = Duration;
    fn index(&self, tier: Tier) -> &Duration {
        &self.0[tier]
    }
}

impl std::ops::IndexMut<Tier> for WaitLimits {
    fn index_mut(&mut self, tier: Tier) -> &mut Duration {
        &mut self.0[tier]
    }
}

/// GPU memory (MB) needed per size class; configuration may replace it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VramTable {
    pub image_standard: u32,
    pub image_large: u32,
    pub video_standard: u32,
    pub video_hd: u32,
}

impl Default for VramTable {
    fn default() -> Self {
        VramTable {
            image_standard: 8_000,
            image_large: 16_000,
            video_standard: 24_000,
            video_hd: 40_000,
        }
    }
}

fn default_settle_retry() -> Duration {
    Duration::from_secs(1)
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            tiers: TierTable::default(),
            prices: PriceTable::default(),
            registration_credits: Credits::new(100).unwrap_or(Credits::ZERO),
            max_attempts: 3,
            retry_base: Duration::from_millis(1000),
            retry_max: Duration::from_secs(60),
            image_deadline: Duration::from_secs(120),
            video_deadline: Duration::from_secs(900),
            wallet_idle: Duration::from_secs(300),
            worker_lease: Duration::from_millis(15_000),
            represent_grace: default_represent_grace(),
            vram: VramTable::default(),
            settle_retry: default_settle_retry(),
            email_rules: crate::domain::email::EmailRules::default(),
            platform: crate::policy::PlatformConfig::default(),
            models: ModelRegistry::default(),
            fairness: FairnessUnit::default(),
            max_wait: WaitLimits::default(),
            quarantine_after: 3,
            quarantine_base: Duration::from_secs(60),
            quarantine_max: Duration::from_secs(3600),
            quarantine_max_percent: default_quarantine_max_percent(),
            job_retention: JobRetention::default(),
            idempotency_window: default_idempotency_window(),
            clock: crate::clock::Clock::system(),
            random: crate::clock::Random::system(),
        }
    }
}

fn default_represent_grace() -> Duration {
    DEFAULT_REPRESENT_GRACE
}

/// Longer than an agent holding attempts takes to come back.
pub const DEFAULT_REPRESENT_GRACE: Duration = Duration::from_secs(30);
const _: () = assert!(
    DEFAULT_REPRESENT_GRACE.as_millis() > crate::wire::AGENT_RETURN_WITHIN.as_millis(),
    "the default grace must outlast an agent's return"
);

/// A setting of [`OrchestratorConfig`] that `validate` can refuse by
/// itself, so whoever read it (the server, from a variable) can name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    MaxAttempts,
    WorkerLease,
    RetryBase,
    MaxWait,
    QuarantineAfter,
    QuarantineMaxPercent,
    QuarantineBase,
    IdempotencyWindow,
    /// Tiers, prices, the platform's settings, models or retention: their
    /// own messages name what is wrong.
    Other,
}

/// Why a configuration was refused, and which setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub setting: Setting,
    pub why: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

impl From<String> for Invalid {
    fn from(why: String) -> Invalid {
        Invalid {
            setting: Setting::Other,
            why,
        }
    }
}

fn refuse(setting: Setting, why: &str) -> Result<(), Invalid> {
    Err(Invalid {
        setting,
        why: why.into(),
    })
}

impl OrchestratorConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        self.tiers.validate()?;
        self.prices.validate()?;
        self.platform.validate()?;
        if !(1..=20).contains(&self.max_attempts) {
            return refuse(Setting::MaxAttempts, "max_attempts must be 1..=20");
        }
        if self.worker_lease < Duration::from_millis(100) {
            return refuse(Setting::WorkerLease, "worker lease must be at least 100 ms");
        }
        if self.retry_base > self.retry_max {
            return refuse(Setting::RetryBase, "retry_base must not exceed retry_max");
        }
        self.models.validate()?;
        if self.max_wait.0.values().any(|d| *d < MIN_WAIT) {
            return refuse(
                Setting::MaxWait,
                "max_wait must be at least 100 ms for every tier",
            );
        }
        if !(1..=100).contains(&self.quarantine_after) {
            return refuse(Setting::QuarantineAfter, "quarantine_after must be 1..=100");
        }
        if self.quarantine_max_percent > 100 {
            return refuse(
                Setting::QuarantineMaxPercent,
                "quarantine_max_percent must be 0..=100",
            );
        }
        if self.quarantine_base.is_zero() || self.quarantine_base > self.quarantine_max {
            return refuse(
                Setting::QuarantineBase,
                "quarantine_base must be above zero and not exceed quarantine_max",
            );
        }
        self.job_retention.validate()?;
        if self.idempotency_window < MIN_IDEMPOTENCY_WINDOW {
            return refuse(
                Setting::IdempotencyWindow,
                "the idempotency window must be at least a minute",
            );
        }
        Ok(())
    }

    /// GPU memory a job needs: its model's, or its size's if more.
    pub fn vram_needed(&self, spec: &JobSpec) -> u32 {
        let by_size = self.vram_needed_mb(spec.size_class());
        self.models
            .get(&spec.model)
            .map_or(by_size, |m| m.vram_mb.max(by_size))
    }

    /// Expected GPU time of a job, from its model; a job stored before
    /// its model left the registry is estimated like the kind's default.
    pub fn expected_runtime(&self, spec: &JobSpec) -> Duration {
        match self.models.get(&spec.model) {
            Some(m) => m.expected_runtime(spec),
            None => {
                let per_unit = match spec.kind {
                    JobKind::Image => 4_000,
                    JobKind::Video => 6_000,
                };
                Duration::from_millis(
                    per_unit * u64::from(crate::domain::model_registry::job_units(spec)),
                )
            }
        }
    }

    pub fn vram_needed_mb(&self, size: SizeClass) -> u32 {
        match size {
            SizeClass::ImageStandard => self.vram.image_standard,
            SizeClass::ImageLarge => self.vram.image_large,
            SizeClass::VideoStandard => self.vram.video_standard,
            SizeClass::VideoHd => self.vram.video_hd,
        }
    }

    pub fn deadline(&self, kind: JobKind) -> Duration {
        match kind {
            JobKind::Image => self.image_deadline,
            JobKind::Video => self.video_deadline,
        }
    }

    /// Exponential backoff with "equal jitter": half the delay is fixed, so
    /// retries never bunch at zero, half is random, so they spread out.
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        let full = self
            .retry_base
            .saturating_mul(1u32 << exp)
            .min(self.retry_max);
        let half = full / 2;
        let jitter = half.mul_f64(self.random.unit());
        half + jitter
    }
}

/// What tiers share by weight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FairnessUnit {
    /// Estimated GPU time: a ten-minute video weighs what it occupies.
    #[default]
    GpuSeconds,
    /// Dispatches, whatever each job costs.
    Jobs,
}

impl std::str::FromStr for FairnessUnit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gpu_seconds" => Ok(FairnessUnit::GpuSeconds),
            "jobs" => Ok(FairnessUnit::Jobs),
            other => Err(format!(
                "fairness unit {other:?}: expected gpu_seconds or jobs"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_with_jitter_and_caps() {
        let cfg = OrchestratorConfig::default();
        for _ in 0..100 {
            let d1 = cfg.retry_delay(1);
            assert!(d1 >= Duration::from_millis(500) && d1 <= Duration::from_millis(1000));
            let d3 = cfg.retry_delay(3);
            assert!(d3 >= Duration::from_millis(2000) && d3 <= Duration::from_millis(4000));
            assert!(cfg.retry_delay(30) <= cfg.retry_max);
        }
    }

    #[test]
    fn config_validation_rejects_nonsense() {
        let mut cfg = OrchestratorConfig::default();
        assert!(cfg.validate().is_ok());
        cfg.max_attempts = 0;
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn waiting_limits_parse_over_the_defaults() {
        let limits: WaitLimits = "free=2h, enterprise=90s".parse().unwrap();
        assert_eq!(limits[Tier::Free], Duration::from_secs(7200));
        assert_eq!(limits[Tier::Enterprise], Duration::from_secs(90));
        assert_eq!(limits[Tier::Basic], WaitLimits::default()[Tier::Basic]);
        assert_eq!("".parse::<WaitLimits>(), Ok(WaitLimits::default()));
        for bad in ["free", "gold=1h", "free=soon", "free=0s", "free=99ms"] {
            assert!(bad.parse::<WaitLimits>().is_err(), "{bad} accepted");
        }
    }
}
