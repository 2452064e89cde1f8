//! The caller's wallet and ledger: `GET /v1/wallet`, `GET /v1/wallet/ledger`.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::http::auth::AuthUser;
use crate::http::input::Query;
use crate::http::problem::{ApiError, Problem};
use crate::http::{before_cursor, next_page, page_limit, AppState};
use crate::views::{LedgerEntryView, WalletView};

#[utoipa::path(get, path = "/v1/wallet", security(("api_key" = [])),
    responses((status = 200, body = WalletView), (status = 401, body = Problem)))]
pub async fn wallet(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
) -> Result<HttpResponse, ApiError> {
    let wallet = state.orchestrator.wallet(user.id).await?;
    Ok(HttpResponse::Ok().json(WalletView::of(&wallet)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LedgerQuery {
    /// 1..=200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
    /// An entry id: entries older than it.
    #[param(value_type = Option<i64>)]
    pub before: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct LedgerPage {
    pub entries: Vec<LedgerEntryView>,
    /// Pass as `before` for the next page; null on the last.
    pub next: Option<String>,
}

/// Newest first, the whole of the caller's history: the live entries,
/// then those the ledger archive moved to object storage.
#[utoipa::path(get, path = "/v1/wallet/ledger", params(LedgerQuery), security(("api_key" = [])),
    responses((status = 200, body = LedgerPage), (status = 401, body = Problem), (status = 422, body = Problem)))]
pub async fn ledger(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    query: Query<LedgerQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(query.limit)?;
    let before = before_cursor(query.before.as_deref(), "ledger entry")?;
    let mut entries = state.archive.ledger(user.id, before, limit + 1).await?;
    let next = next_page(&mut entries, limit, |e| e.id.to_string());
    Ok(HttpResponse::Ok().json(LedgerPage {
        entries: entries.iter().map(LedgerEntryView::of).collect(),
        next,
    }))
}
