//! What can go wrong when the outside world asks the orchestrator for
//! something. The server maps each variant to one problem type.

use thiserror::Error;

use crate::domain::account::AccountStatus;
use crate::domain::wallet::Credits;
use crate::store::StoreError;

#[derive(Debug, Error)]
pub enum OrchestratorError {
    #[error("missing or invalid credentials")]
    Unauthorized,
    /// The key was valid until `at`; the owner issues a new one.
    #[error("this API key expired at {at}")]
    KeyExpired { at: chrono::DateTime<chrono::Utc> },
    /// The account's status (suspended or terminated) refuses the request.
    #[error("the account is {}", .0.as_str())]
    AccountSuspended(AccountStatus),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("an account with this e-mail address already exists")]
    EmailTaken,
    #[error("{0}")]
    InvalidParams(String),
    /// Text the store cannot keep (a NUL character), anywhere in the input.
    #[error(transparent)]
    InvalidText(#[from] crate::domain::text::UnstorableText),
    /// The model is not in the registry; nothing was held.
    #[error("unknown model {0:?}: see GET /v1/models for the models served")]
    UnknownModel(String),
    #[error("not enough available credits: {required} required, {available} available")]
    InsufficientCredits {
        required: Credits,
        available: Credits,
    },
    #[error("too many waiting jobs: the limit for this tier is {limit}")]
    QueueLimit { limit: u32 },
    #[error("this Idempotency-Key was used with another request")]
    IdempotencyKeyReused,
    #[error("the job has already finished")]
    JobFinished,
    /// The job finished and retention removed its record: only its money
    /// (its ledger entries) is kept.
    #[error("the job finished and its record was pruned on {pruned_at} after the retention period; its charge stays in the ledger")]
    JobPruned {
        pruned_at: chrono::DateTime<chrono::Utc>,
    },
    /// The prompt breaks the content rules (ToS 3.2); nothing was charged.
    #[error("the prompt was refused by the content rules ({category})")]
    ContentRejected { category: String },
    /// The prompt could not be screened (the moderation provider is down
    /// and the tier's policy is to refuse); nothing was charged or counted.
    #[error("the prompt could not be checked right now; try again shortly")]
    ModerationUnavailable,
    #[error("the last active API key cannot be revoked; issue a new key first")]
    LastApiKey,
    /// A price change announced with less notice than required (ToS 4.5).
    #[error("prices may change from {earliest} at the earliest ({notice_secs} s notice)")]
    PriceNoticeTooShort {
        earliest: chrono::DateTime<chrono::Utc>,
        notice_secs: u64,
    },
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for OrchestratorError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => OrchestratorError::NotFound(what),
            StoreError::EmailTaken => OrchestratorError::EmailTaken,
            StoreError::InsufficientCredits {
                required,
                available,
            } => OrchestratorError::InsufficientCredits {
                required,
                available,
            },
            StoreError::QueueLimit { limit } => OrchestratorError::QueueLimit { limit },
            StoreError::IdempotencyKeyReused => OrchestratorError::IdempotencyKeyReused,
            StoreError::JobFinished => OrchestratorError::JobFinished,
            StoreError::LastApiKey => OrchestratorError::LastApiKey,
            StoreError::AccountInactive(status) => OrchestratorError::AccountSuspended(status),
            StoreError::Unavailable(msg) => OrchestratorError::Unavailable(msg),
            StoreError::LimitExceeded(msg) => OrchestratorError::InvalidParams(msg),
            e @ (StoreError::StaleTransition { .. }
            | StoreError::Deposed { .. }
            | StoreError::HoldResolved
            | StoreError::Invariant(_)
            | StoreError::Internal(_)) => OrchestratorError::Internal(e.to_string()),
        }
    }
}
