//! Server-sent events of a job's life.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::workers::{hello, Gpu};

/// Reads one SSE stream event by event.
struct EventStream {
    response: awc::ClientResponse,
    buffer: String,
}

impl EventStream {
    /// The next event as (name, data); `None` when the stream ended.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let raw: String = self.buffer.drain(..end + 2).collect();
                if raw.starts_with(':') {
                    continue; // keep-alive comment
                }
                let mut name = String::new();
                let mut data = String::new();
                for line in raw.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                return Some((
                    name,
                    serde_json::from_str(&data).expect("event data is JSON"),
                ));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.next())
                .await
                .expect("an event within 10 s")?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk.expect("chunk")).expect("UTF-8"));
        }
    }
}

async fn open_events(app: &TestApp, key: &str, job: &str) -> EventStream {
    let response = app
        .client
        .get(app.url(&format!("/v1/jobs/{job}/events")))
        .bearer_auth(key)
        .send()
        .await
        .expect("events request");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    EventStream {
        response,
        buffer: String::new(),
    }
}

fn state_of(event: &(String, Value)) -> (String, u64, String) {
    (
        event.0.clone(),
        event.1["attempt"].as_u64().expect("attempt"),
        event.1["state"].as_str().unwrap_or("").to_owned(),
    )
}

#[actix_web::test]
async fn events_of_a_job_that_fails_once_then_succeeds() {
    let app = spawn_app_with(|s| s.sim_workers = Some(0)).await;
    let (_, key) = register(&app, "events@example.com").await;
    let id = id_of(&submit_ok(&app, &key, &image_job()).await);
    let mut events = open_events(&app, &key, &id).await;
    let first = events.next().await.expect("first event");
    assert_eq!(state_of(&first), ("state".into(), 0, "queued".into()));

    let mut gpu = Gpu::connect(&app, hello("sse", 1)).await;
    let a = gpu.assigned().await;
    gpu.accept(&a).await;
    gpu.send(
        json!({"type": "fail", "job_id": a["job_id"], "lease": a["lease"], "class": "system",
                    "message": "CUDA error"}),
    )
    .await;
    let b = gpu.assigned().await;
    gpu.accept(&b).await;
    gpu.send(
        json!({"type": "progress", "job_id": b["job_id"], "lease": b["lease"], "percent": 50}),
    )
    .await;
    gpu.complete(&b).await;

    let mut seen = Vec::new();
    while let Some(event) = events.next().await {
        seen.push(event);
    }
    let sequence: Vec<(String, u64, String)> = seen.iter().map(state_of).collect();
    let expected: Vec<(String, u64, String)> = [
        ("state", 1, "assigned"),
        ("state", 1, "running"),
        ("state", 1, "queued"),
        ("state", 2, "assigned"),
        ("state", 2, "running"),
        ("progress", 2, ""),
        ("state", 2, "succeeded"),
    ]
    .iter()
    .map(|(n, a, s)| (n.to_string(), *a, s.to_string()))
    .collect();
    assert_eq!(sequence, expected, "events: {seen:?}");
    assert_eq!(seen[2].1["error"]["class"], "system");
    assert_eq!(seen[5].1["percent"], 50);
    assert_eq!(seen[6].1["charge"], "posted");
}

#[actix_web::test]
async fn events_of_a_finished_job_end_at_once_and_others_are_hidden() {
    let app = spawn_app().await;
    let (_, key) = register(&app, "done-events@example.com").await;
    let id = id_of(&submit_ok(&app, &key, &image_job()).await);
    wait_for_state(&app, &key, &id, "succeeded", WAIT).await;
    let mut events = open_events(&app, &key, &id).await;
    let only = events.next().await.expect("the terminal state");
    assert_eq!(only.1["state"], "succeeded");
    assert!(
        events.next().await.is_none(),
        "the stream ends after a terminal state"
    );

    let (_, other) = register(&app, "nosy@example.com").await;
    app.get(&format!("/v1/jobs/{id}/events"), Some(&other))
        .await
        .expect_problem(404, "not-found");
    app.get(&format!("/v1/jobs/{id}/events"), None)
        .await
        .expect_problem(401, "unauthorized");
}
