//! The embedded store's accounts: users and their API keys (ToS 2.2).
//! Each operation runs under the store's one lock, so it is atomic.

use std::collections::HashMap;

use super::*;
use crate::domain::ids::ApiKeyId;

/// Each user's API keys, oldest first, revoked ones included.
#[derive(Default)]
pub(super) struct ApiKeys(HashMap<UserId, Vec<ApiKeyRecord>>);

/// Records the key a user registered with.
pub(super) fn registered(s: &mut State, user: UserId, hash: KeyHash, now: DateTime<Utc>) {
    s.api_keys.0.entry(user).or_default().push(ApiKeyRecord {
        id: ApiKeyId::generate(),
        user_id: user,
        hash,
        created_at: now,
        revoked_at: None,
        name: None,
        expires_at: None,
        scopes: None,
    });
}

/// The user's key with this hash, if not revoked.
pub(super) fn active_key(s: &State, user: UserId, hash: KeyHash) -> Option<ApiKeyRecord> {
    s.api_keys
        .0
        .get(&user)?
        .iter()
        .find(|k| k.hash == hash && k.is_active())
        .cloned()
}

pub(super) fn status(s: &State, user: UserId) -> StoreResult<AccountStatus> {
    s.users
        .get(&user)
        .map(|u| u.status)
        .ok_or(StoreError::NotFound("user"))
}

pub(super) fn create_api_key(
    s: &mut State,
    user: UserId,
    id: ApiKeyId,
    hash: KeyHash,
    options: crate::domain::api_keys::KeyOptions,
    now: DateTime<Utc>,
) -> StoreResult<ApiKeyRecord> {
    let st = status(s, user)?;
    if s.keys.contains_key(&hash) {
        return Err(StoreError::Invariant("API key hash reused".into()));
    }
    let list = s.api_keys.0.entry(user).or_default();
    decide::new_api_key(st, list.iter().filter(|k| k.is_active()).count())?;
    let record = ApiKeyRecord {
        id,
        user_id: user,
        hash,
        created_at: now,
        revoked_at: None,
        name: options.name,
        expires_at: options.expires_at,
        scopes: options.scopes,
    };
    list.push(record.clone());
    s.keys.insert(hash, user);
    Ok(record)
}

pub(super) fn api_keys(s: &State, user: UserId) -> StoreResult<Vec<ApiKeyRecord>> {
    status(s, user)?;
    Ok(s.api_keys.0.get(&user).cloned().unwrap_or_default())
}

pub(super) fn revoke_api_key(
    s: &mut State,
    user: UserId,
    id: ApiKeyId,
    now: DateTime<Utc>,
) -> StoreResult<ApiKeyRecord> {
    status(s, user)?;
    let list = s
        .api_keys
        .0
        .get_mut(&user)
        .ok_or(StoreError::NotFound("API key"))?;
    let active = list.iter().filter(|k| k.is_active()).count();
    let key = list
        .iter_mut()
        .find(|k| k.id == id)
        .ok_or(StoreError::NotFound("API key"))?;
    if !decide::revoke_api_key(key, active)? {
        return Ok(key.clone());
    }
    key.revoked_at = Some(now);
    let record = key.clone();
    s.keys.remove(&record.hash);
    Ok(record)
}

#[async_trait]
impl AccountStore for MemoryStore {
    async fn create_user(
        &self,
        new: NewUser,
        reward: Credits,
        now: DateTime<Utc>,
    ) -> StoreResult<(User, Wallet)> {
        let mut s = self.state.lock();
        if s.emails.contains_key(new.email.canonical()) {
            return Err(StoreError::EmailTaken);
        }
        let user = User {
            id: UserId::generate(),
            email: new.email.clone(),
            display_name: new.display_name,
            membership: Membership::FREE,
            status: AccountStatus::Active,
            created_at: now,
        };
        let fresh = AccountState {
            user: user.id,
            status: user.status,
            wallet: Wallet::default(),
            waiting: Waiting::default(),
        };
        let (ws, account) = decide::registration(fresh, reward, now)?;
        s.emails.insert(new.email.canonical().to_owned(), user.id);
        s.keys.insert(new.key_hash, user.id);
        registered(&mut s, user.id, new.key_hash, now);
        s.users.insert(user.id, user.clone());
        s.accounts.insert(user.id, Account::default());
        self.commit(&mut s, ws)?;
        Ok((user, account.wallet))
    }

    async fn user_by_key(&self, hash: KeyHash) -> StoreResult<Option<User>> {
        let s = self.state.lock();
        Ok(s.keys.get(&hash).and_then(|id| s.users.get(id)).cloned())
    }

    async fn key_by_hash(&self, hash: KeyHash) -> StoreResult<Option<(User, ApiKeyRecord)>> {
        let s = self.state.lock();
        let Some(user) = s.keys.get(&hash).and_then(|id| s.users.get(id)) else {
            return Ok(None);
        };
        Ok(active_key(&s, user.id, hash).map(|k| (user.clone(), k)))
    }

    async fn user(&self, id: UserId) -> StoreResult<Option<User>> {
        Ok(self.state.lock().users.get(&id).cloned())
    }

    async fn set_membership(&self, id: UserId, membership: Membership) -> StoreResult<User> {
        let mut s = self.state.lock();
        let user = s.users.get_mut(&id).ok_or(StoreError::NotFound("user"))?;
        user.membership = membership;
        Ok(user.clone())
    }

    async fn set_status(
        &self,
        id: UserId,
        status: AccountStatus,
        now: DateTime<Utc>,
    ) -> StoreResult<User> {
        let mut s = self.state.lock();
        let current = s.users.get(&id).ok_or(StoreError::NotFound("user"))?.status;
        decide::status_change(current, status)?;
        payments::lapse_gifts(&mut s, id, current, status, now)?;
        let user = s.users.get_mut(&id).ok_or(StoreError::NotFound("user"))?;
        user.status = status;
        Ok(user.clone())
    }

    async fn create_api_key(
        &self,
        user: UserId,
        id: crate::domain::ids::ApiKeyId,
        hash: KeyHash,
        options: crate::domain::api_keys::KeyOptions,
        now: DateTime<Utc>,
    ) -> StoreResult<ApiKeyRecord> {
        create_api_key(&mut self.state.lock(), user, id, hash, options, now)
    }

    async fn api_keys(&self, user: UserId) -> StoreResult<Vec<ApiKeyRecord>> {
        api_keys(&self.state.lock(), user)
    }

    async fn revoke_api_key(
        &self,
        user: UserId,
        id: crate::domain::ids::ApiKeyId,
        now: DateTime<Utc>,
    ) -> StoreResult<ApiKeyRecord> {
        revoke_api_key(&mut self.state.lock(), user, id, now)
    }
}
