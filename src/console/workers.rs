//! Connected GPU workers, and draining one.

use actix_web::{web, HttpResponse};
use admedia_actors::domain::ids::WorkerId;
use chrono::Utc;
use maud::html;

use crate::console::error::ConsoleError;
use crate::console::session::{Form, Operator};
use crate::console::view::{self, Nav};
use crate::http::operator::fleet::worker_infos;
use crate::http::problem::ApiError;
use crate::http::AppState;

fn list_or_any(items: &[String]) -> String {
    if items.is_empty() {
        "any".into()
    } else {
        items.join(", ")
    }
}

pub async fn list(
    state: web::Data<AppState>,
    op: Operator,
    query: web::Query<view::NoticeQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let workers = worker_infos(&state).await?;
    let notice = match query.notice.as_deref() {
        Some("drained") => Some(
            "Draining: the worker finishes the attempts it runs and gets no new ones. It is ready to stop once its slots are free.",
        ),
        Some("lifted") => Some("Quarantine lifted: the worker takes jobs again."),
        _ => None,
    };
    let now = Utc::now();
    let body = html! {
        @if let Some(n) = notice { (view::flash_ok(n)) }
        h1 { "Workers" }
        @if workers.is_empty() {
            (view::empty("No workers connected", html! {
                "Jobs wait in line until a worker connects. Start one with "
                code { "admedia-worker --server ws://HOST:8080 --token $ADMEDIA_WORKER_TOKEN" }
                ", or run the server with " code { "ADMEDIA_SIM_WORKERS=2" } " for simulated ones."
            }))
        } @else {
            @let slots: u32 = workers.iter().map(|w| w.slots).sum();
            @let busy: u32 = workers.iter().map(|w| w.busy_slots).sum();
            p.muted.summary { (workers.len()) " connected · " (busy) " of " (view::count(slots, "slot", "slots")) " busy" }
            div.table-wrap { table.workers {
                thead { tr {
                    th { "Worker" } th { "GPU" } th { "Serves" } th { "Models loaded" }
                    th { "Slots in use" } th { "Last heartbeat" } th { "State" } th { "" }
                } }
                tbody { @for w in &workers {
                    tr {
                        td { strong { (w.name) } br; (view::short_id(&w.id)) }
                        td { (w.gpu_model) br; span.muted { (format!("{:.0}", f64::from(w.vram_mb) / 1024.0)) " GB" } }
                        td {
                            (w.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", "))
                            br; span.muted { "models: " (list_or_any(&w.models)) }
                        }
                        td { @if w.loaded_models.is_empty() { span.muted { "none" } } @else { (w.loaded_models.join(", ")) } }
                        td.slots {
                            meter min="0" max=(w.slots.max(1)) value=(w.busy_slots) {}
                            " " (w.busy_slots) " / " (w.slots)
                        }
                        td {
                            @match w.last_heard_ms {
                                Some(ms) => {
                                    @let t = now - chrono::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX / 2));
                                    (view::when(t))
                                },
                                None => { span.muted title="A simulated worker runs inside the server and has no heartbeat." { "in process" } },
                            }
                        }
                        td {
                            @if w.quarantined {
                                span.worker.worker-draining title={ (w.consecutive_failures) " system failures in a row" } { "quarantined" }
                                @if let Some(ms) = w.quarantine_left_ms { br; span.muted { (ms / 1000) " s left" } }
                            }
                            @else if w.draining { span.worker.worker-draining { "draining" } }
                            @else if w.busy_slots > 0 { span.worker.worker-busy { "busy" } }
                            @else { span.worker.worker-idle { "idle" } }
                        }
                        td.actions {
                            @if w.quarantined {
                                form method="post" action={ "/console/workers/" (w.id) "/lift-quarantine" } {
                                    (view::csrf_field(&op))
                                    button type="submit" { "Lift quarantine" }
                                }
                            }
                            @if !w.draining {
                                details.confirm {
                                    summary { "Drain…" }
                                    form method="post" action={ "/console/workers/" (w.id) "/drain" } {
                                        (view::csrf_field(&op))
                                        p { "Finishes its running attempts, takes no new ones. This cannot be undone from here: the worker must reconnect." }
                                        button.danger type="submit" { "Drain " (w.name) }
                                    }
                                }
                            }
                        }
                    }
                } }
            } }
        }
    };
    Ok(view::ok(view::page("Workers", Nav::Workers, &op, body)))
}

pub async fn drain(
    state: web::Data<AppState>,
    op: Operator,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    op.check_csrf(&Form::parse(&body))?;
    let id: WorkerId = path
        .parse()
        .map_err(|_| ConsoleError::Api(ApiError::not_found("worker")))?;
    state.orchestrator.drain_worker(id).await?;
    Ok(view::see_other("/console/workers?notice=drained"))
}

pub async fn lift_quarantine(
    state: web::Data<AppState>,
    op: Operator,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    op.check_csrf(&Form::parse(&body))?;
    let id: WorkerId = path
        .parse()
        .map_err(|_| ConsoleError::Api(ApiError::not_found("worker")))?;
    state.orchestrator.lift_quarantine(id).await?;
    Ok(view::see_other("/console/workers?notice=lifted"))
}
