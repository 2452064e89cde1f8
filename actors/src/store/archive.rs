//! The ledger archive: the oldest part of a user's history, closed into
//! chapters kept in object storage, so the live store holds a bounded
//! window and not every job ever finished.
//!
//! A chapter is a prefix of one user's ledger (entries oldest first, up to
//! [`CHAPTER_ENTRIES`]) together with the thin records of the jobs those
//! entries name. It closes only where the books are whole: every entry is
//! older than the archive horizon, every job it names is pruned and no
//! idempotency record protects it any more (a replay must find its job),
//! and both the hold and the resolution of each of those jobs are inside
//! it, so no live entry or hold ever points at a job that left. The wallet is not
//! touched: its balance already carries the chapter forward, and the
//! chapter's last entry records the balance it closed at, from which the
//! live entries replay.
//!
//! Closing is written in two steps, object first: the chapter's body is
//! put under a key named by its user and entry range, then the store
//! records the chapter and removes what it holds, in one transaction,
//! only if that range is still the user's oldest live history. A crash
//! between the two leaves an object no chapter names (harmless, written
//! again by the next attempt at the same range); two nodes closing the
//! same range write the same bytes and one commit wins.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::StoreResult;
use crate::domain::ids::{EntryId, JobId, UserId};
use crate::domain::job::Job;
use crate::domain::ledger::{EntryKind, LedgerEntry};
use crate::domain::wallet::{Credits, Wallet};

/// Entries per chapter at most: no more than one page of the ledger API,
/// so a page read from the archive opens at most two chapters.
pub const CHAPTER_ENTRIES: usize = 1000;

/// A closed chapter as the store lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chapter {
    pub user_id: UserId,
    pub first_entry: EntryId,
    pub last_entry: EntryId,
    pub entries: u32,
    pub jobs: u32,
    /// The wallet right after the chapter's last entry.
    pub closing: Wallet,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    pub closed_at: DateTime<Utc>,
    /// Where the body ([`ChapterBody`]) is kept.
    pub object_key: String,
}

/// What a chapter's object holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChapterBody {
    pub chapter: Chapter,
    /// Oldest first.
    pub entries: Vec<LedgerEntry>,
    /// The thin records of the jobs the entries name.
    pub jobs: Vec<Job>,
}

/// A user's oldest live history, as a chapter is cut from it.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Oldest first.
    pub entries: Vec<LedgerEntry>,
    /// The jobs the entries name, as stored (thin when pruned).
    pub jobs: HashMap<JobId, Job>,
    /// Those of them an idempotency record still protects: a replay must
    /// find its job, so they stay until the record expires.
    pub protected: HashSet<JobId>,
}

/// The object key of a user's chapter: its user and entry range, so the
/// same range is always written to the same place.
pub fn object_key(user: UserId, first: EntryId, last: EntryId) -> String {
    format!("ledger/{user}/{:020}-{:020}.json", first.0, last.0)
}

