//! `GET /v1/jobs/{id}/events`: a job's progress as server-sent events.
//!
//! The stream opens with the job's current state, then sends each later
//! state change and progress report, a comment every 15 s to keep proxies
//! from closing it, and ends after the terminal state.
//!
//! `GET /v1/events`: every job event of the caller, resumable. Its `state`
//! events are read from the store (the events written with each change,
//! numbered by it); the event hub only wakes the stream, so a wake-up lost
//! between nodes delays an event until the next keep-alive, never loses
//! it, and a reconnect with `Last-Event-ID` gets exactly what came after.

use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{web, HttpResponse};
use admedia_actors::domain::events::JobEvent;
use admedia_actors::domain::ids::JobId;
use tokio::sync::{broadcast, mpsc};

use crate::http::auth::AuthUser;
use crate::http::problem::{ApiError, Problem};
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
        admedia_actors::domain::events::JobEventKind::State { .. } => "state",
        admedia_actors::domain::events::JobEventKind::Progress { .. } => "progress",
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
    Ok(event_stream(rx))
}

/// A `text/event-stream` response of the frames `rx` receives, ending when
/// the task sending them stops.
fn event_stream(rx: mpsc::Receiver<Bytes>) -> HttpResponse {
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, actix_web::Error>(b), rx))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        // Compression would buffer the stream.
        .insert_header(("Content-Encoding", "identity"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

/// One event of the per-user stream (documentation: the fields of an SSE
/// event).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UserEventFrame {
    /// Only on `state` events: the event's sequence number, increasing;
    /// what `Last-Event-ID` resumes after.
    #[schema(pattern = "^[1-9][0-9]*$")]
    id: Option<String>,
    /// `ready` (first, once), `gap` (events were missed), `state` or
    /// `progress`.
    #[schema(pattern = "^(ready|gap|state|progress)$")]
    event: String,
    /// JSON: for `state` and `progress` the job event (job id, attempt,
    /// time, and the new state with charge and error, or the progress);
    /// for `ready` `{"latest", "resumed_after"}`; for `gap`
    /// `{"after", "oldest_kept_seconds"}`.
    data: String,
}

/// Events read from the store per query.
const USER_PAGE: usize = 500;

/// `Last-Event-ID` as a sequence number; absent (or empty) is `None`.
fn last_event_id(req: &actix_web::HttpRequest) -> Result<Option<u64>, ApiError> {
    let Some(value) = req.headers().get("last-event-id") else {
        return Ok(None);
    };
    let refuse = || {
        ApiError::InvalidRequest(
            "Last-Event-ID must be the id of an event of this stream: 1 to 19 digits".into(),
        )
    };
    let raw = value.to_str().map_err(|_| refuse())?.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() > 19 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse());
    }
    raw.parse::<u64>().map(Some).map_err(|_| refuse())
}

fn user_frame(event: &JobEvent, seq: Option<u64>) -> Bytes {
    let name = match event.kind {
        admedia_actors::domain::events::JobEventKind::State { .. } => "state",
        admedia_actors::domain::events::JobEventKind::Progress { .. } => "progress",
    };
    let data = serde_json::to_string(event).unwrap_or_default();
    match seq {
        Some(id) => Bytes::from(format!("id: {id}\nevent: {name}\ndata: {data}\n\n")),
        None => Bytes::from(format!("event: {name}\ndata: {data}\n\n")),
    }
}

fn gap_frame(after: u64) -> Bytes {
    let data = serde_json::json!({
        "after": after,
        "oldest_kept_seconds": admedia_actors::domain::endpoints::EVENT_WINDOW.num_seconds(),
    });
    Bytes::from(format!("event: gap\ndata: {data}\n\n"))
}

/// Sends every kept event after `*cursor`, page by page, moving the
/// cursor; `false` when the client is gone.
async fn catch_up(
    orchestrator: &admedia_actors::Orchestrator,
    user: admedia_actors::domain::ids::UserId,
    cursor: &mut u64,
    tx: &mpsc::Sender<Bytes>,
) -> bool {
    loop {
        let page = match orchestrator
            .user_events(user, Some(*cursor), USER_PAGE)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                // The next wake-up or keep-alive reads again.
                tracing::warn!(%user, error = %e, "event stream could not read the store");
                return true;
            }
        };
        if page.missed && tx.send(gap_frame(*cursor)).await.is_err() {
            return false;
        }
        let full = page.events.len() == USER_PAGE;
        for stored in page.events {
            *cursor = (*cursor).max(stored.seq);
            if tx
                .send(user_frame(&stored.event, Some(stored.seq)))
                .await
                .is_err()
            {
                return false;
            }
        }
        if !full {
            return true;
        }
    }
}

/// Every job event of the caller as server-sent events, resumable: a
/// `ready` event first, then each state change as an `id:`-numbered
/// `state` event (ids increase) and progress reports as `progress` events
/// (without an id; they are not replayed). Reconnecting with
/// `Last-Event-ID: N` first sends every kept event after `N` (events are
/// kept 24 hours); when some event after `N` is no longer kept, a `gap`
/// event says so before the rest. A keep-alive comment every 15 s.
#[utoipa::path(get, path = "/v1/events", operation_id = "user_events", security(("api_key" = [])),
    params(("Last-Event-ID" = Option<String>, Header, pattern = "^[0-9]{0,19}$",
        description = "Resume after this event id (the last `id:` received); absent or empty: from now on")),
    responses((status = 200, content_type = "text/event-stream", body = UserEventFrame,
        description = "`ready`, then `state` events with `id: N`, `progress` events, and `gap` when events were missed"),
        (status = 400, body = Problem)))]
pub async fn user_stream(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let after = last_event_id(&req)?;
    // Subscribe before reading, so nothing falls between the two.
    let mut live = state.events.subscribe_user(user.id);
    let first = state.orchestrator.user_events(user.id, None, 0).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let orchestrator = state.orchestrator.clone();
    let user = user.id;
    actix_rt::spawn(async move {
        let ready = serde_json::json!({"latest": first.latest, "resumed_after": after});
        if tx
            .send(Bytes::from(format!("event: ready\ndata: {ready}\n\n")))
            .await
            .is_err()
        {
            return;
        }
        let mut cursor = after.unwrap_or(first.latest);
        if after.is_some() && !catch_up(&orchestrator, user, &mut cursor, &tx).await {
            return;
        }
        let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
        keep_alive.tick().await;
        loop {
            tokio::select! {
                received = live.recv() => match received {
                    Ok(event) if event.order().is_none() => {
                        if tx.send(user_frame(&event, None)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        // A state change committed: take the burst at once,
                        // then read what the store kept after the cursor.
                        while let Ok(more) = live.try_recv() {
                            if more.order().is_none() && tx.send(user_frame(&more, None)).await.is_err() {
                                return;
                            }
                        }
                        if !catch_up(&orchestrator, user, &mut cursor, &tx).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = keep_alive.tick() => {
                    if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                        return;
                    }
                    // Belt and braces against a wake-up lost in transit.
                    if !catch_up(&orchestrator, user, &mut cursor, &tx).await {
                        return;
                    }
                }
            }
        }
    });
    Ok(event_stream(rx))
}
