//! The `admedia-worker` binary against a fake server: an actix-web endpoint
//! in the test that checks the token, answers `hello` with `welcome` and
//! hands every message the agent sends to the test, which asserts them
//! exactly. The agent is the real binary, run as a child process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use admedia_actors::domain::ids::{JobId, LeaseToken, WorkerId};
use admedia_actors::domain::job::{FailureClass, JobKind, JobParams, Output};
use admedia_actors::wire::{AttemptId, FromWorker, PresentedAttempt, RefusedAttempt, ToWorker};
use serde_json::json;
use tokio::sync::mpsc;

/// How long any one wait may take before the test fails. Generous: the
/// suite runs in parallel on small machines.
const WAIT: Duration = Duration::from_secs(15);
const TOKEN: &str = "worker-secret";
const HEARTBEAT_MS: u64 = 200;

// ---------------------------------------------------------------------------
// The fake server

#[derive(Debug)]
enum Event {
    Connected(usize),
    Message(usize, FromWorker),
    /// A text frame that is not a `FromWorker`: always a bug in the agent.
    Invalid(usize, String),
    Closed(usize),
}

struct Shared {
    token: String,
    events: mpsc::UnboundedSender<Event>,
    sessions: Mutex<Vec<actix_ws::Session>>,
    refused: AtomicUsize,
    /// The welcome takes back every attempt a hello presents (a server
    /// whose store still holds them); otherwise it takes back none.
    resume: std::sync::atomic::AtomicBool,
    /// Refuses connections (503), as a server that is restarting.
    down: std::sync::atomic::AtomicBool,
}

struct FakeServer {
    url: String,
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<Event>,
    handle: actix_web::dev::ServerHandle,
}

async fn connect(
    req: HttpRequest,
    body: web::Payload,
    shared: web::Data<Shared>,
) -> actix_web::Result<HttpResponse> {
    if shared.down.load(Ordering::SeqCst) {
        return Ok(HttpResponse::ServiceUnavailable().finish());
    }
    let expected = format!("Bearer {}", shared.token);
    let authorized = req
        .headers()
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if !authorized {
        shared.refused.fetch_add(1, Ordering::SeqCst);
        return Ok(HttpResponse::Unauthorized().finish());
    }
    let (response, session, mut stream) = actix_ws::handle(&req, body)?;
    let conn = {
        let mut sessions = shared.sessions.lock().unwrap();
        sessions.push(session.clone());
        sessions.len() - 1
    };
    let _ = shared.events.send(Event::Connected(conn));
    let shared = shared.into_inner();
    actix_web::rt::spawn(async move {
        let mut session = session;
        while let Some(Ok(frame)) = stream.recv().await {
            match frame {
                actix_ws::Message::Text(text) => {
                    let Ok(message) = serde_json::from_str::<FromWorker>(&text) else {
                        let _ = shared.events.send(Event::Invalid(conn, text.to_string()));
                        continue;
                    };
                    if let FromWorker::Hello { attempts, .. } = &message {
                        let (resumed, refused) = if shared.resume.load(Ordering::SeqCst) {
                            let ids = attempts
                                .iter()
                                .map(|a| AttemptId {
                                    job_id: a.job_id,
                                    lease: a.lease,
                                })
                                .collect();
                            (ids, Vec::new())
                        } else {
                            let refused = attempts
                                .iter()
                                .map(|a| RefusedAttempt {
                                    job_id: a.job_id,
                                    lease: a.lease,
                                    reason: "the lease is not this attempt's".into(),
                                })
                                .collect();
                            (Vec::new(), refused)
                        };
                        let welcome = ToWorker::Welcome {
                            worker_id: WorkerId::generate(),
                            heartbeat_ms: HEARTBEAT_MS,
                            lease_ms: 15_000,
                            resumed,
                            refused,
                        };
                        let _ = session.text(serde_json::to_string(&welcome).unwrap()).await;
                    }
                    let _ = shared.events.send(Event::Message(conn, message));
                }
                actix_ws::Message::Ping(payload) => {
                    let _ = session.pong(&payload).await;
                }
                actix_ws::Message::Close(reason) => {
                    // As the real server does: answer, which ends the connection.
                    let _ = session.close(reason).await;
                    break;
                }
                _ => {}
            }
        }
        let _ = shared.events.send(Event::Closed(conn));
    });
    Ok(response)
}

