//! `spawn_app()`: the real server on a random port with a fresh in-memory
//! store, and a small HTTP client with the calls every test module needs.

use std::time::{Duration, Instant};

use actix_web::http::header::HeaderMap;
use actix_web::http::Method;
use admedia::config::Settings;
use admedia::startup::Application;
use serde_json::{json, Value};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef0123";
pub const WORKER_TOKEN: &str = "test-worker-token-0123456789abcdef012";
/// How long a poll waits for a job to reach a state before failing.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestApp {
    pub address: String,
    pub admin_token: String,
    pub client: awc::Client,
    /// The PostgreSQL URL it runs on, if any.
    pub database_url: Option<String>,
}

/// A response read in full: status, headers and body.
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("visible ASCII header").to_owned())
    }

    /// Asserts the status and returns the JSON body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            self.text()
        );
        self.json()
    }

    /// Asserts a problem document: status, `type`, content type and the
    /// fields every problem carries. Returns the document.
    #[track_caller]
    pub fn expect_problem(&self, status: u16, kind: &str) -> Value {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            self.text()
        );
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json"),
            "problem content type"
        );
        let p = self.json();
        assert_eq!(p["type"], kind, "problem type; body: {p}");
        assert_eq!(p["status"], status, "problem status; body: {p}");
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        assert!(p["detail"].as_str().is_some_and(|d| !d.is_empty()), "{p}");
        p
    }
}

/// What a request carries besides method, path and credentials.
pub enum Body<'a> {
    None,
    Json(&'a Value),
    /// Raw bytes with an optional Content-Type (none: header absent).
    Raw(Option<&'a str>, &'a str),
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        headers: &[(&str, &str)],
        body: Body<'_>,
    ) -> Resp {
        let mut req = self.client.request(method, self.url(path));
        if let Some(token) = auth {
            req = req.insert_header(("Authorization", format!("Bearer {token}")));
        }
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        let sent = match body {
            Body::None => req.send().await,
            Body::Json(v) => req.send_json(v).await,
            Body::Raw(content_type, raw) => {
                if let Some(ct) = content_type {
                    req = req.insert_header(("Content-Type", ct));
                }
                req.send_body(raw.to_owned()).await
            }
        };
        let mut res = sent.unwrap_or_else(|e| panic!("request to {path} failed: {e}"));
        let body = res
            .body()
            .limit(16 * 1024 * 1024)
            .await
            .unwrap_or_else(|e| panic!("reading the body of {path} failed: {e}"));
        Resp {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            body: body.to_vec(),
        }
    }

    pub async fn get(&self, path: &str, auth: Option<&str>) -> Resp {
        self.call(Method::GET, path, auth, &[], Body::None).await
    }

    pub async fn post_json(&self, path: &str, auth: Option<&str>, body: &Value) -> Resp {
        self.call(Method::POST, path, auth, &[], Body::Json(body))
            .await
    }

    pub async fn post(&self, path: &str, auth: Option<&str>) -> Resp {
        self.call(Method::POST, path, auth, &[], Body::None).await
    }

    pub async fn put_json(&self, path: &str, auth: Option<&str>, body: &Value) -> Resp {
        self.call(Method::PUT, path, auth, &[], Body::Json(body))
            .await
    }

    pub async fn wallet(&self, key: &str) -> Value {
        self.get("/v1/wallet", Some(key)).await.expect(200)
    }

    pub async fn job(&self, key: &str, id: &str) -> Value {
        self.get(&format!("/v1/jobs/{id}"), Some(key))
            .await
            .expect(200)
    }

    /// Every ledger entry of the caller, newest first.
    pub async fn ledger(&self, key: &str) -> Vec<Value> {
        let page = self
            .get("/v1/wallet/ledger?limit=200", Some(key))
            .await
            .expect(200);
        assert!(page["next"].is_null(), "more than 200 entries");
        page["entries"].as_array().expect("entries").clone()
    }

    // The admin API.

    pub async fn grant(&self, user_id: &str, amount: i64, idempotency_key: &str) -> Resp {
        self.post_json(
            &format!("/v1/admin/users/{user_id}/credits"),
            Some(&self.admin_token),
            &json!({"amount": amount, "source": "admin", "idempotency_key": idempotency_key}),
        )
        .await
    }

    pub async fn set_membership(&self, user_id: &str, tier: &str, expires_at: Value) -> Resp {
        self.put_json(
            &format!("/v1/admin/users/{user_id}/membership"),
            Some(&self.admin_token),
            &json!({"tier": tier, "expires_at": expires_at}),
        )
        .await
    }

    pub async fn suspend(&self, user_id: &str) -> Resp {
        self.post(
            &format!("/v1/admin/users/{user_id}/suspend"),
            Some(&self.admin_token),
        )
        .await
    }

    pub async fn reinstate(&self, user_id: &str) -> Resp {
        self.post(
            &format!("/v1/admin/users/{user_id}/reinstate"),
            Some(&self.admin_token),
        )
        .await
    }

    pub async fn stats(&self) -> Value {
        self.get("/v1/admin/stats", Some(&self.admin_token))
            .await
            .expect(200)
    }
}

