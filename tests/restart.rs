//! GPU work survives a server restart: the real server on PostgreSQL and
//! the real worker agent as child processes. The server is SIGKILLed while
//! an attempt runs and started again on the same database and port; the
//! agent keeps running the attempt, presents it in its next `hello`, and
//! the new scheduler term takes it back, so it succeeds on its first
//! attempt and is charged once. An attempt nobody presents within the
//! grace is lost and retried exactly as before, and a presentation that is
//! not the job's current attempt is refused.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use awc::ws;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{Api, ServerProcess, ADMIN_TOKEN};

const WORKER_TOKEN: &str = "test-worker-token-0123456789abcdef012";
const WAIT: Duration = Duration::from_secs(60);

fn server_env(db: &str, objects: &std::path::Path, grace: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", db.to_owned()),
        ("ADMEDIA_SIM_WORKERS", "0".to_owned()),
        ("ADMEDIA_REPRESENT_GRACE", grace.to_owned()),
        // Shared by both runs, so URLs signed before the kill still work.
        ("ADMEDIA_OBJECT_STORE", objects.display().to_string()),
        (
            "ADMEDIA_OBJECT_SECRET",
            "restart-test-object-secret-0123456789".to_owned(),
        ),
        ("ADMEDIA_RETRY_BASE_MS", "20".to_owned()),
        ("ADMEDIA_RETRY_MAX_MS", "100".to_owned()),
        ("ADMEDIA_LEADER_TIMEOUT", "2s".to_owned()),
        ("ADMEDIA_REGISTRATION_CREDITS", "1000".to_owned()),
        (
            "ADMEDIA_RATE_LIMITS",
            "free=0,basic=0,professional=0,enterprise=0".to_owned(),
        ),
    ]
}

/// The real agent with the simulate executor; killed on drop.
struct Agent(Child);