impl FakeServer {
    async fn start() -> FakeServer {
        let (tx, events) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            token: TOKEN.to_owned(),
            events: tx,
            sessions: Mutex::new(Vec::new()),
            refused: AtomicUsize::new(0),
            resume: std::sync::atomic::AtomicBool::new(false),
            down: std::sync::atomic::AtomicBool::new(false),
        });
        let data = web::Data::from(Arc::clone(&shared));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/v1/workers/connect", web::get().to(connect))
        })
        .workers(1)
        .bind(("127.0.0.1", 0))
        .expect("bind the fake server");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        FakeServer {
            url: format!("ws://{addr}"),
            shared,
            events,
            handle,
        }
    }

    fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// The next event, heartbeats included.
    async fn next_event(&mut self) -> Event {
        match tokio::time::timeout(WAIT, self.events.recv()).await {
            Ok(Some(Event::Invalid(conn, text))) => {
                panic!("the agent sent an invalid message on {conn}: {text}")
            }
            Ok(Some(event)) => {
                // Shown with the failure of a test: the conversation so far.
                eprintln!("agent → server: {event:?}");
                event
            }
            Ok(None) => panic!("the fake server stopped"),
            Err(_) => panic!("nothing from the agent within {WAIT:?}"),
        }
    }

    /// The next event that is not a heartbeat.
    async fn next(&mut self) -> Event {
        loop {
            match self.next_event().await {
                Event::Message(_, FromWorker::Heartbeat) => {}
                event => return event,
            }
        }
    }

    /// The next message that is not a heartbeat; anything else fails.
    async fn message(&mut self) -> FromWorker {
        match self.next().await {
            Event::Message(_, message) => message,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Waits for a new connection and its `hello`, the first message on it.
    async fn hello(&mut self) -> (usize, FromWorker) {
        let conn = match self.next().await {
            Event::Connected(conn) => conn,
            other => panic!("expected a connection, got {other:?}"),
        };
        match self.next_event().await {
            Event::Message(c, hello @ FromWorker::Hello { .. }) if c == conn => (conn, hello),
            other => panic!("expected hello on {conn}, got {other:?}"),
        }
    }

    /// Everything sent about `jobs` until each has its `complete` or
    /// `fail`, per job in order. Any other message fails the test.
    async fn settle(&mut self, jobs: &[JobId]) -> HashMap<JobId, Vec<FromWorker>> {
        let mut seen: HashMap<JobId, Vec<FromWorker>> = HashMap::new();
        let settled = |seen: &HashMap<JobId, Vec<FromWorker>>| {
            jobs.iter().all(|job| {
                seen.get(job)
                    .and_then(|msgs| msgs.last())
                    .is_some_and(is_terminal)
            })
        };
        while !settled(&seen) {
            let message = self.message().await;
            match job_of(&message) {
                Some(job) if jobs.contains(&job) => seen.entry(job).or_default().push(message),
                _ => panic!("unexpected message {message:?}"),
            }
        }
        seen
    }

    async fn send(&self, conn: usize, message: &ToWorker) {
        let mut session = self.session(conn);
        session
            .text(serde_json::to_string(message).unwrap())
            .await
            .expect("the connection is open");
    }

    async fn close(&self, conn: usize) {
        let _ = self.session(conn).close(None).await;
    }

    fn session(&self, conn: usize) -> actix_ws::Session {
        self.shared.sessions.lock().unwrap()[conn].clone()
    }

    /// Fails if the agent sends anything but heartbeats for `period`.
    async fn quiet_for(&mut self, period: Duration) {
        let until = tokio::time::Instant::now() + period;
        loop {
            match tokio::time::timeout_at(until, self.events.recv()).await {
                Err(_) => return,
                Ok(Some(Event::Message(_, FromWorker::Heartbeat))) => {}
                Ok(other) => panic!("expected only heartbeats, got {other:?}"),
            }
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        // Stopping without waiting: the test's runtime is going away.
        drop(self.handle.stop(false));
    }
}

fn job_of(message: &FromWorker) -> Option<JobId> {
    match message {
        FromWorker::Accept { job_id, .. }
        | FromWorker::Progress { job_id, .. }
        | FromWorker::Complete { job_id, .. }
        | FromWorker::Fail { job_id, .. } => Some(*job_id),
        _ => None,
    }
}

fn is_terminal(message: &FromWorker) -> bool {
    matches!(
        message,
        FromWorker::Complete { .. } | FromWorker::Fail { .. }
    )
}

// ---------------------------------------------------------------------------
// Jobs

struct Job {
    id: JobId,
    lease: LeaseToken,
}

impl Job {
    fn new() -> Job {
        Job {
            id: JobId::generate(),
            lease: LeaseToken::generate(),
        }
    }

    fn image(&self, count: u32, deadline_ms: u64) -> ToWorker {
        self.assign(
            JobKind::Image,
            "a lighthouse at dusk",
            JobParams {
                width: 1024,
                height: 1024,
                count: Some(count),
                duration_s: None,
                seed: None,
                init_image: None,
                reference_images: Vec::new(),
            },
            deadline_ms,
        )
    }

    fn video(&self, deadline_ms: u64) -> ToWorker {
        self.assign(
            JobKind::Video,
            "waves",
            JobParams {
                width: 1280,
                height: 720,
                count: None,
                duration_s: Some(4),
                seed: Some(7),
                init_image: None,
                reference_images: Vec::new(),
            },
            deadline_ms,
        )
    }

    fn assign(&self, kind: JobKind, prompt: &str, params: JobParams, deadline_ms: u64) -> ToWorker {
        ToWorker::Assign {
            job_id: self.id,
            attempt: 2,
            lease: self.lease,
            kind,
            model: "sdxl".into(),
            prompt: prompt.into(),
            params,
            deadline_ms,
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }

    fn cancel(&self) -> ToWorker {
        ToWorker::Cancel {
            job_id: self.id,
            lease: self.lease,
        }
    }

    fn accept(&self) -> FromWorker {
        FromWorker::Accept {
            job_id: self.id,
            lease: self.lease,
        }
    }

    fn progress(&self, percent: u8) -> FromWorker {
        FromWorker::Progress {
            job_id: self.id,
            lease: self.lease,
            percent,
            message: None,
        }
    }

    fn complete(&self, outputs: Vec<Output>) -> FromWorker {
        FromWorker::Complete {
            job_id: self.id,
            lease: self.lease,
            outputs,
        }
    }

    fn fail(&self, class: FailureClass, message: &str) -> FromWorker {
        FromWorker::Fail {
            job_id: self.id,
            lease: self.lease,
            class,
            message: message.into(),
        }
    }
}

fn output(url: String, content_type: &str) -> Output {
    Output::new(url, content_type)
}

/// The class and message of a `fail`, for messages that are not exact.
fn failure(message: &FromWorker) -> (FailureClass, &str) {
    match message {
        FromWorker::Fail { class, message, .. } => (*class, message),
        other => panic!("expected fail, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// The agent

struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(server: &FakeServer, token: &str, dir: &Path, args: &[&str]) -> Agent {
        let log = dir.join(format!("agent-{}.log", uuid::Uuid::now_v7().simple()));
        let file = std::fs::File::create(&log).expect("create the agent's log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_admedia-worker"));
        // Only the flags below configure it, whatever the environment says.
        for (name, _) in std::env::vars() {
            if name.starts_with("ADMEDIA_") {
                command.env_remove(name);
            }
        }
        command
            .args(["--server", &server.url, "--token", token])
            .args(args)
            .env("RUST_LOG", "debug")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        let child = command.spawn().expect("start admedia-worker");
        Agent { child, log }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    async fn exited(&mut self) -> ExitStatus {
        let until = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the agent") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "the agent did not exit within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- admedia-worker log ---\n{log}--- end of log ---");
        }
    }
}

/// Whether a process still runs; a zombie does not (it may never be reaped
/// where PID 1 does not reap orphans).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

async fn gone(pid: u32) -> bool {
    let until = tokio::time::Instant::now() + WAIT;
    while alive(pid) {
        if tokio::time::Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// The pid a script wrote to `file`, once it has.
async fn pid_in(file: &Path) -> u32 {
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{} never appeared",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    // No core files from the crash scripts in anyone's directory.
    std::fs::write(&path, format!("ulimit -c 0\n{body}")).expect("write script");
    path
}

/// An agent whose image command is `sh SCRIPT DIR`.
fn command_agent(server: &FakeServer, dir: &Path, body: &str, args: &[&str]) -> Agent {
    let script = script(dir, "image.sh", body);
    let command = format!("sh '{}' '{}'", script.display(), dir.display());
    let mut all = vec!["--executor", "command", "--image-command", &command];
    all.extend_from_slice(args);
    Agent::start(server, TOKEN, dir, &all)
}

/// Runs one image job through `sh SCRIPT DIR`; the messages about it.
async fn run_script(body: &str) -> Vec<FromWorker> {
    let dir = tempfile::tempdir().unwrap();
    let mut server = FakeServer::start().await;
    let _agent = command_agent(&server, dir.path(), body, &[]);
    let (conn, _) = server.hello().await;
    let job = Job::new();
    server.send(conn, &job.image(1, 30_000)).await;
    server.settle(&[job.id]).await.remove(&job.id).unwrap()
}

const HANGS: &str = r#"cat > /dev/null
sleep 60 &
echo $! > "$1/sleep.pid"
echo $$ > "$1/sh.pid"
wait
"#;

// ---------------------------------------------------------------------------
// Connecting

#[actix_web::test]
async fn a_wrong_token_is_retried_without_a_welcome_or_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = FakeServer::start().await;
    let mut agent = Agent::start(&server, "not-the-token", dir.path(), &[]);
    let until = tokio::time::Instant::now() + WAIT;
    while server.refused() < 3 {
        assert!(
            tokio::time::Instant::now() < until,
            "the agent stopped retrying"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(agent.is_running(), "the agent exited on a refused token");
    // Refused before the upgrade: no connection, so no hello and no welcome.
    assert!(server.events.try_recv().is_err());
}

#[actix_web::test]
async fn hello_describes_the_worker_then_heartbeats_follow() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = FakeServer::start().await;
    let args = [
        "--name",
        "gpu-7",
        "--slots",
        "3",
        "--gpu-model",
        "H100",
        "--vram-mb",
        "81920",
        "--kinds",
        "image",
        "--models",
        "sdxl,flux",
        "--loaded-models",
        "sdxl",
    ];
    let _agent = Agent::start(&server, TOKEN, dir.path(), &args);
    let (conn, hello) = server.hello().await;
    assert_eq!(
        hello,
        FromWorker::Hello {
            name: "gpu-7".into(),
            slots: 3,
            gpu_model: "H100".into(),
            vram_mb: 81920,
            kinds: vec![JobKind::Image],
            models: vec!["sdxl".into(), "flux".into()],
            loaded_models: vec!["sdxl".into()],
            attempts: Vec::new(),
        }
    );
    // An `error` is logged, not fatal.
    server
        .send(
            conn,
            &ToWorker::Error {
                message: "out of order".into(),
            },
        )
        .await;
    for _ in 0..3 {
        match server.next_event().await {
            Event::Message(c, FromWorker::Heartbeat) if c == conn => {}
            other => panic!("expected a heartbeat, got {other:?}"),
        }
    }
}

/// The hello of a reconnect: the first one's, presenting `attempts`.
fn presenting(hello: &FromWorker, presented: Vec<PresentedAttempt>) -> FromWorker {
    let mut hello = hello.clone();
    if let FromWorker::Hello { attempts, .. } = &mut hello {
        *attempts = presented;
    }
    hello
}

#[actix_web::test]
async fn a_dropped_connection_keeps_the_attempt_and_stops_it_when_the_server_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = FakeServer::start().await;
    let _agent = command_agent(&server, dir.path(), HANGS, &["--name", "gpu-1"]);
    let (first, hello) = server.hello().await;
    let job = Job::new();
    server.send(first, &job.image(1, 60_000)).await;
    assert_eq!(server.message().await, job.accept());
    let sh = pid_in(&dir.path().join("sh.pid")).await;
    let sleep = pid_in(&dir.path().join("sleep.pid")).await;

    server.close(first).await;
    match server.next().await {
        Event::Closed(conn) => assert_eq!(conn, first),
        other => panic!("expected the connection to close, got {other:?}"),
    }
    // Still running while away, and presented on the way back.
    assert!(alive(sh), "the command stopped with its connection");
    let (second, again) = server.hello().await;
    assert_ne!(second, first);
    assert_eq!(
        again,
        presenting(
            &hello,
            vec![PresentedAttempt {
                job_id: job.id,
                attempt: 2,
                lease: job.lease
            }]
        )
    );
    // The welcome did not take it back: it is stopped, not reported.
    assert!(gone(sh).await, "a refused attempt kept running");
    assert!(
        gone(sleep).await,
        "the command's child outlived its refusal"
    );
    server.quiet_for(Duration::from_millis(500)).await;
    // The next reconnect has nothing to present.
    server.close(second).await;
    match server.next().await {
        Event::Closed(conn) => assert_eq!(conn, second),
        other => panic!("expected the connection to close, got {other:?}"),
    }
    let (_, third) = server.hello().await;
    assert_eq!(third, hello);
}

#[actix_web::test]
async fn an_attempt_that_finished_while_disconnected_is_presented_and_reported_when_taken_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = FakeServer::start().await;
    server.shared.resume.store(true, Ordering::SeqCst);
    let _agent = Agent::start(&server, TOKEN, dir.path(), &["--sim-job-ms", "300"]);
    let (first, hello) = server.hello().await;
    let job = Job::new();
    server.send(first, &job.image(1, 60_000)).await;
    assert_eq!(server.message().await, job.accept());
    // The server goes away (refuses connections) for longer than the job.
    server.shared.down.store(true, Ordering::SeqCst);
    server.close(first).await;
    match server.next().await {
        Event::Closed(conn) => assert_eq!(conn, first),
        other => panic!("expected the connection to close, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.shared.down.store(false, Ordering::SeqCst);
    let (second, again) = server.hello().await;
    assert_eq!(
        again,
        presenting(
            &hello,
            vec![PresentedAttempt {
                job_id: job.id,
                attempt: 2,
                lease: job.lease
            }]
        )
    );
    // Taken back: the reports kept while away follow (the progress made
    // meanwhile, then the result), on the new connection.
    loop {
        match server.next().await {
            Event::Message(c, FromWorker::Progress { job_id, lease, .. })
                if (c, job_id, lease) == (second, job.id, job.lease) => {}
            Event::Message(c, FromWorker::Complete { job_id, lease, .. }) => {
                assert_eq!((c, job_id, lease), (second, job.id, job.lease));
                break;
            }
            other => panic!("expected the kept completion, got {other:?}"),
        }
    }
    server.quiet_for(Duration::from_millis(500)).await;
}

// ---------------------------------------------------------------------------
// The simulate executor

#[actix_web::test]
async fn simulate_completes_with_outputs_per_kind() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = FakeServer::start().await;
    let _agent = Agent::start(
        &server,
        TOKEN,
        dir.path(),
        &["--slots", "2", "--sim-job-ms", "300"],
    );
    let (conn, _) = server.hello().await;
    let (image, video) = (Job::new(), Job::new());
    server.send(conn, &image.image(3, 30_000)).await;
    server.send(conn, &video.video(30_000)).await;
    let seen = server.settle(&[image.id, video.id]).await;
    let png = |i| output(format!("sim://outputs/{}/{i}.png", image.id), "image/png");
    assert_eq!(
        seen[&image.id],
        [
            image.accept(),
            image.progress(50),
            image.complete(vec![png(0), png(1), png(2)])
        ]
    );
    let mp4 = output(format!("sim://outputs/{}/0.mp4", video.id), "video/mp4");
    assert_eq!(
        seen[&video.id],
        [
            video.accept(),
            video.progress(50),
            video.complete(vec![mp4])
        ]
    );
}

#[actix_web::test]
async fn simulate_fails_by_its_rates() {
    let dir = tempfile::tempdir().unwrap();
    for (rate, class, message) in [
        (
            "--sim-failure-rate",
            FailureClass::System,
            "simulated system failure",
        ),
        (
            "--sim-user-error-rate",
            FailureClass::User,
            "simulated user error",
        ),
    ] {
        let mut server = FakeServer::start().await;
        let _agent = Agent::start(
            &server,
            TOKEN,
            dir.path(),
            &["--sim-job-ms", "50", rate, "1"],
        );
        let (conn, _) = server.hello().await;
        let job = Job::new();
        server.send(conn, &job.image(1, 30_000)).await;
        let seen = server.settle(&[job.id]).await;
        assert_eq!(
            seen[&job.id],
            [job.accept(), job.progress(50), job.fail(class, message)]
        );
    }
}

#[actix_web::test]
async fn an_assign_beyond_the_slots_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = FakeServer::start().await;
    let _agent = Agent::start(
        &server,
        TOKEN,
        dir.path(),
        &["--slots", "1", "--sim-job-ms", "1500"],
    );
    let (conn, _) = server.hello().await;
    let (first, second, third) = (Job::new(), Job::new(), Job::new());
    server.send(conn, &first.image(1, 30_000)).await;
    assert_eq!(server.message().await, first.accept());
    server.send(conn, &second.image(1, 30_000)).await;
    let seen = server.settle(&[first.id, second.id]).await;
    assert_eq!(
        seen[&second.id],
        [second.fail(FailureClass::System, "no free slot")]
    );
    assert_eq!(
        seen[&first.id],
        [
            first.progress(50),
            first.complete(vec![output(
                format!("sim://outputs/{}/0.png", first.id),
                "image/png"
            )])
        ]
    );
    // The slot is free again.
    server.send(conn, &third.image(1, 30_000)).await;
    assert_eq!(server.message().await, third.accept());
}

#[actix_web::test]
async fn sigterm_drains_finishes_the_running_attempt_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = FakeServer::start().await;
    let mut agent = Agent::start(
        &server,
        TOKEN,
        dir.path(),
        &["--slots", "2", "--sim-job-ms", "2000"],
    );
    let (conn, _) = server.hello().await;
    let (running, late) = (Job::new(), Job::new());
    server.send(conn, &running.image(1, 30_000)).await;
    assert_eq!(server.message().await, running.accept());

    agent.signal("TERM");
    let mut about_running = Vec::new();
    loop {
        match server.message().await {
            FromWorker::Drain => break,
            message => about_running.push(message),
        }
    }
    // Draining: a new assignment is refused.
    server.send(conn, &late.image(1, 30_000)).await;
    let seen = server.settle(&[running.id, late.id]).await;
    assert_eq!(
        seen[&late.id],
        [late.fail(FailureClass::System, "draining")]
    );
    about_running.extend(seen[&running.id].iter().cloned());
    assert_eq!(
        about_running,
        [
            running.progress(50),
            running.complete(vec![output(
                format!("sim://outputs/{}/0.png", running.id),
                "image/png"
            )])
        ]
    );
    match server.next().await {
        Event::Closed(c) => assert_eq!(c, conn),
        other => panic!("expected the agent to close the connection, got {other:?}"),
    }
    let status = agent.exited().await;
    assert_eq!(status.code(), Some(0), "{status}");
}

// ---------------------------------------------------------------------------
// The command executor

#[actix_web::test]
async fn command_gets_the_job_on_stdin_and_its_outputs_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = script(
        d,
        "image.sh",
        r#"cat > "$1/image-stdin.json"
printf '{"outputs":[{"url":"file://%s/%s.png","content_type":"image/png"}]}' "$1" "$2"
"#,
    );
    let video = script(
        d,
        "video.sh",
        r#"cat > "$1/video-stdin.json"
printf '{"outputs":[{"url":"file://%s/clip.mp4","content_type":"video/mp4"}]}' "$1"
"#,
    );
    let image_command = format!("sh '{}' '{}' 'two words'", image.display(), d.display());
    let video_command = format!("sh {} {}", video.display(), d.display());
    let mut server = FakeServer::start().await;
    let args = [
        "--executor",
        "command",
        "--slots",
        "2",
        "--image-command",
        &image_command,
        "--video-command",
        &video_command,
    ];
    let _agent = Agent::start(&server, TOKEN, d, &args);
    let (conn, hello) = server.hello().await;
    assert!(
        matches!(hello, FromWorker::Hello { kinds, .. } if kinds == [JobKind::Image, JobKind::Video])
    );

    let (a, b) = (Job::new(), Job::new());
    let prompt = "a \"quoted\" lighthouse\nat dusk ☼";
    let params = JobParams {
        width: 1024,
        height: 768,
        count: Some(2),
        duration_s: None,
        seed: Some(42),
        init_image: None,
        reference_images: Vec::new(),
    };
    server
        .send(conn, &a.assign(JobKind::Image, prompt, params, 30_000))
        .await;
    server.send(conn, &b.video(30_000)).await;
    let seen = server.settle(&[a.id, b.id]).await;
    assert_eq!(
        seen[&a.id],
        [
            a.accept(),
            a.complete(vec![output(
                format!("file://{}/two words.png", d.display()),
                "image/png"
            )])
        ]
    );
    assert_eq!(
        seen[&b.id],
        [
            b.accept(),
            b.complete(vec![output(
                format!("file://{}/clip.mp4", d.display()),
                "video/mp4"
            )])
        ]
    );
    // The output directory is a fresh temporary one per attempt.
    let stdin = |name: &str| -> serde_json::Value {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join(name)).unwrap()).unwrap();
        let dir = v.as_object_mut().unwrap().remove("output_dir").unwrap();
        assert!(dir.as_str().unwrap().starts_with('/'), "{dir}");
        v
    };
    assert_eq!(
        stdin("image-stdin.json"),
        json!({"job_id": a.id, "attempt": 2, "kind": "image", "model": "sdxl", "prompt": prompt,
               "params": {"width": 1024, "height": 768, "count": 2, "seed": 42},
               "count": 2, "inputs": []})
    );
    assert_eq!(
        stdin("video-stdin.json"),
        json!({"job_id": b.id, "attempt": 2, "kind": "video", "model": "sdxl", "prompt": "waves",
               "params": {"width": 1280, "height": 720, "duration_s": 4, "seed": 7},
               "count": 1, "inputs": []})
    );
}

