//! What the platform keeps about refusals and the suspensions they cause,
//! so an operator can see why an account was suspended and undo it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Refusal;
use crate::domain::ids::UserId;

/// The longest prompt kept as evidence (prompts are at most this long).
pub const MAX_EVIDENCE_PROMPT_CHARS: usize = crate::domain::job::MAX_PROMPT_CHARS;

/// A refused prompt to record.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NewViolation {
    pub refusal: Refusal,
    pub prompt: String,
    /// Whether it counts toward automatic suspension (confident enough).
    pub counted: bool,
}

/// A recorded refusal.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Violation {
    pub user_id: UserId,
    pub refusal: Refusal,
    pub prompt: String,
    pub counted: bool,
    pub created_at: DateTime<Utc>,
}

/// What was done to an account on content grounds.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ModerationKind {
    Suspended,
    Reinstated,
}

impl ModerationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModerationKind::Suspended => "suspended",
            ModerationKind::Reinstated => "reinstated",
        }
    }

    pub fn parse(s: &str) -> Option<ModerationKind> {
        match s {
            "suspended" => Some(ModerationKind::Suspended),
            "reinstated" => Some(ModerationKind::Reinstated),
            _ => None,
        }
    }
}

/// Who acted.
pub const BY_AUTOMATIC: &str = "automatic";
pub const BY_OPERATOR: &str = "operator";

/// One entry of an account's moderation history: an automatic suspension
/// with the refusals that caused it, or an operator's action.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ModerationAction {
    pub user_id: UserId,
    pub kind: ModerationKind,
    /// `automatic`, or `operator` (the admin API and the console).
    pub by: String,
    pub note: Option<String>,
    /// The counted refusals within the window, for an automatic suspension.
    pub evidence: Vec<Violation>,
    pub created_at: DateTime<Utc>,
}