impl Agent {
    fn start(server: &ServerProcess, job_ms: u64) -> Agent {
        let mut command = Command::new(support::worker_bin());
        for (name, _) in std::env::vars() {
            if name.starts_with("ADMEDIA_") {
                command.env_remove(name);
            }
        }
        let child = command
            .args([
                "--server",
                &server.base.replacen("http", "ws", 1),
                "--token",
                WORKER_TOKEN,
                "--name",
                "restart-gpu",
                "--executor",
                "simulate",
                "--sim-job-ms",
                &job_ms.to_string(),
            ])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the agent");
        Agent(child)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn job(api: &Api, key: &str, id: &str) -> Value {
    let (status, body) = api
        .call("GET", &format!("/v1/jobs/{id}"), key, None, &[])
        .await
        .expect("job");
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls the job until `done` says so.
async fn job_until(api: &Api, key: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + WAIT;
    loop {
        let j = job(api, key, id).await;
        if done(&j) {
            return j;
        }
        assert!(Instant::now() < until, "the job never got there: {j}");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn submit(api: &Api, key: &str) -> String {
    let body = json!({"kind": "image", "model": "sdxl", "prompt": "a long render",
        "params": {"width": 512, "height": 512}});
    let (status, job) = api
        .call("POST", "/v1/jobs", key, Some(body), &[])
        .await
        .expect("submit");
    assert_eq!(status, 202, "{job}");
    job["id"].as_str().expect("id").to_owned()
}

/// The server answers the API once it leads (on PostgreSQL it first wins
/// the election).
async fn await_leading(api: &Api) {
    let until = Instant::now() + WAIT;
    loop {
        if let Ok((200, stats)) = api
            .call("GET", "/v1/admin/stats", ADMIN_TOKEN, None, &[])
            .await
        {
            if stats["node"]["role"] == "leader" {
                return;
            }
        }
        assert!(Instant::now() < until, "the server never led");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The job's attempt records, as an operator sees them.
async fn attempt_records(api: &Api, id: &str) -> Vec<Value> {
    let (status, detail) = api
        .call(
            "GET",
            &format!("/v1/admin/jobs/{id}"),
            ADMIN_TOKEN,
            None,
            &[],
        )
        .await
        .expect("job detail");
    assert_eq!(status, 200, "{detail}");
    detail["attempts"].as_array().cloned().unwrap_or_default()
}

#[actix_web::test]
async fn a_running_attempt_survives_a_server_restart_and_succeeds_on_its_first_attempt() {
    let Some(db) = support::fresh_database().await else {
        return;
    };
    let objects = tempfile::tempdir().expect("objects dir");
    let env = server_env(&db, objects.path(), "30s");
    let port = support::free_port();
    let mut server = ServerProcess::start_on(port, &env).await;
    let api = Api::new(&server.base);
    let _agent = Agent::start(&server, 8_000);
    let (_, key) = api.register("restart@example.com").await;
    let id = submit(&api, &key).await;
    job_until(&api, &key, &id, |j| j["state"] == "running").await;

    // A deploy: the server dies mid-render and comes back on the same
    // database and address.
    server.kill();
    let server = ServerProcess::start_on(port, &env).await;
    let api = Api::new(&server.base);

    let done = job_until(&api, &key, &id, |j| {
        j["state"] != "running" && j["state"] != "assigned" && j["state"] != "queued"
    })
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 1, "the restart cost no attempt: {done}");
    let records = attempt_records(&api, &id).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["outcome"], "succeeded", "{records:?}");
    // One hold, one post, and the books balance.
    let jobs = support::audit_user(&api, &key).await;
    assert_eq!(jobs.len(), 1);
    let entries = api.all_pages("/v1/wallet/ledger", "entries", &key).await;
    let kinds: Vec<&str> = entries
        .iter()
        .filter(|e| e["job_id"] == id.as_str())
        .filter_map(|e| e["kind"].as_str())
        .collect();
    let mut sorted = kinds.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["hold", "post"], "{entries:?}");
}

/// The test playing a worker on a raw WebSocket.
type Socket = actix_codec::Framed<awc::BoxedSocket, ws::Codec>;

async fn raw_worker(server: &ServerProcess) -> Socket {
    let (_, socket) = awc::Client::new()
        .ws(format!(
            "{}/v1/workers/connect",
            server.base.replacen("http", "ws", 1)
        ))
        .bearer_auth(WORKER_TOKEN)
        .connect()
        .await
        .expect("worker connects");
    socket
}

async fn say(socket: &mut Socket, msg: Value) {
    socket
        .send(ws::Message::Text(msg.to_string().into()))
        .await
        .expect("send");
}

async fn hear(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10 s")
            .expect("the connection is open")
            .expect("a frame");
        match frame {
            ws::Frame::Text(t) => return serde_json::from_slice(&t).expect("JSON"),
            ws::Frame::Ping(p) => {
                let _ = socket.send(ws::Message::Pong(p)).await;
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// A video-only worker: it never gets the image job of these tests.
fn hello_presenting(attempts: Value) -> Value {
    json!({"type": "hello", "name": "presenter", "slots": 2, "gpu_model": "test", "vram_mb": 80000,
           "kinds": ["video"], "attempts": attempts})
}

#[actix_web::test]
async fn an_attempt_not_presented_within_the_grace_is_lost_and_wrong_presentations_are_refused() {
    let Some(db) = support::fresh_database().await else {
        return;
    };
    let objects = tempfile::tempdir().expect("objects dir");
    let env = server_env(&db, objects.path(), "6s");
    let port = support::free_port();
    let mut server = ServerProcess::start_on(port, &env).await;
    let api = Api::new(&server.base);
    let mut agent = Agent::start(&server, 60_000);
    let (_, key) = api.register("lost@example.com").await;
    let id = submit(&api, &key).await;
    let running = job_until(&api, &key, &id, |j| j["state"] == "running").await;
    assert_eq!(running["attempts"], 1);

    // The server and the worker die together: nobody will present it.
    agent.kill();
    server.kill();
    let server = ServerProcess::start_on(port, &env).await;
    let api = Api::new(&server.base);
    await_leading(&api).await;

    // Within the grace, presentations that are not the current attempt
    // are refused by name, and do not take the orphan from its worker.
    let unknown = "01890f4c-0000-7000-8000-000000000000";
    let wrong_lease = "01890f4c-0000-7000-8000-000000000001";
    let mut socket = raw_worker(&server).await;
    say(
        &mut socket,
        hello_presenting(json!([
            {"job_id": unknown, "attempt": 1, "lease": wrong_lease},
            {"job_id": id, "attempt": 1, "lease": wrong_lease},
        ])),
    )
    .await;
    let welcome = hear(&mut socket).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert!(welcome.get("resumed").is_none(), "{welcome}");
    let refused = welcome["refused"].as_array().expect("refused list");
    let reason = |job: &str| {
        refused
            .iter()
            .find(|r| r["job_id"] == job)
            .and_then(|r| r["reason"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(refused.len(), 2, "{welcome}");
    assert!(
        reason(unknown).contains("no attempt of this job"),
        "{welcome}"
    );
    assert!(
        reason(&id).contains("lease is not this attempt's"),
        "{welcome}"
    );
    drop(socket);

    // Malformed presentations are refused before any welcome.
    for (attempts, expected) in [
        (
            json!([{"job_id": id, "attempt": 0, "lease": wrong_lease}]),
            "attempt number 0",
        ),
        (
            json!([{"job_id": id, "attempt": 1, "lease": wrong_lease},
                   {"job_id": id, "attempt": 1, "lease": wrong_lease}]),
            "presented twice",
        ),
        (
            json!([{"job_id": id, "attempt": 1, "lease": "not-a-lease"}]),
            "malformed message",
        ),
        (
            json!([{"job_id": id, "attempt": 1, "lease": wrong_lease, "progress": 5}]),
            "malformed message",
        ),
    ] {
        let mut socket = raw_worker(&server).await;
        say(&mut socket, hello_presenting(attempts)).await;
        let answer = hear(&mut socket).await;
        assert_eq!(answer["type"], "error", "{answer}");
        assert!(
            answer["message"]
                .as_str()
                .is_some_and(|m| m.contains(expected)),
            "{answer}"
        );
    }
    let too_many = json!({"type": "hello", "name": "presenter", "slots": 1, "kinds": ["video"],
        "attempts": [{"job_id": id, "attempt": 1, "lease": wrong_lease},
                     {"job_id": unknown, "attempt": 1, "lease": wrong_lease}]});
    let mut socket = raw_worker(&server).await;
    say(&mut socket, too_many).await;
    let answer = hear(&mut socket).await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("2 attempts presented with 1 slots")),
        "{answer}"
    );
    drop(socket);

    // Past the grace the attempt is lost (a system failure) and retried on
    // a worker that is there.
    let _agent = Agent::start(&server, 200);
    let done = job_until(&api, &key, &id, |j| j["state"] == "succeeded").await;
    assert_eq!(done["attempts"], 2, "{done}");
    let records = attempt_records(&api, &id).await;
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["outcome"], "system_failure", "{records:?}");
    assert!(
        records[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("lost when the scheduler restarted")),
        "{records:?}"
    );
    assert_eq!(records[1]["outcome"], "succeeded", "{records:?}");
    support::audit_user(&api, &key).await;
}

/// Stops a server the way an operator does (SIGTERM) and waits for it.
fn terminate(server: &mut ServerProcess) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -TERM: {status}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(exit) = server.child.try_wait().expect("wait for the server") {
            return exit;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An embedded server's objects are in a directory of its own that no one
/// can read after it stops (the catalogue was in its memory): stopping
/// removes it. A directory the operator named is kept.
#[actix_rt::test]
async fn an_embedded_server_removes_its_scratch_objects_when_it_stops() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut server = ServerProcess::start(&[("TMPDIR", tmp.path().display().to_string())]).await;
    let scratch = tmp
        .path()
        .join(format!("admedia-objects-{}", server.child.id()));
    assert!(
        scratch.is_dir(),
        "the scratch directory {} exists while serving",
        scratch.display()
    );
    // Something in it, as a real run leaves: the directory goes whole.
    std::fs::create_dir_all(scratch.join("outputs/some-user")).expect("a nested dir");
    std::fs::write(scratch.join("outputs/some-user/0"), b"bytes").expect("a file");
    assert!(terminate(&mut server).success());
    assert!(
        !scratch.exists(),
        "{} is left after the stop",
        scratch.display()
    );

    let named = tmp.path().join("kept-objects");
    let mut server = ServerProcess::start(&[
        ("TMPDIR", tmp.path().display().to_string()),
        ("ADMEDIA_OBJECT_STORE", named.display().to_string()),
    ])
    .await;
    std::fs::write(named.join("a-file"), b"bytes").expect("a file");
    assert!(terminate(&mut server).success());
    assert!(
        named.join("a-file").exists(),
        "a named directory is the operator's: kept"
    );
}

/// A server that was killed cannot clean up: the next embedded server
/// removes the scratch directories of processes that are gone, and
/// leaves those of live ones (this test's own process stands for one).
#[actix_rt::test]
async fn the_scratch_objects_of_a_killed_server_are_removed_by_the_next() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut killed = ServerProcess::start(&[("TMPDIR", tmp.path().display().to_string())]).await;
    let orphan = tmp
        .path()
        .join(format!("admedia-objects-{}", killed.child.id()));
    std::fs::write(orphan.join("left"), b"bytes").expect("a file");
    killed.kill();
    assert!(orphan.exists(), "a SIGKILLed server leaves its directory");
    let alive = tmp
        .path()
        .join(format!("admedia-objects-{}", std::process::id()));
    std::fs::create_dir_all(&alive).expect("a live process's dir");
    let unrelated = tmp.path().join("admedia-objects-notapid");
    std::fs::create_dir_all(&unrelated).expect("an unrelated dir");

    let mut next = ServerProcess::start(&[("TMPDIR", tmp.path().display().to_string())]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while orphan.exists() {
        assert!(
            Instant::now() < deadline,
            "{} was not removed",
            orphan.display()
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(alive.exists(), "a live process's directory is kept");
    assert!(
        unrelated.exists(),
        "a name that is not a process id is kept"
    );
    assert!(terminate(&mut next).success());
}
