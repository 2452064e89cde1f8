//! The embedded store's money path: wallets, the ledger and jobs. Each
//! operation decides on what it read under the store's one lock and
//! commits under the same lock.

use super::*;

#[async_trait]
impl JobStore for MemoryStore {
    async fn wallet(&self, user: UserId) -> StoreResult<Wallet> {
        let mut s = self.state.lock();
        Ok(s.account(user)?.wallet)
    }

    async fn ledger(
        &self,
        user: UserId,
        before: Option<EntryId>,
        limit: usize,
    ) -> StoreResult<Vec<LedgerEntry>> {
        let mut s = self.state.lock();
        let account = s.account(user)?;
        // Entries are in booking order, so a page starts where the cursor
        // falls, found by halving, not by walking from the newest.
        let end = before.map_or(account.ledger.len(), |b| {
            account.ledger.partition_point(|e| e.id() < b)
        });
        Ok(account.ledger[..end]
            .iter()
            .rev()
            .take(limit)
            .map(|e| e.entry(user))
            .collect())
    }

    async fn grant(
        &self,
        user: UserId,
        grant: Grant,
        now: DateTime<Utc>,
    ) -> StoreResult<GrantOutcome> {
        let mut s = self.state.lock();
        let account = s.account_state(user)?;
        let seen = grant.idempotency_key.as_ref().and_then(|k| {
            s.accounts
                .get(&user)
                .and_then(|a| a.grant_keys.get(k))
                .cloned()
        });
        let (ws, outcome) = decide::grant(account, &grant, seen.as_ref(), now)?;
        self.commit(&mut s, ws)?;
        Ok(outcome)
    }

    async fn submit_job(&self, new: NewJob) -> StoreResult<Submission> {
        let mut s = self.state.lock();
        let account = s.account_state(new.user_id)?;
        let claimed = new.idempotency.as_ref().and_then(|(key, _)| {
            s.accounts
                .get(&new.user_id)
                .and_then(|a| a.idempotency.get(key).cloned())
        });
        let seq = s.next_seq + 1;
        let (ws, submission) = decide::submit(account, &new, seq, claimed.as_deref())?;
        if !submission.replayed {
            s.next_seq = seq;
        }
        self.commit(&mut s, ws)?;
        Ok(submission)
    }

    async fn assign_job(
        &self,
        attempt: AttemptRef,
        worker: WorkerId,
        epoch: u64,
        now: DateTime<Utc>,
    ) -> StoreResult<Job> {
        let mut s = self.state.lock();
        let current = s.leader.as_ref().map_or(0, |l| l.epoch);
        let job = s.job(attempt.job_id)?;
        let account = s.account_state(job.user_id)?;
        let (ws, job) = decide::assign(account, &job, attempt, worker, epoch, current, now)?;
        self.commit(&mut s, ws)?;
        Ok(job)
    }

    async fn start_job(&self, attempt: AttemptRef, now: DateTime<Utc>) -> StoreResult<Job> {
        let mut s = self.state.lock();
        let (ws, job) = decide::start(&s.job(attempt.job_id)?, attempt, now)?;
        self.commit(&mut s, ws)?;
        Ok(job)
    }

    async fn finish_attempt(
        &self,
        attempt: AttemptRef,
        outcome: AttemptOutcome,
        now: DateTime<Utc>,
    ) -> StoreResult<Settlement> {
        let mut s = self.state.lock();
        let job = s.job(attempt.job_id)?;
        let account = s.account_state(job.user_id)?;
        let (ws, settlement) = decide::finish(account, &job, attempt, outcome, now)?;
        self.commit(&mut s, ws)?;
        Ok(settlement)
    }

    async fn cancel_job(
        &self,
        user: UserId,
        id: JobId,
        now: DateTime<Utc>,
    ) -> StoreResult<Cancellation> {
        let mut s = self.state.lock();
        let job = s.job(id)?;
        let account = s.account_state(user)?;
        let (ws, cancellation) = decide::cancel(account, &job, user, now)?;
        self.commit(&mut s, ws)?;
        Ok(cancellation)
    }

    async fn cancel_queued_jobs(&self, user: UserId, now: DateTime<Utc>) -> StoreResult<Vec<Job>> {
        let mut s = self.state.lock();
        let account = s.account_state(user)?;
        let queued: Vec<Job> = s
            .accounts
            .get(&user)
            .map(|a| {
                // Submission order, whatever their priority.
                let mut seqs: Vec<u64> = a.queued.iter().map(|(_, seq)| *seq).collect();
                seqs.sort_unstable();
                seqs.iter()
                    .filter_map(|seq| a.jobs.get(seq))
                    .filter_map(|id| s.jobs.get(id))
                    .collect()
            })
            .unwrap_or_default();
        let (ws, cancelled) = decide::cancel_queued(account, &queued, now)?;
        self.commit(&mut s, ws)?;
        Ok(cancelled)
    }

    async fn job(&self, id: JobId) -> StoreResult<Option<Job>> {
        Ok(self.state.lock().jobs.get(&id))
    }

