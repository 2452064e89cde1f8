//! `GET /v1/events`: every job event of the caller as server-sent events,
//! numbered, and resumable with `Last-Event-ID` after a dropped connection.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::*;

/// One SSE event: its `id:` (if any), name and data.
#[derive(Debug, Clone)]
struct Event {
    id: Option<u64>,
    name: String,
    data: Value,
}

struct Stream {
    response: awc::ClientResponse,
    buffer: String,
}

impl Stream {
    async fn next(&mut self) -> Event {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let raw: String = self.buffer.drain(..end + 2).collect();
                if raw.starts_with(':') {
                    continue;
                }
                let (mut id, mut name, mut data) = (None, String::new(), String::new());
                for line in raw.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.parse().expect("numeric id"));
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        name = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                return Event {
                    id,
                    name,
                    data: serde_json::from_str(&data).expect("data is JSON"),
                };
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.next())
                .await
                .expect("an event within 10 s")
                .expect("the stream stays open");
            self.buffer
                .push_str(std::str::from_utf8(&chunk.expect("chunk")).expect("UTF-8"));
        }
    }

    /// State events until `job` reaches `state`, in order.
    async fn until(&mut self, job: &str, state: &str) -> Vec<Event> {
        let mut seen = Vec::new();
        loop {
            let e = self.next().await;
            if e.name != "state" {
                continue;
            }
            let done = e.data["job_id"] == job && e.data["state"] == state;
            seen.push(e);
            if done {
                return seen;
            }
        }
    }
}

async fn open(app: &TestApp, key: &str, last: Option<&str>) -> Stream {
    let mut req = app.client.get(app.url("/v1/events")).bearer_auth(key);
    if let Some(last) = last {
        req = req.insert_header(("Last-Event-ID", last));
    }
    let response = req.send().await.expect("events request");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    Stream {
        response,
        buffer: String::new(),
    }
}

fn ids(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.id.expect("state events carry an id"))
        .collect()
}

#[actix_web::test]
async fn the_stream_resumes_after_a_dropped_connection() {
    let app = spawn_app().await;
    let (_, key) = register(&app, "stream@example.com").await;
    let mut stream = open(&app, &key, None).await;
    let ready = stream.next().await;
    assert_eq!(ready.name, "ready");
    assert!(ready.id.is_none());
    assert_eq!(ready.data["resumed_after"], Value::Null);

    let first = id_of(&submit_ok(&app, &key, &image_job()).await);
    let live = stream.until(&first, "succeeded").await;
    let live_ids = ids(&live);
    assert!(live_ids.windows(2).all(|w| w[0] < w[1]), "{live_ids:?}");
    let states: Vec<&str> = live
        .iter()
        .map(|e| e.data["state"].as_str().expect("state"))
        .collect();
    assert_eq!(states, ["queued", "assigned", "running", "succeeded"]);
    let last = *live_ids.last().expect("an event");
    drop(stream);

    // While nobody listens, another job runs.
    let second = id_of(&submit_ok(&app, &key, &image_job()).await);
    wait_for_state(&app, &key, &second, "succeeded", WAIT).await;

    let mut resumed = open(&app, &key, Some(&last.to_string())).await;
    let ready = resumed.next().await;
    assert_eq!(ready.name, "ready");
    assert_eq!(ready.data["resumed_after"], json!(last));
    let missed = resumed.until(&second, "succeeded").await;
    let missed_ids = ids(&missed);
    assert!(missed_ids.iter().all(|id| *id > last), "{missed_ids:?}");
    assert!(missed_ids.windows(2).all(|w| w[0] < w[1]), "{missed_ids:?}");
    assert!(missed.iter().all(|e| e.data["job_id"] == second.as_str()));
    assert_eq!(missed.len(), 4, "{missed:?}");

    // From the very start: everything kept, both jobs.
    let mut all = open(&app, &key, Some("0")).await;
    assert_eq!(all.next().await.name, "ready");
    let everything = all.until(&second, "succeeded").await;
    assert_eq!(ids(&everything), [live_ids, missed_ids].concat());
}

#[actix_web::test]
async fn the_stream_shows_only_the_callers_jobs() {
    let app = spawn_app().await;
    let (_, mine) = register(&app, "mine@example.com").await;
    let (_, theirs) = register(&app, "theirs@example.com").await;
    let other = id_of(&submit_ok(&app, &theirs, &image_job()).await);
    wait_for_state(&app, &theirs, &other, "succeeded", WAIT).await;
    let own = id_of(&submit_ok(&app, &mine, &image_job()).await);
    wait_for_state(&app, &mine, &own, "succeeded", WAIT).await;
    let mut stream = open(&app, &mine, Some("0")).await;
    assert_eq!(stream.next().await.name, "ready");
    let events = stream.until(&own, "succeeded").await;
    assert!(
        events.iter().all(|e| e.data["job_id"] == own.as_str()),
        "{events:?}"
    );
}

#[actix_web::test]
async fn a_bad_last_event_id_or_key_is_refused() {
    let app = spawn_app().await;
    let (_, key) = register(&app, "badresume@example.com").await;
    for bad in ["abc", "-1", "1.5", "12345678901234567890", "0x10", "1 2"] {
        let resp = app
            .call(
                actix_web::http::Method::GET,
                "/v1/events",
                Some(&key),
                &[("Last-Event-ID", bad)],
                Body::None,
            )
            .await;
        resp.expect_problem(400, "invalid-request");
    }
    app.get("/v1/events", None)
        .await
        .expect_problem(401, "unauthorized");
    let wallet_only = app
        .post_json(
            "/v1/me/api-keys",
            Some(&key),
            &json!({"scopes": ["wallet:read"]}),
        )
        .await
        .expect(201)["api_key"]
        .as_str()
        .expect("api_key")
        .to_owned();
    let p = app
        .get("/v1/events", Some(&wallet_only))
        .await
        .expect_problem(403, "insufficient-scope");
    assert_eq!(p["required_scope"], "jobs:read");
}

/// On PostgreSQL with Redis, a stream on one node hears what another node
/// committed, live, and resumes from the shared store.
#[actix_web::test]
async fn the_stream_hears_other_nodes_and_resumes_on_postgres() {
    let Some((a, b)) = spawn_two_nodes_on_postgres_and_redis().await else {
        return;
    };
    let (_, key) = register(&a, "nodes@example.com").await;
    let mut on_b = open(&b, &key, None).await;
    assert_eq!(on_b.next().await.name, "ready");
    let job = id_of(&submit_ok(&a, &key, &image_job()).await);
    let queued = on_b.until(&job, "queued").await;
    let queued_id = queued.last().and_then(|e| e.id).expect("an id");
    drop(on_b);
    a.post(&format!("/v1/jobs/{job}/cancel"), Some(&key))
        .await
        .expect(200);
    let mut resumed = open(&b, &key, Some(&queued_id.to_string())).await;
    assert_eq!(resumed.next().await.name, "ready");
    let cancelled = resumed.until(&job, "cancelled").await;
    assert!(ids(&cancelled).iter().all(|id| *id > queued_id));
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
}
