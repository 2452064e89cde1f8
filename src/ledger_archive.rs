//! The ledger archive (docs/storage.md, "The ledger archive"): a round
//! every so often closes each user's oldest whole history into chapters in
//! object storage, and the ledger API reads past the live entries into
//! those chapters, so a client pages through all of a user's history as
//! before while the live store holds a bounded window.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use admedia_actors::domain::ids::{EntryId, UserId};
use admedia_actors::domain::ledger::LedgerEntry;
use admedia_actors::store::archive::{self, Chapter, ChapterBody, CHAPTER_ENTRIES};
use admedia_actors::store::{Store, StoreError};
use bytes::Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use lru::LruCache;
use parking_lot::Mutex;

use crate::objects::{ObjectError, Objects};

/// Users visited per store read; a round reads them all, page by page.
const USERS_PER_PAGE: usize = 500;
/// Chapters closed for one user per round at most: a backlog (the
/// archive just switched on) is worked off over the following rounds.
const CHAPTERS_PER_USER: usize = 20;
/// Chapters kept decoded: a client paging through one chapter reads it
/// once, and several clients paging at once each keep theirs.
const CACHED_CHAPTERS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("ledger archive: {0}")]
    Objects(#[from] ObjectError),
    /// A chapter's object is not what its record says: never served.
    #[error("ledger archive: {0}")]
    Corrupt(String),
}

/// What one round closed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub chapters: u64,
    pub entries: u64,
    pub jobs: u64,
    /// Objects of chapters never recorded, deleted.
    pub strays: u64,
}

/// What may close in a round.
#[derive(Clone, Copy)]
struct Due {
    /// History older than this may leave.
    horizon: DateTime<Utc>,
    /// A chapter of less than a page closes once it starts before this.
    patient: DateTime<Utc>,
}

