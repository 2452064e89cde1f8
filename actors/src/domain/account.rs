//! Accounts: who a user is, their membership and whether they may act.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::domain::email::Email;
use crate::domain::ids::UserId;
use crate::domain::tier::{Membership, Tier};

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
pub enum AccountStatus {
    Active,
    Suspended,
    Terminated,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    pub display_name: DisplayName,
    pub membership: Membership,
    pub status: AccountStatus,
    pub created_at: DateTime<Utc>,
}

impl User {
    pub fn tier(&self, now: DateTime<Utc>) -> Tier {
        self.membership.effective_tier(now)
    }

    pub fn is_active(&self) -> bool {
        self.status == AccountStatus::Active
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DisplayName(String);

#[derive(Debug, Error, PartialEq, Eq)]
#[error("display_name must be 1..=100 characters without control characters")]
pub struct DisplayNameError;

impl DisplayName {
    pub fn parse(raw: &str) -> Result<DisplayName, DisplayNameError> {
        let name = raw.trim();
        // The length counts the name as sent, as a client checking it would.
        if name.is_empty() || raw.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(DisplayNameError);
        }
        Ok(DisplayName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn from_stored(stored: String) -> DisplayName {
        DisplayName(stored)
    }
}

/// A user's secret API key; shown once, stored only as [`KeyHash`].
pub struct ApiKey(String);

impl ApiKey {
    /// A key from the process's random generator.
    pub fn generate() -> ApiKey {
        ApiKey::generate_with(&crate::clock::Random::system())
    }

    /// A key drawn from `random` (seeded in a simulation).
    pub fn generate_with(random: &crate::clock::Random) -> ApiKey {
        let mut bytes = [0u8; 32];
        random.fill_bytes(&mut bytes);
        ApiKey(format!("adm_{}", hex::encode(bytes)))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.0)
    }
}

/// SHA-256 of an API key. Keys are 256 random bits, so a fast hash is the
/// right tool (a slow password hash would only cost latency on every call).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(presented: &str) -> KeyHash {
        KeyHash(Sha256::digest(presented.as_bytes()).into())
    }
}

/// A registration, validated.
#[derive(Clone, Debug)]
pub struct NewUser {
    pub email: Email,
    pub display_name: DisplayName,
    pub key_hash: KeyHash,
}
