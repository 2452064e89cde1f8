//! The ledger archive end to end on both stores: a round closes what is
//! due into chapters in object storage (a real directory), the ledger
//! reads on into them page by page, and a chapter whose object is damaged
//! or missing is refused rather than served.

mod support;

use std::sync::Arc;
use std::time::Duration;

use admedia::ledger_archive::{ArchiveError, LedgerArchive, Round};
use admedia::objects::{ObjectError, ObjectSettings, Objects, S3Settings};
use admedia_actors::domain::ids::{EntryId, UserId};
use admedia_actors::domain::ledger::LedgerEntry;
use admedia_actors::store::archive::{self, CHAPTER_ENTRIES};
use admedia_actors::store::conformance::{succeeded_now, user_with};
use admedia_actors::store::memory::MemoryStore;
use admedia_actors::store::{FinishedBefore, Store};
use chrono::{DateTime, SubsecRound, Utc};

fn objects(dir: &tempfile::TempDir) -> Arc<Objects> {
    let settings = ObjectSettings::Local {
        root: dir.path().to_path_buf(),
    };
    match Objects::open(&settings, "http://127.0.0.1:1", b"test secret".to_vec()) {
        Ok(o) => Arc::new(o),
        Err(e) => panic!("objects: {e}"),
    }
}

async fn pages(
    archive: &LedgerArchive,
    user: admedia_actors::domain::ids::UserId,
    limit: usize,
) -> Vec<LedgerEntry> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = archive.ledger(user, before, limit).await.expect("page");
        assert!(page.len() <= limit);
        if page.is_empty() {
            return all;
        }
        before = page.last().map(|e| e.id);
        all.extend(page);
    }
}

/// A user with 1,000 credits and `jobs` succeeded jobs (costing 1, 2, …),
/// all pruned at once; the time they were pruned at, to the microsecond
/// the stores keep, and how many the prune reported.
async fn user_with_pruned_jobs(
    store: &Arc<dyn Store>,
    email: &str,
    jobs: i64,
) -> (UserId, DateTime<Utc>, u64) {
    let user = user_with(store, email, 1000).await.id;
    for cost in 1..=jobs {
        succeeded_now(store, user, cost).await;
    }
    let (now, pruned) = prune_everything(store).await;
    (user, now, pruned)
}

/// Prunes every finished job at once; the time it was pruned at, to the
/// microsecond the stores keep, and how many the prune reported.
async fn prune_everything(store: &Arc<dyn Store>) -> (DateTime<Utc>, u64) {
    let now = Utc::now().trunc_subsecs(6);
    let soon = now + chrono::Duration::seconds(1);
    let everything = FinishedBefore {
        succeeded: soon,
        failed: soon,
        cancelled: soon,
    };
    let pruned = store
        .prune_finished_jobs(&everything, now, 500)
        .await
        .expect("prune");
    (now, pruned)
}

/// Returns the object directory, for the caller's own checks.
async fn closes_and_reads_on(store: Arc<dyn Store>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let (user, now, pruned) = user_with_pruned_jobs(&store, "chapters@example.com", 5).await;
    assert_eq!(pruned, 5);
    let kept = succeeded_now(&store, user, 7).await;
    let live_before = store.ledger(user, None, 100).await.expect("ledger");
    assert_eq!(live_before.len(), 1 + 2 * 6);
    let wallet = store.wallet(user).await.expect("wallet");

    // Switched off, nothing moves.
    let off = LedgerArchive::new(store.clone(), objects(&dir), None);
    assert_eq!(off.round(now).await.expect("round").chapters, 0);

    let archive = LedgerArchive::new(
        store.clone(),
        objects(&dir),
        Some(Duration::from_secs(86_400)),
    );
    // Too recent: nothing is due.
    assert_eq!(archive.round(now).await.expect("round").chapters, 0);
    // Due, but short of a page: it waits until it is twice the age.
    let due = now + chrono::Duration::days(1) + chrono::Duration::seconds(2);
    assert_eq!(archive.round(due).await.expect("round").chapters, 0);
    // A time as the clock gives it, finer than any adapter keeps.
    let later = Utc::now() + chrono::Duration::days(2);
    let round = archive.round(later).await.expect("round");
    // The grant, the five pruned jobs, the kept job's hold.
    assert_eq!((round.chapters, round.entries, round.jobs), (1, 12, 5));
    assert_eq!(
        archive.round(later).await.expect("again").chapters,
        0,
        "nothing left that may leave"
    );
    assert_eq!(store.ledger(user, None, 100).await.expect("live").len(), 1);
    assert!(store.job(kept.id).await.expect("job").is_some());
    assert_eq!(store.wallet(user).await.expect("wallet"), wallet);

    for limit in [1, 2, 5, 100] {
        assert_eq!(
            pages(&archive, user, limit).await,
            live_before,
            "limit {limit}"
        );
    }
    // A fresh reader (another node, an empty cache) reads the same.
    let fresh = LedgerArchive::new(store.clone(), objects(&dir), None);
    assert_eq!(pages(&fresh, user, 3).await, live_before);
    dir
}

