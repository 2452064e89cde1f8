//! `GET /v1/models`: the models the platform serves (the registry in the
//! configuration), and whether a connected worker can run each right now.

use actix_web::{web, HttpResponse};
use admedia_actors::domain::job::JobKind;
use serde::Serialize;
use utoipa::ToSchema;

use crate::http::problem::ApiError;
use crate::http::AppState;

#[derive(Serialize, ToSchema)]
pub struct ModelView {
    pub name: String,
    pub kind: JobKind,
    /// GPU memory a worker needs for it, in MB.
    pub vram_mb: u32,
    /// Its price is this many times the price table's (`GET /v1/pricing`).
    pub price_factor: u32,
    /// Expected GPU time per image, or per second of video, in ms.
    pub expected_ms_per_unit: u64,
    /// Some connected worker serves it: a job for it can start when a
    /// slot frees. False means it waits until such a worker connects (or
    /// its tier's waiting limit passes).
    pub served: bool,
}

#[derive(Serialize, ToSchema)]
pub struct ModelsPage {
    pub models: Vec<ModelView>,
}

#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelsPage)))]
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let models = state
        .orchestrator
        .models()
        .await?
        .into_iter()
        .map(|(m, served)| ModelView {
            name: m.name,
            kind: m.kind,
            vram_mb: m.vram_mb,
            price_factor: m.price_factor,
            expected_ms_per_unit: m.expected_ms_per_unit,
            served,
        })
        .collect();
    Ok(HttpResponse::Ok().json(ModelsPage { models }))
}
