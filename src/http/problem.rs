//! Errors as `application/problem+json` (RFC 9457) with a stable `type`
//! per failure, so clients branch on `type`, never on prose.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use admedia_actors::OrchestratorError;
use serde::Serialize;
use utoipa::ToSchema;

/// Seconds a client should wait before retrying after `unavailable`.
const RETRY_AFTER_UNAVAILABLE: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    /// The API key was valid until its expiry; the owner issues a new one.
    #[error("{0}")]
    KeyExpired(String),
    /// The key's scopes do not allow the endpoint; `required` names the
    /// scope it needs (or `full-access`: a key without scopes).
    #[error("{detail}")]
    InsufficientScope {
        detail: String,
        required: &'static str,
    },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    AccountSuspended(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    EmailTaken(String),
    /// Malformed JSON, unknown field, wrong type.
    #[error("{0}")]
    InvalidRequest(String),
    /// Well-formed but outside the rules.
    #[error("{0}")]
    InvalidParams(String),
    /// Text the store cannot keep (a NUL character), wherever it was sent.
    #[error("{0}")]
    InvalidText(String),
    /// A model the platform does not serve.
    #[error("{0}")]
    UnknownModel(String),
    #[error("{detail}")]
    InsufficientCredits {
        detail: String,
        required: i64,
        available: i64,
    },
    #[error("{detail}")]
    QueueLimit { detail: String, limit: u32 },
    #[error("{detail}")]
    RateLimited { detail: String, retry_after: u64 },
    #[error("{0}")]
    IdempotencyKeyReused(String),
    /// A batch of more jobs than one request may carry.
    #[error("{detail}")]
    BatchTooLarge { detail: String, limit: usize },
    #[error("{0}")]
    JobFinished(String),
    /// The job finished and retention pruned its record; its money stays
    /// in the ledger.
    #[error("{detail}")]
    JobPruned {
        detail: String,
        pruned_at: chrono::DateTime<chrono::Utc>,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// A method the path does not have; `allow` lists the ones it has.
    #[error("this path allows {allow}")]
    MethodNotAllowed { allow: String },
    #[error("{0}")]
    PayloadTooLarge(String),
    /// An error actix-web answered itself (a body it could not read, say),
    /// restated as a problem document with its status.
    #[error("{detail}")]
    Http { status: StatusCode, detail: String },
    // Platform rules (ToS 2.2, 3.2, 4.5, 5).
    /// The prompt breaks the content rules; nothing was charged.
    #[error("{detail}")]
    ContentRejected { detail: String, category: String },
    /// The moderation provider is down and the tier's policy is to refuse.
    #[error("{0}")]
    ModerationUnavailable(String),
    #[error("{0}")]
    LastApiKey(String),
    #[error("{detail}")]
    PriceNoticeTooShort {
        detail: String,
        earliest: chrono::DateTime<chrono::Utc>,
    },
    /// A payment event without a valid signature.
    #[error("{0}")]
    InvalidSignature(String),
    /// A payment event signed too long ago, or in the future.
    #[error("{0}")]
    StaleTimestamp(String),
    #[error("{0}")]
    UnknownProduct(String),
    /// A payment id seen before with another user or product.
    #[error("{0}")]
    PaymentConflict(String),
    // Materials and outputs (ToS 6.2, 6.4).
    /// It existed but is no longer stored (expired, deleted, account closed).
    #[error("{0}")]
    Gone(String),
    #[error("{detail}")]
    StorageQuotaExceeded {
        detail: String,
        used: u64,
        quota: u64,
    },
    #[error("{0}")]
    FileTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
}

/// The problem document.
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// Stable code, e.g. `insufficient-credits`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// `insufficient-credits`: the job's cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<i64>,
    /// `insufficient-credits`: what the wallet had available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available: Option<i64>,
    /// `queue-limit`: the tier's waiting-job limit; `batch-too-large`: the
    /// most jobs one batch may carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `rate-limited`, `unavailable`: seconds to wait before retrying, as
    /// the `Retry-After` header says (stated in the body too, for the
    /// items of a batch, which have no headers of their own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// `content-rejected`: the content rule's category.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// `price-notice-too-short`: the earliest `effective_at` allowed now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub earliest: Option<chrono::DateTime<chrono::Utc>>,
    /// `storage-quota-exceeded`: bytes stored now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    /// `storage-quota-exceeded`: the tier's quota.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
    /// `job-pruned`: when retention removed the job's record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruned_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `insufficient-scope`: the scope the request needs (`jobs:write`,
    /// `jobs:read`, `wallet:read`, `materials:write`), or `full-access`
    /// for what only a key without scopes may do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required_scope: Option<&'static str>,
}

