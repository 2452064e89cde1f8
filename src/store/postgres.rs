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

use admedia_actors::domain::account::{AccountStatus, DisplayName, KeyHash, NewUser, User};
use admedia_actors::domain::email::Email;
use admedia_actors::domain::ids::{ApiKeyId, EntryId, JobId, LeaseToken, UserId, WorkerId};
use admedia_actors::domain::job::{
    AttemptOutcome, Charge, Job, JobError, JobKind, JobParams, JobResult, JobSpec, JobState,
};
use admedia_actors::domain::ledger::{EntryKind, Grant, GrantSource, LedgerEntry};
use admedia_actors::domain::tier::{Membership, Tier};
use admedia_actors::domain::wallet::{Credits, Wallet};
use admedia_actors::store::decide::{self, money};
use admedia_actors::store::outbox::{DeliveryReport, OutboxFeed, PendingWebhook};
use admedia_actors::store::prelude::*;
use admedia_actors::store::writeset::{AccountState, Waiting, WebhookDelivery};
use admedia_actors::store::{
    Activity, AttemptRecord, AttemptRef, Cancellation, FinishedBefore, GrantOutcome, JobCounts,
    JobFilter, Leader, NewJob, Settlement, StoreError, StoreResult, Submission,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Transaction};
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};

use admedia_actors::domain::api_keys::ApiKeyRecord;
use admedia_actors::domain::content::evidence::{
    ModerationAction, ModerationKind, NewViolation, Violation,
};
use admedia_actors::domain::payments::{
    GiftOutcome, NewPayment, PaymentId, PaymentOutcome, PaymentReview, ScheduledGift,
};
use admedia_actors::domain::price_schedule::PriceVersion;
use admedia_actors::domain::pricing::PriceTable;

/// Users and their API keys.
mod accounts;
/// Writes write sets with set-based statements.
mod apply;
/// The ledger archive's chapters.
mod archive;
/// Health, election terms, the outbox and webhook secrets.
mod cluster;
/// The per-user event stream and account webhook endpoints.
mod endpoints;
/// Wallets, the ledger and jobs.
mod jobs;
/// Refused prompts and moderation actions.
mod moderation;
/// The operator's read models.
mod operator;
/// Payments and gifts, price versions.
mod payments;
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

/// `DATABASE_URL` as a connection configuration, with a connect timeout
/// unless the URL sets one.
pub(crate) fn database_config(url: &str) -> Result<tokio_postgres::Config, String> {
    let mut config =
        tokio_postgres::Config::from_str(url).map_err(|e| format!("DATABASE_URL: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    Ok(config)
}

/// The connection pool every PostgreSQL adapter of the server uses: at
/// most `max_connections`, and bounded waits for a connection, so an
/// unreachable database is an error in seconds rather than a hang.
pub(crate) fn pool(config: tokio_postgres::Config, max_connections: usize) -> Result<Pool, String> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_connections.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| format!("pool: {e}"))
}

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
        let config = database_config(url).map_err(StoreError::Internal)?;
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
        let pool = pool(config, max_connections).map_err(StoreError::Internal)?;
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

    /// What is wrong with the database server's own settings for this
    /// store, which it cannot change itself: said at start-up.
    pub async fn setting_warnings(&self) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let autovacuum: String = client
            .query_one("SHOW autovacuum", &[])
            .await
            .map_err(db)?
            .get(0);
        Ok(setting_warnings(&autovacuum))
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

/// A page size as PostgreSQL's `LIMIT` takes it: a size beyond `i64` asks
/// for everything, which is what it meant.
pub(super) fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
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

/// Every job is written several times over its life and pruned at the end
/// of its retention, so the tables make dead rows at the rate jobs finish;
/// without autovacuum nothing reclaims them, the tables and their indexes
/// grow without end and every scan slows (measured: a soak that kept up
/// for its first ten minutes fell behind after, with ten dead rows in
/// `job_events` for each live one).
fn setting_warnings(autovacuum: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    if autovacuum.trim() != "on" {
        warnings.push(format!(
            "autovacuum is {autovacuum}: the dead rows every job leaves (its updates and, \
             after retention, its pruning) are never reclaimed, so the database grows and \
             slows; turn it on (autovacuum = on)"
        ));
    }
    warnings
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_without_autovacuum_is_named_at_start_up() {
        assert!(setting_warnings("on").is_empty());
        let off = setting_warnings("off");
        assert_eq!(off.len(), 1);
        assert!(off[0].contains("autovacuum is off"), "{}", off[0]);
    }
}
