//! Operations: liveness, readiness and metrics (the OpenAPI document is
//! served by `openapi`, which it describes).

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use crate::http::problem::{ApiError, Problem};
use crate::http::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    /// `memory` or `postgres`.
    pub store: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<crate::http::operator::fleet::NodeView>,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok",
        store: state.orchestrator.store().adapter(),
        // The role needs no database, so it shows even when it is down.
        node: Some(crate::http::operator::fleet::NodeView::of(&state.node)),
    })
}

/// The store answers and the scheduler runs.
#[utoipa::path(get, path = "/readyz", responses((status = 200, body = Health), (status = 503, body = Problem)))]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.orchestrator.ready().await?;
    Ok(HttpResponse::Ok().json(Health {
        status: "ready",
        store: state.orchestrator.store().adapter(),
        node: Some(crate::http::operator::fleet::NodeView::of(&state.node)),
    }))
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let stats = state.orchestrator.stats().await.ok();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render(
            stats.as_ref(),
            matches!(state.node.role(), crate::cluster::Role::Leader { .. }),
        ))
}
