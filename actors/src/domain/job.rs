//! Jobs: what a user asks for (`JobRequest`, as sent), what we accept
//! (`JobSpec`, parsed once, within limits), and the job record with its
//! state machine: `queued → assigned → running → succeeded | failed |
//! cancelled`, and `assigned|running → queued` on a retryable failure.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::domain::ids::{JobId, LeaseToken, MaterialId, UserId, WorkerId};
use crate::domain::text::{self, UnstorableText};
use crate::domain::tier::{License, Tier};
use crate::domain::wallet::Credits;

/// Limits of one job, so one request cannot occupy a GPU without bound.
pub const MAX_PROMPT_CHARS: usize = 4000;
pub const MAX_MODEL_CHARS: usize = 64;
pub const MAX_IMAGE_COUNT: u32 = 8;
pub const MAX_VIDEO_SECONDS: u32 = 60;
pub const MIN_SIDE: u32 = 64;
pub const MAX_REFERENCE_IMAGES: usize = 4;

#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Debug,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum JobKind {
    Image,
    Video,
}

impl JobKind {
    pub const ALL: [JobKind; 2] = [JobKind::Image, JobKind::Video];

    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A job submission as the client sent it. Unknown fields are refused, so a
/// misspelt parameter is an error rather than silently ignored.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobRequest {
    pub kind: JobKind,
    /// Letters, digits and `. _ - : /`, surrounding spaces ignored.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, pattern = r"^\s*[A-Za-z0-9._:/-]{1,64}\s*$")
    )]
    pub model: String,
    /// Up to 4000 characters (surrounding spaces included), not blank, no
    /// NUL character.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 4000,
            pattern = r"^[^\u0000]*\S[^\u0000]*$"
        )
    )]
    pub prompt: String,
    #[serde(default)]
    pub params: ParamsRequest,
    /// Where start and terminal events are POSTed (signed): an `http://`
    /// or `https://` URL of at most 2048 characters to a public address;
    /// blank for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(
            max_length = 2048,
            pattern = r"^\s*([Hh][Tt][Tt][Pp][Ss]?://[^\u0000]*)?$"
        )
    )]
    pub webhook_url: Option<String>,
    /// Orders this job among the caller's own waiting jobs only (highest
    /// first, then submission order); it never changes the caller's share
    /// against other users or tiers. Default `normal`.
    // Read as text and parsed with the rest of the request, so a value
    // outside the three is `422 invalid-params` like every other rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Priority>))]
    pub priority: Option<String>,
}

/// Where a job stands among its owner's own waiting jobs.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Low, Priority::Normal, Priority::High];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }

    pub fn is_normal(&self) -> bool {
        *self == Priority::Normal
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Priority {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| invalid(format!("priority must be low, normal or high, not {s:?}")))
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParamsRequest {
    /// At least 64; images up to 2048x2048, video up to 1920x1080.
    #[cfg_attr(feature = "openapi", schema(minimum = 64, maximum = 2048))]
    pub width: Option<u32>,
    #[cfg_attr(feature = "openapi", schema(minimum = 64, maximum = 2048))]
    pub height: Option<u32>,
    /// Images only; 1..=8, default 1.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 8))]
    pub count: Option<u32>,
    /// Video only; required, 1..=60 seconds.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 60))]
    pub duration_s: Option<u32>,
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 18_446_744_073_709_551_615_u64)
    )]
    pub seed: Option<u64>,
    /// A material (by id) the job starts from: image-to-image, or the
    /// first frame of a video. Must be one of the caller's images.
    // A material id is a UUID: anything else is not an id at all (400),
    // as the schema says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<uuid::Uuid>))]
    pub init_image: Option<MaterialId>,
    /// Materials (by id) the model is guided by; images, at most
    /// `MAX_REFERENCE_IMAGES`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<uuid::Uuid>))]
    pub reference_images: Vec<MaterialId>,
}

