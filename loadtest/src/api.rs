//! A small client of the orchestrator's HTTP API, over awc.
//! Every response is read into a status and a JSON value; nothing here
//! panics on what a server sends.

use std::time::Duration;

use admedia_actors::domain::job::{Charge, FailureClass, JobState};
use admedia_actors::domain::ledger::EntryKind;
use admedia_actors::domain::tier::Tier;
use awc::http::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

/// Largest response body read (one page of 200 jobs is well under this).
const MAX_BODY: usize = 32 << 20;

#[derive(Debug, Clone)]
pub enum ApiError {
    /// No HTTP answer: connection refused or reset, timeout.
    Transport(String),
    /// An answer other than the one expected.
    Status { status: u16, body: String },
    /// An answer that is not the JSON the contract promises.
    Decode(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Transport(e) => write!(f, "no answer: {e}"),
            ApiError::Status { status, body } => {
                let short: String = body.chars().take(300).collect();
                write!(f, "HTTP {status}: {short}")
            }
            ApiError::Decode(e) => write!(f, "unexpected response: {e}"),
        }
    }
}

impl std::error::Error for ApiError {}

pub struct Response {
    pub status: u16,
    pub body: Value,
    /// `Idempotent-Replayed: true` was set.
    pub replayed: bool,
}

impl Response {
    /// `type` of a problem+json body, e.g. `queue-limit`.
    pub fn problem_type(&self) -> Option<&str> {
        self.body.get("type").and_then(Value::as_str)
    }

    fn expect<T: DeserializeOwned>(self, status: u16) -> Result<T, ApiError> {
        if self.status != status {
            return Err(ApiError::Status {
                status: self.status,
                body: self.body.to_string(),
            });
        }
        serde_json::from_value(self.body).map_err(|e| ApiError::Decode(e.to_string()))
    }
}

#[derive(Clone)]
pub struct Api {
    client: awc::Client,
    base: String,
}

#[derive(Deserialize, Debug, Clone)]
pub struct UserDto {
    pub id: String,
    pub tier: Tier,
}

#[derive(Deserialize, Debug, Clone)]
pub struct Registered {
    pub user: UserDto,
    pub api_key: String,
}

#[derive(Deserialize, Debug, Clone)]
pub struct WalletDto {
    pub balance: i64,
    pub held: i64,
    pub available: i64,
}

#[derive(Deserialize, Debug, Clone)]
pub struct JobErrorDto {
    pub class: FailureClass,
    /// Set when the platform ended the job, e.g. `expired`.
    #[serde(default)]
    pub code: Option<String>,
}

/// One worker of `GET /v1/admin/workers`, the fields the harness reads.
#[derive(Deserialize, Debug, Clone)]
pub struct AdminWorkerDto {
    pub name: String,
    #[serde(default)]
    pub quarantined: bool,
    #[serde(default)]
    pub quarantine_left_ms: Option<u64>,
    #[serde(default)]
    pub consecutive_failures: u32,
}

#[derive(Deserialize, Debug, Clone)]
struct AdminWorkersPage {
    workers: Vec<AdminWorkerDto>,
}

/// One model of `GET /v1/models`.
#[derive(Deserialize, Debug, Clone)]
pub struct ModelDto {
    pub name: String,
    pub kind: admedia_actors::domain::job::JobKind,
    pub vram_mb: u32,
    pub expected_ms_per_unit: u64,
}

#[derive(Deserialize, Debug, Clone)]
struct ModelsPage {
    models: Vec<ModelDto>,
}

/// The fields of `Job` the harness reads.
#[derive(Deserialize, Debug, Clone)]
pub struct JobDto {
    pub id: String,
    pub state: JobState,
    pub tier: Tier,
    pub cost: i64,
    pub attempts: u32,
    #[serde(default)]
    pub model: String,
    pub prompt: String,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub error: Option<JobErrorDto>,
    pub charge: Charge,
}

