//! The operator's read models in PostgreSQL.

use super::*;

#[async_trait]
impl OperatorQueries for PgStore {
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
                    &limit_param(limit),
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
            .query(&sql, &[&needle, &limit_param(limit)])
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
}
