//! Accounts in PostgreSQL: users and their API keys (ToS 2.2). Each
//! operation is one transaction.

use super::*;
use admedia_actors::domain::api_keys::{KeyOptions, Scope};

pub(super) const KEY_COLUMNS: &str =
    "id, user_id, key_hash, created_at, revoked_at, name, expires_at, scopes";

/// A key row whose columns start at `at` (`KEY_COLUMNS`, in order).
pub(super) fn key_row_at(r: &Row, at: usize) -> StoreResult<ApiKeyRecord> {
    let hash: Vec<u8> = r.get(at + 2);
    let hash: [u8; 32] = hash
        .as_slice()
        .try_into()
        .map_err(|_| corrupt("key hash", &hex::encode(&hash)))?;
    let scopes: Option<Vec<String>> = r.get(at + 7);
    Ok(ApiKeyRecord {
        id: ApiKeyId::from_uuid(r.get(at)),
        user_id: UserId::from_uuid(r.get(at + 1)),
        hash: KeyHash(hash),
        created_at: r.get(at + 3),
        revoked_at: r.get(at + 4),
        name: r.get(at + 5),
        expires_at: r.get(at + 6),
        scopes: scopes
            .map(|list| {
                list.iter()
                    .map(|s| Scope::parse(s).ok_or_else(|| corrupt("key scope", s)))
                    .collect::<StoreResult<_>>()
            })
            .transpose()?,
    })
}

fn key_row(r: &Row) -> StoreResult<ApiKeyRecord> {
    key_row_at(r, 0)
}

/// Locks the user's row; `NotFound` when there is none.
pub(super) async fn lock_user_status(
    tx: &Transaction<'_>,
    user: UserId,
) -> StoreResult<AccountStatus> {
    let row = tx
        .query_opt(
            "SELECT status FROM users WHERE id = $1 FOR UPDATE",
            &[&user.as_uuid()],
        )
        .await
        .map_err(db)?
        .ok_or(StoreError::NotFound("user"))?;
    status(row.get(0))
}

