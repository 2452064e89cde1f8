//! The operator console end to end, in a real browser: headless Chromium
//! driven through chromedriver (WebDriver) from Rust with fantoccini,
//! against the real server on a random port with a fresh in-memory store.
//! A scripted GPU worker on the worker WebSocket decides how each attempt
//! ends, so retries and refunds happen exactly when the test says.
//!
//! Screenshots of every page land in `target/console-screenshots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/test.sh
//! installs them). Without them the test is skipped with a note, except
//! under `CI=true`, where it fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use admedia::config::Settings;
use admedia::startup::Application;
use awc::ws;
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "console-test-admin-token-0123456789ab";
const WORKER_TOKEN: &str = "console-test-worker-token-0123456789a";
const CHROMIUM: &str = "/usr/bin/chromium";
const WAIT: Duration = Duration::from_secs(10);
const DESKTOP: (u32, u32) = (1280, 900);
const PHONE: (u32, u32) = (390, 844);

// ---- the server

struct App {
    base: String,
    http: awc::Client,
}

/// A response read in full.
struct Resp {
    status: u16,
    location: Option<String>,
    set_cookie: Option<String>,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("status {}: not JSON ({e}): {}", self.status, self.body))
    }

    #[track_caller]
    fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "body: {}", self.body);
        self.json()
    }
}

