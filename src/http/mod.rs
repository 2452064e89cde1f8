//! The HTTP API: one module per resource; handlers parse, call the
//! orchestrator and map the result. Errors are problem+json throughout,
//! including malformed JSON and unknown routes.

pub mod account_webhooks;
pub mod auth;
pub mod client_limits;
pub mod events;
pub mod health;
pub mod input;
pub mod jobs;
pub mod keys;
pub mod materials;
pub mod models;
pub mod objects;
pub mod openapi;
pub mod operator;
pub mod payments;
pub mod pricing;
pub mod problem;
pub mod scopes;
pub mod users;
pub mod wallet;
pub mod workers;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{error, web, HttpRequest, HttpResponse, ResponseError};
use admedia_actors::Orchestrator;
use tracing::Instrument;

use crate::metrics::Metrics;
use problem::ApiError;

/// Largest request body accepted (a prompt is at most 4000 characters).
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest batch body: as much per job as a single submission may send.
const MAX_BATCH_BODY_BYTES: usize = jobs::MAX_BATCH * MAX_BODY_BYTES;
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

pub struct AppState {
    pub orchestrator: Orchestrator,
    pub node: std::sync::Arc<crate::cluster::NodeState>,
    pub rate_limiter: crate::ratelimit::RateLimiter,
    /// Failed authentications and registrations per client address.
    pub client_limits: client_limits::ClientLimits,
    pub events: std::sync::Arc<crate::events::EventHub>,
    pub webhook_allow_private: bool,
    pub metrics: Arc<Metrics>,
    pub admin_token: String,
    pub worker_token: String,
    /// Verifies payment events; `None` when `ADMEDIA_PAYMENT_SECRET` is unset.
    pub payments: Option<payments::PaymentVerifier>,
    /// Materials and outputs in object storage.
    pub materials: Arc<crate::materials::Materials>,
    /// The ledger's archived chapters, read past the live entries.
    pub archive: Arc<crate::ledger_archive::LedgerArchive>,
}

impl AppState {
    /// A closed or terminated account's objects expire now, for the sweep
    /// to delete. The account change already happened: a catalogue outage
    /// is logged, and the objects then go at the end of their retention.
    pub async fn expire_objects(&self, user: admedia_actors::domain::ids::UserId) {
        match self.materials.expire_user(user).await {
            Ok(n) => {
                tracing::info!(%user, objects = n, "account closed: objects scheduled for deletion")
            }
            Err(e) => {
                tracing::error!(%user, error = %e, "could not schedule the closed account's objects for deletion")
            }
        }
    }

