//! GPU workers over the real WebSocket: leases, fencing, placement and
//! protocol errors, with the test playing the worker.

use std::time::Duration;

use actix_web::web::Bytes;
use awc::ws;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use crate::helpers::*;

type Socket = actix_codec::Framed<awc::BoxedSocket, ws::Codec>;

/// The test's side of one worker connection.
pub struct Gpu {
    socket: Socket,
}

pub fn hello(name: &str, slots: u32) -> Value {
    json!({"type": "hello", "name": name, "slots": slots, "gpu_model": "test", "vram_mb": 80000,
           "kinds": ["image", "video"], "models": [], "loaded_models": []})
}

async fn open(app: &TestApp, token: &str) -> Result<Socket, awc::error::WsClientError> {
    let url = app.url("/v1/workers/connect").replacen("http", "ws", 1);
    awc::Client::new()
        .ws(url)
        .bearer_auth(token)
        .connect()
        .await
        .map(|(_, socket)| socket)
}

impl Gpu {
    pub async fn connect(app: &TestApp, hello: Value) -> Gpu {
        let socket = open(app, WORKER_TOKEN).await.expect("worker connects");
        let mut gpu = Gpu { socket };
        gpu.send(hello).await;
        let welcome = gpu.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        gpu
    }

    /// Connects once the node leads (on PostgreSQL it first wins an
    /// election, and until then asks workers to come back).
    pub async fn connect_when_leading(app: &TestApp, hello: Value) -> Gpu {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let socket = open(app, WORKER_TOKEN).await.expect("worker connects");
            let mut gpu = Gpu { socket };
            gpu.send(hello.clone()).await;
            let answer = gpu.recv().await;
            if answer["type"] == "welcome" {
                return gpu;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never welcomed: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn send(&mut self, msg: Value) {
        self.send_text(msg.to_string()).await;
    }

    async fn send_text(&mut self, text: String) {
        self.socket
            .send(ws::Message::Text(text.into()))
            .await
            .expect("send frame");
    }

    /// The next protocol message; fails after 10 s.
    pub async fn recv(&mut self) -> Value {
        self.try_recv(Duration::from_secs(10))
            .await
            .expect("a message from the server")
    }

    async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()??;
            match frame.expect("frame") {
                ws::Frame::Text(t) => return Some(serde_json::from_slice(&t).expect("JSON frame")),
                ws::Frame::Ping(p) => {
                    let _ = self.socket.send(ws::Message::Pong(p)).await;
                }
                ws::Frame::Close(_) => return None,
                _ => {}
            }
        }
    }

    /// Nothing but `error` frames arrives for a while.
    pub async fn expect_no_assignment(&mut self) {
        while let Some(msg) = self.try_recv(Duration::from_millis(300)).await {
            assert_ne!(msg["type"], "assign", "unexpected assignment: {msg}");
        }
    }

    /// The next assignment if one comes within `wait`.
    pub async fn try_assigned(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let msg = self.try_recv(left).await?;
            if msg["type"] == "assign" {
                return Some(msg);
            }
        }
    }

    pub async fn assigned(&mut self) -> Value {
        loop {
            let msg = self.recv().await;
            if msg["type"] == "assign" {
                return msg;
            }
            assert_eq!(msg["type"], "error", "expected an assignment, got {msg}");
        }
    }

    pub async fn accept(&mut self, a: &Value) {
        self.send(json!({"type": "accept", "job_id": a["job_id"], "lease": a["lease"]}))
            .await;
    }

    /// Uploads a PNG to each of the attempt's output slots and names them.
    pub async fn complete(&mut self, a: &Value) {
        let outputs = upload_outputs(a, TINY_PNG).await;
        self.send(
            json!({"type": "complete", "job_id": a["job_id"], "lease": a["lease"],
                         "outputs": outputs}),
        )
        .await;
    }

    async fn expect_error(&mut self) -> Value {
        let msg = self.recv().await;
        assert_eq!(msg["type"], "error", "expected an error frame, got {msg}");
        msg
    }
}

async fn app_without_sim(lease: Duration) -> TestApp {
    spawn_app_with(|s| {
        s.sim_workers = Some(0);
        s.worker_lease = lease;
    })
    .await
}

