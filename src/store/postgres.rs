//! The PostgreSQL adapter of the store port (tokio-postgres + deadpool).
//!
//! Every port operation is one transaction. Money operations lock the
//! user's wallet row first (`FOR UPDATE`), then the job: one lock order
//! everywhere, so concurrent operations queue instead of deadlocking, and
//! a read-check-write of a balance can never interleave with another.
//! Job transitions are conditional on state, attempt and lease. The schema
//! (see `schema/`) independently refuses an overdrawn wallet, a changed
//! ledger row and a second resolution of a hold.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use admedia_actors::email::Email;
use admedia_actors::ids::{ApiKeyId, EntryId, JobId, LeaseToken, UserId, WorkerId};
use admedia_actors::job::{
    AttemptOutcome, Charge, Job, JobError, JobKind, JobParams, JobResult, JobSpec, JobState,
};
use admedia_actors::ledger::{EntryKind, Grant, GrantSource, LedgerEntry};
use admedia_actors::money::{Credits, Wallet};
use admedia_actors::store::decide::{self, money};
use admedia_actors::store::outbox::{DeliveryReport, OutboxFeed, PendingWebhook};
use admedia_actors::store::writeset::{AccountState, WebhookDelivery};
use admedia_actors::store::{
    Activity, AttemptRecord, AttemptRef, Cancellation, FinishedBefore, GrantOutcome, JobCounts,
    JobFilter, Leader, NewJob, Settlement, Store, StoreError, StoreResult, Submission,
};
use admedia_actors::tier::{Membership, Tier};
use admedia_actors::user::{AccountStatus, DisplayName, KeyHash, NewUser, User};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Transaction};
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};

use admedia_actors::accounts::ApiKeyRecord;
use admedia_actors::content::evidence::{
    ModerationAction, ModerationKind, NewViolation, Violation,
};
use admedia_actors::payments::{
    GiftOutcome, NewPayment, PaymentId, PaymentOutcome, PaymentReview, ScheduledGift,
};
use admedia_actors::price_schedule::PriceVersion;
use admedia_actors::pricing::PriceTable;

/// Writes write sets with set-based statements.
mod account_api;
mod apply;
/// API keys, payments and gifts, price versions, content violations.
mod platform;
/// Group commit of the money-and-job operations.
mod writer;

pub use writer::{GroupCommit, Paused};

mod embedded {
    refinery::embed_migrations!("schema");
}

pub struct PgStore {
    pool: Pool,
    feed: Arc<OutboxFeed>,
    writers: writer::Writers,
}

/// How long a request waits for a pooled connection before the store
/// counts as unavailable (the API then answers 503).
const POOL_WAIT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl PgStore {
    /// A pool for `url`; connections open lazily.
    pub fn connect(url: &str, max_connections: usize) -> Result<PgStore, StoreError> {
        Self::connect_with(url, max_connections, GroupCommit::default())
    }

    /// A pool for `url` whose group commits follow `group_commit`.
    pub fn connect_with(
        url: &str,
        max_connections: usize,
        group_commit: GroupCommit,
    ) -> Result<PgStore, StoreError> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Internal(format!("DATABASE_URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        Self::with_group_commit(config, max_connections, group_commit)
    }

    pub fn from_config(
        config: tokio_postgres::Config,
        max_connections: usize,
    ) -> Result<PgStore, StoreError> {
        Self::with_group_commit(config, max_connections, GroupCommit::default())
    }

    pub fn with_group_commit(
        config: tokio_postgres::Config,
        max_connections: usize,
        group_commit: GroupCommit,
    ) -> Result<PgStore, StoreError> {
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Internal(format!("pool: {e}")))?;
        let feed = Arc::new(OutboxFeed::default());
        let writers = writer::Writers::new(pool.clone(), feed.clone(), group_commit);
        Ok(PgStore {
            pool,
            feed,
            writers,
        })
    }

    /// Applies the migrations in `schema/` that have not run yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let report = embedded::migrations::runner()
            .run_async(&mut **client)
            .await
            .map_err(|e| StoreError::Internal(format!("migration failed: {e}")))?;
        for m in report.applied_migrations() {
            tracing::info!(migration = %m, "applied migration");
        }
        Ok(())
    }

    /// Holds every batch back until the guard is dropped; meanwhile
    /// operations queue (see [`PgStore::queued_operations`]). For tests of
    /// what one batch does.
    pub async fn pause_group_commit(&self) -> writer::Paused {
        self.writers.pause().await
    }

    /// Operations handed to group commit since the store was made.
    pub fn queued_operations(&self) -> usize {
        self.writers.queued()
    }

    /// Group-commit batches run since the store was made.
    pub fn batches(&self) -> usize {
        self.writers.batches()
    }

    /// Pool connections by state, for metrics.
    pub fn pool_status(&self) -> (usize, usize) {
        let s = self.pool.status();
        (s.size.saturating_sub(s.available), s.available)
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(format!("no database connection: {e}")))
    }
}

