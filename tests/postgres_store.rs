//! The PostgreSQL adapter against the same conformance suite as the
//! in-memory store, plus the guarantees the schema gives on its own.

mod support;

use admedia_actors::store::Store;
use chrono::Utc;

admedia_actors::store_conformance_tests!(support::fresh_pg_store());

#[tokio::test]
async fn database_refuses_to_change_or_delete_ledger_rows() {
    let Some((store, schema)) = support::fresh_pg().await else {
        return;
    };
    let (user, _) = store
        .create_user(
            admedia_actors::user::NewUser {
                email: admedia_actors::email::Email::parse("ledger@example.com").unwrap(),
                display_name: admedia_actors::user::DisplayName::parse("L").unwrap(),
                key_hash: admedia_actors::user::ApiKey::generate().hash(),
            },
            admedia_actors::money::Credits::new(10).unwrap(),
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