/// Parameters of an accepted job; exactly one of `count` (image) and
/// `duration_s` (video) is set.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobParams {
    pub width: u32,
    pub height: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub duration_s: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<uuid::Uuid>))]
    pub init_image: Option<MaterialId>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<uuid::Uuid>))]
    pub reference_images: Vec<MaterialId>,
}

impl JobParams {
    /// The materials the job reads, each once, init image first.
    pub fn materials(&self) -> Vec<MaterialId> {
        let mut ids: Vec<MaterialId> = self.init_image.into_iter().collect();
        for id in &self.reference_images {
            if !ids.contains(id) {
                ids.push(*id);
            }
        }
        ids
    }

    /// How many outputs a successful attempt delivers.
    pub fn expected_outputs(&self) -> u32 {
        self.count.unwrap_or(1).max(1)
    }
}

/// A job that passed validation: within limits and priceable.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct JobSpec {
    pub kind: JobKind,
    pub model: String,
    pub prompt: String,
    pub params: JobParams,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Left out when `normal`, so the fingerprint of a request without
    /// one is what it was before priorities existed.
    #[serde(default, skip_serializing_if = "Priority::is_normal")]
    pub priority: Priority,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SpecError(pub String);

fn invalid(msg: impl Into<String>) -> SpecError {
    SpecError(msg.into())
}

impl JobRequest {
    /// Refuses text the store cannot keep, in any string of the request.
    pub fn check_text(&self) -> Result<(), UnstorableText> {
        text::check("model", &self.model)?;
        text::check("prompt", &self.prompt)?;
        text::check_opt("webhook_url", self.webhook_url.as_deref())?;
        text::check_opt("priority", self.priority.as_deref())
    }
}

