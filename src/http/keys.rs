//! A user's API keys (ToS 2.2): issuing them with their scopes, listing
//! and revoking them.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use admedia_actors::domain::account::KeyHash;
use admedia_actors::domain::api_keys::ApiKeyRecord;
use admedia_actors::domain::ids::ApiKeyId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::http::auth::AuthUser;
use crate::http::problem::{ApiError, Problem};
use crate::http::AppState;

#[derive(Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Not revoked.
    pub active: bool,
    /// The key this request was made with.
    pub current: bool,
    pub name: Option<String>,
    /// Refused (401 `key-expired`) from then on; `null`: never.
    pub expires_at: Option<DateTime<Utc>>,
    /// `null`: full access (a key issued without scopes, and every key
    /// issued before scopes existed).
    #[schema(value_type = Option<Vec<ScopeName>>)]
    pub scopes: Option<Vec<&'static str>>,
}

/// A scope an API key may be limited to.
#[derive(ToSchema)]
#[schema(as = ScopeName)]
#[allow(dead_code)]
pub enum ScopeName {
    #[schema(rename = "jobs:write")]
    JobsWrite,
    #[schema(rename = "jobs:read")]
    JobsRead,
    #[schema(rename = "wallet:read")]
    WalletRead,
    #[schema(rename = "materials:write")]
    MaterialsWrite,
}

fn scope_names(k: &ApiKeyRecord) -> Option<Vec<&'static str>> {
    k.scopes
        .as_ref()
        .map(|set| set.iter().map(|s| s.as_str()).collect())
}

impl ApiKeyView {
    fn of(k: &ApiKeyRecord, presented: Option<KeyHash>) -> ApiKeyView {
        ApiKeyView {
            id: k.id.to_string(),
            created_at: k.created_at,
            revoked_at: k.revoked_at,
            active: k.is_active(),
            current: presented == Some(k.hash),
            name: k.name.clone(),
            expires_at: k.expires_at,
            scopes: scope_names(k),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct IssuedKeyView {
    pub id: String,
    /// Shown once; only its hash is stored.
    pub api_key: String,
    pub created_at: DateTime<Utc>,
    pub name: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    #[schema(value_type = Option<Vec<ScopeName>>)]
    pub scopes: Option<Vec<&'static str>>,
}

/// What a new key may do. Every field is optional, and so is the body:
/// without scopes the key has full access, as every key had before scopes.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct IssueKeyRequest {
    /// 1 to 100 characters, no control characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// In the future; the key is refused (401 `key-expired`) from then on.
    pub expires_at: Option<DateTime<Utc>>,
    /// At least one of `jobs:write`, `jobs:read`, `wallet:read`,
    /// `materials:write`; leave it out for full access. A scoped key never
    /// manages keys, webhooks or the account (403 `insufficient-scope`).
    #[schema(value_type = Option<Vec<ScopeName>>, min_items = 1)]
    pub scopes: Option<Vec<String>>,
}

/// The body of a key issue: none (empty, or JSON `null`) is a full-access
/// key.
fn issue_request(body: &[u8]) -> Result<IssueKeyRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(IssueKeyRequest::default());
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidRequest(format!("malformed JSON body: {e}")))?;
    if value.is_null() {
        return Ok(IssueKeyRequest::default());
    }
    crate::http::input::parse_json(value)
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeysPage {
    /// Oldest first, revoked keys included; never the keys themselves.
    pub keys: Vec<ApiKeyView>,
}

/// The hash of the key the request presented (the extractor checked it).
fn presented(req: &HttpRequest) -> Option<KeyHash> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?
        .trim();
    Some(KeyHash::of(token))
}

fn key_id(raw: &str) -> Result<ApiKeyId, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found("API key"))
}

/// Issue a new API key (ToS 2.2). Rotate by issuing a new key, then
/// revoking the old one. At most 20 keys are active at once. The body is
/// optional: a name, an expiry and scopes; without scopes the key has full
/// access. Only a key without scopes may issue keys.
#[utoipa::path(post, path = "/v1/me/api-keys", request_body = Option<IssueKeyRequest>, security(("api_key" = [])),
    responses((status = 201, body = IssuedKeyView), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn issue(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let request = issue_request(&body)?;
    let options = admedia_actors::domain::api_keys::KeyOptions::parse(
        request.name.as_deref(),
        request.expires_at,
        request.scopes.as_deref(),
        Utc::now(),
    )
    .map_err(ApiError::InvalidParams)?;
    let issued = state.orchestrator.issue_api_key(user.id, options).await?;
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/v1/me/api-keys/{}", issued.record.id),
        ))
        .json(IssuedKeyView {
            id: issued.record.id.to_string(),
            api_key: issued.key,
            created_at: issued.record.created_at,
            name: issued.record.name.clone(),
            expires_at: issued.record.expires_at,
            scopes: scope_names(&issued.record),
        }))
}

#[utoipa::path(get, path = "/v1/me/api-keys", operation_id = "list_api_keys", security(("api_key" = [])),
    responses((status = 200, body = ApiKeysPage), (status = 401, body = Problem)))]
pub async fn list(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let keys = state.orchestrator.api_keys(user.id).await?;
    let current = presented(&req);
    Ok(HttpResponse::Ok().json(ApiKeysPage {
        keys: keys.iter().map(|k| ApiKeyView::of(k, current)).collect(),
    }))
}

/// Revoke one of the caller's keys: it is refused (401) from now on.
/// Revoking a revoked key changes nothing; another user's key is 404; the
/// last active key is 409 `last-api-key` (issue a new one first, or close
/// the account).
#[utoipa::path(delete, path = "/v1/me/api-keys/{id}", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = ApiKeyView), (status = 401, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn revoke(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = key_id(&path)?;
    let record = state.orchestrator.revoke_api_key(user.id, id).await?;
    Ok(HttpResponse::Ok().json(ApiKeyView::of(&record, presented(&req))))
}