pub struct LedgerArchive {
    store: Arc<dyn Store>,
    objects: Arc<Objects>,
    /// How old history must be to leave the live store; `None`: never.
    after: Option<Duration>,
    cache: Mutex<LruCache<String, Arc<ChapterBody>>>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl LedgerArchive {
    pub fn new(store: Arc<dyn Store>, objects: Arc<Objects>, after: Option<Duration>) -> Self {
        let size = NonZeroUsize::new(CACHED_CHAPTERS).unwrap_or(NonZeroUsize::MIN);
        LedgerArchive {
            store,
            objects,
            after,
            cache: Mutex::new(LruCache::new(size)),
            metrics: None,
        }
    }

    /// Counts what each round closes (`admedia_ledger_archived_total`).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Closes every chapter due at `now`, user by user. A user whose
    /// chapter fails is logged and left for the next round; the others go
    /// on.
    pub async fn round(&self, now: DateTime<Utc>) -> Result<Round, ArchiveError> {
        let Some(after) = self.after else {
            return Ok(Round::default());
        };
        // Every adapter keeps microseconds: the chapter's record and its
        // body must say the same time.
        let now = now.trunc_subsecs(6);
        let age = chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
        let horizon = now
            .checked_sub_signed(age)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        // A chapter of less than a page of due history waits until its
        // history is twice the age: a busy user's history then closes a
        // page at a time, and a quiet user's still closes, rather than a
        // sliver every round.
        let patient = horizon
            .checked_sub_signed(age)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let due = Due { horizon, patient };
        let mut round = Round::default();
        let mut cursor = None;
        loop {
            let users = self.store.users_after(cursor, USERS_PER_PAGE).await?;
            for user in &users {
                if let Err(e) = self.close_user(*user, due, now, &mut round).await {
                    tracing::warn!(%user, error = %e, "ledger chapter not closed; next round retries");
                }
            }
            match users.last() {
                Some(last) if users.len() == USERS_PER_PAGE => cursor = Some(*last),
                _ => break,
            }
        }
        if let Some(m) = &self.metrics {
            m.ledger_archived(round.chapters, round.entries, round.jobs);
        }
        Ok(round)
    }

    async fn close_user(
        &self,
        user: UserId,
        due: Due,
        now: DateTime<Utc>,
        round: &mut Round,
    ) -> Result<(), ArchiveError> {
        for _ in 0..CHAPTERS_PER_USER {
            let history = self.store.oldest_history(user, CHAPTER_ENTRIES).await?;
            let Some(cut) = archive::cut_page(&history, due.horizon, now) else {
                return Ok(());
            };
            if !cut.page_due && cut.body.chapter.first_at >= due.patient {
                return Ok(());
            }
            let (body, more) = (cut.body, cut.page_due);
            let bytes = serde_json::to_vec(&body)
                .map_err(|e| ArchiveError::Corrupt(format!("chapter not encoded: {e}")))?;
            // The object first: a chapter is recorded only once its body
            // is kept.
            self.objects
                .put(&body.chapter.object_key, Bytes::from(bytes))
                .await?;
            let jobs: Vec<_> = body.jobs.iter().map(|j| j.id).collect();
            let first = body.chapter.first_entry;
            let recorded = if self.store.close_chapter(&body.chapter, &jobs).await? {
                round.chapters += 1;
                round.entries += u64::from(body.chapter.entries);
                round.jobs += u64::from(body.chapter.jobs);
                Some(body.chapter.object_key)
            } else {
                // Refused: another node may have recorded a chapter from
                // this entry, under its own cut's key.
                let below = EntryId(first.0.saturating_add(1));
                let newest = self.store.chapters(user, Some(below), 1).await?;
                newest
                    .into_iter()
                    .find(|c| c.first_entry == first)
                    .map(|c| c.object_key)
            };
            // Recorded by this node or another, a chapter from this entry
            // leaves no other object from it any use.
            if let Some(keep) = recorded {
                round.strays += self.sweep_strays(user, first, &keep).await?;
            }
            // The next page may be due as well.
            if !more {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Deletes the objects written for a chapter from `first` other than
    /// `keep`, the recorded chapter's: a node that crashed between writing
    /// its object and recording it, or that lost a race with another
    /// node's cut of a different range, left them. None of them can be
    /// recorded any more: the store records only the user's oldest live
    /// history, and once a chapter from `first` is recorded every later
    /// one starts past it. Before one is recorded nothing is deleted,
    /// since another node may be about to record its object.
    async fn sweep_strays(
        &self,
        user: UserId,
        first: EntryId,
        keep: &str,
    ) -> Result<u64, ArchiveError> {
        let (dir, start) = archive::object_key_start(user, first);
        let mut swept = 0;
        for key in self.objects.keys_starting(&dir, &start).await? {
            if key != keep {
                self.objects.delete(&key).await?;
                tracing::info!(%user, %key, "stray ledger chapter object deleted");
                swept += 1;
            }
        }
        Ok(swept)
    }

    /// A user's ledger, newest first: the live entries, then the archived
    /// chapters; entries older than `before` when given. The chapters are
    /// listed after the live entries are read, so an entry that left while
    /// the page was being read is found in its chapter, never lost.
    pub async fn ledger(
        &self,
        user: UserId,
        before: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, ArchiveError> {
        let mut page = self.store.ledger(user, before, limit).await?;
        let mut below = page.last().map(|e| e.id).or(before);
        while page.len() < limit {
            // The newest chapter holding an entry older than `below`.
            let newest = self.store.chapters(user, below, 1).await?;
            let Some(chapter) = newest.first() else {
                break;
            };
            let body = self.body(chapter).await?;
            let wanted = limit - page.len();
            page.extend(
                body.entries
                    .iter()
                    .rev()
                    .filter(|e| below.is_none_or(|b| e.id < b))
                    .take(wanted)
                    .cloned(),
            );
            below = Some(chapter.first_entry);
        }
        Ok(page)
    }

    /// A chapter's body, read once and checked against its record.
    async fn body(&self, chapter: &Chapter) -> Result<Arc<ChapterBody>, ArchiveError> {
        if let Some(body) = self.cache.lock().get(&chapter.object_key) {
            return Ok(body.clone());
        }
        let bytes = self.objects.get(&chapter.object_key).await?;
        let body: ChapterBody = serde_json::from_slice(&bytes).map_err(|e| {
            ArchiveError::Corrupt(format!("chapter {} unreadable: {e}", chapter.object_key))
        })?;
        archive::check_body(&body).map_err(ArchiveError::Corrupt)?;
        if !body.chapter.same_history(chapter) {
            return Err(ArchiveError::Corrupt(format!(
                "chapter {} is not the one recorded",
                chapter.object_key
            )));
        }
        let body = Arc::new(body);
        self.cache
            .lock()
            .put(chapter.object_key.clone(), body.clone());
        Ok(body)
    }

    /// Runs a round every `every` for the life of the server. Every node
    /// may: closing a chapter is idempotent, and the store lets one win.
    pub fn spawn(self: Arc<Self>, every: Duration, clock: admedia_actors::clock::Clock) {
        if self.after.is_none() {
            return;
        }
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
            loop {
                tick.tick().await;
                match self.round(clock.now()).await {
                    Ok(r) if r.chapters == 0 && r.strays == 0 => {}
                    Ok(r) => tracing::info!(
                        chapters = r.chapters,
                        entries = r.entries,
                        jobs = r.jobs,
                        strays = r.strays,
                        "ledger history archived"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "ledger archive round failed; next round retries")
                    }
                }
            }
        });
    }
}
