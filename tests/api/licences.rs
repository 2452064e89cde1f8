//! Licences (ToS 6.3): decided by the tier at submission, never changed
//! afterwards, shown on the job and in its webhook.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::{json, Value};

use crate::helpers::*;

/// A receiver that records every JSON body and accepts it.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let state = seen.clone();
    let server = HttpServer::new(move || {
        let state = state.clone();
        App::new().default_service(web::to(move |body: web::Bytes| {
            let state = state.clone();
            async move {
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    state.lock().expect("lock").push(v);
                }
                HttpResponse::NoContent().finish()
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

async fn succeeded_event(seen: &Arc<Mutex<Vec<Value>>>, job_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = seen
            .lock()
            .expect("lock")
            .iter()
            .find(|e| e["type"] == "job.succeeded" && e["data"]["id"] == job_id)
            .cloned();
        if let Some(e) = found {
            return e;
        }
        assert!(Instant::now() < deadline, "no job.succeeded for {job_id}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Submits as `from`, changes the membership to `to` while the job runs,
/// and returns the finished job and its webhook event.
async fn licence_after_change(
    app: &TestApp,
    hook: &str,
    seen: &Arc<Mutex<Vec<Value>>>,
    email: &str,
    from: &str,
    to: &str,
) -> (Value, Value) {
    let (user, key) = register(app, email).await;
    let id = id_of(&user);
    let expires = json!(chrono::Utc::now() + chrono::Duration::days(30));
    if from != "free" {
        app.set_membership(&id, from, expires.clone())
            .await
            .expect(200);
    }
    let mut body = image_job();
    body["webhook_url"] = json!(hook);
    let job = submit_ok(app, &key, &body).await;
    assert_eq!(job["tier"], from);
    let job_id = id_of(&job);
    wait_for_state(app, &key, &job_id, "running", WAIT).await;
    app.set_membership(&id, to, expires).await.expect(200);
    let done = wait_for_state(app, &key, &job_id, "succeeded", WAIT).await;
    let event = succeeded_event(seen, &job_id).await;
    (done, event)
}

#[actix_web::test]
async fn the_licence_is_the_tier_at_submission_whatever_changes_later() {
    let (hook, seen) = receiver().await;
    let app = spawn_app_with(|s| {
        s.sim_job_time = Duration::from_millis(1500);
        s.webhook_allow_private = true;
    })
    .await;
    // A downgrade after submission keeps the commercial licence...
    let (done, event) = licence_after_change(
        &app,
        &hook,
        &seen,
        "down@example.com",
        "professional",
        "free",
    )
    .await;
    assert_eq!(done["tier"], "professional");
    assert_eq!(done["result"]["license"], "commercial");
    assert_eq!(event["data"]["result"]["license"], "commercial");
    assert_eq!(event["data"]["tier"], "professional");
    // ...and an upgrade after submission does not grant one.
    let (done, event) =
        licence_after_change(&app, &hook, &seen, "up@example.com", "basic", "enterprise").await;
    assert_eq!(done["result"]["license"], "personal");
    assert_eq!(event["data"]["result"]["license"], "personal");
    assert_eq!(event["data"]["tier"], "basic");
}
