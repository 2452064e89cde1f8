//! API keys (ToS 2.2: users safeguard their credentials): a user may hold
//! several keys, issue a new one and revoke an old one, so a key can be
//! rotated without losing access. Keys are stored only as hashes.
//!
//! Revoking the last active key is refused: the API key is the only way
//! into an account, so revoking it would lock the user out for good.
//! Rotation is "issue a new key, then revoke the old one"; closing the
//! account is `POST /v1/me/close`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{ApiKeyId, UserId};
use crate::user::KeyHash;

/// Active keys one user may hold at once.
pub const MAX_ACTIVE_KEYS: usize = 20;

/// A stored key: never the key itself.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: ApiKeyId,
    pub user_id: UserId,
    pub hash: KeyHash,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKeyRecord {
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }
}

/// A newly issued key: `key` is shown this once.
pub struct IssuedKey {
    pub record: ApiKeyRecord,
    pub key: String,
}