/// A damaged chapter is refused by a reader that has not cached it.
async fn a_damaged_chapter_is_refused(store: Arc<dyn Store>, dir: &tempfile::TempDir) {
    let user = store.users_after(None, 10).await.expect("users")[0];
    let chapter = store
        .chapters(user, None, 1)
        .await
        .expect("chapters")
        .remove(0);
    let path = dir.path().join(&chapter.object_key);
    let good = std::fs::read(&path).expect("the chapter's object");
    let reader = || LedgerArchive::new(store.clone(), objects(dir), None);
    std::fs::write(&path, b"{not json").expect("damage");
    assert!(matches!(
        reader().ledger(user, None, 50).await,
        Err(ArchiveError::Corrupt(_))
    ));
    // Another chapter's body under this one's name.
    let mut other: serde_json::Value = serde_json::from_slice(&good).expect("json");
    other["chapter"]["first_at"] = serde_json::json!("2000-01-01T00:00:00Z");
    std::fs::write(&path, serde_json::to_vec(&other).expect("json")).expect("swap");
    assert!(matches!(
        reader().ledger(user, None, 50).await,
        Err(ArchiveError::Corrupt(_))
    ));
    std::fs::remove_file(&path).expect("remove");
    assert!(matches!(
        reader().ledger(user, None, 50).await,
        Err(ArchiveError::Objects(_))
    ));
    // The live entry is still served on its own.
    assert_eq!(reader().ledger(user, None, 1).await.expect("live").len(), 1);
}

/// Every node runs the archive. Node B reads the oldest history, node A
/// closes it, then B writes its own object for the same chapter over A's
/// and finds the chapter already recorded: the object is B's, closed a
/// moment later, and the chapter must still read.
async fn a_chapter_two_nodes_close_at_once_stays_readable(store: Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (user, now, _) = user_with_pruned_jobs(&store, "two-nodes@example.com", 3).await;
    let before = store.ledger(user, None, 100).await.expect("ledger");
    let node_b_read = store
        .oldest_history(user, CHAPTER_ENTRIES)
        .await
        .expect("history");

    let day = chrono::Duration::days(1);
    let node_a = LedgerArchive::new(
        store.clone(),
        objects(&dir),
        Some(Duration::from_secs(86_400)),
    );
    let later = now + day * 3;
    assert_eq!(node_a.round(later).await.expect("round").chapters, 1);

    let b_now = later + chrono::Duration::seconds(1);
    let cut = archive::cut_page(&node_b_read, b_now - day, b_now).expect("node B's cut");
    let bytes = serde_json::to_vec(&cut.body).expect("encode");
    objects(&dir)
        .put(&cut.body.chapter.object_key, bytes.into())
        .await
        .expect("node B's object");
    let jobs: Vec<_> = cut.body.jobs.iter().map(|j| j.id).collect();
    assert!(
        !store
            .close_chapter(&cut.body.chapter, &jobs)
            .await
            .expect("close"),
        "node A recorded it first"
    );

    let fresh = LedgerArchive::new(store.clone(), objects(&dir), None);
    assert_eq!(pages(&fresh, user, 100).await, before);
}

