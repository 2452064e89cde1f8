//! The ledger: an append-only list of entries per user. Entries are never
//! edited or deleted; a mistake is corrected by a new entry. Each entry
//! records the wallet after it, so any entry can be audited on its own.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::ids::{EntryId, JobId, UserId};
use crate::domain::wallet::{Credits, Wallet};

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EntryKind {
    /// Credits arrive (balance up).
    Grant,
    /// Credits reserved for a job (held up).
    Hold,
    /// A hold captured: the job used the credits (balance and held down).
    Post,
    /// A hold released: refund (held down).
    Void,
}

impl EntryKind {
    pub const ALL: [EntryKind; 4] = [
        EntryKind::Grant,
        EntryKind::Hold,
        EntryKind::Post,
        EntryKind::Void,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Grant => "grant",
            EntryKind::Hold => "hold",
            EntryKind::Post => "post",
            EntryKind::Void => "void",
        }
    }
}

/// Where granted credits came from (ToS 4.2).
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
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum GrantSource {
    Registration,
    Purchase,
    MembershipGift,
    Admin,
}

impl GrantSource {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub id: EntryId,
    pub user_id: UserId,
    pub kind: EntryKind,
    /// Always positive; `kind` says the direction.
    pub amount: Credits,
    /// The wallet right after this entry.
    pub balance: Credits,
    pub held: Credits,
    pub source: Option<GrantSource>,
    pub job_id: Option<JobId>,
    pub note: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A grant request: credits from outside, idempotent by key.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Grant {
    pub amount: Credits,
    pub source: GrantSource,
    pub idempotency_key: Option<String>,
    pub note: Option<String>,
}

impl Grant {
    /// What a replay under the same idempotency key must match.
    pub fn terms(&self) -> GrantTerms {
        GrantTerms {
            amount: self.amount,
            source: Some(self.source),
            note: self.note.clone(),
        }
    }

    /// Refuses text the store cannot keep.
    pub fn check_text(&self) -> Result<(), crate::domain::text::UnstorableText> {
        crate::domain::text::check_opt("idempotency_key", self.idempotency_key.as_deref())?;
        crate::domain::text::check_opt("note", self.note.as_deref())
    }
}

/// What a grant booked under an idempotency key: the same key with other
/// terms is another request reusing the key, not a replay.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct GrantTerms {
    pub amount: Credits,
    pub source: Option<GrantSource>,
    pub note: Option<String>,
}

/// The wallet implied by a user's entries, for audits: `balance = Σ grants
/// − Σ posts`, `held = Σ holds − Σ posts − Σ voids`.
pub fn replay(entries: &[LedgerEntry]) -> Result<Wallet, String> {
    replay_from(Wallet::default(), entries)
}

/// [`replay`] from `opening`: the wallet before the first of `entries`
/// (an archived chapter's closing balance).
pub fn replay_from(opening: Wallet, entries: &[LedgerEntry]) -> Result<Wallet, String> {
    let mut wallet = opening;
    for e in entries {
        wallet = match e.kind {
            EntryKind::Grant => wallet.grant(e.amount),
            EntryKind::Hold => wallet.hold(e.amount),
            EntryKind::Post => wallet.post(e.amount),
            EntryKind::Void => wallet.void(e.amount),
        }
        .map_err(|err| format!("entry {}: {err}", e.id))?;
        if wallet.balance != e.balance || wallet.held != e.held {
            return Err(format!(
                "entry {} records balance {} held {}, replay gives {} and {}",
                e.id, e.balance, e.held, wallet.balance, wallet.held
            ));
        }
    }
    Ok(wallet)
}
