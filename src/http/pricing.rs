//! Prices that change with notice (ToS 4.5): the versioned price table.

use actix_web::{web, HttpResponse};
use admedia_actors::domain::price_schedule::PriceVersion;
use admedia_actors::domain::pricing::PriceTable;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::http::auth::Admin;
use crate::http::input::Json;
use crate::http::problem::{ApiError, Problem};
use crate::http::AppState;

/// Credits per unit, as `GET /v1/pricing` shows them.
#[derive(Serialize, Deserialize, ToSchema, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// Per image up to 1024x1024.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub image_standard: i64,
    /// Per image above that, up to 2048x2048.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub image_large: i64,
    /// Per second of video up to 1280x720.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub video_standard: i64,
    /// Per second of video above that, up to 1920x1080.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub video_hd: i64,
}

impl From<PriceTable> for Prices {
    fn from(t: PriceTable) -> Prices {
        Prices {
            image_standard: t.image_standard,
            image_large: t.image_large,
            video_standard: t.video_standard,
            video_hd: t.video_hd,
        }
    }
}

impl From<Prices> for PriceTable {
    fn from(p: Prices) -> PriceTable {
        PriceTable {
            image_standard: p.image_standard,
            image_large: p.image_large,
            video_standard: p.video_standard,
            video_hd: p.video_hd,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct PriceVersionView {
    pub version: u32,
    pub effective_at: DateTime<Utc>,
    pub prices: Prices,
}

impl PriceVersionView {
    fn of(v: &PriceVersion) -> PriceVersionView {
        PriceVersionView {
            version: v.version,
            effective_at: v.effective_at,
            prices: v.prices.into(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Pricing {
    /// The version that prices a job submitted now.
    pub current: PriceVersionView,
    /// Announced versions, in the order they will take effect.
    pub upcoming: Vec<PriceVersionView>,
}

/// The price table in effect and the announced changes (public).
#[utoipa::path(get, path = "/v1/pricing", operation_id = "get_pricing", responses((status = 200, body = Pricing)))]
pub async fn get(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (current, upcoming) = state.orchestrator.pricing().await?;
    Ok(HttpResponse::Ok().json(Pricing {
        current: PriceVersionView::of(&current),
        upcoming: upcoming.iter().map(PriceVersionView::of).collect(),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnnounceRequest {
    /// At least `ADMEDIA_PRICE_NOTICE` (default 7 days) from now.
    pub effective_at: DateTime<Utc>,
    pub prices: Prices,
}

/// Announce a price change (ToS 4.5). 201 with the new version; the same
/// announcement again is 200 with the version it made. Sooner than the
/// notice allows: 422 `price-notice-too-short` with `earliest`.
#[utoipa::path(post, path = "/v1/admin/pricing", request_body = AnnounceRequest,
    security(("admin_token" = [])),
    responses((status = 201, body = PriceVersionView), (status = 200, body = PriceVersionView),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 422, body = Problem)))]
pub async fn announce(
    state: web::Data<AppState>,
    _: Admin,
    body: Json<AnnounceRequest>,
) -> Result<HttpResponse, ApiError> {
    let (version, replayed) = state
        .orchestrator
        .announce_prices(body.prices.into(), body.effective_at)
        .await?;
    let view = PriceVersionView::of(&version);
    Ok(if replayed {
        HttpResponse::Ok().json(view)
    } else {
        HttpResponse::Created().json(view)
    })
}