/// Connection trouble is `Unavailable` (retry later); anything the
/// database refused on purpose is reported as what it is.
fn db(e: tokio_postgres::Error) -> StoreError {
    let cause = db_cause(&e);
    match e.code() {
        None => StoreError::Unavailable(cause),
        Some(code) if code.code().starts_with("08") || *code == SqlState::ADMIN_SHUTDOWN => {
            StoreError::Unavailable(cause)
        }
        Some(code) if *code == SqlState::CHECK_VIOLATION || *code == SqlState::UNIQUE_VIOLATION => {
            StoreError::Invariant(cause)
        }
        Some(_) => StoreError::Internal(cause),
    }
}

/// What went wrong, in PostgreSQL's words: a server error's code, message,
/// detail, hint and constraint (the driver's own text is only "db error"),
/// or a client error with its causes.
pub fn db_cause(e: &tokio_postgres::Error) -> String {
    if let Some(d) = e.as_db_error() {
        let mut cause = format!("{} {}: {}", d.severity(), d.code().code(), d.message());
        for (label, part) in [
            ("detail", d.detail()),
            ("hint", d.hint()),
            ("constraint", d.constraint()),
            ("table", d.table()),
            ("where", d.where_()),
        ] {
            if let Some(part) = part {
                cause.push_str(&format!("; {label}: {part}"));
            }
        }
        return cause;
    }
    let mut cause = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause.push_str(&format!(": {s}"));
        source = s.source();
    }
    cause
}

fn is_unique_violation(e: &tokio_postgres::Error, constraint: &str) -> bool {
    e.as_db_error().is_some_and(|d| {
        d.code() == &SqlState::UNIQUE_VIOLATION && d.constraint() == Some(constraint)
    })
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Internal(format!("stored {what} {value:?} is not valid"))
}

fn credits(v: i64) -> StoreResult<Credits> {
    Credits::new(v).map_err(|_| corrupt("credits", &v.to_string()))
}

fn tier(s: &str) -> StoreResult<Tier> {
    s.parse().map_err(|_| corrupt("tier", s))
}

fn state(s: &str) -> StoreResult<JobState> {
    s.parse().map_err(|_| corrupt("job state", s))
}

fn status(s: &str) -> StoreResult<AccountStatus> {
    s.parse().map_err(|_| corrupt("status", s))
}

fn charge(s: &str) -> StoreResult<Charge> {
    s.parse().map_err(|_| corrupt("charge", s))
}

fn kind(s: &str) -> StoreResult<JobKind> {
    s.parse().map_err(|_| corrupt("job kind", s))
}

fn entry_kind(s: &str) -> StoreResult<EntryKind> {
    EntryKind::ALL
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| corrupt("entry kind", s))
}

fn source(s: &str) -> StoreResult<GrantSource> {
    s.parse().map_err(|_| corrupt("grant source", s))
}