    async fn queue_position(&self, id: JobId) -> StoreResult<Option<u32>> {
        let s = self.state.lock();
        let Some(job) = s.jobs.full(&id) else {
            return Ok(None);
        };
        if job.state != JobState::Queued {
            return Ok(None);
        }
        let Some(account) = s.accounts.get(&job.user_id) else {
            return Ok(None);
        };
        // Counted from the back: a job just submitted is last, so this is
        // O(1) where it matters (every submission asks).
        let behind = account
            .queued
            .range((Reverse(job.spec.priority), job.seq)..)
            .count();
        let ahead = account.queued.len().saturating_sub(behind);
        Ok(Some(
            u32::try_from(ahead).unwrap_or(u32::MAX).saturating_add(1),
        ))
    }

    async fn list_jobs(
        &self,
        user: UserId,
        state: Option<JobState>,
        before: Option<JobId>,
        limit: usize,
    ) -> StoreResult<Vec<Job>> {
        let mut s = self.state.lock();
        let before_seq = match before {
            Some(id) => match s.jobs.owner_and_seq(&id) {
                Some((owner, seq)) if owner == user => Some(seq),
                _ => return Err(StoreError::NotFound("job")),
            },
            None => None,
        };
        let ids: Vec<JobId> = {
            let account = s.account(user)?;
            let range = account.jobs.range(..before_seq.unwrap_or(u64::MAX));
            range.rev().map(|(_, id)| *id).collect()
        };
        Ok(ids
            .into_iter()
            .filter_map(|id| s.jobs.full(&id))
            .filter(|j| j.pruned_at().is_none() && state.is_none_or(|st| j.state == st))
            .take(limit)
            .map(|j| j.job())
            .collect())
    }

    async fn jobs_in_states(&self, states: &[JobState]) -> StoreResult<Vec<Job>> {
        let s = self.state.lock();
        if states.iter().any(|st| st.is_terminal()) {
            // Finished jobs have no index: nothing on a hot path asks for
            // them, so this walks every job, pruned ones too.
            let mut jobs: Vec<Job> = s
                .jobs
                .full_records()
                .filter(|j| states.contains(&j.state))
                .map(|j| j.job())
                .chain(s.jobs.pruned_jobs().filter(|j| states.contains(&j.state)))
                .collect();
            jobs.sort_unstable_by_key(|j| j.seq);
            return Ok(jobs);
        }
        let mut seqs: Vec<u64> = states
            .iter()
            .filter_map(|st| s.by_state.get(st))
            .flat_map(|set| set.iter().copied())
            .collect();
        seqs.sort_unstable();
        Ok(seqs.iter().filter_map(|seq| s.job_by_seq(*seq)).collect())
    }

    async fn queued_jobs_after(&self, after_seq: u64, limit: usize) -> StoreResult<Vec<Job>> {
        let s = self.state.lock();
        let Some(queued) = s.by_state.get(&JobState::Queued) else {
            return Ok(Vec::new());
        };
        Ok(queued
            .range((
                std::ops::Bound::Excluded(after_seq),
                std::ops::Bound::Unbounded,
            ))
            .take(limit)
            .filter_map(|seq| s.job_by_seq(*seq))
            .collect())
    }

    async fn job_counts(&self) -> StoreResult<JobCounts> {
        let s = self.state.lock();
        Ok(JobCounts(
            JobState::ALL
                .into_iter()
                .map(|st| {
                    let n = if st.is_terminal() {
                        s.finished_count.get(&st).copied().unwrap_or(0)
                    } else {
                        s.by_state.get(&st).map_or(0, |set| set.len() as u64)
                    };
                    (st, n)
                })
                .collect(),
        ))
    }

    async fn expire_idempotency_keys(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let mut s = self.state.lock();
        let mut forgotten = 0u64;
        for account in s.accounts.values_mut() {
            let kept = account.idempotency.len();
            account
                .idempotency
                .retain(|_, claim| claim.1.created_at >= before);
            forgotten += (kept - account.idempotency.len()) as u64;
        }
        Ok(forgotten)
    }

    async fn prune_finished_jobs(
        &self,
        before: &FinishedBefore,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<u64> {
        let mut s = self.state.lock();
        // Due jobs of every final state, merged oldest-finished first.
        let mut due: Vec<(DateTime<Utc>, u64)> = Vec::new();
        for state in [JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
            let (Some(cutoff), Some(set)) = (before.of(state), s.unpruned.get(&state)) else {
                continue;
            };
            due.extend(set.range(..(cutoff, 0)).take(limit).copied());
        }
        due.sort_unstable();
        due.truncate(limit);
        let mut pruned = 0u64;
        for (_, seq) in due {
            let thin = s
                .order
                .get(&seq)
                .and_then(|id| s.jobs.get(id))
                .and_then(|job| decide::prune(&job, before, now));
            if let Some(thin) = thin {
                s.store_pruned(thin);
                pruned += 1;
            }
        }
        Ok(pruned + std::mem::take(&mut s.pruned_unreported))
    }

    async fn expire_job(
        &self,
        user: UserId,
        id: JobId,
        now: DateTime<Utc>,
    ) -> StoreResult<Settlement> {
        let mut s = self.state.lock();
        let job = s.job(id)?;
        let account = s.account_state(user)?;
        let (ws, settlement) = decide::expire(account, &job, user, now)?;
        self.commit(&mut s, ws)?;
        Ok(settlement)
    }
}