/// The longest prefix of `history` that closes as a chapter (see the
/// module's rules), at most [`CHAPTER_ENTRIES`] entries; `None` when not
/// even its first entry may leave yet.
pub fn cut(history: &History, horizon: DateTime<Utc>, now: DateTime<Utc>) -> Option<ChapterBody> {
    let first = history.entries.first()?;
    let mut open: HashSet<JobId> = HashSet::new();
    // Entries before this position close as a chapter.
    let mut end = 0;
    for (i, e) in history.entries.iter().take(CHAPTER_ENTRIES).enumerate() {
        if e.created_at >= horizon || e.user_id != first.user_id {
            break;
        }
        if let Some(job) = e.job_id {
            let closable = history
                .jobs
                .get(&job)
                .is_some_and(|j| j.pruned_at.is_some_and(|at| at < horizon))
                && !history.protected.contains(&job);
            if !closable {
                break;
            }
            match e.kind {
                EntryKind::Hold => {
                    open.insert(job);
                }
                // A resolution without its hold before it: the hold is in
                // an earlier chapter only if the books are broken.
                EntryKind::Post | EntryKind::Void => {
                    if !open.remove(&job) {
                        break;
                    }
                }
                EntryKind::Grant => {}
            }
        }
        if open.is_empty() {
            end = i + 1;
        }
    }
    if end == 0 {
        return None;
    }
    let entries = history.entries[..end].to_vec();
    let last = entries.last()?;
    // The jobs held inside the chapter (each resolved inside it too).
    let kept: HashSet<JobId> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Hold)
        .filter_map(|e| e.job_id)
        .collect();
    let mut jobs: Vec<Job> = history
        .jobs
        .values()
        .filter(|j| kept.contains(&j.id))
        .cloned()
        .collect();
    jobs.sort_by_key(|j| j.seq);
    let chapter = Chapter {
        user_id: first.user_id,
        first_entry: first.id,
        last_entry: last.id,
        entries: u32::try_from(entries.len()).ok()?,
        jobs: u32::try_from(jobs.len()).ok()?,
        closing: Wallet {
            balance: last.balance,
            held: last.held,
        },
        first_at: first.created_at,
        last_at: last.created_at,
        closed_at: now,
        object_key: object_key(first.user_id, first.id, last.id),
    };
    Some(ChapterBody {
        chapter,
        entries,
        jobs,
    })
}

/// Whether `body` is a chapter as [`cut`] makes them: read back from
/// object storage, it is checked before anything in it is served.
pub fn check_body(body: &ChapterBody) -> Result<(), String> {
    let c = &body.chapter;
    let (Some(first), Some(last)) = (body.entries.first(), body.entries.last()) else {
        return Err("a chapter without entries".into());
    };
    if (first.id, last.id) != (c.first_entry, c.last_entry)
        || body.entries.len() != c.entries as usize
        || body.jobs.len() != c.jobs as usize
    {
        return Err(format!(
            "chapter {}..{} of user {} does not hold what it lists",
            c.first_entry, c.last_entry, c.user_id
        ));
    }
    if body.entries.windows(2).any(|w| w[0].id >= w[1].id)
        || body.entries.iter().any(|e| e.user_id != c.user_id)
    {
        return Err(format!(
            "chapter {}..{}: entries out of order or of another user",
            c.first_entry, c.last_entry
        ));
    }
    if (last.balance, last.held) != (c.closing.balance, c.closing.held) {
        return Err(format!(
            "chapter {}..{}: closing balance differs from its last entry",
            c.first_entry, c.last_entry
        ));
    }
    Ok(())
}

/// The ledger archive's port.
#[async_trait]
pub trait ArchiveStore: Send + Sync + 'static {
    /// Users in id order after `after`, at most `limit`: the archive visits
    /// every user in turn.
    async fn users_after(&self, after: Option<UserId>, limit: usize) -> StoreResult<Vec<UserId>>;
    /// The user's oldest `limit` live ledger entries, oldest first, and the
    /// jobs they name.
    async fn oldest_history(&self, user: UserId, limit: usize) -> StoreResult<History>;
    /// Records `chapter` and removes what it holds (its entries, and the
    /// jobs with their holds): all or nothing, and only while its range is
    /// exactly the user's oldest live history and every job in `jobs` is
    /// the user's, pruned, unprotected by an idempotency record, and named
    /// only inside the range. `Ok(false)` when that chapter was closed already (by
    /// another node, or a retry); `StaleTransition`-like refusals are
    /// `Invariant`s, since [`cut`] never proposes them.
    async fn close_chapter(&self, chapter: &Chapter, jobs: &[JobId]) -> StoreResult<bool>;
    /// The user's closed chapters, newest first; when `before` is given,
    /// those holding an entry older than it (starting before it).
    async fn chapters(
        &self,
        user: UserId,
        before: Option<EntryId>,
        limit: usize,
    ) -> StoreResult<Vec<Chapter>>;
}

