//! The operator's hand on accounts: credits granted, memberships, suspension
//! and reinstatement, a user's moderation record, termination (ToS 9.2),
//! and finding users by e-mail.

use actix_web::{web, HttpResponse};
use admedia_actors::domain::content::evidence::{ModerationAction, ModerationKind, Violation};
use admedia_actors::domain::content::Source;
use admedia_actors::domain::ledger::{Grant, GrantSource};
use admedia_actors::domain::tier::{Membership, Tier};
use admedia_actors::domain::wallet::Credits;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

use super::user_id;
use crate::http::auth::Admin;
use crate::http::input::{Json, Query};
use crate::http::problem::{ApiError, Problem};
use crate::http::{page_limit, AppState};
use crate::views::{LedgerEntryView, UserView, WalletView};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// Positive whole credits.
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    pub amount: i64,
    /// Not `registration`: those credits come only with registration.
    #[schema(value_type = AdminGrantSource)]
    pub source: GrantSource,
    /// Required, 1..=255 characters, not blank: a replay with the same key
    /// and body changes nothing; with another body it is `422
    /// idempotency-key-reused`.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000]*\S[^\u0000]*$"
    )]
    pub idempotency_key: String,
    /// At most 500 characters.
    #[schema(max_length = 500, pattern = r"^[^\u0000]*$")]
    pub note: Option<String>,
}

/// The sources an operator may grant from (documentation of `source`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum AdminGrantSource {
    Purchase,
    MembershipGift,
    Admin,
}

#[utoipa::path(post, path = "/v1/admin/users/{id}/credits", request_body = GrantRequest,
    params(("id" = String, Path)), security(("admin_token" = [])),
    responses((status = 200, body = WalletView), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn grant(
    state: web::Data<AppState>,
    _: Admin,
    path: web::Path<String>,
    body: Json<GrantRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = user_id(&path)?;
    let body = body.into_inner();
    let amount = Credits::positive(body.amount)
        .map_err(|e| ApiError::InvalidParams(format!("amount: {e}")))?;
    if body.source == GrantSource::Registration {
        return Err(ApiError::InvalidParams(
            "source: registration credits are granted only at registration".into(),
        ));
    }
    let key = body.idempotency_key.trim();
    if key.is_empty() || body.idempotency_key.chars().count() > 255 {
        return Err(ApiError::InvalidParams(
            "idempotency_key must be 1..=255 characters".into(),
        ));
    }
    if body.note.as_ref().is_some_and(|n| n.chars().count() > 500) {
        return Err(ApiError::InvalidParams(
            "note must be at most 500 characters".into(),
        ));
    }
    let wallet = state
        .orchestrator
        .grant(
            id,
            Grant {
                amount,
                source: body.source,
                idempotency_key: Some(key.to_owned()),
                note: body.note,
            },
        )
        .await?;
    Ok(HttpResponse::Ok().json(WalletView::of(&wallet)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MembershipRequest {
    pub tier: Tier,
    /// When the paid tier lapses to `free`; null for no expiry.
    pub expires_at: Option<DateTime<Utc>>,
}

#[utoipa::path(put, path = "/v1/admin/users/{id}/membership", request_body = MembershipRequest,
    params(("id" = String, Path)), security(("admin_token" = [])),
    responses((status = 200, body = UserView), (status = 404, body = Problem)))]
pub async fn membership(
    state: web::Data<AppState>,
    _: Admin,
    path: web::Path<String>,
    body: Json<MembershipRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = user_id(&path)?;
    let membership = match body.tier {
        Tier::Free => Membership::FREE,
        tier => Membership {
            tier,
            expires_at: body.expires_at,
        },
    };
    let user = state.orchestrator.set_membership(id, membership).await?;
    Ok(HttpResponse::Ok().json(UserView::of(&user)))
}

/// An operator's optional note on a suspension or reinstatement, kept in
/// the account's moderation history.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModerationRequest {
    /// At most 500 characters.
    pub note: Option<String>,
}

/// No body, `null`, or a JSON `ModerationRequest`; anything else is
/// refused.
fn moderation_note(body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let request: Option<ModerationRequest> =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidParams(format!("body: {e}")))?;
    Ok(request
        .and_then(|r| r.note)
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty()))
}

