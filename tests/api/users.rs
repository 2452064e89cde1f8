//! `POST /v1/users` and `GET /v1/me`, and authentication of users.

use actix_web::http::Method;
use serde_json::json;

use crate::helpers::{register, spawn_app_with, spawn_app_without_workers, wallet_tuple, Body};

#[actix_web::test]
async fn register_returns_user_key_and_wallet_with_the_registration_grant() {
    let app = spawn_app_without_workers().await;
    let res = app
        .post_json(
            "/v1/users",
            None,
            &json!({"email": "  Alice@Example.COM ", "display_name": "Alice"}),
        )
        .await;
    let body = res.expect(201);
    assert!(res
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    let user = &body["user"];
    assert!(user["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(user["email"], "alice@example.com");
    assert_eq!(user["display_name"], "Alice");
    assert_eq!(user["tier"], "free");
    assert_eq!(user["status"], "active");
    assert!(user["membership_expires_at"].is_null());
    assert!(user["created_at"].as_str().is_some());
    let key = body["api_key"].as_str().expect("api_key");
    assert!(!key.is_empty());
    assert_eq!(wallet_tuple(&body["wallet"]), (100, 0, 100));

    // The key works.
    let me = app.get("/v1/me", Some(key)).await.expect(200);
    assert_eq!(me["user"]["id"], user["id"]);
}

#[actix_web::test]
async fn a_second_account_for_the_same_email_is_refused_case_insensitively() {
    let app = spawn_app_without_workers().await;
    register(&app, "bob@example.com").await;
    for email in ["bob@example.com", "BOB@Example.com", "  bob@example.COM  "] {
        app.post_json(
            "/v1/users",
            None,
            &json!({"email": email, "display_name": "Bob again"}),
        )
        .await
        .expect_problem(409, "email-taken");
    }
}

#[actix_web::test]
async fn another_spelling_of_a_mailbox_is_the_same_account() {
    let app = spawn_app_without_workers().await;
    let (user, _) = register(&app, "name@example.com").await;
    assert_eq!(user["email"], "name@example.com");
    let (gmail, _) = register(&app, "First.Last+News@gmail.com").await;
    assert_eq!(gmail["email"], "first.last+news@gmail.com", "kept as given");
    for email in [
        "name+1@example.com",
        "Name+promo@example.com",
        "firstlast@gmail.com",
        "f.i.r.s.t.l.a.s.t@gmail.com",
        "firstlast+x@gmail.com",
    ] {
        app.post_json(
            "/v1/users",
            None,
            &json!({"email": email, "display_name": "Again"}),
        )
        .await
        .expect_problem(409, "email-taken");
    }
    // Dots are part of the mailbox elsewhere: a different person.
    register(&app, "na.me@example.com").await;
}

#[actix_web::test]
async fn the_providers_that_ignore_dots_are_configurable() {
    let app = spawn_app_with(|s| {
        s.sim_workers = Some(0);
        s.dotless_email_domains = "example.org".parse().expect("mail domains");
    })
    .await;
    register(&app, "jo.doe@example.org").await;
    app.post_json(
        "/v1/users",
        None,
        &json!({"email": "jodoe@example.org", "display_name": "Again"}),
    )
    .await
    .expect_problem(409, "email-taken");
    // gmail.com is no longer in the list.
    register(&app, "jo.doe@gmail.com").await;
    register(&app, "jodoe@gmail.com").await;
}

#[actix_web::test]
async fn malformed_email_and_empty_display_name_are_422() {
    let app = spawn_app_without_workers().await;
    for email in [
        "",
        "no-at-sign",
        "a@b",
        "a b@c.de",
        "@example.com",
        "a@@b.com",
    ] {
        app.post_json(
            "/v1/users",
            None,
            &json!({"email": email, "display_name": "X"}),
        )
        .await
        .expect_problem(422, "invalid-params");
    }
    let long = "n".repeat(101);
    for name in ["", "   ", long.as_str(), "bell\u{7}"] {
        app.post_json(
            "/v1/users",
            None,
            &json!({"email": "ok@example.com", "display_name": name}),
        )
        .await
        .expect_problem(422, "invalid-params");
    }
    // Nothing was created by the refused requests.
    register(&app, "ok@example.com").await;
}

#[actix_web::test]
async fn malformed_bodies_are_400_invalid_request() {
    let app = spawn_app_without_workers().await;
    let json_ct = Some("application/json");
    let cases: [(Option<&str>, &str); 6] = [
        (json_ct, "{not json"),
        (json_ct, ""),
        // Unknown field.
        (
            json_ct,
            r#"{"email": "a@example.com", "display_name": "A", "admin": true}"#,
        ),
        // Wrong type.
        (json_ct, r#"{"email": 42, "display_name": "A"}"#),
        // Missing field.
        (json_ct, r#"{"email": "a@example.com"}"#),
        // No Content-Type.
        (None, r#"{"email": "a@example.com", "display_name": "A"}"#),
    ];
    for (ct, raw) in cases {
        let res = app
            .call(Method::POST, "/v1/users", None, &[], Body::Raw(ct, raw))
            .await;
        res.expect_problem(400, "invalid-request");
    }
    // Wrong Content-Type too.
    app.call(
        Method::POST,
        "/v1/users",
        None,
        &[],
        Body::Raw(
            Some("text/plain"),
            r#"{"email": "a@example.com", "display_name": "A"}"#,
        ),
    )
    .await
    .expect_problem(400, "invalid-request");
}

#[actix_web::test]
async fn me_returns_the_user_and_wallet() {
    let app = spawn_app_without_workers().await;
    let (user, key) = register(&app, "carol@example.com").await;
    let me = app.get("/v1/me", Some(&key)).await.expect(200);
    assert_eq!(me["user"], user);
    assert_eq!(wallet_tuple(&me["wallet"]), (100, 0, 100));
}

#[actix_web::test]
async fn me_without_valid_credentials_is_401() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "dave@example.com").await;
    app.get("/v1/me", None)
        .await
        .expect_problem(401, "unauthorized");
    app.get("/v1/me", Some("adm_not-a-real-key"))
        .await
        .expect_problem(401, "unauthorized");
    // The admin token is not a user key.
    app.get("/v1/me", Some(&app.admin_token))
        .await
        .expect_problem(401, "unauthorized");
    for value in [
        "Basic xyz".to_owned(),
        format!("Basic {key}"),
        "Bearer ".into(),
        key.clone(),
    ] {
        app.call(
            Method::GET,
            "/v1/me",
            None,
            &[("Authorization", value.as_str())],
            Body::None,
        )
        .await
        .expect_problem(401, "unauthorized");
    }
    // A real key still works.
    app.get("/v1/me", Some(&key)).await.expect(200);
}
