//! The PostgreSQL adapter against the same conformance suite as the
//! in-memory store, plus the guarantees the schema gives on its own.

mod support;

use admedia_actors::store::prelude::*;
use chrono::Utc;

admedia_actors::store_conformance_tests!(support::fresh_pg_store());

#[tokio::test]
async fn database_refuses_to_change_or_delete_ledger_rows() {
    let Some((store, schema)) = support::fresh_pg().await else {
        return;
    };
    let (user, _) = store
        .create_user(
            admedia_actors::domain::account::NewUser {
                email: admedia_actors::domain::email::Email::parse("ledger@example.com").unwrap(),
                display_name: admedia_actors::domain::account::DisplayName::parse("L").unwrap(),
                key_hash: admedia_actors::domain::account::ApiKey::generate().hash(),
            },
            admedia_actors::domain::wallet::Credits::new(10).unwrap(),
            Utc::now(),
        )
        .await
        .unwrap();
    let client = support::raw_client(&schema).await;
    let update = client
        .execute(
            "UPDATE ledger_entries SET amount = 1000 WHERE user_id = $1",
            &[&user.id.as_uuid()],
        )
        .await;
    assert!(update.is_err(), "ledger rows must be immutable");
    let delete = client
        .execute(
            "DELETE FROM ledger_entries WHERE user_id = $1",
            &[&user.id.as_uuid()],
        )
        .await;
    assert!(delete.is_err());
    // Overdrawing a wallet directly is refused by the CHECK.
    let overdraw = client
        .execute(
            "UPDATE wallets SET held = balance + 1 WHERE user_id = $1",
            &[&user.id.as_uuid()],
        )
        .await;
    assert!(overdraw.is_err(), "held above balance must be refused");
    assert_eq!(store.wallet(user.id).await.unwrap().balance.get(), 10);
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let Some((store, _)) = support::fresh_pg().await else {
        return;
    };
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
}

/// A second store on the same schema: what a restarted server connects to.
fn reopen(schema: &str) -> admedia::store::postgres::PgStore {
    let url = support::database_url().unwrap_or_default();
    let mut config: tokio_postgres::Config = url.parse().unwrap_or_else(|e| panic!("{e}"));
    config.options(format!("-c search_path={schema}"));
    admedia::store::postgres::PgStore::from_config(config, 4).unwrap_or_else(|e| panic!("{e}"))
}

/// Membership gifts (ToS 5.3) are granted once per paid month, however
/// often the payment is reported and however often the server restarts
/// and sweeps; prices announced survive the restart too (ToS 4.5).
#[actix_rt::test]
async fn gifts_are_not_granted_twice_across_a_restart() {
    use admedia_actors::domain::ledger::GrantSource;
    use admedia_actors::domain::payments::{PaymentId, Period, Product};
    use admedia_actors::domain::pricing::PriceTable;
    use admedia_actors::domain::tier::Tier;
    use admedia_actors::observer::NoopObserver;
    use admedia_actors::{Orchestrator, OrchestratorConfig};
    use std::sync::Arc;

    let Some((store, schema)) = support::fresh_pg().await else {
        return;
    };
    let gifts = |o: &Orchestrator, user| {
        let o = o.clone();
        async move {
            o.ledger(user, None, 200)
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.source == Some(GrantSource::MembershipGift))
                .count()
        }
    };
    let config = OrchestratorConfig::default();
    let year = Product::Membership {
        tier: Tier::Basic,
        period: Period::Year,
    };
    let first = Orchestrator::start(Arc::new(store), config.clone(), Arc::new(NoopObserver))
        .await
        .unwrap();
    let user = first
        .register("gifts@example.com", "G")
        .await
        .unwrap()
        .user
        .id;
    let id = PaymentId::parse("pay_year").unwrap();
    let paid = first.apply_payment(id.clone(), user, year).await.unwrap();
    assert_eq!(paid.granted.get(), 200, "the first month at once");
    let mut later_prices = PriceTable::default();
    later_prices.image_standard = 2;
    let effective = Utc::now() + chrono::Duration::days(8);
    first
        .announce_prices(later_prices, effective)
        .await
        .unwrap();
    // Two months on, the sweep grants the second month's gift once.
    let two_months = Utc::now() + chrono::Duration::days(62);
    assert_eq!(first.grant_due_gifts(two_months).await.unwrap(), 2);
    assert_eq!(first.grant_due_gifts(two_months).await.unwrap(), 0);
    assert_eq!(gifts(&first, user).await, 3);
    drop(first);

    // Restarted with other configured prices: stored versions win.
    let mut other = config.clone();
    other.prices.image_standard = 9;
    let second = Orchestrator::start(Arc::new(reopen(&schema)), other, Arc::new(NoopObserver))
        .await
        .unwrap();
    assert!(second.apply_payment(id, user, year).await.unwrap().replayed);
    assert_eq!(second.grant_due_gifts(two_months).await.unwrap(), 0);
    assert_eq!(gifts(&second, user).await, 3);
    let (current, upcoming) = second.pricing().await.unwrap();
    assert_eq!(
        (current.version, current.prices),
        (1, PriceTable::default())
    );
    assert_eq!(upcoming.len(), 1);
    assert_eq!(upcoming[0].prices, later_prices);
    // Two nodes sweeping at once still grant each month once.
    let third = Orchestrator::start(
        Arc::new(reopen(&schema)),
        config.clone(),
        Arc::new(NoopObserver),
    )
    .await
    .unwrap();
    let four_months = Utc::now() + chrono::Duration::days(123);
    let (a, b) = tokio::join!(
        second.grant_due_gifts(four_months),
        third.grant_due_gifts(four_months)
    );
    assert_eq!(a.unwrap() + b.unwrap(), 2);
    assert_eq!(gifts(&third, user).await, 5);
    let audit = third.store().audit_ledgers().await.unwrap();
    for (u, wallet, entries) in audit {
        assert_eq!(
            admedia_actors::domain::ledger::replay(&entries).unwrap(),
            wallet,
            "{u}"
        );
    }
}

