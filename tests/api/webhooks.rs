//! Job webhooks as a receiver sees them: signed per Standard Webhooks,
//! retried with the same id.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::receiver::{receiver, verify, Answer, Delivery};

#[actix_web::test]
async fn webhooks_are_signed_retried_with_one_id_and_verifiable() {
    let (url, seen) = receiver(Answer::FailFirst).await;
    let url = format!("{url}/hooks");
    let app = spawn_app_with(|s| {
        s.webhook_allow_private = true;
        s.webhook_retry_base = Duration::from_millis(30);
    })
    .await;
    let (_, key) = register(&app, "hooks@example.com").await;
    let secret = app
        .get("/v1/me/webhook-secret", Some(&key))
        .await
        .expect(200)["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    assert!(secret.starts_with("whsec_"));
    let again = app
        .get("/v1/me/webhook-secret", Some(&key))
        .await
        .expect(200);
    assert_eq!(again["secret"], secret.as_str(), "the secret is stable");

    let mut body = image_job();
    body["webhook_url"] = json!(url);
    let id = id_of(&submit_ok(&app, &key, &body).await);
    wait_for_state(&app, &key, &id, "succeeded", WAIT).await;

    // started and succeeded, each refused once and then accepted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let deliveries = loop {
        let d = seen.lock().expect("lock").clone();
        if d.len() >= 4 {
            break d;
        }
        assert!(Instant::now() < deadline, "deliveries so far: {d:?}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(deliveries.len(), 4, "{deliveries:?}");
    let event_type = |d: &Delivery| {
        serde_json::from_str::<Value>(&d.body).expect("JSON body")["type"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let mut ids: Vec<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        2,
        "a retry carries the id of its first delivery: {ids:?}"
    );
    for id in &ids {
        let of_id: Vec<&Delivery> = deliveries.iter().filter(|d| d.id == *id).collect();
        assert_eq!(of_id.len(), 2, "refused once, then accepted");
        assert_eq!(event_type(of_id[0]), event_type(of_id[1]));
        assert_eq!(
            of_id[0].body, of_id[1].body,
            "a retry resends the same event"
        );
    }
    let mut types: Vec<String> = deliveries.iter().map(event_type).collect();
    types.sort();
    assert_eq!(
        types,
        vec![
            "job.started",
            "job.started",
            "job.succeeded",
            "job.succeeded"
        ]
    );
    for d in &deliveries {
        assert!(verify(&secret, d), "signature does not verify: {d:?}");
        assert!(
            !verify("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", d),
            "a wrong secret must not verify"
        );
        let ts: i64 = d.timestamp.parse().expect("timestamp");
        assert!((chrono::Utc::now().timestamp() - ts).abs() < 300);
        let payload: Value = serde_json::from_str(&d.body).expect("JSON");
        assert_eq!(payload["data"]["id"], id.as_str());
    }
    let done = deliveries
        .iter()
        .find(|d| event_type(d) == "job.succeeded")
        .expect("succeeded event");
    let done: Value = serde_json::from_str(&done.body).expect("JSON");
    assert_eq!(done["data"]["charge"], "posted");
}

#[actix_web::test]
async fn private_webhook_targets_are_refused_by_default() {
    let app = spawn_app_without_workers().await;
    let (_, key) = register(&app, "ssrf@example.com").await;
    for target in [
        "http://127.0.0.1:9/x",
        "http://169.254.169.254/latest",
        "ftp://example.com/",
        "http://localhost/",
        "http://[::127.0.0.1]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[fec0::1]/",
        "http://198.18.0.1/",
        "http://240.0.0.1/",
        "http://239.1.2.3/",
        "http://[2002:7f00:1::]/",
    ] {
        let mut body = image_job();
        body["webhook_url"] = json!(target);
        submit(&app, &key, &body, None)
            .await
            .expect_problem(422, "invalid-params");
    }
    assert_eq!(
        wallet_tuple(&app.wallet(&key).await),
        (100, 0, 100),
        "nothing charged"
    );
    let mut body = image_job();
    body["webhook_url"] = json!("https://hooks.example.com/ok");
    let job = submit_ok(&app, &key, &body).await;
    assert_eq!(job["webhook_url"], "https://hooks.example.com/ok");
}

/// A receiver answering every request with `status`, sending clients to
/// `location`; counts what it saw.
async fn redirecting(status: u16, location: String) -> (String, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let state = seen.clone();
    let server = HttpServer::new(move || {
        let (state, location) = (state.clone(), location.clone());
        App::new().default_service(web::to(move |req: HttpRequest| {
            let (state, location) = (state.clone(), location.clone());
            async move {
                state.lock().expect("lock").push(req.path().to_owned());
                let status = actix_web::http::StatusCode::from_u16(status).expect("status");
                HttpResponse::build(status)
                    .insert_header(("location", location))
                    .finish()
            }
        }))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .expect("bind receiver");
    let port = server.addrs()[0].port();
    actix_rt::spawn(server.run());
    (format!("http://127.0.0.1:{port}/hooks"), seen)
}

#[actix_web::test]
async fn webhook_redirects_are_not_followed() {
    // Private targets are allowed here, so the first host is reachable:
    // only the no-redirect rule keeps the signed POST from the second.
    let (inner, inner_seen) = redirecting(204, String::new()).await;
    let (outer_307, seen_307) = redirecting(307, format!("{inner}/from-307")).await;
    let (outer_308, seen_308) = redirecting(308, format!("{inner}/from-308")).await;
    let app = spawn_app_with(|s| {
        s.webhook_allow_private = true;
        s.webhook_retry_base = Duration::from_millis(5);
    })
    .await;
    let (_, key) = register(&app, "redirect@example.com").await;
    for outer in [&outer_307, &outer_308] {
        let mut body = image_job();
        body["webhook_url"] = json!(outer);
        let id = id_of(&submit_ok(&app, &key, &body).await);
        wait_for_state(&app, &key, &id, "succeeded", WAIT).await;
    }
    // Every delivery of both events (started, succeeded) to both targets
    // is tried and fails, and then given up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (a, b) = (
            seen_307.lock().expect("lock").len(),
            seen_308.lock().expect("lock").len(),
        );
        if a >= 12 && b >= 12 {
            break;
        }
        assert!(Instant::now() < deadline, "deliveries so far: {a} and {b}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen_307.lock().expect("lock").len(),
        12,
        "6 deliveries per event"
    );
    assert_eq!(
        seen_308.lock().expect("lock").len(),
        12,
        "6 deliveries per event"
    );
    assert!(
        inner_seen.lock().expect("lock").is_empty(),
        "a redirect was followed: {:?}",
        inner_seen.lock().expect("lock")
    );
}
