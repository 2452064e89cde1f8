//! What one group-commit batch does on PostgreSQL: operations held back
//! until they all wait, then released into a single batch.

mod support;

use std::sync::Arc;
use std::time::Duration;

use admedia::store::postgres::PgStore;
use admedia_actors::domain::ledger::{EntryKind, Grant, GrantSource};
use admedia_actors::domain::wallet::Credits;
use admedia_actors::store::conformance::{assert_books_balance, new_job, user_with};
use admedia_actors::store::{Store, StoreError};
use chrono::Utc;

async fn store() -> Option<(Arc<PgStore>, Arc<dyn Store>, String)> {
    let (pg, schema) = support::fresh_pg().await?;
    let pg = Arc::new(pg);
    let shared: Arc<dyn Store> = pg.clone();
    Some((pg, shared, schema))
}

/// Waits until `n` more operations than `before` are queued.
async fn queued(pg: &PgStore, before: usize, n: usize) {
    for _ in 0..500 {
        if pg.queued_operations() >= before + n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("operations never queued");
}

fn grant(amount: i64, note: &str) -> Grant {
    Grant {
        amount: Credits::new(amount).unwrap(),
        source: GrantSource::Admin,
        idempotency_key: None,
        note: Some(note.to_owned()),
    }
}

#[tokio::test]
async fn a_refused_operation_fails_alone_and_the_rest_of_its_batch_commits() {
    let Some((pg, store, _)) = store().await else {
        return;
    };
    let poor = user_with(&store, "poor@example.com", 1).await;
    let rich = user_with(&store, "rich@example.com", 100).await;
    let before = pg.queued_operations();
    let paused = pg.pause_group_commit().await;
    let ok = tokio::spawn({
        let s = store.clone();
        async move { s.submit_job(new_job(poor.id, 1)).await }
    });
    queued(&pg, before, 1).await;
    let refused = tokio::spawn({
        let s = store.clone();
        async move { s.submit_job(new_job(poor.id, 1)).await }
    });
    queued(&pg, before, 2).await;
    let other = tokio::spawn({
        let s = store.clone();
        async move { s.grant(rich.id, grant(5, "bonus"), Utc::now()).await }
    });
    queued(&pg, before, 3).await;
    drop(paused);
    assert!(ok.await.unwrap().is_ok());
    assert!(matches!(
        refused.await.unwrap(),
        Err(StoreError::InsufficientCredits { .. })
    ));
    assert_eq!(other.await.unwrap().unwrap().wallet.balance.get(), 105);
    let w = store.wallet(poor.id).await.unwrap();
    assert_eq!((w.balance.get(), w.held.get()), (1, 1));
    assert_books_balance(&store).await;
}

#[tokio::test]
async fn several_operations_on_one_wallet_in_one_batch_apply_in_order() {
    let Some((pg, store, _)) = store().await else {
        return;
    };
    let user = user_with(&store, "order@example.com", 0).await;
    let before = pg.queued_operations();
    let paused = pg.pause_group_commit().await;
    // In arrival order: +5, hold 3, hold 3 (only 2 left: refused), hold 2.
    let mut tasks = Vec::new();
    let g = store.clone();
    tasks.push(tokio::spawn(async move {
        g.grant(user.id, grant(5, "top-up"), Utc::now())
            .await
            .map(|o| o.wallet)
    }));
    queued(&pg, before, 1).await;
    for (i, cost) in [3, 3, 2].into_iter().enumerate() {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.submit_job(new_job(user.id, cost)).await.map(|x| x.wallet)
        }));
        queued(&pg, before, 2 + i).await;
    }
    drop(paused);
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(results[0].as_ref().unwrap().available().get(), 5);
    assert_eq!(results[1].as_ref().unwrap().available().get(), 2);
    assert!(matches!(
        results[2],
        Err(StoreError::InsufficientCredits { .. })
    ));
    assert_eq!(results[3].as_ref().unwrap().available().get(), 0);
    let ledger = store.ledger(user.id, None, 10).await.unwrap();
    let kinds: Vec<EntryKind> = ledger.iter().rev().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![EntryKind::Grant, EntryKind::Hold, EntryKind::Hold],
        "booked in arrival order, the refused hold not at all"
    );
    assert_books_balance(&store).await;
}

#[tokio::test]
async fn a_database_error_fails_the_whole_batch_and_acknowledges_nothing() {
    let Some((pg, store, schema)) = store().await else {
        return;
    };
    let a = user_with(&store, "a@example.com", 10).await;
    let b = user_with(&store, "b@example.com", 10).await;
    // The database refuses one row of the batch.
    let client = support::raw_client(&schema).await;
    client
        .batch_execute(
            "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.note = 'boom' THEN RAISE EXCEPTION 'boom refused'; END IF; RETURN NEW; END $$; \
             CREATE TRIGGER refuse_boom BEFORE INSERT ON ledger_entries FOR EACH ROW EXECUTE FUNCTION refuse_boom();",
        )
        .await
        .unwrap();
    let before = pg.queued_operations();
    let paused = pg.pause_group_commit().await;
    let submit = tokio::spawn({
        let s = store.clone();
        async move { s.submit_job(new_job(a.id, 2)).await }
    });
    queued(&pg, before, 1).await;
    let fine = tokio::spawn({
        let s = store.clone();
        async move { s.grant(b.id, grant(1, "fine"), Utc::now()).await }
    });
    queued(&pg, before, 2).await;
    let boom = tokio::spawn({
        let s = store.clone();
        async move { s.grant(b.id, grant(1, "boom"), Utc::now()).await }
    });
    queued(&pg, before, 3).await;
    drop(paused);
    for r in [
        submit.await.unwrap().map(|_| ()),
        fine.await.unwrap().map(|_| ()),
        boom.await.unwrap().map(|_| ()),
    ] {
        assert!(
            matches!(r, Err(StoreError::Unavailable(_))),
            "every caller of the failed batch is told: {r:?}"
        );
    }
    // Nothing of the batch is in the database.
    for user in [a.id, b.id] {
        let w = store.wallet(user).await.unwrap();
        assert_eq!((w.balance.get(), w.held.get()), (10, 0));
        assert_eq!(store.ledger(user, None, 10).await.unwrap().len(), 1);
    }
    assert!(store
        .list_jobs(a.id, None, None, 10)
        .await
        .unwrap()
        .is_empty());
    // The next batch is not affected.
    assert!(store.submit_job(new_job(a.id, 2)).await.is_ok());
    assert_books_balance(&store).await;
}