/// A store error carries PostgreSQL's cause, not the driver's bare "db error".
#[tokio::test]
async fn database_errors_say_what_postgres_said() {
    let Some((_, schema)) = support::fresh_pg().await else {
        return;
    };
    let client = support::raw_client(&schema).await;
    let Err(e) = client
        .batch_execute("CREATE TABLE t (n int CHECK (n > 0)); INSERT INTO t VALUES (0)")
        .await
    else {
        panic!("a check violation was accepted");
    };
    let cause = admedia::store::postgres::db_cause(&e);
    assert!(cause.contains("23514"), "{cause}");
    assert!(cause.contains("violates check constraint"), "{cause}");
    assert!(cause.contains("constraint: t_n_check"), "{cause}");
    assert_ne!(e.to_string(), cause, "the driver's text alone says less");
}

/// The catalogue of stored files: its own port, the same checks as the
/// in-memory adapter.
mod catalogue {
    use super::support;

    admedia_actors::material_store_conformance_tests!(support::fresh_pg_catalogue());
}

/// Pruning deletes a finished job's attempt and event rows and thins its
/// row in the database itself; its hold and ledger rows stay, and a
/// webhook delivery still owed is left to the dispatcher.
#[tokio::test]
async fn pruning_deletes_attempt_and_event_rows_and_keeps_the_money() {
    use admedia_actors::domain::ids::{LeaseToken, WorkerId};
    use admedia_actors::domain::job::AttemptOutcome;
    use admedia_actors::store::conformance::{new_job, user_with, Shared};
    use admedia_actors::store::{AttemptRef, FinishedBefore};
    use chrono::{Duration, SubsecRound};

    let Some((store, schema)) = support::fresh_pg().await else {
        return;
    };
    let store: Shared = std::sync::Arc::new(store);
    let user = user_with(&store, "rows@example.com", 10).await;
    let mut new = new_job(user.id, 3);
    new.spec.webhook_url = Some("https://hooks.example.com/x".into());
    let job = store.submit_job(new).await.unwrap().job;
    let attempt = AttemptRef {
        job_id: job.id,
        attempt: 1,
        lease: LeaseToken::generate(),
    };
    let epoch = store.leader().await.unwrap().map_or(0, |l| l.epoch);
    store
        .assign_job(attempt, WorkerId::generate(), epoch, Utc::now())
        .await
        .unwrap();
    let now = Utc::now().trunc_subsecs(6);
    store
        .finish_attempt(
            attempt,
            AttemptOutcome::Succeeded { outputs: vec![] },
            now - Duration::days(10),
        )
        .await
        .unwrap();
    let client = support::raw_client(&schema).await;
    let count = |table: &'static str| {
        let client = &client;
        async move {
            let n: i64 = client
                .query_one(
                    &format!("SELECT count(*) FROM {table} WHERE job_id = $1"),
                    &[&job.id.as_uuid()],
                )
                .await
                .unwrap()
                .get(0);
            n
        }
    };
    assert_eq!(count("job_attempts").await, 1);
    assert!(count("job_events").await > 0);
    let owed = count("webhook_outbox").await;
    assert!(owed > 0, "the delivery is still owed");

    let before = FinishedBefore {
        succeeded: now - Duration::days(7),
        failed: now - Duration::days(30),
        cancelled: now - Duration::days(7),
    };
    assert_eq!(
        store.prune_finished_jobs(&before, now, 500).await.unwrap(),
        1
    );
    assert_eq!(count("job_attempts").await, 0);
    assert_eq!(count("job_events").await, 0);
    assert_eq!(count("webhook_outbox").await, owed);
    assert_eq!(count("ledger_entries").await, 2, "hold and post stay");
    assert_eq!(count("holds").await, 1, "its hold stays");
    let row = client
        .query_one(
            "SELECT prompt, params, result, error, webhook_url, pruned_at, cost, charge, \
             (SELECT state FROM holds WHERE holds.job_id = jobs.id) FROM jobs WHERE id = $1",
            &[&job.id.as_uuid()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "");
    let params: serde_json::Value = row.get(1);
    let keys: Vec<&str> = params
        .as_object()
        .expect("params object")
        .keys()
        .map(String::as_str)
        .collect();
    assert!(
        keys.iter()
            .all(|k| ["width", "height", "count", "duration_s"].contains(k)),
        "only the shape it was priced by stays: {params}"
    );
    assert!(row.get::<_, Option<serde_json::Value>>(2).is_none());
    assert!(row.get::<_, Option<serde_json::Value>>(3).is_none());
    assert!(row.get::<_, Option<String>>(4).is_none());
    assert_eq!(row.get::<_, Option<chrono::DateTime<Utc>>>(5), Some(now));
    assert_eq!(
        (
            row.get::<_, i64>(6),
            row.get::<_, String>(7),
            row.get::<_, String>(8)
        ),
        (3, "posted".to_owned(), "posted".to_owned())
    );
}

