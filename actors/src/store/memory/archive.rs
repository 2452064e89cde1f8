//! The embedded store's side of the ledger archive: a closed chapter's
//! entries and thin job records leave memory, so a long-running embedded
//! server holds a bounded window of history.

use std::collections::HashSet;

use super::super::archive::{Chapter, History, CHAPTER_ENTRIES};
use super::*;

#[async_trait]
impl ArchiveStore for MemoryStore {
    async fn users_after(&self, after: Option<UserId>, limit: usize) -> StoreResult<Vec<UserId>> {
        let s = self.state.lock();
        let mut users: Vec<UserId> = s
            .accounts
            .keys()
            .filter(|u| after.is_none_or(|a| **u > a))
            .copied()
            .collect();
        users.sort_unstable();
        users.truncate(limit);
        Ok(users)
    }

    async fn oldest_history(&self, user: UserId, limit: usize) -> StoreResult<History> {
        let mut s = self.state.lock();
        let account = s.account(user)?;
        let entries: Vec<LedgerEntry> = account
            .ledger
            .iter()
            .take(limit)
            .map(|e| e.entry(user))
            .collect();
        let named: HashSet<JobId> = entries.iter().filter_map(|e| e.job_id).collect();
        let protected = account
            .idempotency
            .values()
            .map(|claim| claim.1.id)
            .filter(|id| named.contains(id))
            .collect();
        let jobs = named
            .into_iter()
            .filter_map(|id| s.jobs.get(&id).map(|j| (id, j)))
            .collect();
        Ok(History {
            entries,
            jobs,
            protected,
        })
    }

    async fn close_chapter(&self, chapter: &Chapter, jobs: &[JobId]) -> StoreResult<bool> {
        let mut s = self.state.lock();
        let user = chapter.user_id;
        let account = s.account(user)?;
        if let Some(closed) = account
            .chapters
            .iter()
            .find(|c| c.first_entry == chapter.first_entry)
        {
            return if closed.last_entry == chapter.last_entry {
                Ok(false)
            } else {
                Err(StoreError::Invariant(format!(
                    "a chapter of user {user} from entry {} ends at {}, not {}",
                    chapter.first_entry, closed.last_entry, chapter.last_entry
                )))
            };
        }
        let end = account
            .ledger
            .partition_point(|e| e.id() <= chapter.last_entry);
        let range = &account.ledger[..end];
        let whole = range.first().map(|e| e.id()) == Some(chapter.first_entry)
            && range.last().map(|e| e.id()) == Some(chapter.last_entry)
            && range.len() == chapter.entries as usize
            && range.last().map(|e| e.entry(user)).is_some_and(|e| {
                (e.balance, e.held) == (chapter.closing.balance, chapter.closing.held)
            });
        if !whole {
            return Err(StoreError::Invariant(format!(
                "entries {}..{} are not user {user}'s oldest live history",
                chapter.first_entry, chapter.last_entry
            )));
        }
        // The jobs resolved inside the range leave with it, and only they:
        // each resolution is a job's last entry, and its hold comes before
        // it, so in this chapter or one closed already.
        let resolved: HashSet<JobId> = range
            .iter()
            .filter(|e| matches!(e.kind(), EntryKind::Post | EntryKind::Void))
            .filter_map(|e| e.job_id())
            .collect();
        let leaving: HashSet<JobId> = jobs.iter().copied().collect();
        if resolved != leaving || leaving.len() != chapter.jobs as usize {
            return Err(StoreError::Invariant(format!(
                "chapter {}..{} of user {user}: its jobs are not those resolved in it",
                chapter.first_entry, chapter.last_entry
            )));
        }
        let account = s.account(user)?;
        if account
            .idempotency
            .values()
            .any(|claim| leaving.contains(&claim.1.id))
        {
            return Err(StoreError::Invariant(format!(
                "chapter {}..{} of user {user} holds a job an idempotency record protects",
                chapter.first_entry, chapter.last_entry
            )));
        }
        for id in &leaving {
            let thin = s.jobs.get(id).filter(|j| j.user_id == user);
            if thin.is_none_or(|j| j.pruned_at.is_none()) {
                return Err(StoreError::Invariant(format!(
                    "job {id} is not a pruned job of user {user}"
                )));
            }
        }
        // Checked; now every change.
        for id in &leaving {
            if let Some(job) = s.jobs.forget_pruned(id) {
                if let Some(n) = s.finished_count.get_mut(&job.state) {
                    *n = n.saturating_sub(1);
                }
            }
        }
        let account = s.account(user)?;
        account.ledger.drain(..end);
        // What a burst grew is given back once it is archived: the live
        // ledger, not its peak, sets what memory holds.
        if account.ledger.capacity() > 4 * account.ledger.len().max(CHAPTER_ENTRIES) {
            account
                .ledger
                .shrink_to(2 * account.ledger.len().max(CHAPTER_ENTRIES));
        }
        account.chapters.push(chapter.clone());
        s.jobs.shrink_if_sparse();
        Ok(true)
    }

    async fn chapters(
        &self,
        user: UserId,
        before: Option<EntryId>,
        limit: usize,
    ) -> StoreResult<Vec<Chapter>> {
        let mut s = self.state.lock();
        let account = s.account(user)?;
        Ok(account
            .chapters
            .iter()
            .rev()
            .filter(|c| before.is_none_or(|b| c.first_entry < b))
            .take(limit)
            .cloned()
            .collect())
    }
}
