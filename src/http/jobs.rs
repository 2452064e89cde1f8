//! Jobs: submit (with `Idempotency-Key`), alone or in batches; read, list,
//! cancel.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use admedia_actors::domain::account::User;
use admedia_actors::domain::ids::JobId;
use admedia_actors::domain::job::{IdempotencyKey, JobRequest, JobState};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::http::auth::AuthUser;
use crate::http::input::{Json, Query};
use crate::http::problem::{ApiError, Problem};
use crate::http::{before_cursor, next_page, page_limit, AppState};
use crate::views::JobView;

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
    let accepted = submit_one(&state, &user, body.into_inner(), idempotency).await?;
    let mut response = HttpResponse::Accepted();
    response.insert_header((header::LOCATION, format!("/v1/jobs/{}", accepted.job.id)));
    if accepted.replayed {
        response.insert_header((IDEMPOTENT_REPLAYED, "true"));
    }
    Ok(response.json(accepted.job))
}

/// A submission the wallet accepted (or replayed).
pub struct Accepted {
    pub job: JobView,
    pub replayed: bool,
}

/// One submission, as `POST /v1/jobs` and every item of a batch make it:
/// the webhook target, the rate limit (given back when the submission is
/// refused after all), the material references, then the orchestrator
/// (content rules, prices, the wallet).
pub async fn submit_one(
    state: &AppState,
    user: &User,
    request: JobRequest,
    idempotency: Option<IdempotencyKey>,
) -> Result<Accepted, ApiError> {
    if let Some(url) = request
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
        .check_references(user.id, &request.params)
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
        .submit(user.id, request, idempotency)
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
    Ok(Accepted {
        job: JobView::of(job, submission.position),
        replayed: submission.replayed,
    })
}

/// The most jobs one batch may carry.
pub const MAX_BATCH: usize = 100;

/// Several jobs in one request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1..=100 jobs, answered in this order.
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<BatchItem>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    /// This item's own idempotency key, as the `Idempotency-Key` header of
    /// a single submission: 1..=255 visible ASCII characters, distinct
    /// within the batch.
    #[serde(default)]
    #[schema(pattern = "^[!-~]{1,255}$")]
    pub idempotency_key: Option<String>,
    pub job: JobRequest,
}

/// The answer to a batch: one result per item, in the items' order.
#[derive(Serialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

/// What became of one item: `status` is the status a single submission
/// would have answered (`202` accepted, otherwise the problem's).
#[derive(Serialize, ToSchema)]
pub struct BatchResult {
    /// The item's position in the request, from 0.
    pub index: usize,
    pub status: u16,
    /// The job, when accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobView>,
    /// `true` when the item's idempotency key answered a job submitted
    /// before (nothing new was held).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    /// Why the item was refused: the problem document a single submission
    /// would have answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
}

/// Submit up to 100 jobs at once. Each item is submitted as
/// `POST /v1/jobs` would submit it (its own idempotency key, rate-limit
/// unit, content and material checks, hold) and answered in order: an
/// item refused does not stop the others. `200` says the batch was read;
/// each result says what became of its item.
#[utoipa::path(post, path = "/v1/jobs/batch", operation_id = "submit_jobs", request_body = BatchRequest, security(("api_key" = [])),
    responses((status = 200, body = BatchResponse), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 413, body = Problem), (status = 422, body = Problem)))]
pub async fn submit_batch(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    body: Json<BatchRequest>,
) -> Result<HttpResponse, ApiError> {
    let items = body.into_inner().items;
    if items.is_empty() {
        return Err(ApiError::InvalidParams(
            "items: a batch holds at least one job".into(),
        ));
    }
    if items.len() > MAX_BATCH {
        return Err(ApiError::BatchTooLarge {
            detail: format!(
                "items: a batch holds at most {MAX_BATCH} jobs, got {}",
                items.len()
            ),
            limit: MAX_BATCH,
        });
    }
    // Two items under one key would make the answer depend on which the
    // store saw first: refused before anything is submitted.
    let mut keys = std::collections::HashSet::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(key) = &item.idempotency_key {
            if !keys.insert(key.as_str()) {
                return Err(ApiError::InvalidParams(format!(
                    "items/{i}/idempotency_key: {key:?} is used by an earlier item"
                )));
            }
        }
    }
    // All at once: the wallet actor passes each on without waiting for the
    // one before, so on PostgreSQL they share group commits.
    let submissions = items.into_iter().map(|item| {
        let (state, user) = (&state, &user);
        async move {
            let idempotency = match item.idempotency_key.as_deref().map(IdempotencyKey::parse) {
                Some(Ok(key)) => Some(key),
                Some(Err(e)) => {
                    return Err(ApiError::InvalidParams(format!("idempotency_key: {}", e.0)))
                }
                None => None,
            };
            submit_one(state, user, item.job, idempotency).await
        }
    });
    let results = futures_util::future::join_all(submissions)
        .await
        .into_iter()
        .enumerate()
        .map(|(index, outcome)| match outcome {
            Ok(accepted) => BatchResult {
                index,
                status: StatusCode::ACCEPTED.as_u16(),
                job: Some(accepted.job),
                replayed: accepted.replayed,
                problem: None,
            },
            Err(refused) => {
                let problem = refused.problem();
                BatchResult {
                    index,
                    status: problem.status,
                    job: None,
                    replayed: false,
                    problem: Some(problem),
                }
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(BatchResponse { results }))
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
    let before = before_cursor(query.before.as_deref(), "job")?;
    let mut jobs = state
        .orchestrator
        .jobs(user.id, filter, before, limit + 1)
        .await?;
    let next = next_page(&mut jobs, limit, |j| j.id.to_string());
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