/// Suspend (ToS 9.2): the account can no longer act; its waiting jobs are
/// cancelled and refunded. Kept in the moderation history.
#[utoipa::path(post, path = "/v1/admin/users/{id}/suspend", params(("id" = String, Path)),
    request_body(content = Option<ModerationRequest>),
    security(("admin_token" = [])), responses((status = 200, body = UserView), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn suspend(
    state: web::Data<AppState>,
    _: Admin,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let note = moderation_note(&body)?;
    let user = state
        .orchestrator
        .moderate(user_id(&path)?, ModerationKind::Suspended, note)
        .await?;
    Ok(HttpResponse::Ok().json(UserView::of(&user)))
}

/// Reinstate: the account may act again. Kept in the moderation history
/// (an audit of who undid an automatic suspension, and why).
#[utoipa::path(post, path = "/v1/admin/users/{id}/reinstate", params(("id" = String, Path)),
    request_body(content = Option<ModerationRequest>),
    security(("admin_token" = [])), responses((status = 200, body = UserView), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn reinstate(
    state: web::Data<AppState>,
    _: Admin,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let note = moderation_note(&body)?;
    let user = state
        .orchestrator
        .moderate(user_id(&path)?, ModerationKind::Reinstated, note)
        .await?;
    Ok(HttpResponse::Ok().json(UserView::of(&user)))
}

#[derive(Serialize, ToSchema)]
pub struct RefusalView {
    pub category: String,
    /// `rules` or `provider`.
    pub source: Source,
    pub confidence: f64,
    /// Whether it counted toward automatic suspension.
    pub counted: bool,
    /// The rules' terms that matched.
    pub matched: Vec<String>,
    /// The provider's score per category.
    pub scores: BTreeMap<String, f64>,
    pub prompt: String,
    pub created_at: DateTime<Utc>,
}

impl RefusalView {
    fn of(v: &Violation) -> RefusalView {
        RefusalView {
            category: v.refusal.category.clone(),
            source: v.refusal.source,
            confidence: v.refusal.confidence.get(),
            counted: v.counted,
            matched: v.refusal.matched.clone(),
            scores: v
                .refusal
                .scores
                .iter()
                .map(|(k, s)| (k.clone(), s.get()))
                .collect(),
            prompt: v.prompt.clone(),
            created_at: v.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ModerationActionView {
    pub user_id: String,
    pub action: ModerationKind,
    /// `automatic` or `operator`.
    pub by: String,
    pub note: Option<String>,
    /// For an automatic suspension: the counted refusals that caused it.
    pub evidence: Vec<RefusalView>,
    pub created_at: DateTime<Utc>,
}

impl ModerationActionView {
    fn of(a: &ModerationAction) -> ModerationActionView {
        ModerationActionView {
            user_id: a.user_id.to_string(),
            action: a.kind,
            by: a.by.clone(),
            note: a.note.clone(),
            evidence: a.evidence.iter().map(RefusalView::of).collect(),
            created_at: a.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct UserModerationView {
    /// Suspensions and reinstatements, newest first.
    pub actions: Vec<ModerationActionView>,
    /// Refused prompts of the last 30 days, newest first (at most 100).
    pub refusals: Vec<RefusalView>,
}

const MODERATION_PAGE: usize = 100;

/// A user's moderation history and recent refusals, with their evidence.
#[utoipa::path(get, path = "/v1/admin/users/{id}/moderation", params(("id" = String, Path)),
    security(("admin_token" = [])), responses((status = 200, body = UserModerationView), (status = 404, body = Problem)))]
pub async fn user_moderation(
    state: web::Data<AppState>,
    _: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = user_id(&path)?;
    state.orchestrator.user(id).await?;
    let actions = state
        .orchestrator
        .moderation_actions(Some(id), None, MODERATION_PAGE)
        .await?;
    let refusals = state
        .orchestrator
        .violations(id, Utc::now() - chrono::Duration::days(30), MODERATION_PAGE)
        .await?;
    Ok(HttpResponse::Ok().json(UserModerationView {
        actions: actions.iter().map(ModerationActionView::of).collect(),
        refusals: refusals.iter().map(RefusalView::of).collect(),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct SuspensionsView {
    /// Suspensions on content grounds, newest first (at most 100).
    pub suspensions: Vec<ModerationActionView>,
}

/// Every recent suspension with its evidence: automatic ones list the
/// refusals that caused them.
#[utoipa::path(get, path = "/v1/admin/suspensions", security(("admin_token" = [])),
    responses((status = 200, body = SuspensionsView), (status = 401, body = Problem)))]
pub async fn suspensions(state: web::Data<AppState>, _: Admin) -> Result<HttpResponse, ApiError> {
    let list = state
        .orchestrator
        .moderation_actions(None, Some(ModerationKind::Suspended), MODERATION_PAGE)
        .await?;
    Ok(HttpResponse::Ok().json(SuspensionsView {
        suspensions: list.iter().map(ModerationActionView::of).collect(),
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsersQuery {
    /// Part of an e-mail address (case-insensitive).
    #[param(
        min_length = 1,
        max_length = 254,
        pattern = r"^[^\u0000]*\S[^\u0000]*$"
    )]
    pub email: String,
    /// 1..=200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct UsersPage {
    pub users: Vec<UserView>,
}

#[utoipa::path(get, path = "/v1/admin/users", params(UsersQuery), security(("admin_token" = [])),
    responses((status = 200, body = UsersPage), (status = 422, body = Problem)))]
pub async fn users(
    state: web::Data<AppState>,
    _: Admin,
    query: Query<UsersQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(query.limit)?;
    if query.email.trim().is_empty() || query.email.chars().count() > 254 {
        return Err(ApiError::InvalidParams(
            "email: give 1..=254 characters to search for".into(),
        ));
    }
    let users = state.orchestrator.find_users(&query.email, limit).await?;
    Ok(HttpResponse::Ok().json(UsersPage {
        users: users.iter().map(UserView::of).collect(),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct UserDetailView {
    pub user: UserView,
    pub wallet: WalletView,
    /// The 20 newest ledger entries.
    pub ledger: Vec<LedgerEntryView>,
}

#[utoipa::path(get, path = "/v1/admin/users/{id}", params(("id" = String, Path)), security(("admin_token" = [])),
    responses((status = 200, body = UserDetailView), (status = 404, body = Problem)))]
pub async fn user(
    state: web::Data<AppState>,
    _: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = user_id(&path)?;
    let user = state.orchestrator.user(id).await?;
    let wallet = state.orchestrator.wallet(id).await?;
    let ledger = state.archive.ledger(id, None, 20).await?;
    Ok(HttpResponse::Ok().json(UserDetailView {
        user: UserView::of(&user),
        wallet: WalletView::of(&wallet),
        ledger: ledger.iter().map(LedgerEntryView::of).collect(),
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
    let id = user_id(&path)?;
    let (user, _) = state.orchestrator.terminate(id).await?;
    state.expire_objects(user.id).await;
    Ok(HttpResponse::Ok().json(UserView::of(&user)))
}
