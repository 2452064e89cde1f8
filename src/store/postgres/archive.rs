//! The ledger archive in PostgreSQL (see `schema/V16__ledger_archive.sql`).

use admedia_actors::store::archive::{Chapter, History};

use super::*;

const CHAPTER_COLUMNS: &str = "user_id, first_entry, last_entry, entries, jobs, balance, held, \
     first_at, last_at, closed_at, object_key";

fn chapter_row(r: &Row) -> StoreResult<Chapter> {
    let count = |i: usize| -> StoreResult<u32> {
        u32::try_from(r.get::<_, i32>(i)).map_err(|_| corrupt("chapter count", "negative"))
    };
    Ok(Chapter {
        user_id: UserId::from_uuid(r.get(0)),
        first_entry: EntryId(r.get(1)),
        last_entry: EntryId(r.get(2)),
        entries: count(3)?,
        jobs: count(4)?,
        closing: Wallet::new(credits(r.get(5))?, credits(r.get(6))?).map_err(money)?,
        first_at: r.get(7),
        last_at: r.get(8),
        closed_at: r.get(9),
        object_key: r.get(10),
    })
}

/// A read outside a transaction, as a statement cached per connection.
async fn read(
    client: &deadpool_postgres::Object,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> StoreResult<Vec<Row>> {
    let statement = client.prepare_cached(sql).await.map_err(db)?;
    client.query(&statement, params).await.map_err(db)
}

#[async_trait]
impl ArchiveStore for PgStore {
    async fn users_after(&self, after: Option<UserId>, limit: usize) -> StoreResult<Vec<UserId>> {
        let client = self.client().await?;
        let rows = read(
            &client,
            "SELECT user_id FROM wallets WHERE ($1::uuid IS NULL OR user_id > $1) \
             ORDER BY user_id LIMIT $2",
            &[&after.map(|u| u.as_uuid()), &limit_param(limit)],
        )
        .await?;
        Ok(rows.iter().map(|r| UserId::from_uuid(r.get(0))).collect())
    }

    async fn oldest_history(&self, user: UserId, limit: usize) -> StoreResult<History> {
        let client = self.client().await?;
        if client
            .query_opt("SELECT 1 FROM users WHERE id = $1", &[&user.as_uuid()])
            .await
            .map_err(db)?
            .is_none()
        {
            return Err(StoreError::NotFound("user"));
        }
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE user_id = $1 ORDER BY id LIMIT $2"
        );
        let rows = read(&client, &sql, &[&user.as_uuid(), &limit_param(limit)]).await?;
        let entries = rows
            .iter()
            .map(entry_row)
            .collect::<StoreResult<Vec<_>>>()?;
        let ids: Vec<uuid::Uuid> = entries
            .iter()
            .filter_map(|e| e.job_id.map(|j| j.as_uuid()))
            .collect::<std::collections::HashSet<_>>()
            .into_iter()
            .collect();
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ANY($1)");
        let jobs = read(&client, &sql, &[&ids])
            .await?
            .iter()
            .map(|r| job_row(r).map(|j| (j.id, j)))
            .collect::<StoreResult<_>>()?;
        let protected = read(
            &client,
            "SELECT DISTINCT job_id FROM idempotency_keys WHERE job_id = ANY($1)",
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| JobId::from_uuid(r.get(0)))
        .collect();
        Ok(History {
            entries,
            jobs,
            protected,
        })
    }

    async fn close_chapter(&self, chapter: &Chapter, jobs: &[JobId]) -> StoreResult<bool> {
        let user = chapter.user_id.as_uuid();
        let first = chapter.first_entry.0;
        let last = chapter.last_entry.0;
        let mut ids: Vec<uuid::Uuid> = jobs.iter().map(|j| j.as_uuid()).collect();
        ids.sort_unstable();
        ids.dedup();
        let refuse = |why: String| {
            StoreError::Invariant(format!(
                "chapter {first}..{last} of user {}: {why}",
                chapter.user_id
            ))
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        // Jobs before wallets, as everywhere. The wallet's lock waits out
        // every writer of this user's ledger, so an entry numbered inside
        // the range but not yet committed cannot be left behind.
        let locked = cached_query(
            &tx,
            "SELECT id, user_id, pruned_at IS NOT NULL, state FROM jobs WHERE id = ANY($1) \
             ORDER BY id FOR UPDATE",
            &[&ids],
        )
        .await?;
        if cached_query_opt(
            &tx,
            "SELECT 1 FROM wallets WHERE user_id = $1 FOR SHARE",
            &[&user],
        )
        .await?
        .is_none()
        {
            return Err(StoreError::NotFound("user"));
        }
        if let Some(closed) = cached_query_opt(
            &tx,
            "SELECT last_entry FROM ledger_chapters WHERE user_id = $1 AND first_entry = $2",
            &[&user, &first],
        )
        .await?
        {
            let closed_last: i64 = closed.get(0);
            return if closed_last == last {
                Ok(false)
            } else {
                Err(refuse(format!(
                    "a chapter from there ends at {closed_last}"
                )))
            };
        }
        let range = cached_query_one(
            &tx,
            "SELECT min(id), count(*), \
             (SELECT balance FROM ledger_entries WHERE id = $2 AND user_id = $1), \
             (SELECT held FROM ledger_entries WHERE id = $2 AND user_id = $1) \
             FROM ledger_entries WHERE user_id = $1 AND id <= $2",
            &[&user, &last],
        )
        .await?;
        let (oldest, count, balance, held): (Option<i64>, i64, Option<i64>, Option<i64>) =
            (range.get(0), range.get(1), range.get(2), range.get(3));
        let closing = (
            Some(chapter.closing.balance.get()),
            Some(chapter.closing.held.get()),
        );
        if oldest != Some(first)
            || count != i64::from(chapter.entries)
            || (balance, held) != closing
        {
            return Err(refuse("not the user's oldest live history".into()));
        }
        // The jobs resolved inside the range leave with it, and only they
        // (one resolution per job, by the ledger's unique index; its hold
        // comes before it, so in this chapter or one closed already).
        let named: Vec<uuid::Uuid> = cached_query(
            &tx,
            "SELECT job_id FROM ledger_entries WHERE user_id = $1 AND id <= $2 \
             AND kind IN ('post', 'void') ORDER BY job_id",
            &[&user, &last],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
        if named != ids || ids.len() != chapter.jobs as usize {
            return Err(refuse("its jobs are not those resolved in it".into()));
        }
        let thin = locked
            .iter()
            .all(|r| r.get::<_, uuid::Uuid>(1) == user && r.get::<_, bool>(2));
        if locked.len() != ids.len() || !thin {
            return Err(refuse("a job is not a pruned job of the user".into()));
        }
        // A replay must find its job: protected jobs stay until their
        // record expires.
        let protected: i64 = cached_query_one(
            &tx,
            "SELECT count(*) FROM idempotency_keys WHERE job_id = ANY($1)",
            &[&ids],
        )
        .await?
        .get(0);
        if protected > 0 {
            return Err(refuse(
                "an idempotency record still protects a job in it".into(),
            ));
        }
        cached_execute(
            &tx,
            "INSERT INTO ledger_chapters (user_id, first_entry, last_entry, entries, jobs, balance, \
             held, first_at, last_at, closed_at, object_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &user,
                &first,
                &last,
                &i32::try_from(chapter.entries).map_err(|_| refuse("too many entries".into()))?,
                &i32::try_from(chapter.jobs).map_err(|_| refuse("too many jobs".into()))?,
                &chapter.closing.balance.get(),
                &chapter.closing.held.get(),
                &chapter.first_at,
                &chapter.last_at,
                &chapter.closed_at,
                &chapter.object_key,
            ],
        )
        .await?;
        let deleted = cached_execute(
            &tx,
            "DELETE FROM ledger_entries WHERE user_id = $1 AND id <= $2",
            &[&user, &last],
        )
        .await?;
        if deleted != chapter.entries as u64 {
            return Err(refuse(format!(
                "{deleted} entries left, not {}",
                chapter.entries
            )));
        }
        for sql in [
            "DELETE FROM webhook_outbox WHERE job_id = ANY($1)",
            "DELETE FROM job_events WHERE job_id = ANY($1)",
            "DELETE FROM job_attempts WHERE job_id = ANY($1)",
            "DELETE FROM holds WHERE job_id = ANY($1)",
        ] {
            cached_execute(&tx, sql, &[&ids]).await?;
        }
        cached_execute(&tx, "DELETE FROM jobs WHERE id = ANY($1)", &[&ids]).await?;
        // The jobs leave the counts by state.
        let mut by_state: std::collections::BTreeMap<String, i64> = Default::default();
        for r in &locked {
            *by_state.entry(r.get::<_, String>(3)).or_default() -= 1;
        }
        if !by_state.is_empty() {
            let states: Vec<&str> = by_state.keys().map(String::as_str).collect();
            let deltas: Vec<i64> = by_state.values().copied().collect();
            cached_execute(&tx, apply::COUNT_STATES, &[&states, &deltas]).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    async fn chapters(
        &self,
        user: UserId,
        before: Option<EntryId>,
        limit: usize,
    ) -> StoreResult<Vec<Chapter>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {CHAPTER_COLUMNS} FROM ledger_chapters WHERE user_id = $1 \
             AND ($2::bigint IS NULL OR first_entry < $2) ORDER BY first_entry DESC LIMIT $3"
        );
        let rows = read(
            &client,
            &sql,
            &[&user.as_uuid(), &before.map(|b| b.0), &limit_param(limit)],
        )
        .await?;
        rows.iter().map(chapter_row).collect()
    }
}