fn json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> StoreResult<T> {
    serde_json::from_value(v).map_err(|e| StoreError::Internal(format!("stored JSON: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> StoreResult<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| StoreError::Internal(format!("JSON: {e}")))
}

const USER_COLUMNS: &str =
    "id, email, display_name, tier, membership_expires_at, status, created_at, email_canonical";

fn user_row(r: &Row) -> StoreResult<User> {
    let tier_s: String = r.get(3);
    let status_s: String = r.get(5);
    Ok(User {
        id: UserId::from_uuid(r.get(0)),
        email: Email::from_stored(r.get(1), r.get(7)),
        display_name: DisplayName::from_stored(r.get(2)),
        membership: Membership {
            tier: tier(&tier_s)?,
            expires_at: r.get(4),
        },
        status: status(&status_s)?,
        created_at: r.get(6),
    })
}

const JOB_COLUMNS: &str = "id, user_id, seq, kind, model, prompt, params, tier, cost, state, attempts, \
     max_attempts, charge, created_at, started_at, finished_at, retry_at, error, result, worker_id, lease, webhook_url, price_version, pruned_at, priority";

fn job_row(r: &Row) -> StoreResult<Job> {
    let kind_s: String = r.get(3);
    let tier_s: String = r.get(7);
    let state_s: String = r.get(9);
    let charge_s: String = r.get(12);
    let params: JobParams = json(r.get(6))?;
    let error: Option<serde_json::Value> = r.get(17);
    let result: Option<serde_json::Value> = r.get(18);
    let seq: i64 = r.get(2);
    let attempts: i32 = r.get(10);
    let max_attempts: i32 = r.get(11);
    Ok(Job {
        id: JobId::from_uuid(r.get(0)),
        user_id: UserId::from_uuid(r.get(1)),
        seq: u64::try_from(seq).map_err(|_| corrupt("seq", &seq.to_string()))?,
        spec: JobSpec {
            kind: kind(&kind_s)?,
            model: r.get(4),
            prompt: r.get(5),
            params,
            webhook_url: r.get(21),
            priority: {
                let p: String = r.get(24);
                p.parse().map_err(|_| corrupt("priority", &p))?
            },
        },
        tier: tier(&tier_s)?,
        cost: credits(r.get(8))?,
        state: state(&state_s)?,
        attempts: u32::try_from(attempts)
            .map_err(|_| corrupt("attempts", &attempts.to_string()))?,
        max_attempts: u32::try_from(max_attempts)
            .map_err(|_| corrupt("max_attempts", &max_attempts.to_string()))?,
        charge: charge(&charge_s)?,
        created_at: r.get(13),
        started_at: r.get(14),
        finished_at: r.get(15),
        retry_at: r.get(16),
        error: error.map(json::<JobError>).transpose()?,
        result: result.map(json::<JobResult>).transpose()?,
        worker_id: r.get::<_, Option<uuid::Uuid>>(19).map(WorkerId::from_uuid),
        lease: r
            .get::<_, Option<uuid::Uuid>>(20)
            .map(LeaseToken::from_uuid),
        price_version: {
            let v: i32 = r.get(22);
            u32::try_from(v).map_err(|_| corrupt("price version", &v.to_string()))?
        },
        pruned_at: r.get(23),
    })
}

const ENTRY_COLUMNS: &str =
    "id, user_id, kind, amount, balance, held, source, job_id, note, created_at";

fn entry_row(r: &Row) -> StoreResult<LedgerEntry> {
    let kind_s: String = r.get(2);
    let source_s: Option<String> = r.get(6);
    Ok(LedgerEntry {
        id: EntryId(r.get(0)),
        user_id: UserId::from_uuid(r.get(1)),
        kind: entry_kind(&kind_s)?,
        amount: credits(r.get(3))?,
        balance: credits(r.get(4))?,
        held: credits(r.get(5))?,
        source: source_s.as_deref().map(source).transpose()?,
        job_id: r.get::<_, Option<uuid::Uuid>>(7).map(JobId::from_uuid),
        note: r.get(8),
        created_at: r.get(9),
    })
}

/// Statements run as prepared statements cached per connection: a plain
/// `execute(&str)` costs an extra round trip to prepare every time, and
/// round trips are what a transaction here is made of.
async fn cached_execute(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, StoreError> {
    let statement = tx.prepare_cached(sql).await.map_err(db)?;
    tx.execute(&statement, params).await.map_err(db)
}

async fn cached_query(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let statement = tx.prepare_cached(sql).await.map_err(db)?;
    tx.query(&statement, params).await.map_err(db)
}

async fn cached_query_one(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Row, StoreError> {
    let statement = tx.prepare_cached(sql).await.map_err(db)?;
    tx.query_one(&statement, params).await.map_err(db)
}

async fn cached_query_opt(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Option<Row>, StoreError> {
    let statement = tx.prepare_cached(sql).await.map_err(db)?;
    tx.query_opt(&statement, params).await.map_err(db)
}

/// Locks one account for the rest of the transaction.
async fn lock_account(tx: &Transaction<'_>, user: UserId) -> StoreResult<AccountState> {
    writer::lock_accounts(tx, &[user.as_uuid()])
        .await?
        .remove(&user)
        .ok_or(StoreError::NotFound("user"))
}

/// Books a grant decided by the domain and writes it: how payments and
/// gifts move money in this adapter.
async fn book_grant(
    tx: &Transaction<'_>,
    account: AccountState,
    grant: &Grant,
    now: DateTime<Utc>,
) -> StoreResult<AccountState> {
    let (ws, _) = decide::grant(account, grant, None, now)?;
    apply::write(tx, &ws).await?;
    ws.accounts
        .last()
        .copied()
        .ok_or_else(|| StoreError::Invariant("a grant without its wallet".into()))
}

/// The channel on which the store announces a job that (again) waits for
/// a slot, so the active scheduler on any node hears of it at commit.
pub const WAITING_CHANNEL: &str = "admedia_waiting";

/// The transaction-level advisory lock that fences assignments against
/// elections (see `assign_job`).
const EPOCH_FENCE: i64 = 0x0061_646d_6570_6f63;

#[async_trait]
impl Store for PgStore {
    fn adapter(&self) -> &'static str {
        "postgres"
    }

    fn durable(&self) -> bool {
        true
    }

    async fn ping(&self) -> StoreResult<()> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(db)?;
        Ok(())
    }

    fn outbox(&self) -> &OutboxFeed {
        &self.feed
    }

    async fn claim_webhooks(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<PendingWebhook>> {
        let client = self.client().await?;
        // Claimed by moving the next attempt past the claim, in the same
        // statement that picks them: no other dispatcher gets them before.
        let stmt = client
            .prepare_cached(
                "UPDATE webhook_outbox SET next_attempt_at = $2 WHERE id IN ( \
                   SELECT id FROM webhook_outbox WHERE next_attempt_at <= $1 \
                   ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, job_id, user_id, url, event_type, job, created_at, attempts, endpoint_id",
            )
            .await
            .map_err(db)?;
        let rows = client
            .query(
                &stmt,
                &[
                    &now,
                    &(now + admedia_actors::store::outbox::DELIVERY_CLAIM),
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(db)?;
        let mut owed = rows
            .iter()
            .map(|r| {
                let attempts: i32 = r.get(7);
                Ok(PendingWebhook {
                    delivery: WebhookDelivery {
                        id: r.get(0),
                        job_id: JobId::from_uuid(r.get(1)),
                        user_id: UserId::from_uuid(r.get(2)),
                        url: r.get(3),
                        event_type: r.get(4),
                        job: json(r.get(5))?,
                        at: r.get(6),
                        endpoint_id: r
                            .get::<_, Option<uuid::Uuid>>(8)
                            .map(admedia_actors::ids::WebhookEndpointId::from_uuid),
                    },
                    attempts: u32::try_from(attempts).unwrap_or(0),
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        owed.sort_by(|a, b| (a.delivery.at, &a.delivery.id).cmp(&(b.delivery.at, &b.delivery.id)));
        Ok(owed)
    }

    async fn report_webhook(
        &self,
        id: &str,
        report: DeliveryReport,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        // An endpoint's delivery is logged with its outcome, at once.
        let owed = tx
            .query_opt(
                "SELECT job_id, event_type, endpoint_id FROM webhook_outbox WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(db)?;
        if let Some(row) = owed {
            let endpoint: Option<uuid::Uuid> = row.get(2);
            if let Some(endpoint) = endpoint {
                let event_type: String = row.get(1);
                let attempt = report.logged(id, JobId::from_uuid(row.get(0)), &event_type, now);
                account_api::log_attempt(
                    &tx,
                    admedia_actors::ids::WebhookEndpointId::from_uuid(endpoint),
                    &attempt,
                )
                .await?;
            }
        }
        match report {
            DeliveryReport::Delivered { .. } => {
                tx.execute("DELETE FROM webhook_outbox WHERE id = $1", &[&id])
                    .await
                    .map_err(db)?;
            }
            DeliveryReport::GivenUp { error, .. } => {
                tracing::error!(webhook = id, error = %error, "webhook given up");
                tx.execute("DELETE FROM webhook_outbox WHERE id = $1", &[&id])
                    .await
                    .map_err(db)?;
            }
            DeliveryReport::Failed {
                retry_at, error, ..
            } => {
                tx.execute(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3 WHERE id = $1",
                    &[&id, &retry_at, &error],
                )
                .await
                .map_err(db)?;
            }
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }

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
            waiting: 0,
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
            prefixed(platform::KEY_COLUMNS, "k"),
        );
        let stmt = client.prepare_cached(&sql).await.map_err(db)?;
        let Some(row) = client.query_opt(&stmt, &[&&hash.0[..]]).await.map_err(db)? else {
            return Ok(None);
        };
        let user = user_row(&row)?;
        let key = platform::key_row_at(&row, USER_COLUMNS.split(", ").count())?;
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
        platform::lapse_gifts(&tx, id, current, new_status, now).await?;
        let sql = format!("UPDATE users SET status = $2 WHERE id = $1 RETURNING {USER_COLUMNS}");
        let row = cached_query_one(&tx, &sql, &[&id.as_uuid(), &new_status.as_str()]).await?;
        tx.commit().await.map_err(db)?;
        user_row(&row)
    }

    async fn wallet(&self, user: UserId) -> StoreResult<Wallet> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT balance, held FROM wallets WHERE user_id = $1",
                &[&user.as_uuid()],
            )
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound("user"))?;
        Wallet::new(credits(row.get(0))?, credits(row.get(1))?).map_err(money)
    }

    async fn ledger(
        &self,
        user: UserId,
        before: Option<EntryId>,
        limit: usize,
    ) -> StoreResult<Vec<LedgerEntry>> {
        let client = self.client().await?;
        let exists = client
            .query_opt(
                "SELECT 1 FROM wallets WHERE user_id = $1",
                &[&user.as_uuid()],
            )
            .await
            .map_err(db)?;
        if exists.is_none() {
            return Err(StoreError::NotFound("user"));
        }
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE user_id = $1 AND ($2::bigint IS NULL OR id < $2) \
             ORDER BY id DESC LIMIT $3"
        );
        let rows = client
            .query(
                &sql,
                &[
                    &user.as_uuid(),
                    &before.map(|b| b.0),
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(db)?;
        rows.iter().map(entry_row).collect()
    }

    async fn grant(
        &self,
        user: UserId,
        grant: Grant,
        now: DateTime<Utc>,
    ) -> StoreResult<GrantOutcome> {
        self.writers
            .call(|reply| writer::Op::Grant {
                user,
                grant,
                now,
                reply,
            })
            .await
    }

    async fn submit_job(&self, new: NewJob) -> StoreResult<Submission> {
        self.writers
            .call(|reply| writer::Op::Submit {
                new: Box::new(new),
                reply,
            })
            .await
    }

    async fn assign_job(
        &self,
        attempt: AttemptRef,
        worker: WorkerId,
        epoch: u64,
        now: DateTime<Utc>,
    ) -> StoreResult<Job> {
        self.writers
            .call(|reply| writer::Op::Assign {
                attempt,
                worker,
                epoch,
                now,
                reply,
            })
            .await
    }

    async fn start_job(&self, attempt: AttemptRef, now: DateTime<Utc>) -> StoreResult<Job> {
        self.writers
            .call(|reply| writer::Op::Start {
                attempt,
                now,
                reply,
            })
            .await
    }

    async fn finish_attempt(
        &self,
        attempt: AttemptRef,
        outcome: AttemptOutcome,
        now: DateTime<Utc>,
    ) -> StoreResult<Settlement> {
        self.writers
            .call(|reply| writer::Op::Finish {
                attempt,
                outcome,
                now,
                reply,
            })
            .await
    }

    async fn cancel_job(
        &self,
        user: UserId,
        id: JobId,
        now: DateTime<Utc>,
    ) -> StoreResult<Cancellation> {
        self.writers
            .call(|reply| writer::Op::Cancel {
                user,
                job: id,
                now,
                reply,
            })
            .await
    }

    async fn cancel_queued_jobs(&self, user: UserId, now: DateTime<Utc>) -> StoreResult<Vec<Job>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        // Jobs before wallets, as everywhere.
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE user_id = $1 AND state = 'queued' ORDER BY id FOR UPDATE");
        let rows = cached_query(&tx, &sql, &[&user.as_uuid()]).await?;
        let mut queued = rows
            .iter()
            .map(job_row)
            .collect::<StoreResult<Vec<Job>>>()?;
        queued.sort_by_key(|j| j.seq);
        let account = lock_account(&tx, user).await?;
        let (mut ws, cancelled) = decide::cancel_queued(account, &queued, now)?;
        account_api::fan_out(&tx, &mut ws).await?;
        apply::write(&tx, &ws).await?;
        tx.commit().await.map_err(db)?;
        self.feed.committed(&ws);
        Ok(cancelled)
    }

    async fn job(&self, id: JobId) -> StoreResult<Option<Job>> {
        let client = self.client().await?;
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let stmt = client.prepare_cached(&sql).await.map_err(db)?;
        client
            .query_opt(&stmt, &[&id.as_uuid()])
            .await
            .map_err(db)?
            .map(|r| job_row(&r))
            .transpose()
    }

    async fn queue_position(&self, id: JobId) -> StoreResult<Option<u32>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                // Ahead: the user's waiting jobs the scheduler takes first,
                // of higher priority or of the same and submitted earlier.
                "SELECT (SELECT count(*) FROM jobs w WHERE w.user_id = j.user_id AND w.state = 'queued' \
                   AND (array_position(ARRAY['low', 'normal', 'high'], w.priority), -w.seq) \
                     > (array_position(ARRAY['low', 'normal', 'high'], j.priority), -j.seq)) \
                 FROM jobs j WHERE j.id = $1 AND j.state = 'queued'",
                &[&id.as_uuid()],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|r| {
            let ahead: i64 = r.get(0);
            u32::try_from(ahead).unwrap_or(u32::MAX).saturating_add(1)
        }))
    }

    async fn list_jobs(
        &self,
        user: UserId,
        state_filter: Option<JobState>,
        before: Option<JobId>,
        limit: usize,
    ) -> StoreResult<Vec<Job>> {
        let client = self.client().await?;
        let before_seq: Option<i64> = match before {
            Some(id) => Some(
                client
                    .query_opt(
                        "SELECT seq FROM jobs WHERE id = $1 AND user_id = $2",
                        &[&id.as_uuid(), &user.as_uuid()],
                    )
                    .await
                    .map_err(db)?
                    .ok_or(StoreError::NotFound("job"))?
                    .get(0),
            ),
            None => None,
        };
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE user_id = $1 AND ($2::text IS NULL OR state = $2) \
             AND ($3::bigint IS NULL OR seq < $3) AND pruned_at IS NULL ORDER BY seq DESC LIMIT $4"
        );
        let rows = client
            .query(
                &sql,
                &[
                    &user.as_uuid(),
                    &state_filter.map(JobState::as_str),
                    &before_seq,
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(db)?;
        rows.iter().map(job_row).collect()
    }

    async fn jobs_in_states(&self, states: &[JobState]) -> StoreResult<Vec<Job>> {
        let client = self.client().await?;
        let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE state = ANY($1) ORDER BY seq");
        let rows = client.query(&sql, &[&names]).await.map_err(db)?;
        rows.iter().map(job_row).collect()
    }

    async fn job_counts(&self) -> StoreResult<JobCounts> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT state, count(*) FROM jobs GROUP BY state", &[])
            .await
            .map_err(db)?;
        let mut counts: Vec<(JobState, u64)> = JobState::ALL.into_iter().map(|s| (s, 0)).collect();
        for r in rows {
            let s = state(r.get(0))?;
            let n: i64 = r.get(1);
            if let Some(c) = counts.iter_mut().find(|(st, _)| *st == s) {
                c.1 = u64::try_from(n).unwrap_or(0);
            }
        }
        Ok(JobCounts(counts))
    }

    async fn audit_ledgers(&self) -> StoreResult<Vec<(UserId, Wallet, Vec<LedgerEntry>)>> {
        let mut client = self.client().await?;
        // One snapshot, so wallets and entries agree.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db)?;
        let wallets = cached_query(
            &tx,
            "SELECT user_id, balance, held FROM wallets ORDER BY user_id",
            &[],
        )
        .await?;
        let sql = format!("SELECT {ENTRY_COLUMNS} FROM ledger_entries ORDER BY id");
        let entries = cached_query(&tx, &sql, &[]).await?;
        tx.commit().await.map_err(db)?;
        let mut by_user: std::collections::HashMap<UserId, Vec<LedgerEntry>> = Default::default();
        for r in &entries {
            let e = entry_row(r)?;
            by_user.entry(e.user_id).or_default().push(e);
        }
        wallets
            .iter()
            .map(|r| {
                let user = UserId::from_uuid(r.get(0));
                let wallet = Wallet::new(credits(r.get(1))?, credits(r.get(2))?).map_err(money)?;
                Ok((user, wallet, by_user.remove(&user).unwrap_or_default()))
            })
            .collect()
    }

    async fn expire_idempotency_keys(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM idempotency_keys WHERE created_at < $1",
                &[&before],
            )
            .await
            .map_err(db)
    }

    async fn prune_finished_jobs(
        &self,
        before: &FinishedBefore,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        // Jobs a writer holds (or another node's sweep) are skipped, not
        // waited for: the sweep never holds up the hot path. `NO KEY`
        // leaves the key-share locks of new events' foreign keys alone.
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE pruned_at IS NULL \
             AND ((state = 'succeeded' AND finished_at < $1) OR (state = 'failed' AND finished_at < $2) \
             OR (state = 'cancelled' AND finished_at < $3)) \
             ORDER BY finished_at, seq LIMIT $4 FOR NO KEY UPDATE SKIP LOCKED"
        );
        let rows = cached_query(
            &tx,
            &sql,
            &[
                &before.succeeded,
                &before.failed,
                &before.cancelled,
                &i64::try_from(limit).unwrap_or(i64::MAX),
            ],
        )
        .await?;
        let mut thin = Vec::with_capacity(rows.len());
        for r in &rows {
            if let Some(job) = decide::prune(&job_row(r)?, before, now) {
                thin.push(job);
            }
        }
        if thin.is_empty() {
            tx.commit().await.map_err(db)?;
            return Ok(0);
        }
        let ids: Vec<uuid::Uuid> = thin.iter().map(|j| j.id.as_uuid()).collect();
        let states: Vec<&str> = thin.iter().map(|j| j.state.as_str()).collect();
        let prompts: Vec<&str> = thin.iter().map(|j| j.spec.prompt.as_str()).collect();
        let params = thin
            .iter()
            .map(|j| to_json(&j.spec.params))
            .collect::<StoreResult<Vec<_>>>()?;
        let errors = thin
            .iter()
            .map(|j| j.error.as_ref().map(to_json).transpose())
            .collect::<StoreResult<Vec<_>>>()?;
        let results = thin
            .iter()
            .map(|j| j.result.as_ref().map(to_json).transpose())
            .collect::<StoreResult<Vec<_>>>()?;
        let hooks: Vec<Option<&str>> = thin.iter().map(|j| j.spec.webhook_url.as_deref()).collect();
        let pruned: Vec<Option<DateTime<Utc>>> = thin.iter().map(|j| j.pruned_at).collect();
        let updated = cached_execute(
            &tx,
            "UPDATE jobs SET prompt = u.prompt, params = u.params, error = u.error, result = u.result, \
             webhook_url = u.webhook_url, pruned_at = u.pruned_at \
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[], $6::jsonb[], $7::text[], $8::timestamptz[]) \
             AS u(id, state, prompt, params, error, result, webhook_url, pruned_at) \
             WHERE jobs.id = u.id AND jobs.state = u.state AND jobs.pruned_at IS NULL",
            &[&ids, &states, &prompts, &params, &errors, &results, &hooks, &pruned],
        )
        .await?;
        if updated != ids.len() as u64 {
            // The rows are locked: only a broken invariant gets here.
            return Err(StoreError::Invariant(format!(
                "pruned {updated} of {} locked finished jobs",
                ids.len()
            )));
        }
        cached_execute(
            &tx,
            "DELETE FROM job_attempts WHERE job_id = ANY($1)",
            &[&ids],
        )
        .await?;
        cached_execute(
            &tx,
            "DELETE FROM job_events WHERE job_id = ANY($1)",
            &[&ids],
        )
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(updated)
    }

    async fn become_leader(&self, node: &str, url: &str, now: DateTime<Utc>) -> StoreResult<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        cached_execute(&tx, "SELECT pg_advisory_xact_lock($1)", &[&EPOCH_FENCE]).await?;
        let epoch: i64 = cached_query_one(&tx, "UPDATE cluster_leader SET epoch = epoch + 1, node = $1, url = $2, since = $3 WHERE id = 1 \
                 RETURNING epoch",
                &[&node, &url, &now],).await?
            .get(0);
        tx.commit().await.map_err(db)?;
        Ok(u64::try_from(epoch).unwrap_or(0))
    }

    async fn leader(&self) -> StoreResult<Option<Leader>> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT epoch, node, url, since FROM cluster_leader WHERE id = 1",
                &[],
            )
            .await
            .map_err(db)?;
        let epoch: i64 = row.get(0);
        let node: Option<String> = row.get(1);
        let url: Option<String> = row.get(2);
        let since: Option<DateTime<Utc>> = row.get(3);
        Ok(match (node, url, since) {
            (Some(node), Some(url), Some(since)) if epoch > 0 => Some(Leader {
                epoch: u64::try_from(epoch).unwrap_or(0),
                node,
                url,
                since,
            }),
            _ => None,
        })
    }

    async fn webhook_secret(&self, user: UserId, fresh: String) -> StoreResult<String> {
        let client = self.client().await?;
        let inserted = client
            .execute(
                "INSERT INTO webhook_secrets (user_id, secret, created_at) VALUES ($1, $2, now()) \
                 ON CONFLICT (user_id) DO NOTHING",
                &[&user.as_uuid(), &fresh],
            )
            .await;
        if let Err(e) = inserted {
            if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) {
                return Err(StoreError::NotFound("user"));
            }
            return Err(db(e));
        }
        let row = client
            .query_one(
                "SELECT secret FROM webhook_secrets WHERE user_id = $1",
                &[&user.as_uuid()],
            )
            .await
            .map_err(db)?;
        Ok(row.get(0))
    }

    async fn admin_jobs(
        &self,
        filter: &JobFilter,
        before: Option<JobId>,
        limit: usize,
    ) -> StoreResult<Vec<Job>> {
        let client = self.client().await?;
        let before_seq: Option<i64> = match before {
            Some(id) => Some(
                client
                    .query_opt("SELECT seq FROM jobs WHERE id = $1", &[&id.as_uuid()])
                    .await
                    .map_err(db)?
                    .ok_or(StoreError::NotFound("job"))?
                    .get(0),
            ),
            None => None,
        };
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR tier = $2) \
             AND ($3::text IS NULL OR kind = $3) AND ($4::uuid IS NULL OR user_id = $4) \
             AND ($5::timestamptz IS NULL OR created_at >= $5) AND ($6::timestamptz IS NULL OR created_at < $6) \
             AND ($7::bigint IS NULL OR seq < $7) AND pruned_at IS NULL ORDER BY seq DESC LIMIT $8"
        );
        let rows = client
            .query(
                &sql,
                &[
                    &filter.state.map(JobState::as_str),
                    &filter.tier.map(Tier::as_str),
                    &filter.kind.map(JobKind::as_str),
                    &filter.user.map(|u| u.as_uuid()),
                    &filter.since,
                    &filter.until,
                    &before_seq,
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(db)?;
        rows.iter().map(job_row).collect()
    }

    async fn attempts(&self, job: JobId) -> StoreResult<Vec<AttemptRecord>> {
        let client = self.client().await?;
        let exists = client
            .query_opt("SELECT 1 FROM jobs WHERE id = $1", &[&job.as_uuid()])
            .await
            .map_err(db)?;
        if exists.is_none() {
            return Err(StoreError::NotFound("job"));
        }
        let rows = client
            .query(
                "SELECT attempt, worker_id, lease, assigned_at, started_at, finished_at, outcome, message \
                 FROM job_attempts WHERE job_id = $1 ORDER BY attempt",
                &[&job.as_uuid()],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                let attempt: i32 = r.get(0);
                Ok(AttemptRecord {
                    attempt: u32::try_from(attempt)
                        .map_err(|_| corrupt("attempt", &attempt.to_string()))?,
                    worker_id: WorkerId::from_uuid(r.get(1)),
                    lease: LeaseToken::from_uuid(r.get(2)),
                    assigned_at: r.get(3),
                    started_at: r.get(4),
                    finished_at: r.get(5),
                    outcome: r
                        .get::<_, Option<&str>>(6)
                        .map(|o| o.parse().map_err(|_| corrupt("attempt outcome", o)))
                        .transpose()?,
                    message: r.get(7),
                })
            })
            .collect()
    }

    async fn job_ledger(&self, job: JobId) -> StoreResult<Vec<LedgerEntry>> {
        let client = self.client().await?;
        let sql =
            format!("SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE job_id = $1 ORDER BY id");
        let rows = client.query(&sql, &[&job.as_uuid()]).await.map_err(db)?;
        rows.iter().map(entry_row).collect()
    }

    async fn find_users(&self, fragment: &str, limit: usize) -> StoreResult<Vec<User>> {
        let client = self.client().await?;
        // LIKE metacharacters in the fragment are matched literally.
        let needle = fragment
            .trim()
            .to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE email LIKE '%' || $1 || '%' ORDER BY email LIMIT $2");
        let rows = client
            .query(&sql, &[&needle, &i64::try_from(limit).unwrap_or(i64::MAX)])
            .await
            .map_err(db)?;
        rows.iter().map(user_row).collect()
    }

    async fn activity_since(&self, since: DateTime<Utc>) -> StoreResult<Activity> {
        let client = self.client().await?;
        let retries: i64 = client
            .query_one(
                "SELECT count(*) FROM job_attempts WHERE outcome = 'system_failure' AND finished_at >= $1",
                &[&since],
            )
            .await
            .map_err(db)?
            .get(0);
        let refunds = client
            .query_one(
                "SELECT count(*), coalesce(sum(amount), 0)::bigint FROM ledger_entries WHERE kind = 'void' AND created_at >= $1",
                &[&since],
            )
            .await
            .map_err(db)?;
        Ok(Activity {
            retries: u64::try_from(retries).unwrap_or(0),
            refunds: u64::try_from(refunds.get::<_, i64>(0)).unwrap_or(0),
            refunded_credits: refunds.get(1),
        })
    }

    // ---- platform rules (see `platform`)

    async fn create_api_key(
        &self,
        user: UserId,
        id: ApiKeyId,
        hash: KeyHash,
        options: admedia_actors::accounts::KeyOptions,
        now: DateTime<Utc>,
    ) -> StoreResult<ApiKeyRecord> {
        self.pg_create_api_key(user, id, hash, options, now).await
    }

    async fn api_keys(&self, user: UserId) -> StoreResult<Vec<ApiKeyRecord>> {
        self.pg_api_keys(user).await
    }

    async fn revoke_api_key(
        &self,
        user: UserId,
        id: ApiKeyId,
        now: DateTime<Utc>,
    ) -> StoreResult<ApiKeyRecord> {
        self.pg_revoke_api_key(user, id, now).await
    }

    async fn apply_payment(&self, payment: NewPayment) -> StoreResult<PaymentOutcome> {
        self.pg_apply_payment(payment).await
    }

    async fn payments_for_review(&self, limit: usize) -> StoreResult<Vec<PaymentReview>> {
        self.pg_payments_for_review(limit).await
    }

    async fn due_gifts(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<ScheduledGift>> {
        self.pg_due_gifts(now, limit).await
    }

    async fn grant_gift(
        &self,
        user: UserId,
        payment: PaymentId,
        month: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<GiftOutcome> {
        self.pg_grant_gift(user, payment, month, now).await
    }

    async fn gifts(&self, user: UserId) -> StoreResult<Vec<ScheduledGift>> {
        self.pg_gifts(user).await
    }

    async fn price_versions(&self) -> StoreResult<Vec<PriceVersion>> {
        self.pg_price_versions().await
    }

    async fn init_prices(
        &self,
        prices: PriceTable,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<PriceVersion>> {
        self.pg_init_prices(prices, now).await
    }

    async fn announce_prices(
        &self,
        prices: PriceTable,
        effective_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<(PriceVersion, bool)> {
        self.pg_announce_prices(prices, effective_at, now).await
    }

    async fn record_violation(
        &self,
        user: UserId,
        violation: &NewViolation,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
    ) -> StoreResult<u32> {
        self.pg_record_violation(user, violation, now, since).await
    }

    async fn violations(
        &self,
        user: UserId,
        since: DateTime<Utc>,
        counted_only: bool,
        limit: usize,
    ) -> StoreResult<Vec<Violation>> {
        self.pg_violations(user, since, counted_only, limit).await
    }

    async fn record_moderation_action(&self, action: &ModerationAction) -> StoreResult<()> {
        self.pg_record_moderation_action(action).await
    }

    async fn moderation_actions(
        &self,
        user: Option<UserId>,
        kind: Option<ModerationKind>,
        limit: usize,
    ) -> StoreResult<Vec<ModerationAction>> {
        self.pg_moderation_actions(user, kind, limit).await
    }

    async fn expire_job(
        &self,
        user: UserId,
        id: JobId,
        now: DateTime<Utc>,
    ) -> StoreResult<Settlement> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        // Jobs before wallets, as everywhere.
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 FOR UPDATE");
        let row = cached_query_opt(&tx, &sql, &[&id.as_uuid()])
            .await?
            .ok_or(StoreError::NotFound("job"))?;
        let job = job_row(&row)?;
        let account = lock_account(&tx, job.user_id).await?;
        let (mut ws, settlement) = decide::expire(account, &job, user, now)?;
        account_api::fan_out(&tx, &mut ws).await?;
        apply::write(&tx, &ws).await?;
        tx.commit().await.map_err(db)?;
        self.feed.committed(&ws);
        Ok(settlement)
    }

    async fn user_events(
        &self,
        user: UserId,
        after: Option<u64>,
        since: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<admedia_actors::endpoints::EventPage> {
        self.pg_user_events(user, after, since, limit).await
    }

    async fn create_webhook_endpoint(
        &self,
        endpoint: admedia_actors::endpoints::WebhookEndpoint,
    ) -> StoreResult<admedia_actors::endpoints::WebhookEndpoint> {
        self.pg_create_webhook_endpoint(endpoint).await
    }

    async fn webhook_endpoints(
        &self,
        user: UserId,
    ) -> StoreResult<Vec<admedia_actors::endpoints::WebhookEndpoint>> {
        self.pg_webhook_endpoints(user).await
    }

    async fn update_webhook_endpoint(
        &self,
        user: UserId,
        id: admedia_actors::ids::WebhookEndpointId,
        patch: admedia_actors::endpoints::EndpointPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<admedia_actors::endpoints::WebhookEndpoint> {
        self.pg_update_webhook_endpoint(user, id, patch, now).await
    }

    async fn delete_webhook_endpoint(
        &self,
        user: UserId,
        id: admedia_actors::ids::WebhookEndpointId,
    ) -> StoreResult<()> {
        self.pg_delete_webhook_endpoint(user, id).await
    }

    async fn webhook_deliveries(
        &self,
        user: UserId,
        id: admedia_actors::ids::WebhookEndpointId,
        limit: usize,
    ) -> StoreResult<Vec<admedia_actors::endpoints::DeliveryAttempt>> {
        self.pg_webhook_deliveries(user, id, limit).await
    }
}
