//! The ledger archive: the oldest part of a user's history, closed into
//! chapters kept in object storage, so the live store holds a bounded
//! window and not every job ever finished.
//!
//! A chapter is a prefix of one user's ledger (entries oldest first, up to
//! [`CHAPTER_ENTRIES`]) together with the thin records of the jobs those
//! entries resolve. Every entry in it is older than the archive horizon.
//! A job leaves with the chapter that holds its resolution (its last
//! entry), so the job must be pruned and no idempotency record may
//! protect it any more (a replay must find its job); its hold is in that
//! chapter or an earlier one, since a chapter is always a prefix. A hold
//! whose job is still open may leave first: the job, its hold row and its
//! resolution stay live until their chapter, so nothing live ever points
//! at a job that left, and the chapter's closing `held` carries the open
//! holds forward. The wallet is not
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

impl Chapter {
    /// Whether `other` records the same history: everything but when it
    /// was closed. Two nodes may cut the same chapter at once; each writes
    /// the object, one records it, and the object may then be the other's
    /// write, closed a moment apart but holding the same history.
    pub fn same_history(&self, other: &Chapter) -> bool {
        Chapter {
            closed_at: other.closed_at,
            ..self.clone()
        } == *other
    }
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
    let (dir, start) = object_key_start(user, first);
    format!("{dir}/{start}{:020}.json", last.0)
}

/// The directory of a user's chapter objects, and how the name of every
/// object a chapter from `first` may be written to starts, whatever its
/// last entry.
pub fn object_key_start(user: UserId, first: EntryId) -> (String, String) {
    (format!("ledger/{user}"), format!("{:020}-", first.0))
}

/// A chapter as [`cut_page`] proposes it.
#[derive(Clone, Debug)]
pub struct Cut {
    pub body: ChapterBody,
    /// Every one of the page's entries may leave: the chapter stops only
    /// where the page does (or just before, to keep a job whole), not
    /// because history stopped being due.
    pub page_due: bool,
}

/// The longest prefix of `history` that closes as a chapter (see the
/// module's rules), at most [`CHAPTER_ENTRIES`] entries; `None` when not
/// even its first entry may leave yet.
pub fn cut(history: &History, horizon: DateTime<Utc>, now: DateTime<Utc>) -> Option<ChapterBody> {
    cut_page(history, horizon, now).map(|c| c.body)
}