    /// Refuses a submission over the user's per-minute limit; what it
    /// counted is given back with `rate_limiter.release` when the
    /// submission is refused after all.
    pub async fn rate_limit(
        &self,
        user: admedia_actors::domain::ids::UserId,
        tier: admedia_actors::domain::tier::Tier,
    ) -> Result<Option<crate::ratelimit::Spent>, ApiError> {
        match self.rate_limiter.check(user, tier).await {
            crate::ratelimit::Decision::Allowed { spent } => Ok(spent),
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

/// A page's `before` cursor, the id of the last row of the page before;
/// `what` names the id for the error (`job`, `ledger entry`).
pub fn before_cursor<Id: FromStr>(raw: Option<&str>, what: &str) -> Result<Option<Id>, ApiError> {
    raw.map(|raw| {
        raw.parse()
            .map_err(|_| ApiError::InvalidParams(format!("before: {raw:?} is not a {what} id")))
    })
    .transpose()
}

/// Cuts `rows`, read with one row more than `limit`, to the page, and
/// gives the next page's cursor (the `id` of the page's last row) when
/// that row was there.
pub fn next_page<T>(
    rows: &mut Vec<T>,
    limit: usize,
    id: impl FnOnce(&T) -> String,
) -> Option<String> {
    if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(id)
    } else {
        None
    }
}

fn json_error(err: error::JsonPayloadError, req: &HttpRequest) -> error::Error {
    json_error_over(MAX_BODY_BYTES, err, req)
}

fn batch_json_error(err: error::JsonPayloadError, req: &HttpRequest) -> error::Error {
    json_error_over(MAX_BATCH_BODY_BYTES, err, req)
}

fn json_error_over(limit: usize, err: error::JsonPayloadError, _: &HttpRequest) -> error::Error {
    let detail = match &err {
        error::JsonPayloadError::ContentType => {
            "expected Content-Type: application/json".to_owned()
        }
        error::JsonPayloadError::OverflowKnownLength { .. }
        | error::JsonPayloadError::Overflow { .. } => {
            return ApiError::PayloadTooLarge(format!("body larger than {limit} bytes")).into();
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

/// One path of the API with the routes of its methods. Any other method
/// is `405 method-not-allowed` with `Allow` naming the ones that exist
/// (actix-web alone would fall through to the 404 of unknown paths).
fn resource(path: &str, routes: Vec<(Method, actix_web::Route)>) -> actix_web::Resource {
    let allow: Vec<&'static str> = routes.iter().map(|(m, _)| method_name(m)).collect();
    let allow = allow.join(", ");
    let mut resource = web::resource(path);
    for (_, route) in routes {
        resource = resource.route(route);
    }
    resource.default_service(web::to(move || {
        let allow = allow.clone();
        async move { Err::<HttpResponse, _>(ApiError::MethodNotAllowed { allow }) }
    }))
}

fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        _ => "OPTIONS",
    }
}

fn get(route: actix_web::Route) -> (Method, actix_web::Route) {
    (Method::GET, route)
}

fn post(route: actix_web::Route) -> (Method, actix_web::Route) {
    (Method::POST, route)
}

/// Every route of the API.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_BODY_BYTES)
            .error_handler(json_error),
    )
    // Raw bodies (the payment webhook) have the same limit as JSON ones.
    .app_data(web::PayloadConfig::default().limit(MAX_BODY_BYTES))
    .app_data(web::QueryConfig::default().error_handler(query_error))
    .app_data(web::PathConfig::default().error_handler(path_error))
    .service(resource(
        "/healthz",
        vec![get(web::get().to(health::healthz))],
    ))
    .service(resource(
        "/readyz",
        vec![get(web::get().to(health::readyz))],
    ))
    .service(resource(
        "/metrics",
        vec![get(web::get().to(health::metrics))],
    ))
    .service(resource(
        "/openapi.json",
        vec![get(web::get().to(openapi::openapi))],
    ))
    .service(
        web::scope("/v1")
            .service(resource(
                "/users",
                vec![post(web::post().to(users::register))],
            ))
            .service(resource("/me", vec![get(web::get().to(users::me))]))
            .service(resource(
                "/me/webhook-secret",
                vec![get(web::get().to(users::webhook_secret))],
            ))
            // Platform rules (docs/platform-rules.md).
            .service(resource(
                "/me/api-keys",
                vec![
                    post(web::post().to(keys::issue)),
                    get(web::get().to(keys::list)),
                ],
            ))
            .service(resource(
                "/me/api-keys/{id}",
                vec![(Method::DELETE, web::delete().to(keys::revoke))],
            ))
            .service(resource(
                "/me/webhooks",
                vec![
                    post(web::post().to(account_webhooks::create)),
                    get(web::get().to(account_webhooks::list)),
                ],
            ))
            .service(resource(
                "/me/webhooks/{id}",
                vec![
                    get(web::get().to(account_webhooks::get)),
                    (Method::PATCH, web::patch().to(account_webhooks::update)),
                    (Method::DELETE, web::delete().to(account_webhooks::delete)),
                ],
            ))
            .service(resource(
                "/me/webhooks/{id}/deliveries",
                vec![get(web::get().to(account_webhooks::deliveries))],
            ))
            .service(resource(
                "/events",
                vec![get(web::get().to(events::user_stream))],
            ))
            .service(resource(
                "/me/close",
                vec![post(web::post().to(users::close))],
            ))
            .service(resource(
                "/admin/users/{id}/terminate",
                vec![post(web::post().to(operator::accounts::terminate))],
            ))
            .service(resource(
                "/payments/webhook",
                vec![post(web::post().to(payments::webhook))],
            ))
            .service(resource("/pricing", vec![get(web::get().to(pricing::get))]))
            .service(resource("/models", vec![get(web::get().to(models::list))]))
            .service(resource(
                "/admin/pricing",
                vec![post(web::post().to(pricing::announce))],
            ))
            .service(resource(
                "/wallet",
                vec![get(web::get().to(wallet::wallet))],
            ))
            .service(resource(
                "/wallet/ledger",
                vec![get(web::get().to(wallet::ledger))],
            ))
            .service(resource(
                "/jobs",
                vec![
                    post(web::post().to(jobs::submit)),
                    get(web::get().to(jobs::list)),
                ],
            ))
            // Before `/jobs/{id}`, which would take `batch` for an id.
            .service(
                resource(
                    "/jobs/batch",
                    vec![post(web::post().to(jobs::submit_batch))],
                )
                .app_data(
                    web::JsonConfig::default()
                        .limit(MAX_BATCH_BODY_BYTES)
                        .error_handler(batch_json_error),
                ),
            )
            .service(resource("/jobs/{id}", vec![get(web::get().to(jobs::get))]))
            .service(resource(
                "/jobs/{id}/cancel",
                vec![post(web::post().to(jobs::cancel))],
            ))
            .service(resource(
                "/jobs/{id}/events",
                vec![get(web::get().to(events::stream))],
            ))
            .service(resource(
                "/jobs/{id}/outputs/{n}",
                vec![
                    get(web::get().to(materials::output)),
                    (Method::DELETE, web::delete().to(materials::delete_output)),
                ],
            ))
            .service(resource(
                "/materials",
                vec![
                    post(web::post().to(materials::upload)),
                    get(web::get().to(materials::list)),
                ],
            ))
            .service(resource(
                "/materials/{id}",
                vec![
                    get(web::get().to(materials::get)),
                    (Method::DELETE, web::delete().to(materials::delete)),
                ],
            ))
            .service(resource(
                "/materials/{id}/content",
                vec![get(web::get().to(materials::content))],
            ))
            .service(resource(
                "/objects/{key:.+}",
                vec![
                    get(web::get().to(objects::get)),
                    (Method::PUT, web::put().to(objects::put)),
                ],
            ))
            .service(resource(
                "/admin/users/{id}/credits",
                vec![post(web::post().to(operator::accounts::grant))],
            ))
            .service(resource(
                "/admin/users/{id}/membership",
                vec![(Method::PUT, web::put().to(operator::accounts::membership))],
            ))
            .service(resource(
                "/admin/users/{id}/suspend",
                vec![post(web::post().to(operator::accounts::suspend))],
            ))
            .service(resource(
                "/admin/users/{id}/reinstate",
                vec![post(web::post().to(operator::accounts::reinstate))],
            ))
            .service(resource(
                "/admin/users/{id}/moderation",
                vec![get(web::get().to(operator::accounts::user_moderation))],
            ))
            .service(resource(
                "/admin/payments/review",
                vec![get(web::get().to(payments::for_review))],
            ))
            .service(resource(
                "/admin/suspensions",
                vec![get(web::get().to(operator::accounts::suspensions))],
            ))
            .service(resource(
                "/admin/stats",
                vec![get(web::get().to(operator::fleet::stats))],
            ))
            .service(resource(
                "/admin/jobs",
                vec![get(web::get().to(operator::jobs::jobs))],
            ))
            .service(resource(
                "/admin/jobs/{id}",
                vec![get(web::get().to(operator::jobs::job))],
            ))
            .service(resource(
                "/admin/jobs/{id}/cancel",
                vec![post(web::post().to(operator::jobs::cancel))],
            ))
            .service(resource(
                "/admin/users",
                vec![get(web::get().to(operator::accounts::users))],
            ))
            .service(resource(
                "/admin/users/{id}",
                vec![get(web::get().to(operator::accounts::user))],
            ))
            .service(resource(
                "/admin/workers",
                vec![get(web::get().to(operator::fleet::workers))],
            ))
            .service(resource(
                "/admin/workers/{id}/drain",
                vec![post(web::post().to(operator::fleet::drain))],
            ))
            .service(resource(
                "/admin/workers/{id}/lift-quarantine",
                vec![post(web::post().to(operator::fleet::lift_quarantine))],
            ))
            .service(resource(
                "/workers/connect",
                vec![get(web::get().to(workers::connect))],
            )),
    )
    .default_service(web::to(not_found));
}

/// Every API error is problem+json: an error response actix-web built
/// itself (a raw body over the limit, say, is `413 text/plain` there) is
/// restated as a problem document. The console answers in HTML and keeps
/// its own pages.
fn as_problem<B>(res: ServiceResponse<B>) -> ServiceResponse<EitherBody<B>> {
    let rewrite = res.response().error().is_some()
        && !res.request().path().starts_with("/console")
        && res
            .headers()
            .get(header::CONTENT_TYPE)
            .is_none_or(|ct| ct.as_bytes() != b"application/problem+json");
    if !rewrite {
        return res.map_into_left_body();
    }
    let status = res.status();
    let detail = res
        .response()
        .error()
        .map(|e| e.to_string())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    let (req, _) = res.into_parts();
    let response = ApiError::from_status(status, detail).error_response();
    ServiceResponse::new(req, response).map_into_right_body()
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// One span per request, carrying `X-Request-Id` (taken from the client
/// when sane, generated otherwise, and returned); request count and latency
/// by route pattern, never by concrete path.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
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
    let res = next.call(req).instrument(span.clone()).await?;
    let mut res = as_problem(res);
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