/// The stats read the writers' tally of jobs by state, not a scan of every
/// job: a job that moves is counted at once, concurrent writers on other
/// connections add to their own shards, and a tally that someone broke by
/// hand is reported as broken rather than read as a huge number.
#[tokio::test]
async fn job_counts_are_the_writers_tally_and_a_broken_one_is_refused() {
    use admedia_actors::domain::job::JobState;
    use admedia_actors::store::conformance::{new_job, user_with};
    use admedia_actors::store::StoreError;
    use std::sync::Arc;

    let Some((store, schema)) = support::fresh_pg().await else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(store);
    let user = user_with(&store, "tally@example.com", 100).await;
    let submits = (0..12).map(|_| {
        let s = store.clone();
        tokio::spawn(async move { s.submit_job(new_job(user.id, 1)).await })
    });
    let mut jobs = Vec::new();
    for s in submits {
        jobs.push(s.await.unwrap().unwrap().job);
    }
    store
        .cancel_job(user.id, jobs[0].id, Utc::now())
        .await
        .unwrap();
    let counts = store.job_counts().await.unwrap();
    assert!(counts.0.contains(&(JobState::Queued, 11)), "{counts:?}");
    assert!(counts.0.contains(&(JobState::Cancelled, 1)), "{counts:?}");

    let client = support::raw_client(&schema).await;
    let shards: i64 = client
        .query_one("SELECT count(DISTINCT shard) FROM job_state_counts", &[])
        .await
        .unwrap()
        .get(0);
    assert!(shards >= 1);
    client
        .execute(
            "UPDATE job_state_counts SET jobs = jobs - 100 WHERE state = 'queued'",
            &[],
        )
        .await
        .unwrap();
    match store.job_counts().await {
        Err(StoreError::Invariant(why)) => assert!(why.contains("below zero"), "{why}"),
        other => panic!("a negative tally must be refused, got {other:?}"),
    }
}