async fn active_keys(tx: &Transaction<'_>, user: UserId) -> StoreResult<usize> {
    let n: i64 = tx
        .query_one(
            "SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL",
            &[&user.as_uuid()],
        )
        .await
        .map_err(db)?
        .get(0);
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

#[async_trait]
impl AccountStore for PgStore {
    async fn create_user(
        &self,
        new: NewUser,
        reward: Credits,
        now: DateTime<Utc>,
    ) -> StoreResult<(User, Wallet)> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let id = UserId::generate();
        let inserted = tx
            .execute(
                "INSERT INTO users (id, email, display_name, created_at, email_canonical) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &id.as_uuid(),
                    &new.email.as_str(),
                    &new.display_name.as_str(),
                    &now,
                    &new.email.canonical(),
                ],
            )
            .await;
        match inserted {
            Err(e)
                if is_unique_violation(&e, "users_email")
                    || is_unique_violation(&e, "users_email_canonical") =>
            {
                return Err(StoreError::EmailTaken)
            }
            other => {
                other.map_err(db)?;
            }
        }
        cached_execute(
            &tx,
            "INSERT INTO api_keys (id, user_id, key_hash, created_at) VALUES ($1, $2, $3, $4)",
            &[
                &ApiKeyId::generate().as_uuid(),
                &id.as_uuid(),
                &&new.key_hash.0[..],
                &now,
            ],
        )
        .await?;
        cached_execute(
            &tx,
            "INSERT INTO wallets (user_id) VALUES ($1)",
            &[&id.as_uuid()],
        )
        .await?;
        let fresh = AccountState {
            user: id,
            status: AccountStatus::Active,
            wallet: Wallet::default(),
            waiting: Waiting::default(),
        };
        let (ws, account) = decide::registration(fresh, reward, now)?;
        apply::write(&tx, &ws).await?;
        tx.commit().await.map_err(db)?;
        let wallet = account.wallet;
        let user = User {
            id,
            email: new.email,
            display_name: new.display_name,
            membership: Membership::FREE,
            status: AccountStatus::Active,
            created_at: now,
        };
        Ok((user, wallet))
    }

    async fn key_by_hash(&self, hash: KeyHash) -> StoreResult<Option<(User, ApiKeyRecord)>> {
        let client = self.client().await?;
        let prefixed = |columns: &str, table: &str| {
            columns
                .split(", ")
                .map(|c| format!("{table}.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let sql = format!(
            "SELECT {}, {} FROM users u JOIN api_keys k ON k.user_id = u.id \
             WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
            prefixed(USER_COLUMNS, "u"),
            prefixed(KEY_COLUMNS, "k"),
        );
        let stmt = client.prepare_cached(&sql).await.map_err(db)?;
        let Some(row) = client.query_opt(&stmt, &[&&hash.0[..]]).await.map_err(db)? else {
            return Ok(None);
        };
        let user = user_row(&row)?;
        let key = key_row_at(&row, USER_COLUMNS.split(", ").count())?;
        Ok(Some((user, key)))
    }

    async fn user_by_key(&self, hash: KeyHash) -> StoreResult<Option<User>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM users u JOIN api_keys k ON k.user_id = u.id \
             WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
            USER_COLUMNS
                .split(", ")
                .map(|c| format!("u.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let stmt = client.prepare_cached(&sql).await.map_err(db)?;
        client
            .query_opt(&stmt, &[&&hash.0[..]])
            .await
            .map_err(db)?
            .map(|r| user_row(&r))
            .transpose()
    }

    async fn user(&self, id: UserId) -> StoreResult<Option<User>> {
        let client = self.client().await?;
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        client
            .query_opt(&sql, &[&id.as_uuid()])
            .await
            .map_err(db)?
            .map(|r| user_row(&r))
            .transpose()
    }

    async fn set_membership(&self, id: UserId, membership: Membership) -> StoreResult<User> {
        let client = self.client().await?;
        let sql = format!(
            "UPDATE users SET tier = $2, membership_expires_at = $3 WHERE id = $1 RETURNING {USER_COLUMNS}"
        );
        let row = client
            .query_opt(
                &sql,
                &[
                    &id.as_uuid(),
                    &membership.tier.as_str(),
                    &membership.expires_at,
                ],
            )
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound("user"))?;
        user_row(&row)
    }

    async fn set_status(
        &self,
        id: UserId,
        new_status: AccountStatus,
        now: DateTime<Utc>,
    ) -> StoreResult<User> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let current = cached_query_opt(
            &tx,
            "SELECT status FROM users WHERE id = $1 FOR UPDATE",
            &[&id.as_uuid()],
        )
        .await?
        .ok_or(StoreError::NotFound("user"))?;
        let current = status(current.get(0))?;
        decide::status_change(current, new_status)?;
        payments::lapse_gifts(&tx, id, current, new_status, now).await?;
        let sql = format!("UPDATE users SET status = $2 WHERE id = $1 RETURNING {USER_COLUMNS}");
        let row = cached_query_one(&tx, &sql, &[&id.as_uuid(), &new_status.as_str()]).await?;
        tx.commit().await.map_err(db)?;
        user_row(&row)
    }

    async fn create_api_key(
        &self,
        user: UserId,
        id: ApiKeyId,
        hash: KeyHash,
        options: KeyOptions,
        now: DateTime<Utc>,
    ) -> StoreResult<ApiKeyRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let st = lock_user_status(&tx, user).await?;
        decide::new_api_key(st, active_keys(&tx, user).await?)?;
        let sql = format!(
            "INSERT INTO api_keys (id, user_id, key_hash, created_at, name, expires_at, scopes) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {KEY_COLUMNS}"
        );
        let scopes: Option<Vec<&'static str>> = options
            .scopes
            .as_ref()
            .map(|set| set.iter().map(|s| s.as_str()).collect());
        let row = tx
            .query_one(
                &sql,
                &[
                    &id.as_uuid(),
                    &user.as_uuid(),
                    &&hash.0[..],
                    &now,
                    &options.name,
                    &options.expires_at,
                    &scopes,
                ],
            )
            .await
            .map_err(db)?;
        let record = key_row(&row)?;
        tx.commit().await.map_err(db)?;
        Ok(record)
    }

    async fn api_keys(&self, user: UserId) -> StoreResult<Vec<ApiKeyRecord>> {
        let client = self.client().await?;
        let exists = client
            .query_opt("SELECT 1 FROM users WHERE id = $1", &[&user.as_uuid()])
            .await
            .map_err(db)?;
        if exists.is_none() {
            return Err(StoreError::NotFound("user"));
        }
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at, id"
        );
        let rows = client.query(&sql, &[&user.as_uuid()]).await.map_err(db)?;
        rows.iter().map(key_row).collect()
    }

    async fn revoke_api_key(
        &self,
        user: UserId,
        id: ApiKeyId,
        now: DateTime<Utc>,
    ) -> StoreResult<ApiKeyRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        // The user's row serializes key changes, so two revocations cannot
        // both see another key still active.
        lock_user_status(&tx, user).await?;
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 AND user_id = $2");
        let current = tx
            .query_opt(&sql, &[&id.as_uuid(), &user.as_uuid()])
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound("API key"))?;
        let current = key_row(&current)?;
        if !decide::revoke_api_key(&current, active_keys(&tx, user).await?)? {
            return Ok(current);
        }
        let sql = format!(
            "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL \
             RETURNING {KEY_COLUMNS}"
        );
        let row = tx
            .query_one(&sql, &[&id.as_uuid(), &now])
            .await
            .map_err(db)?;
        let record = key_row(&row)?;
        tx.commit().await.map_err(db)?;
        Ok(record)
    }
}