impl JobSpec {
    pub fn parse(req: JobRequest) -> Result<JobSpec, SpecError> {
        let model = req.model.trim().to_owned();
        if model.is_empty() || model.chars().count() > MAX_MODEL_CHARS {
            return Err(invalid(format!(
                "model must be 1..={MAX_MODEL_CHARS} characters"
            )));
        }
        if !model
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'))
        {
            return Err(invalid(
                "model may contain only letters, digits and . _ - : /",
            ));
        }
        // The limit counts the prompt as sent, so it means the same to a
        // client checking it before sending.
        if req.prompt.chars().count() > MAX_PROMPT_CHARS {
            return Err(invalid(format!(
                "prompt is longer than {MAX_PROMPT_CHARS} characters"
            )));
        }
        let prompt = req.prompt.trim().to_owned();
        if prompt.is_empty() {
            return Err(invalid("prompt must not be empty"));
        }
        let p = req.params;
        let (default_w, default_h) = match req.kind {
            JobKind::Image => (1024, 1024),
            JobKind::Video => (1280, 720),
        };
        let width = p.width.unwrap_or(default_w);
        let height = p.height.unwrap_or(default_h);
        if width < MIN_SIDE || height < MIN_SIDE {
            return Err(invalid(format!(
                "width and height must be at least {MIN_SIDE}"
            )));
        }
        if SizeClass::of(req.kind, width, height).is_none() {
            return Err(invalid(match req.kind {
                JobKind::Image => format!("image size {width}x{height} is above 2048x2048"),
                JobKind::Video => format!("video size {width}x{height} is above 1920x1080"),
            }));
        }
        let (count, duration_s) = match req.kind {
            JobKind::Image => {
                if p.duration_s.is_some() {
                    return Err(invalid("duration_s applies to video jobs only"));
                }
                let count = p.count.unwrap_or(1);
                if !(1..=MAX_IMAGE_COUNT).contains(&count) {
                    return Err(invalid(format!("count must be 1..={MAX_IMAGE_COUNT}")));
                }
                (Some(count), None)
            }
            JobKind::Video => {
                if p.count.is_some() {
                    return Err(invalid("count applies to image jobs only"));
                }
                let d = p
                    .duration_s
                    .ok_or_else(|| invalid("duration_s is required for video jobs"))?;
                if !(1..=MAX_VIDEO_SECONDS).contains(&d) {
                    return Err(invalid(format!(
                        "duration_s must be 1..={MAX_VIDEO_SECONDS}"
                    )));
                }
                (None, Some(d))
            }
        };
        if req
            .webhook_url
            .as_ref()
            .is_some_and(|u| u.chars().count() > 2048)
        {
            return Err(invalid("webhook_url is longer than 2048 characters"));
        }
        if p.reference_images.len() > MAX_REFERENCE_IMAGES {
            return Err(invalid(format!(
                "reference_images: at most {MAX_REFERENCE_IMAGES}"
            )));
        }
        let mut reference_images = Vec::with_capacity(p.reference_images.len());
        for id in p.reference_images {
            if reference_images.contains(&id) {
                return Err(invalid(format!("reference_images lists {id} twice")));
            }
            reference_images.push(id);
        }
        let webhook_url = match req.webhook_url.map(|u| u.trim().to_owned()) {
            Some(u) if u.is_empty() => None,
            Some(u) => {
                let lower = u.to_ascii_lowercase();
                if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                    return Err(invalid("webhook_url must be an http(s) URL"));
                }
                Some(u)
            }
            None => None,
        };
        let priority = match req.priority.as_deref() {
            None => Priority::Normal,
            Some(p) => p.parse()?,
        };
        Ok(JobSpec {
            kind: req.kind,
            model,
            prompt,
            webhook_url,
            priority,
            params: JobParams {
                width,
                height,
                count,
                duration_s,
                seed: p.seed,
                init_image: p.init_image,
                reference_images,
            },
        })
    }

    pub fn size_class(&self) -> SizeClass {
        // A parsed spec was classified in `parse`; the fallback only keeps
        // this total for specs loaded from an older store.
        SizeClass::of(self.kind, self.params.width, self.params.height).unwrap_or(match self.kind {
            JobKind::Image => SizeClass::ImageLarge,
            JobKind::Video => SizeClass::VideoHd,
        })
    }

    /// A stable digest of the accepted request: the idempotency check
    /// compares it, so the same key with another body is detected even when
    /// the JSON differs only in whitespace or field order.
    pub fn fingerprint(&self) -> RequestHash {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        RequestHash::of(&canonical)
    }
}

/// SHA-256 of a request, stored beside its idempotency key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct RequestHash(pub [u8; 32]);

impl RequestHash {
    pub fn of(bytes: &[u8]) -> RequestHash {
        RequestHash(Sha256::digest(bytes).into())
    }
}

/// A client's `Idempotency-Key`: 1..=255 visible ASCII characters.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<IdempotencyKey, SpecError> {
        if raw.is_empty() || raw.len() > 255 {
            return Err(invalid("Idempotency-Key must be 1..=255 characters"));
        }
        if !raw.chars().all(|c| c.is_ascii_graphic()) {
            return Err(invalid("Idempotency-Key must be visible ASCII"));
        }
        Ok(IdempotencyKey(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum JobState {
    Queued,
    Assigned,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Assigned,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Assigned => "assigned",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    pub fn is_in_flight(self) -> bool {
        matches!(self, JobState::Assigned | JobState::Running)
    }

    /// The edges of the state machine; stores assert every write against it.
    pub fn may_become(self, next: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, next),
            (Queued, Assigned)
                | (Queued, Cancelled)
                | (Queued, Failed)
                | (Assigned, Running)
                | (Assigned | Running, Queued)
                | (Assigned | Running, Succeeded)
                | (Assigned | Running, Failed)
                | (Assigned | Running, Cancelled)
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| invalid(format!("unknown job state {s:?}")))
    }
}