/// [`cut`], saying whether the whole page was due.
pub fn cut_page(history: &History, horizon: DateTime<Utc>, now: DateTime<Utc>) -> Option<Cut> {
    let first = history.entries.first()?;
    let mut stopped = false;
    // Entries before this position close as a chapter.
    let mut end = 0;
    for (i, e) in history.entries.iter().take(CHAPTER_ENTRIES).enumerate() {
        if e.created_at >= horizon || e.user_id != first.user_id {
            stopped = true;
            break;
        }
        // A job leaves with its resolution, the last entry it has: it must
        // be pruned (before the horizon) and no replay may still ask for
        // it. A hold may leave before its job does: the job, its hold row
        // and its resolution stay live until the resolution's chapter.
        if let (Some(job), EntryKind::Post | EntryKind::Void) = (e.job_id, e.kind) {
            let leaves = history
                .jobs
                .get(&job)
                .is_some_and(|j| j.pruned_at.is_some_and(|at| at < horizon))
                && !history.protected.contains(&job);
            if !leaves {
                stopped = true;
                break;
            }
        }
        end = i + 1;
    }
    if end == 0 {
        return None;
    }
    let entries = history.entries[..end].to_vec();
    let last = entries.last()?;
    // The jobs resolved inside the chapter leave with it.
    let kept: HashSet<JobId> = entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::Post | EntryKind::Void))
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
    Some(Cut {
        body: ChapterBody {
            chapter,
            entries,
            jobs,
        },
        page_due: !stopped && history.entries.len() >= CHAPTER_ENTRIES,
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
        super::super::NewJob {
            id,
            max_waiting: 10,
            now: at(0),
            ..super::super::conformance::new_job(user, 1)
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
    fn a_chapter_takes_the_due_entries_and_the_jobs_resolved_in_it() {
        let mut book = Book::new();
        book.entry(EntryKind::Grant, 10, None, 0);
        let a = book.job(1, Some(2), Some(3));
        let b = book.job(4, Some(5), Some(6));
        // Still running at the horizon: its hold leaves, the job stays.
        book.job(7, None, None);
        let chapter = cut(&book.history, at(100), at(100)).expect("a chapter");
        assert_eq!(chapter.entries.len(), 6);
        assert_eq!(chapter.chapter.last_entry, EntryId(6));
        let jobs: Vec<JobId> = chapter.jobs.iter().map(|j| j.id).collect();
        assert_eq!(jobs.len(), 2);
        assert!(jobs.contains(&a) && jobs.contains(&b));
        assert_eq!(chapter.chapter.closing.balance.get(), 8);
        assert_eq!(
            chapter.chapter.closing.held.get(),
            1,
            "the open hold carried"
        );
        assert!(check_body(&chapter).is_ok());
    }

    #[test]
    fn a_job_leaves_with_its_resolution_and_an_open_hold_may_go_first() {
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
        // b is resolved after the horizon: it stays, its hold may go.
        book.entry(EntryKind::Void, 1, Some(b), 200);
        let chapter = cut(&book.history, at(100), at(100)).expect("a chapter");
        assert_eq!(chapter.entries.len(), 4);
        assert_eq!(chapter.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [a]);
        assert_eq!(chapter.chapter.closing.held.get(), 1);
        let later = cut(&book.history, at(300), at(300)).expect("all of it");
        assert_eq!(later.entries.len(), 5);
        assert_eq!(later.jobs.len(), 2);
    }

    /// Under a backlog every job is held long before it is resolved, so at
    /// no point of a user's ledger are all its holds resolved. A rule that
    /// waited for such a point closed nothing: history still closes.
    #[test]
    fn history_closes_when_jobs_always_overlap() {
        let mut book = Book::new();
        book.entry(EntryKind::Grant, 10_000, None, 0);
        let mut open = std::collections::VecDeque::new();
        for m in 1..=800 {
            let id = JobId::generate();
            let mut job = thin_job(book.user, id);
            job.pruned_at = Some(at(900));
            book.history.jobs.insert(id, job);
            book.entry(EntryKind::Hold, 1, Some(id), m);
            open.push_back(id);
            // Ten jobs always wait.
            if open.len() > 10 {
                let done = open.pop_front().expect("an open job");
                book.entry(EntryKind::Post, 1, Some(done), m);
            }
        }
        let chapter = cut_page(&book.history, at(1_000), at(1_000)).expect("a chapter");
        assert_eq!(chapter.body.entries.len(), CHAPTER_ENTRIES);
        assert!(chapter.page_due);
        let open_at_the_cut = chapter
            .body
            .entries
            .iter()
            .map(|e| match e.kind {
                EntryKind::Hold => 1,
                EntryKind::Post | EntryKind::Void => -1,
                EntryKind::Grant => 0,
            })
            .sum::<i64>();
        assert!(open_at_the_cut >= 10);
        assert_eq!(
            chapter.body.chapter.closing.held.get(),
            open_at_the_cut,
            "the waiting holds carried"
        );
        assert!(check_body(&chapter.body).is_ok());
    }

    #[test]
    fn a_resolution_stops_the_chapter_until_its_job_may_leave() {
        let mut book = Book::new();
        book.job(1, Some(2), None);
        let hold_only = cut(&book.history, at(100), at(100)).expect("the hold");
        assert_eq!(hold_only.entries.len(), 1, "not pruned: its post stays");
        assert!(hold_only.jobs.is_empty());
        let mut recent = Book::new();
        recent.entry(EntryKind::Grant, 5, None, 200);
        assert!(cut(&recent.history, at(100), at(100)).is_none(), "too new");
        assert!(cut(&History::default(), at(100), at(100)).is_none());
        // A resolution whose job record is missing is never taken on trust.
        let mut orphan = Book::new();
        orphan.entry(EntryKind::Grant, 5, None, 0);
        orphan.entry(EntryKind::Hold, 1, Some(JobId::generate()), 1);
        orphan.entry(EntryKind::Void, 1, Some(JobId::generate()), 2);
        let before_it = cut(&orphan.history, at(100), at(100)).expect("the grant and hold");
        assert_eq!(before_it.entries.len(), 2);
    }

    #[test]
    fn a_job_an_idempotency_record_protects_stays() {
        let mut book = Book::new();
        book.entry(EntryKind::Grant, 10, None, 0);
        let replayable = book.job(1, Some(2), Some(3));
        book.history.protected.insert(replayable);
        let chapter = cut(&book.history, at(100), at(100)).expect("the grant and hold");
        assert_eq!(chapter.entries.len(), 2);
        assert!(chapter.jobs.is_empty());
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
        let chapter = cut_page(&book.history, at(1_000_000), at(0)).expect("a chapter");
        assert_eq!(chapter.body.entries.len(), CHAPTER_ENTRIES);
        assert!(chapter.page_due);
        // Not due beyond the horizon: short, and said to be.
        let short = cut_page(&book.history, at(500), at(0)).expect("a chapter");
        assert_eq!(short.body.entries.len(), 500);
        assert!(!short.page_due);
    }

    #[test]
    fn a_page_that_ends_inside_a_job_takes_its_hold_and_not_the_job() {
        let mut book = Book::new();
        for m in 0..(CHAPTER_ENTRIES as i64 - 1) {
            book.entry(EntryKind::Grant, 1, None, m);
        }
        // Its hold is the page's last entry, its post the next page's first.
        book.job(5_000, Some(5_001), Some(5_002));
        let chapter = cut_page(&book.history, at(1_000_000), at(0)).expect("a chapter");
        assert_eq!(chapter.body.entries.len(), CHAPTER_ENTRIES);
        assert!(chapter.body.jobs.is_empty(), "it leaves with its post");
        assert!(chapter.page_due);
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
