//! `/v1/me/webhooks`: account-level webhook endpoints, beside a job's own
//! `webhook_url`. Every job event of the account of a type an enabled
//! endpoint wants is delivered there, through the same outbox, signing
//! (Standard Webhooks, the account's secret from `/v1/me/webhook-secret`)
//! and retries as a job's webhook; each attempt is logged per endpoint.
//! Only a key without scopes manages endpoints.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use admedia_actors::domain::endpoints::{
    parse_event_types, DeliveryAttempt, EndpointPatch, WebhookEndpoint, MAX_URL,
};
use admedia_actors::domain::ids::WebhookEndpointId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::http::auth::AuthUser;
use crate::http::input::Json;
use crate::http::problem::{ApiError, Problem};
use crate::http::AppState;

/// An event type an endpoint may want.
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum EventTypeName {
    #[schema(rename = "job.started")]
    JobStarted,
    #[schema(rename = "job.succeeded")]
    JobSucceeded,
    #[schema(rename = "job.failed")]
    JobFailed,
    #[schema(rename = "job.cancelled")]
    JobCancelled,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookEndpointView {
    pub id: String,
    pub url: String,
    #[schema(value_type = Vec<EventTypeName>)]
    pub event_types: Vec<&'static str>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl WebhookEndpointView {
    fn of(e: &WebhookEndpoint) -> WebhookEndpointView {
        WebhookEndpointView {
            id: e.id.to_string(),
            url: e.url.clone(),
            event_types: e.event_types.iter().map(|t| t.as_str()).collect(),
            enabled: e.enabled,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct WebhookEndpointsPage {
    /// Oldest first.
    pub endpoints: Vec<WebhookEndpointView>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpointRequest {
    /// An http(s) URL of at most 2048 characters, not a special-purpose
    /// address (loopback, private, link-local, ...), as a job's
    /// `webhook_url`.
    #[schema(min_length = 1, max_length = 2048)]
    pub url: String,
    /// At least one of `job.started`, `job.succeeded`, `job.failed`,
    /// `job.cancelled`.
    #[schema(value_type = Vec<EventTypeName>, min_items = 1)]
    pub event_types: Vec<String>,
    /// `true` unless given.
    pub enabled: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpointRequest {
    #[schema(min_length = 1, max_length = 2048)]
    pub url: Option<String>,
    #[schema(value_type = Option<Vec<EventTypeName>>, min_items = 1)]
    pub event_types: Option<Vec<String>>,
    /// A disabled endpoint is owed nothing new; deliveries already owed
    /// are still tried.
    pub enabled: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryAttemptView {
    /// The `webhook-id` sent: the same on every retry of one event.
    pub webhook_id: String,
    pub job_id: String,
    pub event_type: String,
    pub attempted_at: DateTime<Utc>,
    /// The receiver's HTTP status; `null` when it did not answer.
    pub status_code: Option<u16>,
    /// Why the attempt did not count as delivered.
    pub error: Option<String>,
    /// `delivered`, `failed` (tried again later) or `given_up`.
    #[schema(pattern = "^(delivered|failed|given_up)$")]
    pub outcome: &'static str,
}

impl DeliveryAttemptView {
    fn of(a: &DeliveryAttempt) -> DeliveryAttemptView {
        DeliveryAttemptView {
            webhook_id: a.webhook_id.clone(),
            job_id: a.job_id.to_string(),
            event_type: a.event_type.clone(),
            attempted_at: a.attempted_at,
            status_code: a.status_code,
            error: a.error.clone(),
            outcome: a.outcome.as_str(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DeliveriesPage {
    /// Newest first, the last 100 attempts.
    pub deliveries: Vec<DeliveryAttemptView>,
}

/// Checks a URL as a job's `webhook_url` is checked.
fn endpoint_url(state: &AppState, raw: &str) -> Result<String, ApiError> {
    if raw.chars().count() > MAX_URL {
        return Err(ApiError::InvalidParams(format!(
            "url is longer than {MAX_URL} characters"
        )));
    }
    let url = raw.trim();
    if url.is_empty() {
        return Err(ApiError::InvalidParams("url must not be empty".into()));
    }
    crate::webhooks::check_target(url, state.webhook_allow_private)
        .map_err(|e| ApiError::InvalidParams(e.replacen("webhook_url", "url", 1)))?;
    Ok(url.to_owned())
}

fn endpoint_id(raw: &str) -> Result<WebhookEndpointId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found("webhook endpoint"))
}

/// Register a webhook endpoint for every job of the account (at most 10).
#[utoipa::path(post, path = "/v1/me/webhooks", operation_id = "create_webhook_endpoint",
    request_body = CreateEndpointRequest, security(("api_key" = [])),
    responses((status = 201, body = WebhookEndpointView), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn create(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    body: Json<CreateEndpointRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let url = endpoint_url(&state, &body.url)?;
    let types = parse_event_types(&body.event_types).map_err(ApiError::InvalidParams)?;
    let endpoint = state
        .orchestrator
        .create_webhook_endpoint(user.id, url, types, body.enabled.unwrap_or(true))
        .await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/v1/me/webhooks/{}", endpoint.id)))
        .json(WebhookEndpointView::of(&endpoint)))
}

#[utoipa::path(get, path = "/v1/me/webhooks", operation_id = "list_webhook_endpoints", security(("api_key" = [])),
    responses((status = 200, body = WebhookEndpointsPage), (status = 401, body = Problem)))]
pub async fn list(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
) -> Result<HttpResponse, ApiError> {
    let endpoints = state.orchestrator.webhook_endpoints(user.id).await?;
    Ok(HttpResponse::Ok().json(WebhookEndpointsPage {
        endpoints: endpoints.iter().map(WebhookEndpointView::of).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/me/webhooks/{id}", operation_id = "get_webhook_endpoint", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = WebhookEndpointView), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn get(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = endpoint_id(&path)?;
    let endpoint = state.orchestrator.webhook_endpoint(user.id, id).await?;
    Ok(HttpResponse::Ok().json(WebhookEndpointView::of(&endpoint)))
}

/// Change an endpoint: enable or disable it, or its URL or event types.
#[utoipa::path(patch, path = "/v1/me/webhooks/{id}", operation_id = "update_webhook_endpoint",
    request_body = UpdateEndpointRequest, security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = WebhookEndpointView), (status = 401, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn update(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    path: web::Path<String>,
    body: Json<UpdateEndpointRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = endpoint_id(&path)?;
    let body = body.into_inner();
    let patch = EndpointPatch {
        url: body
            .url
            .as_deref()
            .map(|u| endpoint_url(&state, u))
            .transpose()?,
        event_types: body
            .event_types
            .as_deref()
            .map(parse_event_types)
            .transpose()
            .map_err(ApiError::InvalidParams)?,
        enabled: body.enabled,
    };
    let endpoint = state
        .orchestrator
        .update_webhook_endpoint(user.id, id, patch)
        .await?;
    Ok(HttpResponse::Ok().json(WebhookEndpointView::of(&endpoint)))
}

/// Delete an endpoint, its delivery log and what it is still owed.
#[utoipa::path(delete, path = "/v1/me/webhooks/{id}", operation_id = "delete_webhook_endpoint", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn delete(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = endpoint_id(&path)?;
    state
        .orchestrator
        .delete_webhook_endpoint(user.id, id)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The endpoint's last 100 delivery attempts, newest first: when, the
/// receiver's status, and the error.
#[utoipa::path(get, path = "/v1/me/webhooks/{id}/deliveries", operation_id = "webhook_deliveries", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = DeliveriesPage), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn deliveries(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = endpoint_id(&path)?;
    let attempts = state.orchestrator.webhook_deliveries(user.id, id).await?;
    Ok(HttpResponse::Ok().json(DeliveriesPage {
        deliveries: attempts.iter().map(DeliveryAttemptView::of).collect(),
    }))
}