/// Who caused a failure: the system (refunded, retried) or the user's input
/// (charged, not retried; ToS 4.3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum FailureClass {
    System,
    User,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobError {
    pub class: FailureClass,
    pub message: String,
    /// Set when the platform, not an attempt, ended the job: `expired`
    /// when it waited past its tier's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<JobErrorCode>,
}

/// Why the platform ended a job without an attempt failing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum JobErrorCode {
    /// It waited longer than its tier allows; its hold was voided.
    Expired,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Output {
    pub url: String,
    pub content_type: String,
    /// What the worker's safety check said about this output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub safety: Vec<crate::domain::content::outputs::SafetyLabel>,
    /// Set by the server when a label reached its threshold: the output
    /// is kept for operators and never shown to the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withheld: Option<crate::domain::content::outputs::Withheld>,
}

impl Output {
    pub fn new(url: impl Into<String>, content_type: impl Into<String>) -> Output {
        Output {
            url: url.into(),
            content_type: content_type.into(),
            safety: Vec::new(),
            withheld: None,
        }
    }

    /// Marks the output withheld or not by its safety labels, overwriting
    /// whatever the worker sent in `withheld`: only the server decides.
    pub fn judge_safety(&mut self, thresholds: &crate::domain::content::outputs::OutputThresholds) {
        self.withheld = thresholds.judge(&self.safety);
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobResult {
    pub outputs: Vec<Output>,
    pub license: License,
}

impl JobResult {
    /// What the user may see: the withheld outputs left out.
    pub fn delivered(&self) -> impl Iterator<Item = &Output> {
        self.outputs.iter().filter(|o| o.withheld.is_none())
    }

    pub fn withheld_count(&self) -> usize {
        self.outputs.iter().filter(|o| o.withheld.is_some()).count()
    }
}

/// Where the job's hold stands.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Debug,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Charge {
    Held,
    Posted,
    Voided,
}

impl Charge {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The stored job.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub user_id: UserId,
    /// Submission order across the store: a retried job keeps its place in
    /// line by keeping its `seq`.
    pub seq: u64,
    pub spec: JobSpec,
    /// The tier at submission: it sets the job's priority and licence.
    pub tier: Tier,
    pub cost: Credits,
    pub state: JobState,
    /// Attempts started so far; the current attempt's number when in flight.
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// When a retried job may be dispatched again.
    pub retry_at: Option<DateTime<Utc>>,
    pub error: Option<JobError>,
    pub result: Option<JobResult>,
    pub charge: Charge,
    pub worker_id: Option<WorkerId>,
    pub lease: Option<LeaseToken>,
    /// The price table version that set `cost` (ToS 4.5); 1 for jobs
    /// stored before prices were versioned.
    #[serde(default = "first_price_version")]
    pub price_version: u32,
    /// When retention removed the job's prompt, parameters beyond their
    /// shape, result, error and attempt records (`None`: kept in full).
    /// What the money needs (id, owner, cost, charge, times) stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned_at: Option<DateTime<Utc>>,
}

fn first_price_version() -> u32 {
    1
}

/// How an attempt ended, as its record keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AttemptOutcomeLabel {
    Succeeded,
    /// Outputs made, every one withheld by the content checks.
    Withheld,
    UserFailure,
    SystemFailure,
    Cancelled,
}

impl AttemptOutcomeLabel {
    pub const ALL: [AttemptOutcomeLabel; 5] = [
        AttemptOutcomeLabel::Succeeded,
        AttemptOutcomeLabel::Withheld,
        AttemptOutcomeLabel::UserFailure,
        AttemptOutcomeLabel::SystemFailure,
        AttemptOutcomeLabel::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcomeLabel::Succeeded => "succeeded",
            AttemptOutcomeLabel::Withheld => "withheld",
            AttemptOutcomeLabel::UserFailure => "user_failure",
            AttemptOutcomeLabel::SystemFailure => "system_failure",
            AttemptOutcomeLabel::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for AttemptOutcomeLabel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AttemptOutcomeLabel::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| format!("unknown attempt outcome {s:?}"))
    }
}