async fn read(res: Result<awc::ClientResponse, awc::error::SendRequestError>) -> Resp {
    let mut res = res.expect("request sent");
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let location = header("location");
    let set_cookie = header("set-cookie");
    let body = res.body().limit(8 * 1024 * 1024).await.expect("body read");
    Resp {
        status: res.status().as_u16(),
        location,
        set_cookie,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

impl App {
    async fn spawn() -> App {
        let mut settings = Settings {
            bind: "127.0.0.1:0".into(),
            database_url: None,
            redis_url: None,
            admin_token: Some(ADMIN_TOKEN.into()),
            worker_token: Some(WORKER_TOKEN.into()),
            sim_workers: Some(0),
            retry_base: Duration::from_millis(10),
            retry_max: Duration::from_millis(40),
            worker_lease: Duration::from_millis(120_000),
            http_workers: Some(2),
            registrations_per_hour: 0,
            ..Settings::default()
        };
        settings.max_attempts = 2;
        let app = Application::build(settings)
            .await
            .expect("application builds");
        let base = format!("http://127.0.0.1:{}", app.port());
        actix_rt::spawn(app.run_until_stopped());
        App {
            base,
            http: awc::Client::builder()
                .disable_redirects()
                .timeout(Duration::from_secs(30))
                .finish(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str, bearer: Option<&str>, cookie: Option<&str>) -> Resp {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        if let Some(c) = cookie {
            req = req.insert_header(("Cookie", c.to_owned()));
        }
        read(req.send().await).await
    }

    async fn post_json(&self, path: &str, bearer: Option<&str>, body: &Value) -> Resp {
        let mut req = self.http.post(self.url(path));
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        read(req.send_json(body).await).await
    }

    async fn post_form(&self, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Resp {
        let mut req = self.http.post(self.url(path));
        if let Some(c) = cookie {
            req = req.insert_header(("Cookie", c.to_owned()));
        }
        read(req.send_form(&form).await).await
    }

    /// Registers a user; returns (user id, API key).
    async fn register(&self, email: &str) -> (String, String) {
        let body = self
            .post_json(
                "/v1/users",
                None,
                &json!({"email": email, "display_name": "Console Tester"}),
            )
            .await
            .expect(201);
        (
            body["user"]["id"].as_str().expect("id").to_owned(),
            body["api_key"].as_str().expect("key").to_owned(),
        )
    }

    async fn submit(&self, key: &str, body: Value) -> String {
        let job = self
            .post_json("/v1/jobs", Some(key), &body)
            .await
            .expect(202);
        job["id"].as_str().expect("job id").to_owned()
    }

    /// A job through the operator API (works for suspended users too).
    async fn job(&self, id: &str) -> Value {
        self.get(&format!("/v1/admin/jobs/{id}"), Some(ADMIN_TOKEN), None)
            .await
            .expect(200)
    }

    async fn wait_for_state(&self, id: &str, state: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let d = self.job(id).await;
            if d["job"]["state"] == state {
                return d;
            }
            assert!(Instant::now() < deadline, "job {id} not {state}: {d}");
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wallet(&self, user: &str) -> Value {
        self.get(&format!("/v1/admin/users/{user}"), Some(ADMIN_TOKEN), None)
            .await
            .expect(200)["wallet"]
            .clone()
    }
}

fn image_job() -> Value {
    json!({"kind": "image", "model": "sdxl", "prompt": "a lighthouse at dusk, oil painting"})
}

/// No worker in this test serves video: a video job stays queued.
fn video_job() -> Value {
    json!({"kind": "video", "model": "v1", "prompt": "waves on a pebble beach",
           "params": {"duration_s": 4}})
}

// ---- a scripted GPU worker (as in tests/api/workers.rs)

type Socket = actix_codec::Framed<awc::BoxedSocket, ws::Codec>;

struct Gpu {
    socket: Socket,
}

impl Gpu {
    async fn connect(app: &App, name: &str) -> Gpu {
        let url = app.url("/v1/workers/connect").replacen("http", "ws", 1);
        let (_, socket) = awc::Client::new()
            .ws(url)
            .bearer_auth(WORKER_TOKEN)
            .connect()
            .await
            .expect("worker connects");
        let mut gpu = Gpu { socket };
        let sent = gpu
            .send(
                json!({"type": "hello", "name": name, "slots": 1, "gpu_model": "NVIDIA L4",
                        "vram_mb": 24576, "kinds": ["image"], "models": [],
                        "loaded_models": ["sdxl"]}),
            )
            .await;
        assert!(sent, "hello sent");
        let welcome = gpu.recv(WAIT).await.expect("welcome");
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        gpu
    }

    /// False when the connection is gone.
    async fn send(&mut self, msg: Value) -> bool {
        self.socket
            .send(ws::Message::Text(msg.to_string().into()))
            .await
            .is_ok()
    }

    /// The next protocol message; None on timeout or close.
    async fn recv(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()??;
            match frame.ok()? {
                ws::Frame::Text(t) => return serde_json::from_slice(&t).ok(),
                ws::Frame::Ping(p) => {
                    let _ = self.socket.send(ws::Message::Pong(p)).await;
                }
                ws::Frame::Close(_) => return None,
                _ => {}
            }
        }
    }

    async fn assigned(&mut self) -> Value {
        loop {
            let msg = self.recv(WAIT).await.expect("an assignment");
            if msg["type"] == "assign" {
                return msg;
            }
            assert_eq!(msg["type"], "error", "expected an assignment, got {msg}");
        }
    }

    async fn accept(&mut self, a: &Value) {
        self.send(json!({"type": "accept", "job_id": a["job_id"], "lease": a["lease"]}))
            .await;
    }

    async fn fail_system(&mut self, a: &Value, message: &str) {
        self.send(
            json!({"type": "fail", "job_id": a["job_id"], "lease": a["lease"],
                         "class": "system", "message": message}),
        )
        .await;
    }

    /// Uploads a PNG to each output slot, as a real worker does, and names
    /// the uploads.
    async fn complete(&mut self, a: &Value) {
        let mut outputs = Vec::new();
        for slot in a["outputs"].as_array().cloned().unwrap_or_default() {
            let url = slot["upload_url"].as_str().expect("upload_url");
            let status = awc::Client::new()
                .put(url)
                .send_body(TINY_PNG.to_vec())
                .await
                .expect("upload an output")
                .status();
            assert!(status.is_success(), "upload: {status}");
            outputs.push(json!({"url": slot["key"], "content_type": "image/png"}));
        }
        self.send(
            json!({"type": "complete", "job_id": a["job_id"], "lease": a["lease"],
                         "outputs": outputs}),
        )
        .await;
    }

    /// Heartbeats until the connection closes, so the console shows a
    /// fresh "last heartbeat".
    fn keep_alive(mut self) {
        actix_rt::spawn(async move {
            loop {
                let _ = self.recv(Duration::from_millis(500)).await;
                if !self.send(json!({"type": "heartbeat"})).await {
                    break;
                }
            }
        });
    }
}

// ---- the browser

/// chromedriver on a free port; stopped on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// chromedriver's path, or why the browser test cannot run.
fn browser_tools() -> Result<PathBuf, String> {
    if !Path::new(CHROMIUM).exists() {
        return Err(format!("{CHROMIUM} is missing (apt-get install chromium)"));
    }
    on_path("chromedriver")
        .ok_or_else(|| "chromedriver is missing (apt-get install chromium-driver)".to_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

async fn start_driver(path: &Path) -> Driver {
    let port = free_port();
    let child = Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver { child, port };
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    driver
}

async fn open_browser(driver: &Driver, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--hide-scrollbars",
                format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session")
}

struct Browser<'a> {
    client: Client,
    app: &'a App,
    shots: PathBuf,
}

impl Browser<'_> {
    async fn goto(&self, path: &str) {
        self.client
            .goto(&self.app.url(path))
            .await
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
    }

    async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("current url");
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    async fn wait_for(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => panic!("no {css} on {}: {e}", self.path_now().await),
        }
    }

    async fn path_now(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    async fn find(&self, css: &str) -> Element {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e,
            Err(e) => panic!("no {css} on {}: {e}", self.path_now().await),
        }
    }

    /// The element's visible text; found again if the page replaced it
    /// meanwhile (the overview refreshes itself).
    async fn text_of(&self, css: &str) -> String {
        for _ in 0..5 {
            if let Ok(text) = self.find(css).await.text().await {
                return text;
            }
        }
        panic!("no stable {css} on {}", self.path_now().await)
    }

    /// The page's visible text.
    async fn text(&self) -> String {
        self.text_of("body").await
    }

    async fn fill(&self, css: &str, value: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("clear field");
        field.send_keys(value).await.expect("type into field");
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    /// Clicks, then waits for the page that follows (not the one clicked
    /// on, which is marked first) to show `then`.
    async fn click_then(&self, css: &str, then: &str) -> Element {
        self.client
            .execute("document.documentElement.dataset.left = '1';", vec![])
            .await
            .expect("mark the page");
        self.click(css).await;
        let fresh: Vec<String> = then
            .split(',')
            .map(|sel| format!("html:not([data-left]) {}", sel.trim()))
            .collect();
        self.wait_for(&fresh.join(", ")).await
    }

    async fn value_of(&self, css: &str) -> String {
        self.find(css)
            .await
            .attr("value")
            .await
            .expect("attribute")
            .unwrap_or_default()
    }

    /// A POST from inside the page (same origin, with the session cookie),
    /// as a forged or replayed form would be; returns the final status.
    async fn post_from_page(&self, path: &str, form: &str) -> u16 {
        let status = self
            .client
            .execute(
                "return fetch(arguments[0], {method: 'POST', credentials: 'same-origin', \
                 headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: arguments[1]}) \
                 .then(r => r.status);",
                vec![json!(path), json!(form)],
            )
            .await
            .expect("fetch from the page");
        status.as_u64().expect("a status") as u16
    }

    /// Saves a PNG of the whole page at `size` (the window grows to the
    /// page's height), then restores the desktop size.
    async fn shot(&self, name: &str, size: (u32, u32)) {
        self.client
            .set_window_size(size.0, size.1)
            .await
            .expect("window size");
        // The window is taller than the page it shows by the browser's own
        // frame, even headless.
        let height = self
            .client
            .execute(
                "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight;",
                vec![],
            )
            .await
            .ok()
            .and_then(|v| v.as_u64())
            .unwrap_or(u64::from(size.1))
            .clamp(u64::from(size.1), 5000);
        self.client
            .set_window_size(size.0, u32::try_from(height).unwrap_or(size.1))
            .await
            .expect("window size");
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("screenshot written");
        self.client
            .set_window_size(DESKTOP.0, DESKTOP.1)
            .await
            .expect("window size");
    }

    async fn session_cookie(&self) -> String {
        let cookies = self.client.get_all_cookies().await.expect("cookies");
        let c = cookies
            .iter()
            .find(|c| c.name() == "admedia_console")
            .expect("a session cookie");
        assert_eq!(c.http_only(), Some(true), "HttpOnly: {c:?}");
        assert_eq!(format!("{:?}", c.same_site()), "Some(Strict)", "{c:?}");
        assert_eq!(c.path(), Some("/console"), "{c:?}");
        assert!(c.expires().is_some(), "the cookie expires: {c:?}");
        format!("admedia_console={}", c.value())
    }
}

// ---- the scenarios

async fn sign_in(b: &Browser<'_>) {
    b.goto("/console/jobs").await;
    assert!(
        b.path().await.starts_with("/console/login?next="),
        "unsigned visitors go to the sign-in form"
    );
    b.wait_for("input[name=token]").await;
    b.shot("01-login", DESKTOP).await;

    b.fill("input[name=token]", "not-the-token").await;
    b.click_then("form.login button", ".flash-error").await;
    assert!(b.text().await.contains("That is not the admin token"));
    b.shot("02-login-wrong-token", DESKTOP).await;

    b.fill("input[name=token]", ADMIN_TOKEN).await;
    b.click_then("form.login button", "table.jobs, .empty")
        .await;
    assert_eq!(
        b.path().await,
        "/console/jobs",
        "back to the page asked for"
    );
}

async fn wrong_token_and_missing_session_are_refused(app: &App) {
    let wrong = app
        .post_form("/console/login", None, &[("token", "nope")])
        .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("That is not the admin token"));
    assert!(wrong.set_cookie.is_none());

    let right = app
        .post_form("/console/login", None, &[("token", ADMIN_TOKEN)])
        .await;
    assert_eq!(right.status, 303);
    let cookie = right.set_cookie.expect("a session cookie");
    for attr in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=28800",
    ] {
        assert!(cookie.contains(attr), "{attr} in {cookie}");
    }

    for path in [
        "/console",
        "/console/jobs",
        "/console/users",
        "/console/overview/live",
    ] {
        let r = app.get(path, None, None).await;
        assert_eq!(r.status, 303, "{path} without a session");
        assert!(r.location.is_some_and(|l| l.starts_with("/console/login")));
    }
    let forged = app
        .get("/console", None, Some("admedia_console=00ff"))
        .await;
    assert_eq!(forged.status, 303, "an unknown session id is no session");
    let post = app
        .post_form("/console/users/x/suspend", None, &[("csrf", "x")])
        .await;
    assert_eq!(post.status, 303, "a POST without a session goes nowhere");
}

/// Job 1: attempt 1 fails (system), attempt 2 succeeds. Job 2: both
/// attempts fail, so the hold is voided (refund).
async fn run_scripted_jobs(app: &App, gpu: &mut Gpu, key: &str) -> (String, String) {
    let retried = app.submit(key, image_job()).await;
    let a1 = gpu.assigned().await;
    assert_eq!(a1["attempt"], 1);
    gpu.accept(&a1).await;
    gpu.fail_system(&a1, "CUDA error: an illegal memory access was encountered")
        .await;
    let a2 = gpu.assigned().await;
    assert_eq!(a2["attempt"], 2);
    gpu.accept(&a2).await;
    gpu.complete(&a2).await;
    app.wait_for_state(&retried, "succeeded").await;

    let refunded = app.submit(key, image_job()).await;
    for n in 1..=2 {
        let a = gpu.assigned().await;
        assert_eq!(a["attempt"], n);
        gpu.accept(&a).await;
        gpu.fail_system(&a, "worker lost the GPU (Xid 79)").await;
    }
    let d = app.wait_for_state(&refunded, "failed").await;
    let kinds: Vec<&str> = d["ledger"]
        .as_array()
        .expect("ledger")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["hold", "void"], "{d}");
    (retried, refunded)
}

async fn jobs_list_and_pages(b: &Browser<'_>, retried: &str, refunded: &str, queued: &str) {
    b.goto("/console/jobs").await;
    let text = b.text().await;
    for id in [retried, refunded, queued] {
        let tail = &id[id.len() - 8..];
        assert!(text.contains(tail), "job {id} listed:\n{text}");
    }
    b.shot("03-jobs", DESKTOP).await;

    b.goto("/console/jobs?state=failed").await;
    let rows = b
        .client
        .find_all(Locator::Css("table.jobs tbody tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 1, "one failed job");
    assert!(b
        .text_of("table.jobs")
        .await
        .contains(&refunded[refunded.len() - 8..]));
    // Older pages continue below a job.
    b.goto(&format!("/console/jobs?before={refunded}")).await;
    let older = b.text_of("table.jobs").await;
    assert!(older.contains(&retried[retried.len() - 8..]), "{older}");
    assert!(!older.contains(&queued[queued.len() - 8..]), "{older}");
    assert!(b.text_of("nav.pager").await.contains("Newest"));
    b.goto("/console/jobs?state=nonsense").await;
    assert!(b
        .text_of(".flash-error")
        .await
        .contains("\"nonsense\" is not valid"));

    // The retried job: two attempts, a hold and its post.
    b.goto(&format!("/console/jobs/{retried}")).await;
    let attempts = b.text_of("table.attempts").await;
    assert!(attempts.contains("console-gpu"), "{attempts}");
    assert!(attempts.contains("system failure"), "{attempts}");
    assert!(attempts.contains("CUDA error"), "{attempts}");
    assert!(attempts.contains("succeeded"), "{attempts}");
    let rows = b
        .client
        .find_all(Locator::Css("table.attempts tbody tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 2, "two attempts");
    let ledger = b.text_of("table.ledger").await;
    assert!(
        ledger.contains("hold") && ledger.contains("post"),
        "{ledger}"
    );
    assert!(!ledger.contains("void"), "{ledger}");
    assert!(
        b.client
            .find(Locator::Css("form[action$='/cancel']"))
            .await
            .is_err(),
        "no cancel button on a finished job"
    );
    let title = b
        .find("table.attempts time")
        .await
        .attr("title")
        .await
        .expect("title");
    assert!(
        title.is_some_and(|t| t.ends_with("UTC")),
        "exact time on hover"
    );
    b.shot("04-job-retried", DESKTOP).await;
    b.shot("04-job-retried-phone", PHONE).await;

    // All attempts spent: the hold was voided.
    b.goto(&format!("/console/jobs/{refunded}")).await;
    assert_eq!(b.text_of(".title-row .state").await, "failed");
    let ledger = b.text_of("table.ledger").await;
    assert!(
        ledger.contains("hold") && ledger.contains("void"),
        "{ledger}"
    );
    assert!(b.text_of(".facts").await.contains("voided (refunded)"));
    b.shot("05-job-refunded", DESKTOP).await;
}

async fn cancel_voids_the_hold(b: &Browser<'_>, app: &App, queued: &str) {
    b.goto(&format!("/console/jobs/{queued}")).await;
    assert_eq!(b.text_of(".title-row .state").await, "queued");
    assert!(b.text().await.contains("No attempts yet"));
    b.click_then(".title-row form button.danger", ".flash-ok")
        .await;
    assert_eq!(b.text_of(".title-row .state").await, "cancelled");
    let ledger = b.text_of("table.ledger").await;
    assert!(
        ledger.contains("hold") && ledger.contains("void"),
        "{ledger}"
    );
    let d = app.job(queued).await;
    assert_eq!(d["job"]["state"], "cancelled");
    assert_eq!(d["job"]["charge"], "voided");
    b.shot("06-job-cancelled", DESKTOP).await;
}

async fn csrf_is_required(b: &Browser<'_>, app: &App, queued: &str) {
    b.goto(&format!("/console/jobs/{queued}")).await;
    let path = format!("/console/jobs/{queued}/cancel");
    assert_eq!(b.post_from_page(&path, "").await, 403, "no CSRF token");
    assert_eq!(
        b.post_from_page(&path, "csrf=forged").await,
        403,
        "a wrong one"
    );
    let cookie = b.session_cookie().await;
    let plain = app.post_form(&path, Some(&cookie), &[]).await;
    assert_eq!(plain.status, 403, "{}", plain.body);
    assert!(plain.body.contains("CSRF"));
    let wrong = app
        .post_form(&path, Some(&cookie), &[("csrf", "0000")])
        .await;
    assert_eq!(wrong.status, 403);
    assert_eq!(
        app.job(queued).await["job"]["state"],
        "queued",
        "nothing changed"
    );
}

async fn users_search_grant_suspend(b: &Browser<'_>, app: &App, user: &str, queued: &str) {
    b.goto("/console/users").await;
    assert!(b.text().await.contains("Find a user by e-mail"));
    b.fill("input[name=email]", "ORBIT@").await;
    b.click_then("form.search button", "table.users").await;
    let found = b.text_of("table.users").await;
    assert!(found.contains("orbit@example.com"), "{found}");
    b.shot("07-users-search", DESKTOP).await;

    b.fill("input[name=email]", "nobody-here").await;
    b.click_then("form.search button", ".empty").await;
    assert!(b.text().await.contains("No user's e-mail contains"));

    b.goto(&format!("/console/users/{user}")).await;
    let before = app.wallet(user).await["balance"].as_i64().expect("balance");
    let key = b.value_of("form.grant input[name=idempotency_key]").await;
    let csrf = b.value_of("form.grant input[name=csrf]").await;
    b.fill("form.grant input[name=amount]", "25").await;
    b.fill("form.grant textarea[name=note]", "goodwill for ticket #42")
        .await;
    b.click_then("form.grant button", ".flash-ok").await;
    let after = app.wallet(user).await["balance"].as_i64().expect("balance");
    assert_eq!(after, before + 25);
    assert!(b
        .text_of("table.ledger")
        .await
        .contains("goodwill for ticket #42"));
    // The same form sent again (a double submit) grants nothing more.
    let replay =
        format!("csrf={csrf}&idempotency_key={key}&amount=25&note=goodwill+for+ticket+%2342");
    let status = b
        .post_from_page(&format!("/console/users/{user}/credits"), &replay)
        .await;
    assert_eq!(status, 200, "redirected back to the user page");
    assert_eq!(app.wallet(user).await["balance"].as_i64(), Some(after));
    b.goto(&format!("/console/users/{user}")).await;
    b.shot("08-user", DESKTOP).await;
    b.shot("08-user-phone", PHONE).await;

    b.click("details.confirm summary").await;
    b.click_then("details.confirm button.danger", ".flash-ok")
        .await;
    assert_eq!(b.text_of(".title-row .account").await, "suspended");
    let d = app.job(queued).await;
    assert_eq!(
        d["job"]["state"], "cancelled",
        "suspension cancels waiting jobs"
    );
    assert_eq!(d["job"]["charge"], "voided");
    b.click_then(".danger-zone button.primary", ".flash-ok")
        .await;
    assert_eq!(b.text_of(".title-row .account").await, "active");
}

async fn workers_and_drain(b: &Browser<'_>) {
    b.goto("/console/workers").await;
    let table = b.text_of("table.workers").await;
    assert!(
        table.contains("console-gpu") && table.contains("NVIDIA L4"),
        "{table}"
    );
    assert!(table.contains("sdxl"), "models loaded: {table}");
    b.shot("09-workers", DESKTOP).await;
    b.click("details.confirm summary").await;
    b.click_then("details.confirm button.danger", ".flash-ok")
        .await;
    assert!(b.text_of("table.workers").await.contains("draining"));
}

async fn overview(b: &Browser<'_>) {
    b.goto("/console").await;
    let live = b.text_of("#live").await;
    assert!(
        live.contains("Per tier") && live.contains("in the last hour"),
        "{live}"
    );
    let stamp = || async {
        for _ in 0..5 {
            if let Ok(Some(t)) = b.find("#live .updated time").await.attr("datetime").await {
                return t;
            }
        }
        panic!("no refresh stamp")
    };
    let first = stamp().await;
    b.shot("10-overview", DESKTOP).await;
    b.shot("10-overview-phone", PHONE).await;
    // It refreshes itself.
    let deadline = Instant::now() + Duration::from_secs(12);
    while stamp().await == first {
        assert!(Instant::now() < deadline, "the overview did not refresh");
        actix_rt::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn sign_out(b: &Browser<'_>, app: &App) {
    let cookie = b.session_cookie().await;
    b.click_then("form.signout button", ".flash-ok").await;
    assert!(b.text().await.contains("Signed out"));
    b.goto("/console/workers").await;
    assert!(b.path().await.starts_with("/console/login"));
    let r = app.get("/console", None, Some(&cookie)).await;
    assert_eq!(r.status, 303, "the old session is gone");
}

#[actix_web::test]
async fn operator_console_in_a_real_browser() {
    let driver_path = match browser_tools() {
        Ok(p) => p,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("the console's browser test cannot run under CI: {why}")
        }
        Err(why) => {
            // Straight to stderr, past the test harness's capture.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED operator_console_in_a_real_browser: {why}"
            );
            return;
        }
    };
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let _ = std::fs::remove_file(shots.join("zz-failure.png"));

    let app = App::spawn().await;
    wrong_token_and_missing_session_are_refused(&app).await;
    let (user, key) = app.register("orbit@example.com").await;
    let mut gpu = Gpu::connect(&app, "console-gpu").await;
    let (retried, refunded) = run_scripted_jobs(&app, &mut gpu, &key).await;
    gpu.keep_alive();
    let to_cancel = app.submit(&key, video_job()).await;
    let stays_queued = app.submit(&key, video_job()).await;

    let driver = start_driver(&driver_path).await;
    let profile = tempfile::tempdir().expect("profile dir");
    let client = open_browser(&driver, profile.path()).await;
    let browser = Browser {
        client: client.clone(),
        app: &app,
        shots: shots.clone(),
    };
    let run = async {
        sign_in(&browser).await;
        jobs_list_and_pages(&browser, &retried, &refunded, &to_cancel).await;
        cancel_voids_the_hold(&browser, &app, &to_cancel).await;
        csrf_is_required(&browser, &app, &stays_queued).await;
        workers_and_drain(&browser).await;
        overview(&browser).await;
        users_search_grant_suspend(&browser, &app, &user, &stays_queued).await;
        sign_out(&browser, &app).await;
    };
    let outcome = std::panic::AssertUnwindSafe(run).catch_unwind().await;
    if outcome.is_err() {
        let _ = std::panic::AssertUnwindSafe(browser.shot("zz-failure", DESKTOP))
            .catch_unwind()
            .await;
    }
    let _ = client.close().await;
    drop(driver);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    eprintln!("console screenshots: {}", shots.display());
}

/// A valid 1×1 PNG, uploaded as the fake worker's output.
const TINY_PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0xF8, 0xCF, 0xC0, 0xF0,
    0x1F, 0x00, 0x05, 0x00, 0x01, 0xFF, 0x89, 0x99, 0x3D, 0x1D, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
];
