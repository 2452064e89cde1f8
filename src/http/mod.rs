//! The HTTP API: one module per resource; handlers parse, call the
//! orchestrator and map the result. Errors are problem+json throughout,
//! including malformed JSON and unknown routes.

pub mod admin;
pub mod auth;
pub mod events;
pub mod jobs;
pub mod keys;
pub mod materials;
pub mod objects;
pub mod openapi;
pub mod operators;
pub mod ops;
pub mod payments;
pub mod pricing;
pub mod problem;
pub mod users;
pub mod views;
pub mod wallet;
pub mod workers;

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{error, web, HttpRequest, HttpResponse};
use admedia_actors::Orchestrator;
use tracing::Instrument;

use crate::metrics::Metrics;
use problem::ApiError;

/// Largest request body accepted (a prompt is at most 4000 characters).
const MAX_BODY_BYTES: usize = 64 * 1024;
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

pub struct AppState {
    pub orchestrator: Orchestrator,
    pub node: std::sync::Arc<crate::cluster::NodeState>,
    pub rate_limiter: crate::ratelimit::RateLimiter,
    pub events: std::sync::Arc<crate::events::EventHub>,
    pub webhook_allow_private: bool,
    pub metrics: Arc<Metrics>,
    pub admin_token: String,
    pub worker_token: String,
    /// Verifies payment events; `None` when `ADMEDIA_PAYMENT_SECRET` is unset.
    pub payments: Option<payments::PaymentVerifier>,
    /// Materials and outputs in object storage.
    pub materials: Arc<crate::materials::Materials>,
}

impl AppState {
    /// A closed or terminated account's objects expire now, for the sweep
    /// to delete. The account change already happened: a catalogue outage
    /// is logged, and the objects then go at the end of their retention.
    pub async fn expire_objects(&self, user: admedia_actors::ids::UserId) {
        match self.materials.expire_user(user).await {
            Ok(n) => {
                tracing::info!(%user, objects = n, "account closed: objects scheduled for deletion")
            }
            Err(e) => {
                tracing::error!(%user, error = %e, "could not schedule the closed account's objects for deletion")
            }
        }
    }

    /// Refuses a submission over the user's per-minute limit.
    pub async fn rate_limit(
        &self,
        user: admedia_actors::ids::UserId,
        tier: admedia_actors::tier::Tier,
    ) -> Result<(), ApiError> {
        match self.rate_limiter.check(user, tier).await {
            crate::ratelimit::Decision::Allowed => Ok(()),
            crate::ratelimit::Decision::Limited { retry_after } => Err(ApiError::RateLimited {
                detail: format!(
                    "too many submissions for the {tier} tier; retry in {retry_after} s"
                ),
                retry_after,
            }),
        }
    }
}

pub fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => Ok(n),
        n => Err(ApiError::InvalidParams(format!(
            "limit must be 1..={MAX_PAGE}, got {n}"
        ))),
    }
}

fn json_error(err: error::JsonPayloadError, _: &HttpRequest) -> error::Error {
    let detail = match &err {
        error::JsonPayloadError::ContentType => {
            "expected Content-Type: application/json".to_owned()
        }
        error::JsonPayloadError::OverflowKnownLength { .. }
        | error::JsonPayloadError::Overflow { .. } => {
            format!("body larger than {MAX_BODY_BYTES} bytes")
        }
        other => format!("malformed JSON body: {other}"),
    };
    ApiError::InvalidRequest(detail).into()
}

fn query_error(err: error::QueryPayloadError, _: &HttpRequest) -> error::Error {
    ApiError::InvalidRequest(format!("malformed query string: {err}")).into()
}

fn path_error(err: error::PathError, _: &HttpRequest) -> error::Error {
    ApiError::InvalidRequest(format!("malformed path: {err}")).into()
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".into()))
}

