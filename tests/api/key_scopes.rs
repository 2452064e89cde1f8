//! API keys with a name, an expiry and scopes: what a scoped key may do,
//! what it is refused (403 `insufficient-scope`, naming the scope), and
//! keys without scopes keeping full access.

use std::time::{Duration, Instant};

use actix_web::http::Method;
use serde_json::{json, Value};

use crate::helpers::*;

async fn issue(app: &TestApp, key: &str, body: &Value) -> Resp {
    app.post_json("/v1/me/api-keys", Some(key), body).await
}

#[track_caller]
fn expect_scope(resp: &Resp, scope: &str) {
    let p = resp.expect_problem(403, "insufficient-scope");
    assert_eq!(p["required_scope"], scope, "{p}");
}

#[actix_web::test]
async fn a_key_without_scopes_keeps_full_access() {
    let app = spawn_app().await;
    let (_, key) = register(&app, "full@example.com").await;
    // No body at all, as before scopes existed.
    let issued = app.post("/v1/me/api-keys", Some(&key)).await.expect(201);
    assert!(
        issued["scopes"].is_null() && issued["expires_at"].is_null(),
        "{issued}"
    );
    let fresh = issued["api_key"].as_str().expect("api_key").to_owned();
    for path in [
        "/v1/wallet",
        "/v1/jobs",
        "/v1/me/api-keys",
        "/v1/me/webhooks",
    ] {
        app.get(path, Some(&fresh)).await.expect(200);
    }
    submit_ok(&app, &fresh, &image_job()).await;
    // The registration key is listed without scopes too.
    let listed = app.get("/v1/me/api-keys", Some(&key)).await.expect(200);
    let keys = listed["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|k| k["scopes"].is_null()), "{listed}");
}

#[actix_web::test]
async fn a_scoped_key_does_only_what_its_scopes_name() {
    let app = spawn_app().await;
    let (_, key) = register(&app, "scoped@example.com").await;
    let job = id_of(&submit_ok(&app, &key, &image_job()).await);
    let issued = issue(
        &app,
        &key,
        &json!({"name": "dashboard", "scopes": ["jobs:read", "jobs:read"]}),
    )
    .await
    .expect(201);
    assert_eq!(issued["name"], "dashboard");
    assert_eq!(issued["scopes"], json!(["jobs:read"]));
    let reader = issued["api_key"].as_str().expect("api_key").to_owned();

    app.get("/v1/jobs", Some(&reader)).await.expect(200);
    app.get(&format!("/v1/jobs/{job}"), Some(&reader))
        .await
        .expect(200);
    app.get("/v1/me", Some(&reader)).await.expect(200);
    expect_scope(
        &submit(&app, &reader, &image_job(), None).await,
        "jobs:write",
    );
    expect_scope(
        &app.post(&format!("/v1/jobs/{job}/cancel"), Some(&reader))
            .await,
        "jobs:write",
    );
    expect_scope(&app.get("/v1/wallet", Some(&reader)).await, "wallet:read");
    expect_scope(
        &app.get("/v1/wallet/ledger", Some(&reader)).await,
        "wallet:read",
    );
    expect_scope(
        &app.get("/v1/materials", Some(&reader)).await,
        "materials:write",
    );
    // Keys, webhooks, the secret and the account need full access, so a
    // scoped key cannot widen itself.
    for (method, path) in [
        (Method::POST, "/v1/me/api-keys"),
        (Method::GET, "/v1/me/api-keys"),
        (Method::GET, "/v1/me/webhooks"),
        (Method::GET, "/v1/me/webhook-secret"),
        (Method::POST, "/v1/me/close"),
    ] {
        let resp = app.call(method, path, Some(&reader), &[], Body::None).await;
        expect_scope(&resp, "full-access");
    }
    // A writer with the wallet: both, nothing else.
    let writer = issue(
        &app,
        &key,
        &json!({"scopes": ["jobs:write", "wallet:read"]}),
    )
    .await
    .expect(201)["api_key"]
        .as_str()
        .expect("api_key")
        .to_owned();
    submit_ok(&app, &writer, &image_job()).await;
    app.get("/v1/wallet", Some(&writer)).await.expect(200);
    expect_scope(&app.get("/v1/jobs", Some(&writer)).await, "jobs:read");
    // The listing shows what each key may do.
    let listed = app.get("/v1/me/api-keys", Some(&key)).await.expect(200);
    let scopes: Vec<Value> = listed["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["scopes"].clone())
        .collect();
    assert_eq!(
        scopes,
        [
            Value::Null,
            json!(["jobs:read"]),
            json!(["jobs:write", "wallet:read"])
        ]
    );
}

#[actix_web::test]
async fn bad_key_requests_are_refused_and_issue_nothing() {
    let app = spawn_app().await;
    let (_, key) = register(&app, "badkeys@example.com").await;
    let past = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    for body in [
        json!({"scopes": ["jobs:admin"]}),
        json!({"scopes": []}),
        json!({"scopes": ["jobs:read", "everything"]}),
        json!({"expires_at": past}),
        json!({"name": ""}),
        json!({"name": "   "}),
        json!({"name": "x".repeat(101)}),
        json!({"name": "tab\there"}),
    ] {
        issue(&app, &key, &body)
            .await
            .expect_problem(422, "invalid-params");
    }
    for body in [
        json!({"scopes": "jobs:read"}),
        json!({"scopes": [1]}),
        json!({"expires_at": "tomorrow"}),
        json!({"owner": "someone"}),
    ] {
        issue(&app, &key, &body)
            .await
            .expect_problem(400, "invalid-request");
    }
    app.call(
        Method::POST,
        "/v1/me/api-keys",
        Some(&key),
        &[],
        Body::Raw(Some("application/json"), "{not json"),
    )
    .await
    .expect_problem(400, "invalid-request");
    let listed = app.get("/v1/me/api-keys", Some(&key)).await.expect(200);
    assert_eq!(
        listed["keys"].as_array().expect("keys").len(),
        1,
        "{listed}"
    );
}

#[actix_web::test]
async fn an_expired_key_is_refused_as_expired() {
    let app = spawn_app().await;
    let (_, key) = register(&app, "expiry@example.com").await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let lasting = issue(&app, &key, &json!({"expires_at": later}))
        .await
        .expect(201);
    let lasting_key = lasting["api_key"].as_str().expect("api_key").to_owned();
    app.get("/v1/jobs", Some(&lasting_key)).await.expect(200);

    let soon = (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339();
    let short = issue(
        &app,
        &key,
        &json!({"expires_at": soon, "scopes": ["jobs:read"]}),
    )
    .await
    .expect(201)["api_key"]
        .as_str()
        .expect("api_key")
        .to_owned();
    let deadline = Instant::now() + WAIT;
    let refused = loop {
        let resp = app.get("/v1/jobs", Some(&short)).await;
        if resp.status != 200 {
            break resp;
        }
        assert!(Instant::now() < deadline, "the key never expired");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    };
    refused.expect_problem(401, "key-expired");
    // A wrong key is still `unauthorized`, and the owner's other keys work.
    app.get("/v1/jobs", Some("adm_not-a-key"))
        .await
        .expect_problem(401, "unauthorized");
    app.get("/v1/jobs", Some(&key)).await.expect(200);
}
