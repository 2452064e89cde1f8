//! `GET /v1/wallet` and `GET /v1/wallet/ledger`.

use crate::helpers::{
    id_of, image_job, register, spawn_app_without_workers, submit_ok, wallet_tuple,
};

#[actix_web::test]
async fn wallet_reads_balance_held_and_available() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "w1@example.com").await;
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 0, 100));
    submit_ok(&app, &key, &image_job()).await;
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 1, 99));
}

#[actix_web::test]
async fn wallet_needs_a_user_key() {
    let app = spawn_app_without_workers().await;
    app.get("/v1/wallet", None)
        .await
        .expect_problem(401, "unauthorized");
    app.get("/v1/wallet", Some("wrong"))
        .await
        .expect_problem(401, "unauthorized");
    app.get("/v1/wallet/ledger", None)
        .await
        .expect_problem(401, "unauthorized");
}

#[actix_web::test]
async fn ledger_starts_with_the_registration_grant() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "w2@example.com").await;
    let page = app.get("/v1/wallet/ledger", Some(&key)).await.expect(200);
    assert!(page["next"].is_null());
    let entries = page["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{page}");
    let e = &entries[0];
    assert_eq!(e["kind"], "grant");
    assert_eq!(e["amount"], 100);
    assert_eq!(e["balance"], 100);
    assert_eq!(e["held"], 0);
    assert_eq!(e["source"], "registration");
    assert!(e["job_id"].is_null());
    assert!(e["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(e["created_at"].as_str().is_some());
}

#[actix_web::test]
async fn ledger_is_newest_first_and_pages_with_before() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "w3@example.com").await;
    let job = submit_ok(&app, &key, &image_job()).await;

    let all = app.ledger(&key).await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["kind"], "hold");
    assert_eq!(all[0]["amount"], 1);
    assert_eq!(all[0]["job_id"], job["id"]);
    assert!(all[0]["source"].is_null());
    assert_eq!(all[0]["balance"], 100);
    assert_eq!(all[0]["held"], 1);
    assert_eq!(all[1]["source"], "registration");

    let first = app
        .get("/v1/wallet/ledger?limit=1", Some(&key))
        .await
        .expect(200);
    assert_eq!(first["entries"].as_array().unwrap().len(), 1);
    assert_eq!(first["entries"][0], all[0]);
    let next = first["next"].as_str().expect("next on a full page");
    assert_eq!(next, id_of(&all[0]));

    let second = app
        .get(
            &format!("/v1/wallet/ledger?limit=1&before={next}"),
            Some(&key),
        )
        .await
        .expect(200);
    assert_eq!(second["entries"].as_array().unwrap().len(), 1);
    assert_eq!(second["entries"][0], all[1]);
    assert!(second["next"].is_null(), "{second}");

    let past_end = app
        .get(
            &format!("/v1/wallet/ledger?limit=1&before={}", id_of(&all[1])),
            Some(&key),
        )
        .await
        .expect(200);
    assert_eq!(past_end["entries"].as_array().unwrap().len(), 0);
    assert!(past_end["next"].is_null());
}

#[actix_web::test]
async fn ledger_refuses_bad_queries() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "w4@example.com").await;
    for q in ["limit=0", "limit=1000", "limit=201", "before=garbage"] {
        app.get(&format!("/v1/wallet/ledger?{q}"), Some(&key))
            .await
            .expect_problem(422, "invalid-params");
    }
    for q in ["colour=red", "limit=abc", "limit=-1"] {
        app.get(&format!("/v1/wallet/ledger?{q}"), Some(&key))
            .await
            .expect_problem(400, "invalid-request");
    }
    app.get("/v1/wallet/ledger?limit=200", Some(&key))
        .await
        .expect(200);
}

#[actix_web::test]
async fn ledger_is_private_to_its_user() {
    let app = spawn_app_without_workers().await;
    let (_, alice) = register(&app, "w5a@example.com").await;
    let (_, bob) = register(&app, "w5b@example.com").await;
    submit_ok(&app, &alice, &image_job()).await;
    let alice_entries = app.ledger(&alice).await;
    assert_eq!(app.ledger(&bob).await.len(), 1);
    // Another user's entry id as `before` shows nothing of theirs.
    let page = app
        .get(
            &format!("/v1/wallet/ledger?before={}", id_of(&alice_entries[0])),
            Some(&bob),
        )
        .await
        .expect(200);
    for e in page["entries"].as_array().unwrap() {
        assert!(e["job_id"].is_null(), "bob sees alice's entry: {e}");
    }
}