/// Node C reads the oldest history, cuts a chapter from it and writes its
/// object, then crashes before recording it. More history arrives; the
/// next round closes a longer chapter from the same entry under another
/// key, and deletes C's object, which nothing can record any more. An
/// object of a chapter from another entry, and anything outside the
/// user's chapters, is not the sweep's to judge and stays.
async fn a_crashed_close_leaves_no_stray_object(store: Arc<dyn Store>, objects: Arc<Objects>) {
    let (user, now, _) = user_with_pruned_jobs(&store, "crashed-close@example.com", 3).await;
    let node_c_read = store
        .oldest_history(user, CHAPTER_ENTRIES)
        .await
        .expect("history");
    let day = chrono::Duration::days(1);
    let later = now + day * 3;
    let cut = archive::cut_page(&node_c_read, later - day, later).expect("node C's cut");
    let stray = cut.body.chapter.object_key.clone();
    let bytes = serde_json::to_vec(&cut.body).expect("encode");
    objects
        .put(&stray, bytes.clone().into())
        .await
        .expect("node C's object");
    // Beside it: an object of a chapter from a later entry, never
    // recorded, and another user's object from the same entry number.
    let first = cut.body.chapter.first_entry;
    let later_start = archive::object_key(user, EntryId(first.0 + 1), EntryId(first.0 + 2));
    let other_user = archive::object_key(UserId::generate(), first, EntryId(first.0 + 2));
    for key in [&later_start, &other_user] {
        objects.put(key, bytes.clone().into()).await.expect("put");
    }

    // Two more jobs, pruned: the next cut ends further on.
    for cost in [11, 12] {
        succeeded_now(&store, user, cost).await;
    }
    prune_everything(&store).await;
    let before = store.ledger(user, None, 100).await.expect("ledger");

    let archive = LedgerArchive::new(
        store.clone(),
        objects.clone(),
        Some(Duration::from_secs(86_400)),
    );
    let round = archive.round(later).await.expect("round");
    assert_eq!((round.chapters, round.strays), (1, 1));
    let recorded = store
        .chapters(user, None, 1)
        .await
        .expect("chapters")
        .remove(0);
    assert_eq!(recorded.first_entry, first);
    assert_ne!(recorded.object_key, stray, "a longer chapter");
    assert!(
        matches!(objects.get(&stray).await, Err(ObjectError::NotFound(_))),
        "the crashed node's object is gone"
    );
    objects
        .get(&recorded.object_key)
        .await
        .expect("the chapter's object");
    for key in [&later_start, &other_user] {
        objects.get(key).await.expect("not the sweep's to delete");
    }
    let fresh = LedgerArchive::new(store.clone(), objects.clone(), None);
    assert_eq!(pages(&fresh, user, 4).await, before);
    // The next round finds nothing more to close or sweep.
    assert_eq!(archive.round(later).await.expect("again"), Round::default());
}

#[actix_rt::test]
async fn a_crashed_close_leaves_no_stray_object_on_the_embedded_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    a_crashed_close_leaves_no_stray_object(Arc::new(MemoryStore::new()), objects(&dir)).await;
}

#[actix_rt::test]
async fn a_crashed_close_leaves_no_stray_object_on_postgresql() {
    let Some((pg, _schema)) = support::fresh_pg().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    a_crashed_close_leaves_no_stray_object(Arc::new(pg), objects(&dir)).await;
}

/// S3 lists in key order, and the sweep stops at the first key past the
/// chapter's entry: the same case against the S3 server the test script
/// runs, in a bucket prefix of its own.
#[actix_rt::test]
async fn a_crashed_close_leaves_no_stray_object_on_s3() {
    let Some([endpoint, bucket, access, secret]) = support::s3_settings() else {
        return;
    };
    let settings = ObjectSettings::S3(S3Settings {
        bucket,
        endpoint: Some(endpoint),
        region: "us-east-1".to_owned(),
        access_key_id: Some(access),
        secret_access_key: Some(secret),
        path_style: true,
    });
    let objects = match Objects::open(&settings, "http://127.0.0.1:1", b"secret".to_vec()) {
        Ok(o) => Arc::new(o),
        Err(e) => panic!("objects: {e}"),
    };
    a_crashed_close_leaves_no_stray_object(Arc::new(MemoryStore::new()), objects).await;
}

#[actix_rt::test]
async fn a_chapter_two_nodes_close_at_once_stays_readable_on_the_embedded_store() {
    a_chapter_two_nodes_close_at_once_stays_readable(Arc::new(MemoryStore::new())).await;
}

#[actix_rt::test]
async fn a_chapter_two_nodes_close_at_once_stays_readable_on_postgresql() {
    let Some((pg, _schema)) = support::fresh_pg().await else {
        return;
    };
    a_chapter_two_nodes_close_at_once_stays_readable(Arc::new(pg)).await;
}

#[actix_rt::test]
async fn the_archive_closes_and_reads_on_the_embedded_store() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let dir = closes_and_reads_on(store.clone()).await;
    a_damaged_chapter_is_refused(store, &dir).await;
}

#[actix_rt::test]
async fn the_archive_closes_and_reads_on_postgresql() {
    let Some((pg, schema)) = support::fresh_pg().await else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(pg);
    let dir = closes_and_reads_on(store.clone()).await;
    a_damaged_chapter_is_refused(store.clone(), &dir).await;
    // The ledger stays append-only: only what a chapter holds may leave.
    let client = support::raw_client(&schema).await;
    for sql in [
        "DELETE FROM ledger_entries",
        "UPDATE ledger_entries SET note = 'changed'",
        "TRUNCATE ledger_entries CASCADE",
    ] {
        let e = client.batch_execute(sql).await.expect_err(sql);
        assert!(
            format!("{e:?}").contains("never changed or deleted"),
            "{sql}: {e:?}"
        );
    }
}