#[actix_web::test]
async fn command_reporting_a_user_error_fails_the_attempt_as_user() {
    let seen = run_script(
        r#"cat > /dev/null
echo '{"error":{"class":"user","message":"prompt refused by the safety filter"}}'
exit 1
"#,
    )
    .await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(matches!(seen[0], FromWorker::Accept { .. }));
    assert_eq!(
        failure(&seen[1]),
        (FailureClass::User, "prompt refused by the safety filter")
    );
}

#[actix_web::test]
async fn command_exiting_non_zero_is_a_system_failure_with_status_and_stderr() {
    let seen = run_script(
        r#"cat > /dev/null
echo "loading weights" >&2
echo "CUDA error: out of memory" >&2
exit 3
"#,
    )
    .await;
    assert!(matches!(seen[0], FromWorker::Accept { .. }));
    let (class, message) = failure(&seen[1]);
    assert_eq!(class, FailureClass::System);
    assert!(message.contains("exit status: 3"), "{message}");
    assert!(message.contains("CUDA error: out of memory"), "{message}");
}

#[actix_web::test]
async fn command_killed_by_a_signal_is_a_system_failure_naming_it() {
    let seen = run_script("cat > /dev/null\nkill -SEGV $$\n").await;
    assert!(matches!(seen[0], FromWorker::Accept { .. }));
    let (class, message) = failure(&seen[1]);
    assert_eq!(class, FailureClass::System);
    assert!(message.contains("SIGSEGV"), "{message}");
}