/// Settings every test starts from: a random port, known tokens, two fast
/// simulated workers, short retry delays and few HTTP threads.
pub fn test_settings() -> Settings {
    Settings {
        bind: "127.0.0.1:0".into(),
        database_url: None,
        redis_url: None,
        admin_token: Some(ADMIN_TOKEN.into()),
        worker_token: Some(WORKER_TOKEN.into()),
        sim_workers: Some(2),
        sim_slots: 2,
        sim_job_time: Duration::from_millis(20),
        retry_base: Duration::from_millis(10),
        retry_max: Duration::from_millis(40),
        http_workers: Some(2),
        // Every test registers and authenticates from 127.0.0.1, some with
        // wrong tokens on purpose; the limits have their own tests.
        registrations_per_hour: 0,
        auth_failures_per_minute: 0,
        ..Settings::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// An app whose jobs stay queued: no workers.
pub async fn spawn_app_without_workers() -> TestApp {
    spawn_app_with(|s| s.sim_workers = Some(0)).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings();
    tweak(&mut settings);
    let database_url = settings.database_url.clone();
    let app = Application::build(settings)
        .await
        .expect("failed to build the application");
    let port = app.port();
    let admin_token = app.admin_token().to_owned();
    actix_rt::spawn(app.run_until_stopped());
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        admin_token,
        client,
        database_url,
    }
}

/// Registers a user; returns the `user` object and the API key.
pub async fn register(app: &TestApp, email: &str) -> (Value, String) {
    let body = app
        .post_json(
            "/v1/users",
            None,
            &json!({"email": email, "display_name": "Test User"}),
        )
        .await
        .expect(201);
    let key = body["api_key"].as_str().expect("api_key").to_owned();
    (body["user"].clone(), key)
}

/// The user id of a registered user object.
pub fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

/// The cheapest job: one 1024x1024 image, one credit.
pub fn image_job() -> Value {
    json!({"kind": "image", "model": "sdxl", "prompt": "a red fox in the snow"})
}

pub async fn submit(app: &TestApp, key: &str, body: &Value, idem_key: Option<&str>) -> Resp {
    let headers: Vec<(&str, &str)> = idem_key
        .map(|k| ("Idempotency-Key", k))
        .into_iter()
        .collect();
    app.call(
        Method::POST,
        "/v1/jobs",
        Some(key),
        &headers,
        Body::Json(body),
    )
    .await
}

/// Submits and expects 202; returns the job.
pub async fn submit_ok(app: &TestApp, key: &str, body: &Value) -> Value {
    submit(app, key, body, None).await.expect(202)
}

/// Polls the job until it reaches `state`; fails on timeout or when the
/// job ends in another state.
pub async fn wait_for_state(
    app: &TestApp,
    key: &str,
    job_id: &str,
    state: &str,
    timeout: Duration,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let job = app.job(key, job_id).await;
        let current = job["state"].as_str().expect("state").to_owned();
        if current == state {
            return job;
        }
        let terminal = matches!(current.as_str(), "succeeded" | "failed" | "cancelled");
        assert!(
            !terminal,
            "job {job_id} ended {current}, expected {state}: {job}"
        );
        assert!(
            Instant::now() < deadline,
            "job {job_id} not {state} after {timeout:?}: {job}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A wallet as `(balance, held, available)`.
pub fn wallet_tuple(w: &Value) -> (i64, i64, i64) {
    (
        w["balance"].as_i64().expect("balance"),
        w["held"].as_i64().expect("held"),
        w["available"].as_i64().expect("available"),
    )
}

/// In CI a missing service fails the test; elsewhere it is skipped.
fn service_missing(what: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{what} is required when CI=true: {why}");
    }
    eprintln!("skipping: {what} unavailable ({why}); run ./scripts/test.sh to provide it");
}

/// The same server on PostgreSQL, in a schema of its own, with settings
/// changed by `tweak` (`None`, after a note, when `DATABASE_URL` is unset
/// outside CI). Nodes of one database elect one leader, so this node may
/// stand by: requests are served either way, and jobs wait until a leader
/// dispatches them.
pub async fn spawn_app_on_postgres_with(tweak: impl FnOnce(&mut Settings)) -> Option<TestApp> {
    let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
        service_missing("PostgreSQL", "DATABASE_URL is not set");
        return None;
    };
    let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
    let config: tokio_postgres::Config = url
        .parse()
        .unwrap_or_else(|e| panic!("DATABASE_URL {url:?}: {e}"));
    match config.connect(tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            actix_rt::spawn(conn);
            client
                .batch_execute(&format!("CREATE SCHEMA {schema}"))
                .await
                .unwrap_or_else(|e| panic!("create schema: {e}"));
        }
        Err(e) => {
            service_missing("PostgreSQL", &e.to_string());
            return None;
        }
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    let scoped = format!("{url}{separator}options=-c%20search_path%3D{schema}");
    Some(
        spawn_app_with(|s| {
            s.database_url = Some(scoped);
            s.sim_workers = Some(0);
            tweak(s);
        })
        .await,
    )
}

/// Two nodes of one deployment: one PostgreSQL schema of their own and one
/// Redis prefix of their own (`None`, after a note, when either service is
/// missing outside CI).
pub async fn spawn_two_nodes_on_postgres_and_redis() -> Option<(TestApp, TestApp)> {
    let redis = crate::support::redis_url()?;
    let prefix = format!("t-{}", uuid::Uuid::now_v7().simple());
    let first = spawn_app_on_postgres_with(|s| {
        s.redis_url = Some(redis.clone());
        s.redis_prefix = Some(prefix.clone());
    })
    .await?;
    let url = first
        .database_url
        .clone()
        .unwrap_or_else(|| panic!("{} runs on the embedded store", first.address));
    let second = spawn_app_with(|s| {
        s.database_url = Some(url);
        s.sim_workers = Some(0);
        s.redis_url = Some(redis);
        s.redis_prefix = Some(prefix);
    })
    .await;
    Some((first, second))
}

/// A valid 1×1 PNG.
pub const TINY_PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0xF8, 0xCF, 0xC0, 0xF0,
    0x1F, 0x00, 0x05, 0x00, 0x01, 0xFF, 0x89, 0x99, 0x3D, 0x1D, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
];

/// PUTs `bytes` to a signed URL; returns the status.
pub async fn put_signed(url: &str, bytes: &[u8]) -> u16 {
    awc::Client::new()
        .put(url)
        .send_body(bytes.to_vec())
        .await
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"))
        .status()
        .as_u16()
}

/// Uploads `bytes` to every output slot of an assignment, as a worker
/// does, and returns the outputs to name in `complete`.
pub async fn upload_outputs(assignment: &Value, bytes: &[u8]) -> Vec<Value> {
    let slots = assignment["outputs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut outputs = Vec::new();
    for slot in slots {
        let url = slot["upload_url"].as_str().expect("upload_url");
        assert_eq!(put_signed(url, bytes).await, 200, "upload to {url}");
        outputs.push(json!({"url": slot["key"], "content_type": "image/png"}));
    }
    outputs
}