/// The wallet before a user's live entries: the last chapter's closing,
/// or empty when nothing was archived.
pub fn opening(last_chapter: Option<&Chapter>) -> Wallet {
    last_chapter.map_or(
        Wallet {
            balance: Credits::ZERO,
            held: Credits::ZERO,
        },
        |c| c.closing,
    )
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::domain::job::{Charge, JobState};

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + Duration::minutes(minutes)
    }

    fn thin_job(user: UserId, id: JobId) -> Job {
        let spec = crate::domain::job::JobSpec::parse(crate::domain::job::JobRequest {
            kind: crate::domain::job::JobKind::Image,
            model: "sdxl".into(),
            prompt: "a lighthouse".into(),
            params: Default::default(),
            webhook_url: None,
            priority: None,
        })
        .expect("spec");
        super::super::NewJob {
            id,
            user_id: user,
            spec,
            tier: crate::domain::tier::Tier::Free,
            cost: Credits::new(1).expect("credits"),
            max_attempts: 3,
            max_waiting: 10,
            idempotency: None,
            now: at(0),
            price_version: 1,
        }
        .queued_job(1)
    }

    struct Book {
        user: UserId,
        history: History,
        balance: i64,
        held: i64,
    }

    impl Book {
        fn new() -> Book {
            Book {
                user: UserId::generate(),
                history: History::default(),
                balance: 0,
                held: 0,
            }
        }

        fn entry(&mut self, kind: EntryKind, amount: i64, job: Option<JobId>, minute: i64) {
            match kind {
                EntryKind::Grant => self.balance += amount,
                EntryKind::Hold => self.held += amount,
                EntryKind::Post => {
                    self.balance -= amount;
                    self.held -= amount;
                }
                EntryKind::Void => self.held -= amount,
            }
            let c = |v: i64| Credits::new(v).unwrap_or(Credits::ZERO);
            let id = EntryId(self.history.entries.len() as i64 + 1);
            self.history.entries.push(LedgerEntry {
                id,
                user_id: self.user,
                kind,
                amount: c(amount),
                balance: c(self.balance),
                held: c(self.held),
                source: None,
                job_id: job,
                note: None,
                created_at: at(minute),
            });
        }

        /// A job held at `minute`, resolved at `resolved` (when given),
        /// pruned at `pruned` (when given).
        fn job(&mut self, minute: i64, resolved: Option<i64>, pruned: Option<i64>) -> JobId {
            let id = JobId::generate();
            let mut job = thin_job(self.user, id);
            job.pruned_at = pruned.map(at);
            job.state = if resolved.is_some() {
                JobState::Succeeded
            } else {
                JobState::Queued
            };
            job.charge = if resolved.is_some() {
                Charge::Posted
            } else {
                Charge::Held
            };
            self.history.jobs.insert(id, job);
            self.entry(EntryKind::Hold, 1, Some(id), minute);
            if let Some(r) = resolved {
                self.entry(EntryKind::Post, 1, Some(id), r);
            }
            id
        }
    }

    #[test]
    fn a_chapter_closes_at_the_last_point_where_every_job_is_whole() {
        let mut book = Book::new();
        book.entry(EntryKind::Grant, 10, None, 0);
        let a = book.job(1, Some(2), Some(3));
        let b = book.job(4, Some(5), Some(6));
        // Still running at the horizon: the chapter stops before it.
        book.job(7, None, None);
        let chapter = cut(&book.history, at(100), at(100)).expect("a chapter");
        assert_eq!(chapter.entries.len(), 5);
        assert_eq!(chapter.chapter.last_entry, EntryId(5));
        let jobs: Vec<JobId> = chapter.jobs.iter().map(|j| j.id).collect();
        assert_eq!(jobs.len(), 2);
        assert!(jobs.contains(&a) && jobs.contains(&b));
        assert_eq!(chapter.chapter.closing.balance.get(), 8);
        assert_eq!(chapter.chapter.closing.held.get(), 0);
        assert!(check_body(&chapter).is_ok());
    }

    #[test]
    fn interleaved_jobs_close_only_when_both_are_resolved() {
        let mut book = Book::new();
        book.entry(EntryKind::Grant, 10, None, 0);
        let a = JobId::generate();
        let b = JobId::generate();
        for id in [a, b] {
            let mut job = thin_job(book.user, id);
            job.pruned_at = Some(at(50));
            book.history.jobs.insert(id, job);
        }
        book.entry(EntryKind::Hold, 1, Some(a), 1);
        book.entry(EntryKind::Hold, 1, Some(b), 2);
        book.entry(EntryKind::Post, 1, Some(a), 3);
        // b is resolved after the horizon: only the grant may leave.
        book.entry(EntryKind::Void, 1, Some(b), 200);
        let chapter = cut(&book.history, at(100), at(100)).expect("the grant");
        assert_eq!(chapter.entries.len(), 1);
        assert!(chapter.jobs.is_empty());
        let later = cut(&book.history, at(300), at(300)).expect("all of it");
        assert_eq!(later.entries.len(), 5);
        assert_eq!(later.jobs.len(), 2);
    }

    #[test]
    fn nothing_closes_past_the_horizon_or_before_pruning() {
        let mut book = Book::new();
        book.job(1, Some(2), None);
        assert!(cut(&book.history, at(100), at(100)).is_none(), "not pruned");
        let mut recent = Book::new();
        recent.entry(EntryKind::Grant, 5, None, 200);
        assert!(cut(&recent.history, at(100), at(100)).is_none(), "too new");
        assert!(cut(&History::default(), at(100), at(100)).is_none());
        // A job whose record is missing is never taken on trust.
        let mut orphan = Book::new();
        orphan.entry(EntryKind::Grant, 5, None, 0);
        orphan.entry(EntryKind::Hold, 1, Some(JobId::generate()), 1);
        let only_grant = cut(&orphan.history, at(100), at(100)).expect("the grant");
        assert_eq!(only_grant.entries.len(), 1);
    }

    #[test]
    fn a_job_an_idempotency_record_protects_stays() {
        let mut book = Book::new();
        book.entry(EntryKind::Grant, 10, None, 0);
        let replayable = book.job(1, Some(2), Some(3));
        book.history.protected.insert(replayable);
        let chapter = cut(&book.history, at(100), at(100)).expect("the grant");
        assert_eq!(chapter.entries.len(), 1);
        book.history.protected.clear();
        assert_eq!(
            cut(&book.history, at(100), at(100)).map(|c| c.jobs.len()),
            Some(1)
        );
    }

    #[test]
    fn a_chapter_holds_at_most_a_page_of_entries() {
        let mut book = Book::new();
        for m in 0..(CHAPTER_ENTRIES as i64 + 10) {
            book.entry(EntryKind::Grant, 1, None, m);
        }
        let chapter = cut(&book.history, at(1_000_000), at(0)).expect("a chapter");
        assert_eq!(chapter.entries.len(), CHAPTER_ENTRIES);
    }

    #[test]
    fn a_tampered_body_is_refused() {
        let mut book = Book::new();
        book.entry(EntryKind::Grant, 10, None, 0);
        book.entry(EntryKind::Grant, 5, None, 1);
        let good = cut(&book.history, at(100), at(100)).expect("a chapter");
        let mut short = good.clone();
        short.entries.pop();
        assert!(check_body(&short).is_err());
        let mut reordered = good.clone();
        reordered.entries.reverse();
        assert!(check_body(&reordered).is_err());
        let mut other = good.clone();
        other.chapter.closing.balance = Credits::ZERO;
        assert!(check_body(&other).is_err());
        let mut empty = good;
        empty.entries.clear();
        assert!(check_body(&empty).is_err());
    }
}
