//! Accounts (ToS 2.2, 9.2, 9.3): API key rotation, termination, closing
//! one's own account.

use actix_web::http::Method;
use serde_json::{json, Value};

use crate::helpers::*;

async fn issue(app: &TestApp, key: &str) -> Value {
    app.post("/v1/me/api-keys", Some(key)).await.expect(201)
}

async fn keys(app: &TestApp, key: &str) -> Vec<Value> {
    app.get("/v1/me/api-keys", Some(key)).await.expect(200)["keys"]
        .as_array()
        .expect("keys")
        .clone()
}

async fn revoke(app: &TestApp, key: &str, id: &str) -> Resp {
    app.call(
        Method::DELETE,
        &format!("/v1/me/api-keys/{id}"),
        Some(key),
        &[],
        Body::None,
    )
    .await
}

async fn admin_user(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/v1/admin/users/{id}"), Some(&app.admin_token))
        .await
        .expect(200)
}

#[actix_web::test]
async fn issued_keys_work_and_are_listed_without_their_secret() {
    let app = spawn_app_without_workers().await;
    let (user, first) = register(&app, "rotate@example.com").await;
    let issued = issue(&app, &first).await;
    let second = issued["api_key"].as_str().expect("api_key").to_owned();
    assert!(second.starts_with("adm_") && second != first);
    let me = app.get("/v1/me", Some(&second)).await.expect(200);
    assert_eq!(me["user"]["id"], user["id"]);

    let listed = keys(&app, &second).await;
    assert_eq!(listed.len(), 2);
    for k in &listed {
        assert!(
            k.get("api_key").is_none(),
            "a listing never shows a key: {k}"
        );
        assert_eq!(k["active"], true);
        assert!(k["revoked_at"].is_null());
    }
    let current: Vec<&Value> = listed.iter().filter(|k| k["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["id"], issued["id"]);
    let text = app.get("/v1/me/api-keys", Some(&second)).await.text();
    assert!(!text.contains(&first) && !text.contains(&second));
}

#[actix_web::test]
async fn a_revoked_key_is_refused_and_revoking_again_changes_nothing() {
    let app = spawn_app_without_workers().await;
    let (_, old) = register(&app, "revoke@example.com").await;
    let new = issue(&app, &old).await["api_key"]
        .as_str()
        .expect("key")
        .to_owned();
    let old_id = keys(&app, &old)
        .await
        .into_iter()
        .find(|k| k["current"] == true)
        .expect("the old key")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let revoked = revoke(&app, &new, &old_id).await.expect(200);
    assert_eq!(revoked["active"], false);
    assert!(revoked["revoked_at"].is_string());
    app.get("/v1/me", Some(&old))
        .await
        .expect_problem(401, "unauthorized");
    app.post("/v1/me/api-keys", Some(&old))
        .await
        .expect_problem(401, "unauthorized");
    let again = revoke(&app, &new, &old_id).await.expect(200);
    assert_eq!(again["revoked_at"], revoked["revoked_at"]);
    app.get("/v1/me", Some(&new)).await.expect(200);
}

#[actix_web::test]
async fn the_last_active_key_cannot_be_revoked() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "last@example.com").await;
    let id = keys(&app, &key).await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    revoke(&app, &key, &id)
        .await
        .expect_problem(409, "last-api-key");
    app.get("/v1/me", Some(&key)).await.expect(200);
}

#[actix_web::test]
async fn another_users_key_and_bad_ids_are_not_found() {
    let app = spawn_app_without_workers().await;
    let (_, alice) = register(&app, "alice-keys@example.com").await;
    let (_, bob) = register(&app, "bob-keys@example.com").await;
    issue(&app, &bob).await;
    let bobs = keys(&app, &bob).await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    revoke(&app, &alice, &bobs)
        .await
        .expect_problem(404, "not-found");
    app.get("/v1/me", Some(&bob)).await.expect(200);
    for bad in ["nope", "00000000-0000-0000-0000-000000000000", "%20"] {
        revoke(&app, &alice, bad)
            .await
            .expect_problem(404, "not-found");
    }
}

#[actix_web::test]
async fn key_endpoints_need_a_valid_key() {
    let app = spawn_app_without_workers().await;
    app.post("/v1/me/api-keys", None)
        .await
        .expect_problem(401, "unauthorized");
    app.get("/v1/me/api-keys", Some("adm_wrong"))
        .await
        .expect_problem(401, "unauthorized");
    revoke(&app, "adm_wrong", "x")
        .await
        .expect_problem(401, "unauthorized");
    app.post_json("/v1/me/close", None, &json!({"confirm": true}))
        .await
        .expect_problem(401, "unauthorized");
}

#[actix_web::test]
async fn at_most_twenty_keys_are_active_at_once() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "many@example.com").await;
    for _ in 1..20 {
        issue(&app, &key).await;
    }
    app.post("/v1/me/api-keys", Some(&key))
        .await
        .expect_problem(422, "invalid-params");
}

