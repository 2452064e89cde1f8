//! API keys (ToS 2.2: users safeguard their credentials): a user may hold
//! several keys, issue a new one and revoke an old one, so a key can be
//! rotated without losing access. Keys are stored only as hashes.
//!
//! Revoking the last active key is refused: the API key is the only way
//! into an account, so revoking it would lock the user out for good.
//! Rotation is "issue a new key, then revoke the old one"; closing the
//! account is `POST /v1/me/close`.
//!
//! A key may carry a name, an expiry and scopes. A key without scopes
//! (every key issued before scopes existed, the key made at registration,
//! and any key issued without naming scopes) has full access to its
//! account; a scoped key may only do what its scopes name (the server maps
//! each endpoint to the scope it needs in one table), and never manages
//! keys, webhooks or the account itself. An expired key is refused like a
//! wrong one, with its own problem type so that a client knows to renew it.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::account::KeyHash;
use crate::domain::ids::{ApiKeyId, UserId};

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
    /// What the owner called it, if anything.
    #[serde(default)]
    pub name: Option<String>,
    /// Refused from this instant on; `None`: never expires.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// `None`: full access (keys without scopes, as before scopes existed).
    #[serde(default)]
    pub scopes: Option<BTreeSet<Scope>>,
}

impl ApiKeyRecord {
    /// Not revoked (an expired key is still active until revoked: it
    /// counts against the limit and is listed as it is).
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }

    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Whether this key may do what needs `access`.
    pub fn allows(&self, access: Access) -> bool {
        match (&self.scopes, access) {
            (None, _) | (_, Access::AnyKey) => true,
            (Some(scopes), Access::Scope(scope)) => scopes.contains(&scope),
            (Some(_), Access::FullAccess) => false,
        }
    }
}

/// What a key may be limited to. A key with scopes may do only what they
/// name; a key without scopes may do everything its owner may.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum Scope {
    /// Submit and cancel jobs, delete outputs.
    #[serde(rename = "jobs:write")]
    JobsWrite,
    /// Read jobs, their events and outputs.
    #[serde(rename = "jobs:read")]
    JobsRead,
    /// Read the wallet and the ledger.
    #[serde(rename = "wallet:read")]
    WalletRead,
    /// Upload, list, read and delete materials.
    #[serde(rename = "materials:write")]
    MaterialsWrite,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Scope::JobsWrite,
        Scope::JobsRead,
        Scope::WalletRead,
        Scope::MaterialsWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::JobsWrite => "jobs:write",
            Scope::JobsRead => "jobs:read",
            Scope::WalletRead => "wallet:read",
            Scope::MaterialsWrite => "materials:write",
        }
    }

    pub fn parse(raw: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an endpoint asks of the key it is called with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    /// Any valid key, scoped or not (who am I).
    AnyKey,
    /// A key without scopes, or one with this scope.
    Scope(Scope),
    /// Only a key without scopes: managing keys, webhooks, the account.
    FullAccess,
}

impl Access {
    /// How a refusal names what was needed.
    pub fn required(self) -> &'static str {
        match self {
            Access::AnyKey => "any",
            Access::Scope(s) => s.as_str(),
            Access::FullAccess => FULL_ACCESS,
        }
    }
}

/// How a refusal names "a key without scopes".
pub const FULL_ACCESS: &str = "full-access";

/// Longest key name, in characters as sent.
pub const MAX_KEY_NAME: usize = 100;

/// A key to issue, as its owner asked for it, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyOptions {
    pub name: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub scopes: Option<BTreeSet<Scope>>,
}

impl KeyOptions {
    /// Full access, no name, no expiry: the key of a registration.
    pub fn full() -> KeyOptions {
        KeyOptions {
            name: None,
            expires_at: None,
            scopes: None,
        }
    }

    /// Checks a request: a name of 1..=100 characters without control
    /// characters, an expiry in the future, scopes that exist (an empty
    /// list is refused: a key that may do nothing is a mistake, and
    /// leaving the list out is how full access is asked for).
    pub fn parse(
        name: Option<&str>,
        expires_at: Option<DateTime<Utc>>,
        scopes: Option<&[String]>,
        now: DateTime<Utc>,
    ) -> Result<KeyOptions, String> {
        let name = match name {
            None => None,
            Some(raw) => {
                let trimmed = raw.trim();
                if trimmed.is_empty()
                    || raw.chars().count() > MAX_KEY_NAME
                    || raw.chars().any(char::is_control)
                {
                    return Err(format!(
                        "name must be 1..={MAX_KEY_NAME} characters without control characters"
                    ));
                }
                Some(trimmed.to_owned())
            }
        };
        // Microseconds: what every store keeps, so a read returns the same.
        let expires_at = expires_at.map(|at| chrono::SubsecRound::trunc_subsecs(at, 6));
        if let Some(at) = expires_at {
            if at <= now {
                return Err("expires_at must be in the future".into());
            }
        }
        let scopes = match scopes {
            None => None,
            Some([]) => {
                return Err(
                    "scopes must name at least one scope; leave it out for full access".into(),
                )
            }
            Some(raw) => {
                let mut set = BTreeSet::new();
                for s in raw {
                    let scope = Scope::parse(s).ok_or_else(|| {
                        format!(
                            "unknown scope {s:?}; the scopes are {}",
                            Scope::ALL.map(Scope::as_str).join(", ")
                        )
                    })?;
                    set.insert(scope);
                }
                Some(set)
            }
        };
        Ok(KeyOptions {
            name,
            expires_at,
            scopes,
        })
    }
}

/// A newly issued key: `key` is shown this once.
pub struct IssuedKey {
    pub record: ApiKeyRecord,
    pub key: String,
}