fn entries_for(ledger: &[Value], job: &str, kind: &str) -> usize {
    ledger
        .iter()
        .filter(|e| e["job_id"] == job && e["kind"] == kind)
        .count()
}

#[actix_web::test]
async fn wrong_worker_token_is_refused_before_the_upgrade() {
    let app = app_without_sim(Duration::from_millis(15_000)).await;
    match open(&app, "not-the-token").await {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            assert_eq!(status.as_u16(), 401)
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a wrong token must not be upgraded"),
    }
}

#[actix_web::test]
async fn worker_killed_mid_job_reruns_elsewhere_and_is_charged_once() {
    let app = app_without_sim(Duration::from_millis(15_000)).await;
    let (_, key) = register(&app, "killed@example.com").await;
    let mut a = Gpu::connect(&app, hello("a", 1)).await;
    let job = submit_ok(&app, &key, &image_job()).await;
    let id = id_of(&job);
    let first = a.assigned().await;
    assert_eq!(first["attempt"], 1);
    a.accept(&first).await;
    wait_for_state(&app, &key, &id, "running", WAIT).await;

    let mut b = Gpu::connect(&app, hello("b", 1)).await;
    drop(a); // the worker dies: its socket goes away mid-job
    let second = b.assigned().await;
    assert_eq!(second["job_id"], first["job_id"]);
    assert_eq!(second["attempt"], 2);
    assert_ne!(second["lease"], first["lease"]);
    b.accept(&second).await;
    b.complete(&second).await;
    let done = wait_for_state(&app, &key, &id, "succeeded", WAIT).await;
    assert_eq!(done["attempts"], 2);
    assert_eq!(done["charge"], "posted");
    let ledger = app.ledger(&key).await;
    assert_eq!(entries_for(&ledger, &id, "hold"), 1);
    assert_eq!(entries_for(&ledger, &id, "post"), 1);
    assert_eq!(entries_for(&ledger, &id, "void"), 0);
    assert_eq!(wallet_tuple(&app.wallet(&key).await), (99, 0, 99));
}

#[actix_web::test]
async fn silent_worker_loses_its_attempt_and_its_late_complete_changes_nothing() {
    let app = app_without_sim(Duration::from_millis(400)).await;
    let (_, key) = register(&app, "silent@example.com").await;
    let mut a = Gpu::connect(&app, hello("silent", 1)).await;
    let job = submit_ok(&app, &key, &image_job()).await;
    let id = id_of(&job);
    let lost = a.assigned().await;
    a.accept(&lost).await;
    // No heartbeat from here on: within the lease the attempt is lost and
    // the job waits for another worker.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let j = app.job(&key, &id).await;
        if j["state"] == "queued" && j["attempts"] == 1 {
            assert_eq!(j["error"]["class"], "system");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "attempt not lost: {j}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }

    let mut b = Gpu::connect(&app, hello("b", 1)).await;
    let current = b.assigned().await;
    assert_eq!(current["attempt"], 2);
    b.accept(&current).await;
    wait_for_state(&app, &key, &id, "running", WAIT).await;

    // The silent worker comes back as a new connection and reports its
    // old attempt: refused, and the job does not move.
    let mut again = Gpu::connect(&app, hello("silent", 1)).await;
    again.complete(&lost).await;
    let refused = again.expect_error().await;
    assert!(
        refused["message"].as_str().unwrap_or("").contains("lease"),
        "{refused}"
    );
    let j = app.job(&key, &id).await;
    assert_eq!(
        (j["state"].as_str(), j["attempts"].as_i64()),
        (Some("running"), Some(2))
    );

    b.complete(&current).await;
    let done = wait_for_state(&app, &key, &id, "succeeded", WAIT).await;
    assert_eq!(done["charge"], "posted");
    let ledger = app.ledger(&key).await;
    assert_eq!(entries_for(&ledger, &id, "post"), 1);
    // A duplicate of the winning complete changes nothing either.
    b.complete(&current).await;
    b.expect_error().await;
    assert_eq!(entries_for(&app.ledger(&key).await, &id, "post"), 1);
}

#[actix_web::test]
async fn cancel_of_a_running_job_reaches_the_worker() {
    let app = app_without_sim(Duration::from_millis(15_000)).await;
    let (_, key) = register(&app, "cancel@example.com").await;
    let mut gpu = Gpu::connect(&app, hello("g", 1)).await;
    let id = id_of(&submit_ok(&app, &key, &image_job()).await);
    let a = gpu.assigned().await;
    gpu.accept(&a).await;
    wait_for_state(&app, &key, &id, "running", WAIT).await;
    let cancelled = app
        .post(&format!("/v1/jobs/{id}/cancel"), Some(&key))
        .await
        .expect(200);
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["charge"], "posted");
    let msg = gpu.recv().await;
    assert_eq!(msg["type"], "cancel");
    assert_eq!(msg["job_id"], a["job_id"]);
    assert_eq!(msg["lease"], a["lease"]);
    // The slot is free again: the next job comes to this worker.
    let next = id_of(&submit_ok(&app, &key, &image_job()).await);
    let b = gpu.assigned().await;
    assert_eq!(b["job_id"], next.as_str());
}