#[actix_web::test]
async fn suspended_and_terminated_users_keys_are_refused() {
    let app = spawn_app_without_workers().await;
    let (user, key) = register(&app, "refused@example.com").await;
    let spare = issue(&app, &key).await["api_key"]
        .as_str()
        .expect("key")
        .to_owned();
    let id = id_of(&user);
    app.suspend(&id).await.expect(200);
    for k in [&key, &spare] {
        app.get("/v1/me", Some(k))
            .await
            .expect_problem(403, "account-suspended");
        app.post("/v1/me/api-keys", Some(k))
            .await
            .expect_problem(403, "account-suspended");
    }
    app.reinstate(&id).await.expect(200);
    app.get("/v1/me", Some(&key)).await.expect(200);

    let terminated = app
        .post(
            &format!("/v1/admin/users/{id}/terminate"),
            Some(&app.admin_token),
        )
        .await
        .expect(200);
    assert_eq!(terminated["status"], "terminated");
    for k in [&key, &spare] {
        app.get("/v1/me", Some(k))
            .await
            .expect_problem(403, "account-suspended");
        submit(&app, k, &image_job(), None)
            .await
            .expect_problem(403, "account-suspended");
    }
    // Termination is final.
    assert_ne!(app.reinstate(&id).await.status, 200);
    assert_eq!(admin_user(&app, &id).await["user"]["status"], "terminated");
}

#[actix_web::test]
async fn termination_cancels_and_voids_waiting_jobs_and_keeps_the_ledger() {
    let app = spawn_app_without_workers().await;
    let (user, key) = register(&app, "terminate@example.com").await;
    let id = id_of(&user);
    let jobs: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(id_of(&submit_ok(&app, &key, &image_job()).await));
        }
        v
    };
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (100, 3, 97));
    let path = format!("/v1/admin/users/{id}/terminate");
    app.post(&path, None)
        .await
        .expect_problem(401, "unauthorized");
    app.post(&path, Some(&app.admin_token)).await.expect(200);
    // Terminating again changes nothing.
    app.post(&path, Some(&app.admin_token)).await.expect(200);
    for job in &jobs {
        let detail = app
            .get(&format!("/v1/admin/jobs/{job}"), Some(&app.admin_token))
            .await
            .expect(200);
        assert_eq!(detail["job"]["state"], "cancelled");
        assert_eq!(detail["job"]["charge"], "voided");
    }
    let detail = admin_user(&app, &id).await;
    assert_eq!(
        wallet_tuple(&detail["wallet"]),
        (100, 0, 100),
        "the balance is kept"
    );
    let kinds: Vec<&str> = detail["ledger"]
        .as_array()
        .expect("ledger")
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "hold").count(), 3);
    assert_eq!(kinds.iter().filter(|k| **k == "void").count(), 3);
    assert_eq!(kinds.iter().filter(|k| **k == "grant").count(), 1);
    for bad in ["nope", "00000000-0000-0000-0000-000000000000"] {
        app.post(
            &format!("/v1/admin/users/{bad}/terminate"),
            Some(&app.admin_token),
        )
        .await
        .expect_problem(404, "not-found");
    }
}

#[actix_web::test]
async fn closing_an_account_refunds_nothing_and_keeps_the_email_taken() {
    let app = spawn_app_without_workers().await;
    let (user, key) = register(&app, "Leaving@Example.com").await;
    let id = id_of(&user);
    app.grant(&id, 400, "bonus-1").await.expect(200);
    let waiting = id_of(&submit_ok(&app, &key, &image_job()).await);

    // Bad input first: nothing happens.
    app.call(
        Method::POST,
        "/v1/me/close",
        Some(&key),
        &[],
        Body::Raw(Some("application/json"), "{}"),
    )
    .await
    .expect_problem(400, "invalid-request");
    app.post_json("/v1/me/close", Some(&key), &json!({"confirm": false}))
        .await
        .expect_problem(422, "invalid-params");
    app.post_json("/v1/me/close", Some(&key), &json!({"confirm": "yes"}))
        .await
        .expect_problem(400, "invalid-request");
    app.get("/v1/me", Some(&key)).await.expect(200);

    let closed = app
        .post_json("/v1/me/close", Some(&key), &json!({"confirm": true}))
        .await
        .expect(200);
    assert_eq!(closed["user"]["status"], "terminated");
    assert_eq!(closed["remaining_credits"], 500);
    assert_eq!(wallet_tuple(&closed["wallet"]), (500, 0, 500));
    app.get("/v1/me", Some(&key))
        .await
        .expect_problem(403, "account-suspended");
    // The waiting job was cancelled and its hold voided; nothing paid out.
    let job = app
        .get(&format!("/v1/admin/jobs/{waiting}"), Some(&app.admin_token))
        .await
        .expect(200);
    assert_eq!(job["job"]["charge"], "voided");
    let detail = admin_user(&app, &id).await;
    assert_eq!(wallet_tuple(&detail["wallet"]), (500, 0, 500));
    // One account per address, even a closed one (ToS 2.4).
    app.post_json(
        "/v1/users",
        None,
        &json!({"email": " leaving@example.com ", "display_name": "Again"}),
    )
    .await
    .expect_problem(409, "email-taken");
}
