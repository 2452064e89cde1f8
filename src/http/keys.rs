//! Accounts (ToS 2.2, 9.2, 9.3): API key rotation, closing one's own
//! account, and termination by an operator.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use admedia_actors::accounts::ApiKeyRecord;
use admedia_actors::ids::{ApiKeyId, UserId};
use admedia_actors::user::KeyHash;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::http::auth::{Admin, AuthUser};
use crate::http::input::Json;
use crate::http::problem::{ApiError, Problem};
use crate::http::AppState;
use crate::views::{UserView, WalletView};

#[derive(Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Not revoked.
    pub active: bool,
    /// The key this request was made with.
    pub current: bool,
}

impl ApiKeyView {
    fn of(k: &ApiKeyRecord, presented: Option<KeyHash>) -> ApiKeyView {
        ApiKeyView {
            id: k.id.to_string(),
            created_at: k.created_at,
            revoked_at: k.revoked_at,
            active: k.is_active(),
            current: presented == Some(k.hash),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct IssuedKeyView {
    pub id: String,
    /// Shown once; only its hash is stored.
    pub api_key: String,
    pub created_at: DateTime<Utc>,
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
/// revoking the old one. At most 20 keys are active at once.
#[utoipa::path(post, path = "/v1/me/api-keys", security(("api_key" = [])),
    responses((status = 201, body = IssuedKeyView), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn issue(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
) -> Result<HttpResponse, ApiError> {
    let issued = state.orchestrator.issue_api_key(user.id).await?;
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/v1/me/api-keys/{}", issued.record.id),
        ))
        .json(IssuedKeyView {
            id: issued.record.id.to_string(),
            api_key: issued.key,
            created_at: issued.record.created_at,
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseRequest {
    /// Must be `true`: closing cannot be undone.
    pub confirm: bool,
}

#[derive(Serialize, ToSchema)]
pub struct Closed {
    pub user: UserView,
    pub wallet: WalletView,
    /// Credits left in the account: kept in the ledger, never refunded or
    /// paid out (ToS 9.3).
    pub remaining_credits: i64,
}

/// Close the caller's account (ToS 9.3): every key stops working, waiting
/// jobs are cancelled and refunded to the balance, and the remaining
/// credits are not refunded. The e-mail address stays taken (ToS 2.4).
#[utoipa::path(post, path = "/v1/me/close", request_body = CloseRequest, security(("api_key" = [])),
    responses((status = 200, body = Closed), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn close(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    body: Json<CloseRequest>,
) -> Result<HttpResponse, ApiError> {
    if !body.confirm {
        return Err(ApiError::InvalidParams(
            "confirm must be true: closing an account cannot be undone".into(),
        ));
    }
    let (user, wallet) = state.orchestrator.terminate(user.id).await?;
    state.expire_objects(user.id).await;
    Ok(HttpResponse::Ok().json(Closed {
        user: UserView::of(&user),
        wallet: WalletView::of(&wallet),
        remaining_credits: wallet.balance.get(),
    }))
}

/// Terminate an account (ToS 9.2): no more access, waiting jobs cancelled
/// and refunded, the ledger kept. Terminating again changes nothing;
/// a terminated account cannot be reinstated.
#[utoipa::path(post, path = "/v1/admin/users/{id}/terminate", params(("id" = String, Path)),
    security(("admin_token" = [])),
    responses((status = 200, body = UserView), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn terminate(
    state: web::Data<AppState>,
    _: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id: UserId = path.parse().map_err(|_| ApiError::not_found("user"))?;
    let (user, _) = state.orchestrator.terminate(id).await?;
    state.expire_objects(user.id).await;
    Ok(HttpResponse::Ok().json(UserView::of(&user)))
}