#[actix_web::test]
async fn placement_prefers_the_warm_worker_and_never_an_unfit_one() {
    let app = app_without_sim(Duration::from_millis(15_000)).await;
    let (user, key) = register(&app, "place@example.com").await;
    // Enterprise: several jobs of this user may run at once.
    app.set_membership(&id_of(&user), "enterprise", json!(null))
        .await
        .expect(200);
    let mut video_only = Gpu::connect(
        &app,
        json!({"type": "hello", "name": "video-only", "slots": 4,
        "vram_mb": 80000, "kinds": ["video"]}),
    )
    .await;
    let mut small = Gpu::connect(
        &app,
        json!({"type": "hello", "name": "small", "slots": 4,
        "vram_mb": 4000, "kinds": ["image", "video"]}),
    )
    .await;
    let mut other_model = Gpu::connect(
        &app,
        json!({"type": "hello", "name": "other", "slots": 4,
        "vram_mb": 80000, "kinds": ["image"], "models": ["flux"]}),
    )
    .await;
    let mut cold = Gpu::connect(
        &app,
        json!({"type": "hello", "name": "cold", "slots": 1,
        "vram_mb": 80000, "kinds": ["image"], "models": ["sdxl"]}),
    )
    .await;
    let mut warm = Gpu::connect(
        &app,
        json!({"type": "hello", "name": "warm", "slots": 1,
        "vram_mb": 80000, "kinds": ["image"], "loaded_models": ["sdxl"]}),
    )
    .await;

    let first = id_of(&submit_ok(&app, &key, &image_job()).await);
    let a = warm.assigned().await;
    assert_eq!(a["job_id"], first.as_str(), "the warm worker wins");
    let second = id_of(&submit_ok(&app, &key, &image_job()).await);
    let b = cold.assigned().await;
    assert_eq!(b["job_id"], second.as_str(), "then any fitting worker");
    // Both fitting workers busy: the third waits rather than going astray.
    let third = id_of(&submit_ok(&app, &key, &image_job()).await);
    for gpu in [&mut video_only, &mut small, &mut other_model] {
        gpu.expect_no_assignment().await;
    }
    assert_eq!(app.job(&key, &third).await["state"], "queued");
    warm.accept(&a).await;
    warm.complete(&a).await;
    let c = warm.assigned().await;
    assert_eq!(c["job_id"], third.as_str());
}