/// How an attempt's end is recorded: its label for the attempt history
/// and, when the hold is resolved by it, how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptEnd {
    pub label: AttemptOutcomeLabel,
    pub message: Option<String>,
    /// `Posted` or `Voided` when the job ended; `None` when it waits for a
    /// retry with its hold still open.
    pub resolution: Option<Charge>,
}

impl Job {
    /// The state machine for the end of an attempt, shared by every store
    /// adapter (which then books `resolution` and writes the job):
    /// success and user failure end the job and capture the hold (ToS 4.3:
    /// used credits are not refunded); a system failure re-queues the job
    /// while attempts remain, else ends it and releases the hold (the
    /// automatic refund of ToS 4.3).
    pub fn end_attempt(&mut self, outcome: AttemptOutcome, now: DateTime<Utc>) -> AttemptEnd {
        let end = match outcome {
            AttemptOutcome::Succeeded { outputs } => {
                self.state = JobState::Succeeded;
                self.result = Some(JobResult {
                    outputs,
                    license: self.tier.license(),
                });
                self.error = None;
                AttemptEnd {
                    label: AttemptOutcomeLabel::Succeeded,
                    message: None,
                    resolution: Some(Charge::Posted),
                }
            }
            AttemptOutcome::Withheld { outputs } => {
                // Every output was withheld: nothing was delivered, and
                // the prompt had passed our screen, so the user is not
                // charged (docs/content-moderation.md). Not retried: the
                // same request would likely produce the same.
                self.state = JobState::Failed;
                self.result = Some(JobResult {
                    outputs,
                    license: self.tier.license(),
                });
                self.error = Some(JobError {
                    class: FailureClass::System,
                    message: WITHHELD_MESSAGE.into(),
                    code: None,
                });
                AttemptEnd {
                    label: AttemptOutcomeLabel::Withheld,
                    message: Some(WITHHELD_MESSAGE.into()),
                    resolution: Some(Charge::Voided),
                }
            }
            AttemptOutcome::UserFailure { message } => {
                self.state = JobState::Failed;
                self.error = Some(JobError {
                    class: FailureClass::User,
                    message: message.clone(),
                    code: None,
                });
                AttemptEnd {
                    label: AttemptOutcomeLabel::UserFailure,
                    message: Some(message),
                    resolution: Some(Charge::Posted),
                }
            }
            AttemptOutcome::SystemFailure { message, retry_at } => {
                self.error = Some(JobError {
                    class: FailureClass::System,
                    message: message.clone(),
                    code: None,
                });
                let resolution = if self.attempts < self.max_attempts {
                    self.state = JobState::Queued;
                    self.retry_at = Some(retry_at);
                    None
                } else {
                    self.state = JobState::Failed;
                    Some(Charge::Voided)
                };
                AttemptEnd {
                    label: AttemptOutcomeLabel::SystemFailure,
                    message: Some(message),
                    resolution,
                }
            }
        };
        if let Some(charge) = end.resolution {
            self.charge = charge;
            self.finished_at = Some(now);
        }
        self.lease = None;
        self.worker_id = None;
        end
    }

    /// The user (or an operator) cancels: a waiting job is refunded, one in
    /// flight is charged (its GPU time was used). `None` when it already
    /// ended.
    pub fn cancel(&mut self, now: DateTime<Utc>) -> Option<Charge> {
        let resolution = match self.state {
            JobState::Queued => Charge::Voided,
            // The planted bug (simulation tests only): the GPU time is
            // given back.
            JobState::Assigned | JobState::Running
                if crate::planted::active(crate::planted::Bug::CancelVoidsRunning) =>
            {
                Charge::Voided
            }
            JobState::Assigned | JobState::Running => Charge::Posted,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled => return None,
        };
        self.state = JobState::Cancelled;
        self.charge = resolution;
        self.finished_at = Some(now);
        self.lease = None;
        self.worker_id = None;
        Some(resolution)
    }
}

