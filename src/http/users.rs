//! Registration and the caller's own account: `POST /v1/users`, `GET /v1/me`,
//! the webhook secret, and closing the account (ToS 9.3).

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::http::auth::AuthUser;
use crate::http::input::Json;
use crate::http::problem::{ApiError, Problem};
use crate::http::AppState;
use crate::views::{UserView, WalletView};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// One account per address, compared case-insensitively: a local part
    /// of at most 64 bytes, `@`, and a domain of two or more labels of
    /// letters, digits and inner hyphens. The pattern is the outline; the
    /// byte limits are checked on top (`422 invalid-params`).
    #[schema(max_length = 254, pattern = r"^\s*[^\s@]+@[^\s@]+\.[^\s@]+\s*$")]
    pub email: String,
    /// 1..=100 characters, not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub display_name: String,
}

#[derive(Serialize, ToSchema)]
pub struct Registered {
    pub user: UserView,
    /// Shown once; only its hash is stored.
    pub api_key: String,
    pub wallet: WalletView,
}

#[derive(Serialize, ToSchema)]
pub struct Me {
    pub user: UserView,
    pub wallet: WalletView,
    /// The paid membership (ToS 5): `user.tier` is what counts now.
    pub membership: MembershipView,
    /// The next monthly gift not granted yet, if one is scheduled.
    pub next_gift: Option<GiftView>,
    /// Materials and outputs stored, against the tier's quota.
    pub storage: StorageView,
}

#[derive(Serialize, ToSchema)]
pub struct StorageView {
    pub used_bytes: u64,
    pub quota_bytes: u64,
    pub materials: u64,
    pub outputs: u64,
    /// How long a new material or output is kept, in days.
    pub retention_days: u64,
}

#[derive(Serialize, ToSchema)]
pub struct MembershipView {
    /// The tier bought (or set by an operator), even when lapsed.
    pub tier: admedia_actors::domain::tier::Tier,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Whether it is in effect now (a lapsed one reads as `free`, ToS 5.4).
    pub active: bool,
}

#[derive(Serialize, ToSchema)]
pub struct GiftView {
    /// When the gift is granted (the start of its paid month).
    pub at: chrono::DateTime<chrono::Utc>,
    pub tier: admedia_actors::domain::tier::Tier,
    pub amount: i64,
}

/// Register: one account per e-mail address (ToS 2.4), with the
/// registration reward granted as a ledger entry. Registrations per client
/// address are limited (`ADMEDIA_REGISTRATIONS_PER_HOUR`): bulk sign-ups
/// are refused with 429 before any account or credit is made.
#[utoipa::path(post, path = "/v1/users", request_body = RegisterRequest,
    responses((status = 201, body = Registered), (status = 409, body = Problem), (status = 422, body = Problem),
        (status = 429, body = Problem)))]
pub async fn register(
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
    body: Json<RegisterRequest>,
) -> Result<HttpResponse, ApiError> {
    let client = crate::http::client_limits::client_key(&req);
    state.client_limits.register(&client).await?;
    let reg = state
        .orchestrator
        .register(&body.email, &body.display_name)
        .await?;
    Ok(HttpResponse::Created().json(Registered {
        user: UserView::of(&reg.user),
        api_key: reg.api_key,
        wallet: WalletView::of(&reg.wallet),
    }))
}

#[utoipa::path(get, path = "/v1/me", security(("api_key" = [])),
    responses((status = 200, body = Me), (status = 401, body = Problem)))]
pub async fn me(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
) -> Result<HttpResponse, ApiError> {
    let wallet = state.orchestrator.wallet(user.id).await?;
    let next_gift = state.orchestrator.next_gift(user.id).await?;
    let storage = state.materials.storage(&user).await?;
    let now = chrono::Utc::now();
    Ok(HttpResponse::Ok().json(Me {
        storage: StorageView {
            used_bytes: storage.usage.bytes,
            quota_bytes: storage.quota_bytes,
            materials: storage.usage.materials,
            outputs: storage.usage.outputs,
            retention_days: storage.retention.as_secs() / 86_400,
        },
        membership: MembershipView {
            tier: user.membership.tier,
            expires_at: user.membership.expires_at,
            active: user.membership.tier != admedia_actors::domain::tier::Tier::Free
                && user.tier(now) == user.membership.tier,
        },
        next_gift: next_gift.map(|g| GiftView {
            at: g.starts_at,
            tier: g.tier,
            amount: g.amount.get(),
        }),
        user: UserView::of(&user),
        wallet: WalletView::of(&wallet),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct WebhookSecret {
    /// `whsec_` + base64 of the HMAC-SHA256 key, per Standard Webhooks.
    pub secret: String,
}

/// The key that signs this user's job webhooks.
#[utoipa::path(get, path = "/v1/me/webhook-secret", security(("api_key" = [])),
    responses((status = 200, body = WebhookSecret), (status = 401, body = Problem)))]
pub async fn webhook_secret(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
) -> Result<HttpResponse, ApiError> {
    let secret = state
        .orchestrator
        .store()
        .webhook_secret(user.id, crate::webhooks::new_secret())
        .await
        .map_err(admedia_actors::OrchestratorError::from)?;
    Ok(HttpResponse::Ok().json(WebhookSecret { secret }))
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