#[actix_web::test]
async fn bad_protocol_messages_get_an_error_frame_and_change_nothing() {
    let app = app_without_sim(Duration::from_millis(15_000)).await;
    let (_, key) = register(&app, "proto@example.com").await;

    // Before hello, only hello is accepted.
    let mut early = Gpu {
        socket: open(&app, WORKER_TOKEN).await.expect("connect"),
    };
    early.send(json!({"type": "heartbeat"})).await;
    let e = early.expect_error().await;
    assert!(e["message"].as_str().unwrap_or("").contains("hello"), "{e}");
    early
        .send(json!({"type": "hello", "name": "x", "slots": 0, "kinds": ["image"]}))
        .await;
    early.expect_error().await;

    let mut holder = Gpu::connect(&app, hello("holder", 1)).await;
    let id = id_of(&submit_ok(&app, &key, &image_job()).await);
    let a = holder.assigned().await;
    holder.accept(&a).await;
    wait_for_state(&app, &key, &id, "running", WAIT).await;

    let mut rogue = Gpu::connect(&app, hello("rogue", 1)).await;
    rogue.send_text("this is not json".into()).await;
    rogue.expect_error().await;
    rogue.send(json!({"type": "explode"})).await;
    rogue.expect_error().await;
    rogue
        .send(json!({"type": "complete", "job_id": a["job_id"], "outputs": []}))
        .await;
    rogue.expect_error().await; // no lease: malformed
                                // Out of order: a message about a job this worker does not hold, with
                                // the holder's real lease.
    rogue.complete(&a).await;
    rogue.expect_error().await;
    rogue
        .send(json!({"type": "fail", "job_id": a["job_id"], "lease": a["lease"], "class": "system", "message": "x"}))
        .await;
    rogue.expect_error().await;
    rogue
        .socket
        .send(ws::Message::Binary(Bytes::from_static(b"\x00\x01")))
        .await
        .expect("send");
    rogue.expect_error().await;
    let j = app.job(&key, &id).await;
    assert_eq!(
        (j["state"].as_str(), j["attempts"].as_i64()),
        (Some("running"), Some(1))
    );

    // An oversized frame is refused and ends that connection only.
    let mut big = Gpu::connect(&app, hello("big", 1)).await;
    big.send_text(format!(
        "{{\"type\":\"heartbeat\",\"pad\":\"{}\"}}",
        "x".repeat(70 * 1024)
    ))
    .await;
    let e = big.expect_error().await;
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("protocol error"),
        "{e}"
    );

    holder.complete(&a).await;
    let done = wait_for_state(&app, &key, &id, "succeeded", WAIT).await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(entries_for(&app.ledger(&key).await, &id, "post"), 1);
}

/// A worker's failure text with a NUL byte (a crashing program's stderr,
/// say) ends the job on PostgreSQL too, which refuses NUL in text: the
/// message is cleaned before it is stored.
#[actix_web::test]
async fn a_fail_message_with_a_nul_byte_ends_the_job_on_postgresql() {
    let Some(db) = crate::support::fresh_database().await else {
        return;
    };
    let app = spawn_app_with(|s| {
        s.sim_workers = Some(0);
        s.database_url = Some(db);
    })
    .await;
    let (_, key) = register(&app, "nul@example.com").await;
    let mut gpu = Gpu::connect_when_leading(&app, hello("nul", 1)).await;

    // A user failure: charged, not retried.
    let id = id_of(&submit_ok(&app, &key, &image_job()).await);
    let a = gpu.assigned().await;
    gpu.accept(&a).await;
    wait_for_state(&app, &key, &id, "running", WAIT).await;
    gpu.send(
        json!({"type": "fail", "job_id": a["job_id"], "lease": a["lease"],
                    "class": "user", "message": "bad input\u{0}\u{1b}[31m at byte 3"}),
    )
    .await;
    let done = wait_for_state(&app, &key, &id, "failed", WAIT).await;
    assert_eq!(done["charge"], "posted", "{done}");
    assert_eq!(
        done["error"]["message"], "bad input\u{fffd}\u{fffd}[31m at byte 3",
        "{done}"
    );

    // A system failure: retried on the same worker, which then succeeds;
    // the slot the failed attempt held was given back.
    let id = id_of(&submit_ok(&app, &key, &image_job()).await);
    let a = gpu.assigned().await;
    gpu.accept(&a).await;
    gpu.send(
        json!({"type": "fail", "job_id": a["job_id"], "lease": a["lease"],
                    "class": "system", "message": "\u{0}".repeat(5_000)}),
    )
    .await;
    let again = gpu.assigned().await;
    assert_eq!(again["job_id"], a["job_id"]);
    assert_eq!(again["attempt"], 2);
    gpu.accept(&again).await;
    gpu.complete(&again).await;
    let done = wait_for_state(&app, &key, &id, "succeeded", WAIT).await;
    assert_eq!(done["attempts"], 2);
    let ledger = app.ledger(&key).await;
    assert_eq!(entries_for(&ledger, &id, "post"), 1);
    assert_eq!(entries_for(&ledger, &id, "void"), 0);
}
