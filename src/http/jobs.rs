//! Jobs: submit (with `Idempotency-Key`), read, list, cancel.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use admedia_actors::ids::JobId;
use admedia_actors::job::{IdempotencyKey, JobRequest, JobState};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::http::auth::AuthUser;
use crate::http::input::{Json, Query};
use crate::http::problem::{ApiError, Problem};
use crate::http::views::JobView;
use crate::http::{page_limit, AppState};

pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
pub const IDEMPOTENT_REPLAYED: &str = "Idempotent-Replayed";

fn job_id(raw: &str) -> Result<JobId, ApiError> {
    // An id that cannot exist is simply not found.
    raw.parse().map_err(|_| ApiError::not_found("job"))
}

/// Submit a job: its cost is held at once and released or charged when it
/// ends. The same `Idempotency-Key` with the same body returns the first
/// response and charges nothing.
#[utoipa::path(post, path = "/v1/jobs", operation_id = "submit_job", request_body = JobRequest, security(("api_key" = [])),
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
        description = "1..=255 visible ASCII characters")),
    responses((status = 202, body = JobView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 402, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem),
        (status = 429, body = Problem)))]
pub async fn submit(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    req: HttpRequest,
    body: Json<JobRequest>,
) -> Result<HttpResponse, ApiError> {
    let idempotency = match req.headers().get(IDEMPOTENCY_KEY) {
        Some(v) => {
            let raw = v.to_str().map_err(|_| {
                ApiError::InvalidParams("Idempotency-Key must be visible ASCII".into())
            })?;
            Some(IdempotencyKey::parse(raw).map_err(|e| ApiError::InvalidParams(e.0))?)
        }
        None => None,
    };
    if let Some(url) = body
        .webhook_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        crate::webhooks::check_target(url, state.webhook_allow_private)
            .map_err(ApiError::InvalidParams)?;
    }
    let spent = state
        .rate_limit(user.id, user.tier(chrono::Utc::now()))
        .await?;
    if let Err(refused) = state
        .materials
        .check_references(user.id, &body.params)
        .await
    {
        // Only accepted submissions spend the rate budget.
        if let Some(spent) = spent {
            state.rate_limiter.release(spent).await;
        }
        return Err(refused.into());
    }
    let submission = match state
        .orchestrator
        .submit(user.id, body.into_inner(), idempotency)
        .await
    {
        Ok(submission) => submission,
        Err(refused) => {
            // Only accepted submissions spend the rate budget.
            if let Some(spent) = spent {
                state.rate_limiter.release(spent).await;
            }
            return Err(refused.into());
        }
    };
    let job = &submission.job;
    let position = if submission.replayed {
        None
    } else {
        state
            .orchestrator
            .store()
            .queue_position(job.id)
            .await
            .ok()
            .flatten()
    };
    let mut response = HttpResponse::Accepted();
    response.insert_header((header::LOCATION, format!("/v1/jobs/{}", job.id)));
    if submission.replayed {
        response.insert_header((IDEMPOTENT_REPLAYED, "true"));
    }
    Ok(response.json(JobView::of(job, position)))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", operation_id = "get_job", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, body = Problem), (status = 410, body = Problem)))]
pub async fn get(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&path)?;
    let (job, position) = state.orchestrator.job(user.id, id).await?;
    Ok(HttpResponse::Ok().json(JobView::of(&job, position)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// Only jobs in this state.
    #[param(value_type = Option<JobState>)]
    pub state: Option<String>,
    /// 1..=200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
    /// A job id: jobs submitted before it.
    #[param(format = Uuid)]
    pub before: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct JobsPage {
    pub jobs: Vec<JobView>,
    pub next: Option<String>,
}

/// The caller's jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", operation_id = "list_jobs", params(JobsQuery), security(("api_key" = [])),
    responses((status = 200, body = JobsPage), (status = 422, body = Problem)))]
pub async fn list(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    query: Query<JobsQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(query.limit)?;
    let filter = match &query.state {
        Some(s) => Some(
            s.parse::<JobState>()
                .map_err(|e| ApiError::InvalidParams(e.0))?,
        ),
        None => None,
    };
    let before = match &query.before {
        Some(raw) => Some(
            raw.parse::<JobId>()
                .map_err(|_| ApiError::InvalidParams(format!("before: {raw:?} is not a job id")))?,
        ),
        None => None,
    };
    let mut jobs = state
        .orchestrator
        .jobs(user.id, filter, before, limit + 1)
        .await?;
    let next = if jobs.len() > limit {
        jobs.truncate(limit);
        jobs.last().map(|j| j.id.to_string())
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(JobsPage {
        jobs: jobs.iter().map(|j| JobView::of(j, None)).collect(),
        next,
    }))
}

/// Cancel: a waiting job is refunded; a running one is stopped and charged
/// (the GPU time was used).
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", operation_id = "cancel_job", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn cancel(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&path)?;
    let job = state.orchestrator.cancel(user.id, id).await?;
    Ok(HttpResponse::Ok().json(JobView::of(&job, None)))
}