/// Every route of the API.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_BODY_BYTES)
            .error_handler(json_error),
    )
    .app_data(web::QueryConfig::default().error_handler(query_error))
    .app_data(web::PathConfig::default().error_handler(path_error))
    .route("/healthz", web::get().to(ops::healthz))
    .route("/readyz", web::get().to(ops::readyz))
    .route("/metrics", web::get().to(ops::metrics))
    .route("/openapi.json", web::get().to(ops::openapi))
    .service(
        web::scope("/v1")
            .route("/users", web::post().to(users::register))
            .route("/me", web::get().to(users::me))
            .route("/me/webhook-secret", web::get().to(users::webhook_secret))
            // Platform rules (docs/platform-rules.md).
            .route("/me/api-keys", web::post().to(keys::issue))
            .route("/me/api-keys", web::get().to(keys::list))
            .route("/me/api-keys/{id}", web::delete().to(keys::revoke))
            .route("/me/close", web::post().to(keys::close))
            .route(
                "/admin/users/{id}/terminate",
                web::post().to(keys::terminate),
            )
            .route("/payments/webhook", web::post().to(payments::webhook))
            .route("/pricing", web::get().to(pricing::get))
            .route("/admin/pricing", web::post().to(pricing::announce))
            .route("/wallet", web::get().to(wallet::wallet))
            .route("/wallet/ledger", web::get().to(wallet::ledger))
            .route("/jobs", web::post().to(jobs::submit))
            .route("/jobs", web::get().to(jobs::list))
            .route("/jobs/{id}", web::get().to(jobs::get))
            .route("/jobs/{id}/cancel", web::post().to(jobs::cancel))
            .route("/jobs/{id}/events", web::get().to(events::stream))
            .route("/jobs/{id}/outputs/{n}", web::get().to(materials::output))
            .route(
                "/jobs/{id}/outputs/{n}",
                web::delete().to(materials::delete_output),
            )
            .route("/materials", web::post().to(materials::upload))
            .route("/materials", web::get().to(materials::list))
            .route("/materials/{id}", web::get().to(materials::get))
            .route("/materials/{id}", web::delete().to(materials::delete))
            .route("/materials/{id}/content", web::get().to(materials::content))
            .route("/objects/{key:.+}", web::get().to(objects::get))
            .route("/objects/{key:.+}", web::put().to(objects::put))
            .route("/admin/users/{id}/credits", web::post().to(admin::grant))
            .route(
                "/admin/users/{id}/membership",
                web::put().to(admin::membership),
            )
            .route("/admin/users/{id}/suspend", web::post().to(admin::suspend))
            .route(
                "/admin/users/{id}/reinstate",
                web::post().to(admin::reinstate),
            )
            .route("/admin/stats", web::get().to(admin::stats))
            .route("/admin/jobs", web::get().to(operators::jobs))
            .route("/admin/jobs/{id}", web::get().to(operators::job))
            .route("/admin/jobs/{id}/cancel", web::post().to(operators::cancel))
            .route("/admin/users", web::get().to(operators::users))
            .route("/admin/users/{id}", web::get().to(operators::user))
            .route("/admin/workers", web::get().to(operators::workers))
            .route(
                "/admin/workers/{id}/drain",
                web::post().to(operators::drain),
            )
            .route("/workers/connect", web::get().to(workers::connect)),
    )
    .configure(crate::console::routes)
    .default_service(web::to(not_found));
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// One span per request, carrying `X-Request-Id` (taken from the client
/// when sane, generated otherwise, and returned); request count and latency
/// by route pattern, never by concrete path.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, error::Error> {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    let span = tracing::info_span!("http", %method, %route, request_id = %request_id, status = tracing::field::Empty);
    let mut res = next.call(req).instrument(span.clone()).await?;
    let status = res.status().as_u16();
    span.record("status", status);
    if let Some(m) = metrics {
        m.http_request(&route, &method, status, started.elapsed());
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert(REQUEST_ID.clone(), v);
    }
    Ok(res)
}
