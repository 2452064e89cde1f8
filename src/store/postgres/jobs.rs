//! The money path in PostgreSQL: wallets, the ledger and jobs. Money
//! operations lock the user's wallet row first, then the job; the
//! transitions themselves go through the group commit (`writer`).

use super::*;

#[async_trait]
impl JobStore for PgStore {
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
                &[&user.as_uuid(), &before.map(|b| b.0), &limit_param(limit)],
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
        endpoints::fan_out(&tx, &mut ws).await?;
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
                    &limit_param(limit),
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

    async fn queued_jobs_after(&self, after_seq: u64, limit: usize) -> StoreResult<Vec<Job>> {
        let client = self.client().await?;
        // Keyset paging on the active-jobs index (state, seq).
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'queued' AND seq > $1 ORDER BY seq LIMIT $2"
        );
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let limit = limit_param(limit);
        let rows = client.query(&sql, &[&after, &limit]).await.map_err(db)?;
        rows.iter().map(job_row).collect()
    }

    async fn job_counts(&self) -> StoreResult<JobCounts> {
        let client = self.client().await?;
        // The writers' tally (see the `job_state_counts` migration): a few
        // dozen rows, however many jobs there are.
        let rows = client
            .query(
                "SELECT state, sum(jobs)::bigint FROM job_state_counts GROUP BY state",
                &[],
            )
            .await
            .map_err(db)?;
        let mut counts: Vec<(JobState, u64)> = JobState::ALL.into_iter().map(|s| (s, 0)).collect();
        for r in rows {
            let s = state(r.get(0))?;
            let n: i64 = r.get(1);
            let n = u64::try_from(n).map_err(|_| {
                StoreError::Invariant(format!(
                    "{n} jobs {}: the tally went below zero",
                    s.as_str()
                ))
            })?;
            if let Some(c) = counts.iter_mut().find(|(st, _)| *st == s) {
                c.1 = n;
            }
        }
        Ok(JobCounts(counts))
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
                &limit_param(limit),
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
        endpoints::fan_out(&tx, &mut ws).await?;
        apply::write(&tx, &ws).await?;
        tx.commit().await.map_err(db)?;
        self.feed.committed(&ws);
        Ok(settlement)
    }
}