impl Job {
    /// What retention leaves of a finished job: its identity, owner, tier,
    /// kind and model, the shape it was priced by (size, count, duration),
    /// its cost, charge, attempt count and times. Prompt, seed, input
    /// materials, result, error and webhook address go. `None` unless the
    /// job is finished and not pruned yet.
    pub fn pruned(&self, now: DateTime<Utc>) -> Option<Job> {
        if !self.state.is_terminal() || self.pruned_at.is_some() {
            return None;
        }
        let mut thin = self.clone();
        thin.spec.prompt = String::new();
        thin.spec.webhook_url = None;
        thin.spec.params = JobParams {
            width: self.spec.params.width,
            height: self.spec.params.height,
            count: self.spec.params.count,
            duration_s: self.spec.params.duration_s,
            seed: None,
            init_image: None,
            reference_images: Vec::new(),
        };
        thin.result = None;
        thin.error = None;
        thin.pruned_at = Some(now);
        Some(thin)
    }

    /// A waiting job passed its tier's waiting limit: it fails as
    /// `expired`, a system-side failure, so its hold is voided (ToS 4.3).
    /// `None` unless it is waiting.
    pub fn expire(&mut self, now: DateTime<Utc>) -> Option<Charge> {
        if self.state != JobState::Queued {
            return None;
        }
        let since = match self.retry_at {
            Some(at) if self.attempts > 0 => at,
            _ => self.created_at,
        };
        let waited = (now - since).to_std().unwrap_or_default();
        self.state = JobState::Failed;
        self.error = Some(JobError {
            class: FailureClass::System,
            message: format!(
                "expired: waited {} s for a GPU, longer than the {} tier allows; refunded",
                waited.as_secs(),
                self.tier
            ),
            code: Some(JobErrorCode::Expired),
        });
        self.charge = Charge::Voided;
        self.finished_at = Some(now);
        self.retry_at = None;
        self.lease = None;
        self.worker_id = None;
        Some(Charge::Voided)
    }
}
/// The error of a job whose every output was withheld.
pub const WITHHELD_MESSAGE: &str = "every output was withheld by the content checks";

/// What the worker reported for one attempt.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum AttemptOutcome {
    /// At least one output may be delivered (others may be withheld).
    Succeeded { outputs: Vec<Output> },
    /// Outputs were made but every one was withheld: refunded, no retry.
    Withheld { outputs: Vec<Output> },
    /// The input was at fault: charged, no retry.
    UserFailure { message: String },
    /// Our fault (error, lost worker, timeout): retried at `retry_at` while
    /// attempts remain, then refunded.
    SystemFailure {
        message: String,
        retry_at: DateTime<Utc>,
    },
}

/// How big a job is, in the classes the price table and the GPU memory
/// estimates distinguish.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum SizeClass {
    ImageStandard,
    ImageLarge,
    VideoStandard,
    VideoHd,
}