impl ApiError {
    fn parts(&self) -> (&'static str, &'static str, StatusCode) {
        use ApiError::*;
        match self {
            Unauthorized(_) => (
                "unauthorized",
                "Missing or invalid credentials",
                StatusCode::UNAUTHORIZED,
            ),
            Forbidden(_) => ("forbidden", "Not allowed", StatusCode::FORBIDDEN),
            KeyExpired(_) => (
                "key-expired",
                "The API key has expired",
                StatusCode::UNAUTHORIZED,
            ),
            InsufficientScope { .. } => (
                "insufficient-scope",
                "The API key's scopes do not allow this",
                StatusCode::FORBIDDEN,
            ),
            AccountSuspended(_) => (
                "account-suspended",
                "Account suspended",
                StatusCode::FORBIDDEN,
            ),
            NotFound(_) => ("not-found", "Not found", StatusCode::NOT_FOUND),
            EmailTaken(_) => (
                "email-taken",
                "E-mail address already registered",
                StatusCode::CONFLICT,
            ),
            InvalidRequest(_) => (
                "invalid-request",
                "Malformed request",
                StatusCode::BAD_REQUEST,
            ),
            InvalidParams(_) => (
                "invalid-params",
                "Invalid parameters",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            InvalidText(_) => (
                "invalid-text",
                "Text that cannot be stored",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            UnknownModel(_) => (
                "unknown-model",
                "Unknown model",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            InsufficientCredits { .. } => (
                "insufficient-credits",
                "Not enough available credits",
                StatusCode::PAYMENT_REQUIRED,
            ),
            QueueLimit { .. } => (
                "queue-limit",
                "Too many waiting jobs",
                StatusCode::TOO_MANY_REQUESTS,
            ),
            RateLimited { .. } => (
                "rate-limited",
                "Too many requests",
                StatusCode::TOO_MANY_REQUESTS,
            ),
            IdempotencyKeyReused(_) => (
                "idempotency-key-reused",
                "Idempotency-Key reused with another request",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            BatchTooLarge { .. } => (
                "batch-too-large",
                "Too many jobs in one batch",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            JobFinished(_) => ("job-finished", "Job already finished", StatusCode::CONFLICT),
            JobPruned { .. } => (
                "job-pruned",
                "Job record pruned after its retention",
                StatusCode::GONE,
            ),
            Unavailable(_) => (
                "unavailable",
                "Temporarily unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            Internal(_) => (
                "internal",
                "Internal error",
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            MethodNotAllowed { .. } => (
                "method-not-allowed",
                "Method not allowed",
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            PayloadTooLarge(_) => (
                "payload-too-large",
                "Request body too large",
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            Http { status, .. } if status.is_server_error() => {
                ("internal", "Internal error", *status)
            }
            Http { status, .. } => ("invalid-request", "Malformed request", *status),
            ContentRejected { .. } => (
                "content-rejected",
                "Prompt refused by the content rules",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            ModerationUnavailable(_) => (
                "moderation-unavailable",
                "The prompt could not be checked right now",
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            LastApiKey(_) => (
                "last-api-key",
                "The last active API key cannot be revoked",
                StatusCode::CONFLICT,
            ),
            PriceNoticeTooShort { .. } => (
                "price-notice-too-short",
                "Price change announced with too little notice",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            InvalidSignature(_) => (
                "invalid-signature",
                "Missing or invalid signature",
                StatusCode::BAD_REQUEST,
            ),
            StaleTimestamp(_) => (
                "stale-timestamp",
                "Signature timestamp outside the allowed window",
                StatusCode::BAD_REQUEST,
            ),
            UnknownProduct(_) => (
                "unknown-product",
                "Unknown product",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            PaymentConflict(_) => (
                "payment-id-reused",
                "Payment id already used for another payment",
                StatusCode::CONFLICT,
            ),
            Gone(_) => ("gone", "No longer stored", StatusCode::GONE),
            StorageQuotaExceeded { .. } => (
                "storage-quota-exceeded",
                "Storage quota exceeded",
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            FileTooLarge(_) => (
                "file-too-large",
                "File larger than allowed",
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            UnsupportedMediaType(_) => (
                "unsupported-media-type",
                "Content is not PNG, JPEG, WebP or MP4",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
        }
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::NotFound(format!("{what} not found"))
    }

    /// The problem for an error response actix-web built itself.
    pub fn from_status(status: StatusCode, detail: String) -> ApiError {
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(detail),
            StatusCode::NOT_FOUND => ApiError::NotFound(detail),
            status => ApiError::Http { status, detail },
        }
    }
}

impl ApiError {
    /// The problem document of this error, as a response body or as one
    /// item of a batch's answer.
    pub fn problem(&self) -> Problem {
        let (kind, title, status) = self.parts();
        let mut problem = Problem {
            kind,
            title,
            status: status.as_u16(),
            detail: self.to_string(),
            required: None,
            available: None,
            limit: None,
            retry_after: None,
            category: None,
            earliest: None,
            used_bytes: None,
            quota_bytes: None,
            pruned_at: None,
            required_scope: None,
        };
        match self {
            ApiError::InsufficientCredits {
                required,
                available,
                ..
            } => {
                problem.required = Some(*required);
                problem.available = Some(*available);
            }
            ApiError::QueueLimit { limit, .. } => problem.limit = Some(*limit),
            ApiError::BatchTooLarge { limit, .. } => problem.limit = u32::try_from(*limit).ok(),
            ApiError::ContentRejected { category, .. } => {
                problem.category = Some(category.clone());
            }
            ApiError::PriceNoticeTooShort { earliest, .. } => problem.earliest = Some(*earliest),
            ApiError::JobPruned { pruned_at, .. } => problem.pruned_at = Some(*pruned_at),
            ApiError::InsufficientScope { required, .. } => {
                problem.required_scope = Some(required);
            }
            ApiError::StorageQuotaExceeded { used, quota, .. } => {
                problem.used_bytes = Some(*used);
                problem.quota_bytes = Some(*quota);
            }
            ApiError::RateLimited { retry_after, .. } => problem.retry_after = Some(*retry_after),
            ApiError::Unavailable(_) | ApiError::ModerationUnavailable(_) => {
                problem.retry_after = Some(RETRY_AFTER_UNAVAILABLE);
            }
            ApiError::Internal(detail) => {
                // The detail is for the log; the client gets a generic text.
                tracing::error!(%detail, "internal error");
                problem.detail = "an internal error occurred".into();
            }
            _ => {}
        }
        problem
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.parts().2
    }

    fn error_response(&self) -> HttpResponse {
        let problem = self.problem();
        let mut response = HttpResponse::build(self.parts().2);
        response.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        if let Some(retry_after) = problem.retry_after {
            response.insert_header((header::RETRY_AFTER, retry_after.to_string()));
        }
        if let ApiError::MethodNotAllowed { allow } = self {
            response.insert_header((header::ALLOW, allow.clone()));
        }
        response.body(serde_json::to_string(&problem).unwrap_or_default())
    }
}

impl From<OrchestratorError> for ApiError {
    fn from(e: OrchestratorError) -> Self {
        let detail = e.to_string();
        match e {
            OrchestratorError::Unauthorized => ApiError::Unauthorized(detail),
            OrchestratorError::KeyExpired { .. } => ApiError::KeyExpired(detail),
            OrchestratorError::AccountSuspended(_) => ApiError::AccountSuspended(detail),
            OrchestratorError::NotFound(_) => ApiError::NotFound(detail),
            OrchestratorError::EmailTaken => ApiError::EmailTaken(detail),
            OrchestratorError::InvalidParams(_) => ApiError::InvalidParams(detail),
            OrchestratorError::InvalidText(_) => ApiError::InvalidText(detail),
            OrchestratorError::UnknownModel(_) => ApiError::UnknownModel(detail),
            OrchestratorError::InsufficientCredits {
                required,
                available,
            } => ApiError::InsufficientCredits {
                detail,
                required: required.get(),
                available: available.get(),
            },
            OrchestratorError::QueueLimit { limit } => ApiError::QueueLimit { detail, limit },
            OrchestratorError::IdempotencyKeyReused => ApiError::IdempotencyKeyReused(detail),
            OrchestratorError::JobFinished => ApiError::JobFinished(detail),
            OrchestratorError::JobPruned { pruned_at } => ApiError::JobPruned { detail, pruned_at },
            OrchestratorError::Unavailable(_) => ApiError::Unavailable(detail),
            OrchestratorError::Internal(_) => ApiError::Internal(detail),
            OrchestratorError::ContentRejected { category } => {
                ApiError::ContentRejected { detail, category }
            }
            OrchestratorError::ModerationUnavailable => ApiError::ModerationUnavailable(detail),
            OrchestratorError::LastApiKey => ApiError::LastApiKey(detail),
            OrchestratorError::PriceNoticeTooShort { earliest, .. } => {
                ApiError::PriceNoticeTooShort { detail, earliest }
            }
        }
    }
}

impl From<crate::ledger_archive::ArchiveError> for ApiError {
    fn from(e: crate::ledger_archive::ArchiveError) -> Self {
        use crate::ledger_archive::ArchiveError as A;
        match e {
            A::Store(e) => OrchestratorError::from(e).into(),
            // The store is down: worth a retry.
            A::Objects(crate::objects::ObjectError::Backend(_)) => {
                ApiError::Unavailable(e.to_string())
            }
            // A recorded chapter with no object, or another than the one
            // recorded: history is damaged, and the page is not served.
            A::Objects(crate::objects::ObjectError::NotFound(_)) | A::Corrupt(_) => {
                tracing::error!(error = %e, "ledger archive damaged");
                ApiError::Internal(e.to_string())
            }
        }
    }
}

impl From<crate::materials::MaterialError> for ApiError {
    fn from(e: crate::materials::MaterialError) -> Self {
        use crate::materials::MaterialError as M;
        use crate::objects::UploadError as U;
        let detail = e.to_string();
        match e {
            M::NotFound(_) => ApiError::NotFound(detail),
            M::Gone(_) => ApiError::Gone(detail),
            M::QuotaExceeded { used, quota, .. } => ApiError::StorageQuotaExceeded {
                detail,
                used,
                quota,
            },
            M::Upload(U::TooLarge { .. }) => ApiError::FileTooLarge(detail),
            M::Upload(U::UnsupportedType) => ApiError::UnsupportedMediaType(detail),
            M::Upload(U::Empty) => ApiError::InvalidParams(detail),
            M::Upload(U::Body(_)) => ApiError::InvalidRequest(detail),
            M::Upload(U::Store(_)) | M::Unavailable(_) => ApiError::Unavailable(detail),
            M::InvalidReference(_) => ApiError::InvalidParams(detail),
        }
    }
}
