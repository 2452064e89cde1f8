//! The operator's view of the fleet and the cluster: the stats (queue
//! depths, job counts, workers, this node's role), the connected workers,
//! draining a worker and lifting its quarantine.

use actix_web::{web, HttpResponse};
use admedia_actors::domain::ids::WorkerId;
use admedia_actors::domain::job::JobKind;
use admedia_actors::domain::tier::Tier;
use chrono::Utc;
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

use crate::http::auth::Admin;
use crate::http::problem::{ApiError, Problem};
use crate::http::AppState;

#[derive(Serialize, ToSchema)]
pub struct WorkerStats {
    pub connected: usize,
    pub busy_slots: u32,
    pub idle_slots: u32,
}

#[derive(Serialize, ToSchema)]
pub struct StatsView {
    /// Jobs waiting per tier (including those waiting out a retry backoff
    /// under `retrying`).
    pub queue: BTreeMap<String, usize>,
    pub retrying: usize,
    pub jobs: BTreeMap<String, u64>,
    pub workers: WorkerStats,
    /// Dispatches per tier over the last five minutes.
    pub recent_dispatches: BTreeMap<String, u64>,
    pub last_hour: LastHour,
    /// This node's place in the cluster.
    pub node: NodeView,
}

#[derive(Serialize, ToSchema)]
pub struct NodeView {
    pub id: String,
    /// `leader` runs the active scheduler; `standby` takes over if it dies.
    pub role: &'static str,
    /// The leader's election term (null on a standby).
    pub epoch: Option<u64>,
}

impl NodeView {
    pub fn of(node: &crate::cluster::NodeState) -> NodeView {
        let (role, epoch) = match node.role() {
            crate::cluster::Role::Leader { epoch } => ("leader", Some(epoch)),
            crate::cluster::Role::Standby => ("standby", None),
        };
        NodeView {
            id: node.id.clone(),
            role,
            epoch,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct LastHour {
    /// Attempts that ended in a system failure (each retried or refunded).
    pub system_failures: u64,
    /// Holds voided (automatic refunds and cancellations before start).
    pub refunds: u64,
    pub refunded_credits: i64,
}

#[utoipa::path(get, path = "/v1/admin/stats", security(("admin_token" = [])),
    responses((status = 200, body = StatsView), (status = 401, body = Problem)))]
pub async fn stats(state: web::Data<AppState>, _: Admin) -> Result<HttpResponse, ApiError> {
    let stats = state.orchestrator.stats().await?;
    let queue = Tier::ALL
        .into_iter()
        .map(|t| (t.as_str().to_owned(), stats.scheduler.waiting_by_tier[t]))
        .collect();
    let jobs = stats
        .jobs
        .0
        .iter()
        .map(|(s, n)| (s.as_str().to_owned(), *n))
        .collect();
    let activity = state
        .orchestrator
        .activity_since(Utc::now() - chrono::Duration::hours(1))
        .await?;
    let recent_dispatches = Tier::ALL
        .into_iter()
        .map(|t| (t.as_str().to_owned(), stats.scheduler.recent_dispatches[t]))
        .collect();
    Ok(HttpResponse::Ok().json(StatsView {
        node: NodeView::of(&state.node),
        recent_dispatches,
        last_hour: LastHour {
            system_failures: activity.retries,
            refunds: activity.refunds,
            refunded_credits: activity.refunded_credits,
        },
        queue,
        retrying: stats.scheduler.retrying,
        jobs,
        workers: WorkerStats {
            connected: stats.scheduler.workers,
            busy_slots: stats.scheduler.busy_slots,
            idle_slots: stats.scheduler.idle_slots,
        },
    }))
}

#[derive(Serialize, ToSchema)]
pub struct WorkerInfo {
    pub id: String,
    pub name: String,
    pub gpu_model: String,
    pub vram_mb: u32,
    pub kinds: Vec<JobKind>,
    /// Empty: any model.
    pub models: Vec<String>,
    pub loaded_models: Vec<String>,
    pub slots: u32,
    pub busy_slots: u32,
    pub draining: bool,
    /// Takes no new jobs after repeated system failures, until the
    /// cool-down passes or an operator lifts it.
    pub quarantined: bool,
    /// Milliseconds of quarantine left.
    pub quarantine_left_ms: Option<u64>,
    /// System failures since its last success.
    pub consecutive_failures: u32,
    /// Milliseconds since the worker was last heard from.
    pub last_heard_ms: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct WorkersPage {
    pub workers: Vec<WorkerInfo>,
}

pub async fn worker_infos(state: &AppState) -> Result<Vec<WorkerInfo>, ApiError> {
    Ok(state
        .orchestrator
        .workers()
        .await?
        .into_iter()
        .map(|(w, heard)| WorkerInfo {
            id: w.id.to_string(),
            name: w.caps.name.clone(),
            gpu_model: w.caps.gpu_model.clone(),
            vram_mb: w.caps.vram_mb,
            kinds: w.caps.kinds.clone(),
            models: w.caps.models.clone(),
            loaded_models: w.warm_models.clone(),
            slots: w.caps.slots,
            busy_slots: w.busy_slots,
            draining: w.draining,
            quarantined: w.quarantined_for.is_some(),
            quarantine_left_ms: w
                .quarantined_for
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            consecutive_failures: w.consecutive_failures,
            last_heard_ms: heard.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        })
        .collect())
}

#[utoipa::path(get, path = "/v1/admin/workers", security(("admin_token" = [])),
    responses((status = 200, body = WorkersPage)))]
pub async fn workers(state: web::Data<AppState>, _: Admin) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(WorkersPage {
        workers: worker_infos(&state).await?,
    }))
}

/// The worker finishes what it runs and gets nothing new.
#[utoipa::path(post, path = "/v1/admin/workers/{id}/drain", params(("id" = String, Path)), security(("admin_token" = [])),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn drain(
    state: web::Data<AppState>,
    _: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id: WorkerId = path.parse().map_err(|_| ApiError::not_found("worker"))?;
    state.orchestrator.drain_worker(id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The worker takes jobs again now, with a clean failure record.
#[utoipa::path(post, path = "/v1/admin/workers/{id}/lift-quarantine", params(("id" = String, Path)), security(("admin_token" = [])),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn lift_quarantine(
    state: web::Data<AppState>,
    _: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id: WorkerId = path.parse().map_err(|_| ApiError::not_found("worker"))?;
    state.orchestrator.lift_quarantine(id).await?;
    Ok(HttpResponse::NoContent().finish())
}