#[actix_web::test]
async fn command_printing_no_result_is_a_system_failure() {
    let seen = run_script("cat > /dev/null\necho 'all done!'\n").await;
    let (class, message) = failure(&seen[1]);
    assert_eq!(class, FailureClass::System);
    assert!(message.contains("not a result"), "{message}");
}

#[actix_web::test]
async fn command_past_its_deadline_is_killed_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = FakeServer::start().await;
    let _agent = command_agent(&server, dir.path(), HANGS, &[]);
    let (conn, _) = server.hello().await;
    let job = Job::new();
    server.send(conn, &job.image(1, 1000)).await;
    let seen = server.settle(&[job.id]).await;
    assert_eq!(
        seen[&job.id],
        [
            job.accept(),
            job.fail(FailureClass::System, "deadline passed")
        ]
    );
    let sh = pid_in(&dir.path().join("sh.pid")).await;
    let sleep = pid_in(&dir.path().join("sleep.pid")).await;
    assert!(gone(sh).await, "the command outlived its deadline");
    assert!(
        gone(sleep).await,
        "the command's child outlived its deadline"
    );
}

#[actix_web::test]
async fn cancel_kills_the_command_and_nothing_more_is_said_about_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = FakeServer::start().await;
    let _agent = command_agent(&server, dir.path(), HANGS, &["--slots", "1"]);
    let (conn, _) = server.hello().await;
    let (cancelled, next) = (Job::new(), Job::new());
    server.send(conn, &cancelled.image(1, 60_000)).await;
    assert_eq!(server.message().await, cancelled.accept());
    let sh = pid_in(&dir.path().join("sh.pid")).await;
    let sleep = pid_in(&dir.path().join("sleep.pid")).await;

    server.send(conn, &cancelled.cancel()).await;
    assert!(gone(sh).await, "the command survived its cancel");
    assert!(gone(sleep).await, "the command's child survived its cancel");
    server.quiet_for(Duration::from_millis(500)).await;
    // Its slot is free again.
    std::fs::remove_file(dir.path().join("sh.pid")).unwrap();
    server.send(conn, &next.image(1, 60_000)).await;
    assert_eq!(server.message().await, next.accept());
    let sh = pid_in(&dir.path().join("sh.pid")).await;
    server.send(conn, &next.cancel()).await;
    assert!(gone(sh).await);
    server.quiet_for(Duration::from_millis(300)).await;
}
