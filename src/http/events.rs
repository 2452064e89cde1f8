//! `GET /v1/jobs/{id}/events`: a job's progress as server-sent events.
//!
//! The stream opens with the job's current state, then sends each later
//! state change and progress report, a comment every 15 s to keep proxies
//! from closing it, and ends after the terminal state.

use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{web, HttpResponse};
use admedia_actors::events::JobEvent;
use admedia_actors::ids::JobId;
use tokio::sync::{broadcast, mpsc};

use crate::http::auth::AuthUser;
use crate::http::problem::ApiError;
use crate::http::AppState;

/// One event of the stream (documentation: the fields of an SSE event).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct JobEventFrame {
    /// Counts the stream's events from 1.
    #[schema(pattern = "^[1-9][0-9]*$")]
    id: String,
    /// `state` or `progress`.
    #[schema(pattern = "^(state|progress)$")]
    event: String,
    /// The event as JSON: the job id, attempt, time, and the new state
    /// (with charge and error) or the progress.
    data: String,
}

const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn frame(event: &JobEvent, id: u64) -> Bytes {
    let name = match event.kind {
        admedia_actors::events::JobEventKind::State { .. } => "state",
        admedia_actors::events::JobEventKind::Progress { .. } => "progress",
    };
    let data = serde_json::to_string(event).unwrap_or_default();
    Bytes::from(format!("id: {id}\nevent: {name}\ndata: {data}\n\n"))
}

/// The job's progress as server-sent events: `state` events (the current
/// state first, then each change) and `progress` events, a keep-alive
/// comment every 15 s; the stream ends after the terminal state.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", security(("api_key" = [])),
    params(("id" = String, Path, format = Uuid)),
    responses((status = 200, content_type = "text/event-stream", body = JobEventFrame,
        description = "`id: N`, `event: state|progress`, `data: <JSON>` events")))]
pub async fn stream(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id: JobId = path.parse().map_err(|_| ApiError::not_found("job"))?;
    // Subscribe before reading the job, so nothing falls between the two.
    let mut events = state.events.subscribe(id);
    let (job, _) = state.orchestrator.job(user.id, id).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let orchestrator = state.orchestrator.clone();
    actix_rt::spawn(async move {
        let mut sent = 0u64;
        let first = JobEvent::state_of(&job);
        let mut last = first.order();
        sent += 1;
        if tx.send(frame(&first, sent)).await.is_err() || first.is_terminal() {
            return;
        }
        let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
        keep_alive.tick().await;
        loop {
            let next = tokio::select! {
                received = events.recv() => match received {
                    Ok(event) => Some(event),
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => {
                        // Skipped events: the store says where the job is.
                        match orchestrator.job(user.id, id).await {
                            Ok((job, _)) => Some(JobEvent::state_of(&job)),
                            Err(_) => None,
                        }
                    }
                },
                _ = keep_alive.tick() => {
                    if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                        return;
                    }
                    // Belt and braces against an event lost in transit.
                    match orchestrator.job(user.id, id).await {
                        Ok((job, _)) => Some(JobEvent::state_of(&job)),
                        Err(_) => None,
                    }
                }
            };
            let Some(event) = next else {
                continue;
            };
            match event.order() {
                Some(order) if Some(order) <= last => continue,
                Some(order) => last = Some(order),
                None => {
                    // Progress belongs to the attempt being shown.
                    if last.is_some_and(|(attempt, _)| event.attempt < attempt) {
                        continue;
                    }
                }
            }
            sent += 1;
            if tx.send(frame(&event, sent)).await.is_err() || event.is_terminal() {
                return;
            }
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, actix_web::Error>(b), rx))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        // Compression would buffer the stream.
        .insert_header(("Content-Encoding", "identity"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}
