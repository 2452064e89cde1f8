//! Account webhook endpoints: registered once, delivered every job event
//! of the account of a wanted type, signed like a job's webhook, with a
//! delivery log per endpoint.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::Method;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::receiver::{receiver, verify, Answer, Delivery};

async fn wait_for(seen: &Arc<Mutex<Vec<Delivery>>>, what: impl Fn(&Delivery) -> bool) -> Delivery {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(d) = seen.lock().expect("lock").iter().find(|d| what(d)) {
            return d.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no such delivery: {:?}",
            seen.lock()
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn patch(app: &TestApp, key: &str, path: &str, body: &Value) -> Resp {
    app.call(Method::PATCH, path, Some(key), &[], Body::Json(body))
        .await
}

#[actix_web::test]
async fn an_account_endpoint_gets_every_wanted_event_signed_and_logged() {
    let (base, seen) = receiver(Answer::Accept).await;
    let app = spawn_app_with(|s| s.webhook_allow_private = true).await;
    let (_, key) = register(&app, "endpoints@example.com").await;
    let secret = app
        .get("/v1/me/webhook-secret", Some(&key))
        .await
        .expect(200)["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let created = app
        .post_json(
            "/v1/me/webhooks",
            Some(&key),
            &json!({"url": format!("{base}/ends"), "event_types": ["job.succeeded", "job.failed"]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let ends = created.json();
    let ends_id = ends["id"].as_str().expect("id").to_owned();
    assert_eq!(
        created.header("location"),
        Some(format!("/v1/me/webhooks/{ends_id}"))
    );
    assert_eq!(ends["enabled"], true);
    assert_eq!(ends["event_types"], json!(["job.succeeded", "job.failed"]));
    let starts = app
        .post_json(
            "/v1/me/webhooks",
            Some(&key),
            &json!({"url": format!("{base}/starts"), "event_types": ["job.started"], "enabled": false}),
        )
        .await
        .expect(201);
    let starts_id = starts["id"].as_str().expect("id").to_owned();
    let listed = app.get("/v1/me/webhooks", Some(&key)).await.expect(200);
    assert_eq!(listed["endpoints"].as_array().expect("endpoints").len(), 2);
    assert_eq!(
        app.get(&format!("/v1/me/webhooks/{ends_id}"), Some(&key))
            .await
            .expect(200),
        ends
    );

    // A job without a webhook URL of its own: the account endpoint hears
    // its end, signed with the account's secret.
    let job = id_of(&submit_ok(&app, &key, &image_job()).await);
    wait_for_state(&app, &key, &job, "succeeded", WAIT).await;
    let d = wait_for(&seen, |d| d.path == "/ends" && d.body.contains(&job)).await;
    assert!(verify(&secret, &d), "{d:?}");
    let body: Value = serde_json::from_str(&d.body).expect("JSON body");
    assert_eq!(body["type"], "job.succeeded");
    assert_eq!(body["data"]["id"], job.as_str());
    assert_eq!(body["data"]["state"], "succeeded");
    // Logged with the receiver's answer.
    let deadline = Instant::now() + WAIT;
    let log = loop {
        let log = app
            .get(&format!("/v1/me/webhooks/{ends_id}/deliveries"), Some(&key))
            .await
            .expect(200);
        if !log["deliveries"].as_array().expect("deliveries").is_empty() {
            break log;
        }
        assert!(Instant::now() < deadline, "nothing logged");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    };
    let attempt = &log["deliveries"][0];
    assert_eq!(attempt["webhook_id"], d.id.as_str());
    assert_eq!(attempt["status_code"], 204);
    assert_eq!(attempt["outcome"], "delivered");
    assert_eq!(attempt["job_id"], job.as_str());
    assert!(attempt["error"].is_null());
    assert!(attempt["attempted_at"].is_string());

    // Enable the start endpoint, disable the end one: the next job is
    // heard starting, not ending.
    let on = patch(
        &app,
        &key,
        &format!("/v1/me/webhooks/{starts_id}"),
        &json!({"enabled": true}),
    )
    .await
    .expect(200);
    assert_eq!(on["enabled"], true);
    patch(
        &app,
        &key,
        &format!("/v1/me/webhooks/{ends_id}"),
        &json!({"enabled": false}),
    )
    .await
    .expect(200);
    let next = id_of(&submit_ok(&app, &key, &image_job()).await);
    wait_for_state(&app, &key, &next, "succeeded", WAIT).await;
    let started = wait_for(&seen, |d| d.path == "/starts" && d.body.contains(&next)).await;
    assert!(verify(&secret, &started));
    assert!(
        !seen
            .lock()
            .expect("lock")
            .iter()
            .any(|d| d.path == "/ends" && d.body.contains(&next)),
        "a disabled endpoint is owed nothing"
    );

    // Deleted: gone, with its log.
    app.call(
        Method::DELETE,
        &format!("/v1/me/webhooks/{ends_id}"),
        Some(&key),
        &[],
        Body::None,
    )
    .await;
    app.get(&format!("/v1/me/webhooks/{ends_id}"), Some(&key))
        .await
        .expect_problem(404, "not-found");
    app.get(&format!("/v1/me/webhooks/{ends_id}/deliveries"), Some(&key))
        .await
        .expect_problem(404, "not-found");
}

#[actix_web::test]
async fn bad_endpoints_are_refused_and_others_endpoints_are_hidden() {
    let app = spawn_app().await;
    let (_, key) = register(&app, "badhooks@example.com").await;
    let (_, other) = register(&app, "otherhooks@example.com").await;
    let ok = |url: &str| json!({"url": url, "event_types": ["job.succeeded"]});
    for body in [
        ok("ftp://example.com/hook"),
        ok("not a url"),
        ok(""),
        ok("   "),
        ok("http://127.0.0.1:9/hook"),
        ok("http://localhost/hook"),
        ok("http://10.0.0.8/hook"),
        ok("http://[::1]/hook"),
        ok("http://169.254.169.254/latest"),
        ok("https://user:pass@example.com/hook"),
        ok(&format!("https://example.com/{}", "a".repeat(2048))),
        json!({"url": "https://example.com/h", "event_types": []}),
        json!({"url": "https://example.com/h", "event_types": ["job.exploded"]}),
        json!({"url": "https://example.com/h", "event_types": ["job.succeeded", "JOB.FAILED"]}),
    ] {
        app.post_json("/v1/me/webhooks", Some(&key), &body)
            .await
            .expect_problem(422, "invalid-params");
    }
    for body in [
        json!({"url": "https://example.com/h"}),
        json!({"url": "https://example.com/h", "event_types": "job.succeeded"}),
        json!({"url": "https://example.com/h", "event_types": ["job.succeeded"], "secret": "x"}),
        json!({"url": "https://example.com/h", "event_types": ["job.succeeded"], "enabled": "yes"}),
    ] {
        app.post_json("/v1/me/webhooks", Some(&key), &body)
            .await
            .expect_problem(400, "invalid-request");
    }
    let listed = app.get("/v1/me/webhooks", Some(&key)).await.expect(200);
    assert!(listed["endpoints"]
        .as_array()
        .expect("endpoints")
        .is_empty());

    let mine = app
        .post_json(
            "/v1/me/webhooks",
            Some(&key),
            &ok("https://example.com/mine"),
        )
        .await
        .expect(201);
    let id = mine["id"].as_str().expect("id").to_owned();
    let path = format!("/v1/me/webhooks/{id}");
    // Bad changes change nothing.
    for body in [
        json!({"url": "http://127.0.0.1/x"}),
        json!({"event_types": []}),
        json!({"event_types": ["job.nope"]}),
    ] {
        patch(&app, &key, &path, &body)
            .await
            .expect_problem(422, "invalid-params");
    }
    patch(&app, &key, &path, &json!({"enabled": 1}))
        .await
        .expect_problem(400, "invalid-request");
    assert_eq!(app.get(&path, Some(&key)).await.expect(200), mine);
    // Someone else's endpoint, or no endpoint at all, is not found.
    app.get(&path, Some(&other))
        .await
        .expect_problem(404, "not-found");
    patch(&app, &other, &path, &json!({"enabled": false}))
        .await
        .expect_problem(404, "not-found");
    app.call(Method::DELETE, &path, Some(&other), &[], Body::None)
        .await
        .expect_problem(404, "not-found");
    app.get("/v1/me/webhooks/not-an-id", Some(&key))
        .await
        .expect_problem(404, "not-found");
    // Only a key without scopes manages endpoints.
    let scoped = app
        .post_json(
            "/v1/me/api-keys",
            Some(&key),
            &json!({"scopes": ["jobs:read", "jobs:write"]}),
        )
        .await
        .expect(201)["api_key"]
        .as_str()
        .expect("api_key")
        .to_owned();
    let p = app
        .post_json(
            "/v1/me/webhooks",
            Some(&scoped),
            &ok("https://example.com/s"),
        )
        .await
        .expect_problem(403, "insufficient-scope");
    assert_eq!(p["required_scope"], "full-access");
    // At most ten.
    for n in 1..10 {
        app.post_json(
            "/v1/me/webhooks",
            Some(&key),
            &ok(&format!("https://example.com/{n}")),
        )
        .await
        .expect(201);
    }
    app.post_json(
        "/v1/me/webhooks",
        Some(&key),
        &ok("https://example.com/eleventh"),
    )
    .await
    .expect_problem(422, "invalid-params");
    let deleted = app
        .call(Method::DELETE, &path, Some(&key), &[], Body::None)
        .await;
    assert_eq!(deleted.status, 204);
}