impl SizeClass {
    /// `None` when the size is beyond what the platform renders.
    pub fn of(kind: JobKind, width: u32, height: u32) -> Option<SizeClass> {
        let (long, short) = (width.max(height), width.min(height));
        match kind {
            JobKind::Image if long <= 1024 => Some(SizeClass::ImageStandard),
            JobKind::Image if long <= 2048 => Some(SizeClass::ImageLarge),
            JobKind::Video if long <= 1280 && short <= 720 => Some(SizeClass::VideoStandard),
            JobKind::Video if long <= 1920 && short <= 1080 => Some(SizeClass::VideoHd),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_cannot_clear_its_own_output() {
        use crate::domain::content::outputs::{OutputThresholds, SafetyLabel, Withheld};
        use crate::domain::content::Score;
        let t = OutputThresholds::default();
        let mut flagged = Output::new("sim://x/0.png", "image/png");
        flagged.safety = vec![SafetyLabel {
            category: "violence".into(),
            score: Score::new(0.9).unwrap(),
        }];
        flagged.withheld = None;
        flagged.judge_safety(&t);
        assert!(flagged.withheld.is_some());
        let mut clean = Output::new("sim://x/1.png", "image/png");
        clean.withheld = Some(Withheld {
            category: "x".into(),
            score: Score::ONE,
        });
        clean.judge_safety(&t);
        assert_eq!(clean.withheld, None);
    }
    use crate::domain::pricing::PriceTable;

    fn req(kind: JobKind, params: ParamsRequest) -> JobRequest {
        JobRequest {
            kind,
            model: "sdxl".into(),
            prompt: "a cat".into(),
            params,
            webhook_url: None,
            priority: None,
        }
    }

    #[test]
    fn webhook_url_must_be_http() {
        let with = |u: &str| {
            let mut r = req(JobKind::Image, ParamsRequest::default());
            r.webhook_url = Some(u.into());
            JobSpec::parse(r)
        };
        assert!(with("https://hooks.example.com/x").is_ok());
        assert_eq!(with("  ").unwrap().webhook_url, None);
        assert!(with("ftp://example.com").is_err());
        assert!(with("javascript:alert(1)").is_err());
        assert!(with(&format!("https://e.com/{}", "a".repeat(2100))).is_err());
    }

    fn cost(kind: JobKind, params: ParamsRequest) -> i64 {
        let spec = JobSpec::parse(req(kind, params)).unwrap();
        PriceTable::default().cost(&spec).unwrap().get()
    }

    #[test]
    fn prices_follow_the_default_table() {
        let img = |w, h, n| ParamsRequest {
            width: Some(w),
            height: Some(h),
            count: Some(n),
            ..Default::default()
        };
        let vid = |w, h, d| ParamsRequest {
            width: Some(w),
            height: Some(h),
            duration_s: Some(d),
            ..Default::default()
        };
        assert_eq!(cost(JobKind::Image, ParamsRequest::default()), 1);
        assert_eq!(cost(JobKind::Image, img(1024, 1024, 3)), 3);
        assert_eq!(cost(JobKind::Image, img(1025, 512, 1)), 2);
        assert_eq!(cost(JobKind::Image, img(2048, 2048, 4)), 8);
        assert_eq!(cost(JobKind::Video, vid(1280, 720, 5)), 25);
        assert_eq!(cost(JobKind::Video, vid(720, 1280, 5)), 25);
        assert_eq!(cost(JobKind::Video, vid(1920, 1080, 3)), 30);
        assert_eq!(cost(JobKind::Video, vid(1281, 720, 1)), 10);
    }

    #[test]
    fn out_of_limit_params_are_rejected() {
        let bad = [
            req(
                JobKind::Image,
                ParamsRequest {
                    width: Some(2049),
                    ..Default::default()
                },
            ),
            req(
                JobKind::Image,
                ParamsRequest {
                    count: Some(0),
                    ..Default::default()
                },
            ),
            req(
                JobKind::Image,
                ParamsRequest {
                    count: Some(9),
                    ..Default::default()
                },
            ),
            req(
                JobKind::Image,
                ParamsRequest {
                    width: Some(10),
                    ..Default::default()
                },
            ),
            req(
                JobKind::Image,
                ParamsRequest {
                    duration_s: Some(5),
                    ..Default::default()
                },
            ),
            req(JobKind::Video, ParamsRequest::default()),
            req(
                JobKind::Video,
                ParamsRequest {
                    duration_s: Some(0),
                    ..Default::default()
                },
            ),
            req(
                JobKind::Video,
                ParamsRequest {
                    duration_s: Some(61),
                    ..Default::default()
                },
            ),
            req(
                JobKind::Video,
                ParamsRequest {
                    duration_s: Some(5),
                    count: Some(1),
                    ..Default::default()
                },
            ),
            req(
                JobKind::Video,
                ParamsRequest {
                    duration_s: Some(5),
                    width: Some(1920),
                    height: Some(1200),
                    ..Default::default()
                },
            ),
        ];
        for r in bad {
            assert!(JobSpec::parse(r.clone()).is_err(), "{r:?} accepted");
        }
    }

    #[test]
    fn empty_prompt_and_bad_model_are_rejected() {
        let mut r = req(JobKind::Image, ParamsRequest::default());
        r.prompt = "   ".into();
        assert!(JobSpec::parse(r).is_err());
        let mut r = req(JobKind::Image, ParamsRequest::default());
        r.prompt = "x".repeat(MAX_PROMPT_CHARS + 1);
        assert!(JobSpec::parse(r).is_err());
        let mut r = req(JobKind::Image, ParamsRequest::default());
        r.model = "rm -rf".into();
        assert!(JobSpec::parse(r).is_err());
    }

    #[test]
    fn fingerprint_ignores_formatting_but_not_content() {
        let a: JobRequest =
            serde_json::from_str(r#"{"kind":"image","model":"m","prompt":"p"}"#).unwrap();
        let b: JobRequest = serde_json::from_str(
            r#"{ "prompt" : "p", "model":"m", "kind":"image", "params": {"count": 1} }"#,
        )
        .unwrap();
        let c: JobRequest =
            serde_json::from_str(r#"{"kind":"image","model":"m","prompt":"q"}"#).unwrap();
        let fp = |r| JobSpec::parse(r).unwrap().fingerprint();
        assert_eq!(fp(a.clone()), fp(b));
        assert_ne!(fp(a), fp(c));
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<JobRequest>(
            r#"{"kind":"image","model":"m","prompt":"p","colour":"red"}"#
        )
        .is_err());
        assert!(serde_json::from_str::<JobRequest>(
            r#"{"kind":"image","model":"m","prompt":"p","params":{"widht":5}}"#
        )
        .is_err());
    }

    #[test]
    fn state_machine_edges() {
        use JobState::*;
        assert!(Queued.may_become(Assigned));
        assert!(Running.may_become(Queued));
        assert!(!Succeeded.may_become(Queued));
        assert!(!Queued.may_become(Succeeded));
        assert!(!Cancelled.may_become(Cancelled));
    }

    #[test]
    fn only_a_waiting_job_expires_and_its_hold_is_voided() {
        let spec = JobSpec::parse(req(JobKind::Image, ParamsRequest::default())).unwrap();
        let now = crate::clock::Clock::system().now();
        let mut job = Job {
            id: JobId::generate(),
            user_id: UserId::generate(),
            seq: 1,
            spec,
            tier: Tier::Free,
            cost: Credits::new(1).unwrap(),
            state: JobState::Queued,
            attempts: 1,
            max_attempts: 3,
            created_at: now,
            started_at: None,
            finished_at: None,
            retry_at: Some(now),
            error: None,
            result: None,
            charge: Charge::Held,
            worker_id: None,
            lease: None,
            pruned_at: None,
            price_version: 1,
        };
        let mut running = job.clone();
        assert_eq!(job.expire(now), Some(Charge::Voided));
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.charge, Charge::Voided);
        let error = job.error.clone().unwrap();
        assert_eq!(error.class, FailureClass::System);
        assert_eq!(error.code, Some(JobErrorCode::Expired));
        // A second expiry, or one of a job in flight or finished, is refused.
        assert_eq!(job.expire(now), None);
        running.state = JobState::Running;
        assert_eq!(running.expire(now), None);
        assert_eq!(running.state, JobState::Running);
        assert!(JobState::Queued.may_become(JobState::Failed));
    }

    #[test]
    fn idempotency_key_limits() {
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse("order-42").is_ok());
    }
}
