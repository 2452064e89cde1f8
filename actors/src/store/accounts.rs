//! Accounts: users with their membership and status, and their API keys
//! (ToS 2.2).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreResult;
use crate::domain::account::{AccountStatus, KeyHash, NewUser, User};
use crate::domain::api_keys::{ApiKeyRecord, KeyOptions};
use crate::domain::ids::{ApiKeyId, UserId};
use crate::domain::tier::Membership;
use crate::domain::wallet::{Credits, Wallet};

/// Users and their API keys.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Creates the user, their wallet and the registration grant at once.
    async fn create_user(
        &self,
        new: NewUser,
        reward: Credits,
        now: DateTime<Utc>,
    ) -> StoreResult<(User, Wallet)>;
    async fn user_by_key(&self, hash: KeyHash) -> StoreResult<Option<User>>;
    /// The user and the (not revoked) key behind `hash`: what a request
    /// is authenticated by, with the key's expiry and scopes.
    async fn key_by_hash(&self, hash: KeyHash) -> StoreResult<Option<(User, ApiKeyRecord)>>;
    async fn user(&self, id: UserId) -> StoreResult<Option<User>>;
    async fn set_membership(&self, id: UserId, membership: Membership) -> StoreResult<User>;
    /// Reinstating a suspended account at `now` lapses the gifts of the
    /// months that passed entirely while it was suspended.
    async fn set_status(
        &self,
        id: UserId,
        status: AccountStatus,
        now: DateTime<Utc>,
    ) -> StoreResult<User>;
    /// Adds an active key for an active user; `LimitExceeded` past
    /// [`crate::domain::api_keys::MAX_ACTIVE_KEYS`] active keys.
    async fn create_api_key(
        &self,
        user: UserId,
        id: ApiKeyId,
        hash: KeyHash,
        options: KeyOptions,
        now: DateTime<Utc>,
    ) -> StoreResult<ApiKeyRecord>;
    /// The user's keys, oldest first, revoked ones included.
    async fn api_keys(&self, user: UserId) -> StoreResult<Vec<ApiKeyRecord>>;
    /// Revokes one of the user's keys (`NotFound` for another user's);
    /// revoking a revoked key changes nothing; `LastApiKey` when it is the
    /// user's only active key.
    async fn revoke_api_key(
        &self,
        user: UserId,
        id: ApiKeyId,
        now: DateTime<Utc>,
    ) -> StoreResult<ApiKeyRecord>;
}
