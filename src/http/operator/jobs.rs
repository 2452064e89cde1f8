//! The operator's view of every user's jobs: listing and filtering them,
//! one job with its attempts and ledger entries, and cancelling any job.
//! The console renders the same data.

use actix_web::{web, HttpResponse};
use admedia_actors::domain::ids::{JobId, UserId};
use admedia_actors::domain::job::{AttemptOutcomeLabel, JobKind, JobState};
use admedia_actors::domain::tier::Tier;
use admedia_actors::store::{AttemptRecord, JobFilter};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::http::auth::Admin;
use crate::http::input::Query;
use crate::http::problem::{ApiError, Problem};
use crate::http::{before_cursor, next_page, page_limit, AppState};
use crate::views::{JobView, LedgerEntryView};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AdminJobsQuery {
    /// A job state; empty: any.
    #[param(pattern = "^(|queued|assigned|running|succeeded|failed|cancelled)$")]
    pub state: Option<String>,
    /// A tier; empty: any.
    #[param(pattern = "^(|free|basic|professional|enterprise)$")]
    pub tier: Option<String>,
    /// `image` or `video`; empty: any.
    #[param(pattern = "^(|image|video)$")]
    pub kind: Option<String>,
    /// A user id; empty: any.
    #[param(
        pattern = "^(|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
    )]
    pub user: Option<String>,
    /// Submitted at or after (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Submitted before (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// 1..=200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
    /// A job id: jobs submitted before it.
    #[param(format = Uuid)]
    pub before: Option<String>,
}

impl AdminJobsQuery {
    pub fn filter(&self) -> Result<JobFilter, ApiError> {
        let bad =
            |what: &str, v: &str| ApiError::InvalidParams(format!("{what}: {v:?} is not valid"));
        Ok(JobFilter {
            state: match self.state.as_deref().filter(|s| !s.is_empty()) {
                Some(s) => Some(s.parse::<JobState>().map_err(|_| bad("state", s))?),
                None => None,
            },
            tier: match self.tier.as_deref().filter(|s| !s.is_empty()) {
                Some(s) => Some(s.parse::<Tier>().map_err(|_| bad("tier", s))?),
                None => None,
            },
            kind: match self.kind.as_deref().filter(|s| !s.is_empty()) {
                Some("image") => Some(JobKind::Image),
                Some("video") => Some(JobKind::Video),
                Some(s) => return Err(bad("kind", s)),
                None => None,
            },
            user: match self.user.as_deref().filter(|s| !s.is_empty()) {
                Some(s) => Some(s.parse::<UserId>().map_err(|_| bad("user", s))?),
                None => None,
            },
            since: self.since,
            until: self.until,
        })
    }
}

#[derive(Serialize, ToSchema)]
pub struct AdminJobView {
    pub user_id: String,
    #[serde(flatten)]
    pub job: JobView,
}

#[derive(Serialize, ToSchema)]
pub struct AdminJobsPage {
    pub jobs: Vec<AdminJobView>,
    pub next: Option<String>,
}

/// Jobs of every user, newest first, filtered.
#[utoipa::path(get, path = "/v1/admin/jobs", params(AdminJobsQuery), security(("admin_token" = [])),
    responses((status = 200, body = AdminJobsPage), (status = 422, body = Problem)))]
pub async fn jobs(
    state: web::Data<AppState>,
    _: Admin,
    query: Query<AdminJobsQuery>,
) -> Result<HttpResponse, ApiError> {
    let filter = query.filter()?;
    let limit = page_limit(query.limit)?;
    let before = before_cursor(query.before.as_deref(), "job")?;
    let mut jobs = state
        .orchestrator
        .admin_jobs(&filter, before, limit + 1)
        .await?;
    let next = next_page(&mut jobs, limit, |j| j.id.to_string());
    Ok(HttpResponse::Ok().json(AdminJobsPage {
        jobs: jobs
            .iter()
            .map(|j| AdminJobView {
                user_id: j.user_id.to_string(),
                job: JobView::for_operator(j, None),
            })
            .collect(),
        next,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct AttemptView {
    pub attempt: u32,
    pub worker_id: String,
    pub assigned_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// How the attempt ended; null while it is in flight.
    pub outcome: Option<AttemptOutcomeLabel>,
    pub message: Option<String>,
}

impl AttemptView {
    pub fn of(a: &AttemptRecord) -> AttemptView {
        AttemptView {
            attempt: a.attempt,
            worker_id: a.worker_id.to_string(),
            assigned_at: a.assigned_at,
            started_at: a.started_at,
            finished_at: a.finished_at,
            outcome: a.outcome,
            message: a.message.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct JobDetailView {
    pub user_id: String,
    pub job: JobView,
    pub attempts: Vec<AttemptView>,
    pub ledger: Vec<LedgerEntryView>,
}

fn job_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found("job"))
}

/// A job with its attempts and its ledger entries.
#[utoipa::path(get, path = "/v1/admin/jobs/{id}", params(("id" = String, Path)), security(("admin_token" = [])),
    responses((status = 200, body = JobDetailView), (status = 404, body = Problem), (status = 410, body = Problem)))]
pub async fn job(
    state: web::Data<AppState>,
    _: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let d = state.orchestrator.job_detail(job_id(&path)?).await?;
    Ok(HttpResponse::Ok().json(JobDetailView {
        user_id: d.job.user_id.to_string(),
        job: JobView::for_operator(&d.job, d.position),
        attempts: d.attempts.iter().map(AttemptView::of).collect(),
        ledger: d.ledger.iter().map(LedgerEntryView::of).collect(),
    }))
}

/// Cancel any job, with the refund rules of the user's own cancel.
#[utoipa::path(post, path = "/v1/admin/jobs/{id}/cancel", operation_id = "admin_cancel_job", params(("id" = String, Path)), security(("admin_token" = [])),
    responses((status = 200, body = JobView), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn cancel(
    state: web::Data<AppState>,
    _: Admin,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = state.orchestrator.admin_cancel(job_id(&path)?).await?;
    Ok(HttpResponse::Ok().json(JobView::for_operator(&job, None)))
}