#[derive(Deserialize, Debug, Clone)]
pub struct EntryDto {
    pub id: String,
    pub kind: EntryKind,
    pub amount: i64,
    pub balance: i64,
    pub held: i64,
    pub job_id: Option<String>,
    /// When the server wrote it: for a job that has left the listings, its
    /// post is the only record of when it finished.
    #[serde(default)]
    pub created_at: Option<String>,
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct WorkerStatsDto {
    #[serde(default)]
    pub connected: u64,
    #[serde(default)]
    pub busy_slots: u64,
    #[serde(default)]
    pub idle_slots: u64,
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct StatsDto {
    #[serde(default)]
    pub queue: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    pub retrying: u64,
    #[serde(default)]
    pub jobs: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    pub workers: WorkerStatsDto,
}

impl StatsDto {
    /// Jobs not yet finished, server-wide.
    pub fn open_jobs(&self) -> u64 {
        ["queued", "assigned", "running"]
            .iter()
            .map(|s| self.jobs.get(*s).copied().unwrap_or(0))
            .sum()
    }
}

impl Api {
    pub fn new(base: &str, timeout: Duration) -> Api {
        let connector = awc::Connector::new()
            .limit(512)
            .timeout(Duration::from_secs(5));
        Api {
            client: awc::Client::builder()
                .connector(connector)
                .timeout(timeout)
                .disable_redirects()
                .finish(),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The WebSocket URL of the worker protocol.
    pub fn worker_url(&self) -> String {
        let rest = self
            .base
            .strip_prefix("https://")
            .map(|r| format!("wss://{r}"))
            .or_else(|| {
                self.base
                    .strip_prefix("http://")
                    .map(|r| format!("ws://{r}"))
            })
            .unwrap_or_else(|| self.base.clone());
        format!("{rest}/v1/workers/connect")
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Response, ApiError> {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.insert_header(("Authorization", format!("Bearer {token}")));
        }
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        let sent = match body {
            Some(b) => req.send_json(b).await,
            None => req.send().await,
        };
        let mut res = sent.map_err(|e| ApiError::Transport(e.to_string()))?;
        let status = res.status().as_u16();
        let replayed = res
            .headers()
            .get("Idempotent-Replayed")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let bytes = res
            .body()
            .limit(MAX_BODY)
            .await
            .map_err(|e| ApiError::Transport(format!("reading the body: {e}")))?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok(Response {
            status,
            body,
            replayed,
        })
    }

    pub async fn ready(&self) -> bool {
        matches!(
            self.call(Method::GET, "/readyz", None, None, &[]).await,
            Ok(r) if r.status == 200
        )
    }

    pub async fn register(&self, email: &str, name: &str) -> Result<Registered, ApiError> {
        let body = json!({"email": email, "display_name": name});
        self.call(Method::POST, "/v1/users", None, Some(&body), &[])
            .await?
            .expect(201)
    }

    pub async fn set_membership(
        &self,
        admin: &str,
        user: &str,
        tier: Tier,
    ) -> Result<(), ApiError> {
        let body = json!({"tier": tier, "expires_at": "2100-01-01T00:00:00Z"});
        let res = self
            .call(
                Method::PUT,
                &format!("/v1/admin/users/{user}/membership"),
                Some(admin),
                Some(&body),
                &[],
            )
            .await?;
        let user: UserDto = res.expect(200)?;
        if user.tier != tier {
            return Err(ApiError::Decode(format!(
                "membership set to {tier} but the user reads as {}",
                user.tier
            )));
        }
        Ok(())
    }

    pub async fn grant(
        &self,
        admin: &str,
        user: &str,
        amount: i64,
        key: &str,
    ) -> Result<WalletDto, ApiError> {
        let body = json!({"amount": amount, "source": "purchase", "idempotency_key": key,
                          "note": "admedia-loadtest"});
        self.call(
            Method::POST,
            &format!("/v1/admin/users/{user}/credits"),
            Some(admin),
            Some(&body),
            &[],
        )
        .await?
        .expect(200)
    }

    pub async fn submit(
        &self,
        api_key: &str,
        job: &Value,
        idempotency_key: &str,
    ) -> Result<Response, ApiError> {
        self.call(
            Method::POST,
            "/v1/jobs",
            Some(api_key),
            Some(job),
            &[("Idempotency-Key", idempotency_key)],
        )
        .await
    }

    /// `POST /v1/jobs/batch` with `items` (`{"idempotency_key", "job"}`).
    pub async fn submit_batch(&self, api_key: &str, items: &Value) -> Result<Response, ApiError> {
        let body = serde_json::json!({ "items": items });
        self.call(
            Method::POST,
            "/v1/jobs/batch",
            Some(api_key),
            Some(&body),
            &[],
        )
        .await
    }

    pub async fn cancel(&self, api_key: &str, job_id: &str) -> Result<Response, ApiError> {
        self.call(
            Method::POST,
            &format!("/v1/jobs/{job_id}/cancel"),
            Some(api_key),
            None,
            &[],
        )
        .await
    }

    pub async fn stats(&self, admin: &str) -> Result<StatsDto, ApiError> {
        self.call(Method::GET, "/v1/admin/stats", Some(admin), None, &[])
            .await?
            .expect(200)
    }

    pub async fn admin_workers(&self, admin: &str) -> Result<Vec<AdminWorkerDto>, ApiError> {
        let page: AdminWorkersPage = self
            .call(Method::GET, "/v1/admin/workers", Some(admin), None, &[])
            .await?
            .expect(200)?;
        Ok(page.workers)
    }

    pub async fn models(&self) -> Result<Vec<ModelDto>, ApiError> {
        let page: ModelsPage = self
            .call(Method::GET, "/v1/models", None, None, &[])
            .await?
            .expect(200)?;
        Ok(page.models)
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> Result<String, ApiError> {
        let res = self.call(Method::GET, "/metrics", None, None, &[]).await?;
        match (res.status, res.body) {
            (200, Value::String(text)) => Ok(text),
            (status, body) => Err(ApiError::Status {
                status,
                body: body.to_string(),
            }),
        }
    }

    pub async fn wallet(&self, api_key: &str) -> Result<WalletDto, ApiError> {
        self.call(Method::GET, "/v1/wallet", Some(api_key), None, &[])
            .await?
            .expect(200)
    }

    /// Every page of a `{field: [...], next}` listing, oldest page last.
    async fn all_pages<T: DeserializeOwned>(
        &self,
        path: &str,
        field: &str,
        api_key: &str,
    ) -> Result<Vec<T>, ApiError> {
        let mut out = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let url = match &before {
                Some(b) => format!("{path}?limit=200&before={b}"),
                None => format!("{path}?limit=200"),
            };
            let res = self
                .call(Method::GET, &url, Some(api_key), None, &[])
                .await?;
            if res.status != 200 {
                return Err(ApiError::Status {
                    status: res.status,
                    body: res.body.to_string(),
                });
            }
            let items = res
                .body
                .get(field)
                .cloned()
                .ok_or_else(|| ApiError::Decode(format!("{path}: no {field:?} in the page")))?;
            let items: Vec<T> = serde_json::from_value(items)
                .map_err(|e| ApiError::Decode(format!("{path}: {e}")))?;
            out.extend(items);
            match res.body.get("next").and_then(Value::as_str) {
                Some(n) if Some(n) != before.as_deref() => before = Some(n.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    pub async fn jobs(&self, api_key: &str) -> Result<Vec<JobDto>, ApiError> {
        self.all_pages("/v1/jobs", "jobs", api_key).await
    }

    pub async fn ledger(&self, api_key: &str) -> Result<Vec<EntryDto>, ApiError> {
        self.all_pages("/v1/wallet/ledger", "entries", api_key)
            .await
    }
}
