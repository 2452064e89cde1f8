//! The embedded store's operator read models.

use super::*;

#[async_trait]
impl OperatorQueries for MemoryStore {
    async fn admin_jobs(
        &self,
        filter: &JobFilter,
        before: Option<JobId>,
        limit: usize,
    ) -> StoreResult<Vec<Job>> {
        let s = self.state.lock();
        let upper = match before {
            Some(id) => s
                .jobs
                .owner_and_seq(&id)
                .map(|(_, seq)| seq)
                .ok_or(StoreError::NotFound("job"))?,
            None => u64::MAX,
        };
        Ok(s.order
            .range(..upper)
            .rev()
            .filter_map(|(_, id)| s.jobs.full(id))
            .filter(|j| j.pruned_at().is_none() && j.matches(filter))
            .take(limit)
            .map(|j| j.job())
            .collect())
    }

    async fn attempts(&self, job: JobId) -> StoreResult<Vec<AttemptRecord>> {
        let s = self.state.lock();
        if !s.jobs.contains(&job) {
            return Err(StoreError::NotFound("job"));
        }
        Ok(s.attempts.get(&job).cloned().unwrap_or_default())
    }

    async fn job_ledger(&self, job: JobId) -> StoreResult<Vec<LedgerEntry>> {
        let s = self.state.lock();
        let (owner, _) = s
            .jobs
            .owner_and_seq(&job)
            .ok_or(StoreError::NotFound("job"))?;
        Ok(s.accounts
            .get(&owner)
            .map(|a| {
                a.ledger
                    .iter()
                    .filter(|e| e.job_id() == Some(job))
                    .map(|e| e.entry(owner))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn find_users(&self, fragment: &str, limit: usize) -> StoreResult<Vec<User>> {
        let s = self.state.lock();
        let needle = fragment.trim().to_lowercase();
        let mut users: Vec<User> = s
            .users
            .values()
            .filter(|u| u.email.as_str().contains(&needle))
            .cloned()
            .collect();
        users.sort_by(|a, b| a.email.cmp(&b.email));
        users.truncate(limit);
        Ok(users)
    }

    async fn activity_since(&self, since: DateTime<Utc>) -> StoreResult<Activity> {
        let s = self.state.lock();
        let mut activity = Activity::default();
        for list in s.attempts.values() {
            activity.retries += list
                .iter()
                .filter(|a| {
                    a.outcome == Some(crate::domain::job::AttemptOutcomeLabel::SystemFailure)
                        && a.finished_at >= Some(since)
                })
                .count() as u64;
        }
        for account in s.accounts.values() {
            for e in account
                .ledger
                .iter()
                .rev()
                .take_while(|e| e.created_at() >= since)
            {
                if e.kind() == EntryKind::Void {
                    activity.refunds += 1;
                    activity.refunded_credits += e.amount().get();
                }
            }
        }
        Ok(activity)
    }

    async fn audit_ledgers(&self) -> StoreResult<Vec<(UserId, Wallet, Vec<LedgerEntry>)>> {
        let s = self.state.lock();
        Ok(s.accounts
            .iter()
            .map(|(id, a)| {
                (
                    *id,
                    a.wallet,
                    a.ledger.iter().map(|e| e.entry(*id)).collect(),
                )
            })
            .collect())
    }
}
