//! `GET /v1/workers/connect`: the WebSocket a GPU worker keeps open (see
//! docs/worker-protocol.md). One `WorkerActor` per connection; this module
//! only moves frames between the socket and that actor, and refuses what
//! is not a protocol message before it reaches any job.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, Session};
use admedia_actors::actors::worker::{LinkClosed, WorkerLink};
use admedia_actors::domain::ids::WorkerId;
use admedia_actors::wire::{check_presented, Capabilities, FromWorker, PresentedAttempt, ToWorker};
use admedia_actors::Orchestrator;
use tokio::sync::mpsc;

use crate::http::auth::same_secret;
use crate::http::problem::ApiError;
use crate::http::AppState;

/// Largest frame accepted from a worker.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// A worker must introduce itself this soon after connecting.
const HELLO_WAIT: Duration = Duration::from_secs(10);
const MAX_SLOTS: u32 = 256;

/// Upgrades an authenticated worker's request to the protocol socket: a
/// WebSocket carrying the worker protocol's JSON messages (see the
/// project's worker-protocol document). A standby node sends a redirect to
/// the leader and closes.
#[utoipa::path(get, path = "/v1/workers/connect", security(("worker_token" = [])),
    params(("Upgrade" = String, Header, description = "`websocket`"),
        ("Connection" = String, Header, description = "`Upgrade`"),
        ("Sec-WebSocket-Key" = String, Header), ("Sec-WebSocket-Version" = String, Header, description = "`13`")),
    responses((status = 101, description = "Switching Protocols: the worker protocol socket"),
        (status = 400, description = "Not a WebSocket upgrade")))]
pub async fn connect(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let token = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::Unauthorized("missing worker token".into()))?;
    let client = crate::http::client_limits::client_key(&req);
    state.client_limits.check_auth(&client).await?;
    if !same_secret(token.trim(), &state.worker_token) {
        state.client_limits.auth_failed(&client).await;
        return Err(ApiError::Unauthorized("invalid worker token".into()));
    }
    let redirect = match state.node.role() {
        crate::cluster::Role::Leader { .. } => None,
        crate::cluster::Role::Standby => Some(
            state
                .orchestrator
                .store()
                .leader()
                .await
                .ok()
                .flatten()
                .map(|l| l.url)
                .filter(|u| !u.is_empty() && *u != state.node.url),
        ),
    };
    let (response, mut session, stream) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::InvalidRequest(format!("WebSocket upgrade: {e}")))?;
    if let Some(leader) = redirect {
        // A standby: point the worker at the leader (or, mid-election, ask
        // it to come back), and close.
        let message = match leader {
            Some(url) => ToWorker::Redirect { url },
            None => ToWorker::Error {
                message: "no active scheduler yet; reconnect shortly".into(),
            },
        };
        actix_rt::spawn(async move {
            send(&mut session, &message).await;
            let _ = session.close(None).await;
        });
        return Ok(response);
    }
    let stream = stream
        .max_frame_size(MAX_FRAME_BYTES)
        .aggregate_continuations()
        .max_continuation_size(MAX_FRAME_BYTES);
    actix_rt::spawn(run_session(session, stream, state.orchestrator.clone()));
    Ok(response)
}

/// Frames to the worker go through a channel drained by one writer task,
/// so the actor never waits on the network.
struct SocketLink(mpsc::UnboundedSender<ToWorker>);

impl WorkerLink for SocketLink {
    fn send(&mut self, msg: ToWorker) -> bool {
        self.0.send(msg).is_ok()
    }
}

async fn send(session: &mut Session, msg: &ToWorker) -> bool {
    match serde_json::to_string(msg) {
        Ok(text) => session.text(text).await.is_ok(),
        Err(_) => false,
    }
}

async fn refuse(session: &mut Session, message: String) -> bool {
    send(session, &ToWorker::Error { message }).await
}

/// Reads frames until a valid `hello`; `None` if the worker left, broke
/// the protocol beyond repair, or took too long. With the capabilities come
/// the attempts the worker presents from an earlier connection.
async fn await_hello(
    session: &mut Session,
    stream: &mut AggregatedMessageStream,
) -> Option<(Capabilities, Vec<PresentedAttempt>)> {
    let wait = async {
        loop {
            match stream.recv().await? {
                Ok(AggregatedMessage::Text(text)) => {
                    match serde_json::from_str::<FromWorker>(&text) {
                        Ok(FromWorker::Hello {
                            name,
                            slots,
                            gpu_model,
                            vram_mb,
                            kinds,
                            models,
                            loaded_models,
                            attempts,
                        }) => {
                            let name = name.trim().to_owned();
                            if name.is_empty() || name.chars().count() > 100 {
                                refuse(session, "hello: name must be 1..=100 characters".into())
                                    .await;
                            } else if !(1..=MAX_SLOTS).contains(&slots) {
                                refuse(session, format!("hello: slots must be 1..={MAX_SLOTS}"))
                                    .await;
                            } else if kinds.is_empty() {
                                refuse(
                                    session,
                                    "hello: kinds must name at least one job kind".into(),
                                )
                                .await;
                            } else if let Err(message) = check_presented(&attempts, slots) {
                                refuse(session, message).await;
                            } else {
                                let caps = Capabilities {
                                    name,
                                    slots,
                                    gpu_model,
                                    vram_mb,
                                    kinds,
                                    models,
                                    loaded_models,
                                };
                                return Some((caps, attempts));
                            }
                        }
                        Ok(_) => {
                            refuse(session, "the first message must be hello".into()).await;
                        }
                        Err(e) => {
                            refuse(session, format!("malformed message: {e}")).await;
                        }
                    }
                }
                Ok(AggregatedMessage::Ping(p)) => {
                    let _ = session.pong(&p).await;
                }
                Ok(AggregatedMessage::Binary(_)) => {
                    refuse(session, "binary frames are not part of the protocol".into()).await;
                }
                Ok(AggregatedMessage::Pong(_)) => {}
                Ok(AggregatedMessage::Close(_)) | Err(_) => return None,
            }
        }
    };
    tokio::time::timeout(HELLO_WAIT, wait).await.ok().flatten()
}

async fn run_session(
    mut session: Session,
    mut stream: AggregatedMessageStream,
    orchestrator: Orchestrator,
) {
    let Some((caps, presented)) = await_hello(&mut session, &mut stream).await else {
        let _ = refuse(&mut session, "no valid hello; closing".into()).await;
        let _ = session.close(None).await;
        return;
    };
    // The worker actor sends `welcome` once the scheduler has registered
    // it, so a welcomed worker can be assigned work at once.
    let id = WorkerId::generate();
    tracing::info!(worker = %id, name = %caps.name, slots = caps.slots, gpu = %caps.gpu_model,
        vram_mb = caps.vram_mb, presented = presented.len(), "worker connected");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = orchestrator.connect_worker(id, caps, presented, Box::new(SocketLink(tx)));

    // Writer: ends when the worker actor is gone (its link, the only
    // sender, is dropped), and then closes the socket.
    let mut writer_session = session.clone();
    actix_rt::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if !send(&mut writer_session, &msg).await {
                return;
            }
        }
        let _ = writer_session.close(None).await;
    });

    while let Some(frame) = stream.recv().await {
        match frame {
            Ok(AggregatedMessage::Text(text)) => match serde_json::from_str::<FromWorker>(&text) {
                Ok(msg) => worker.do_send(msg),
                Err(e) => {
                    if !refuse(&mut session, format!("malformed message: {e}")).await {
                        break;
                    }
                }
            },
            Ok(AggregatedMessage::Binary(_)) => {
                if !refuse(
                    &mut session,
                    "binary frames are not part of the protocol".into(),
                )
                .await
                {
                    break;
                }
            }
            Ok(AggregatedMessage::Ping(p)) => {
                let _ = session.pong(&p).await;
            }
            Ok(AggregatedMessage::Pong(_)) => {}
            Ok(AggregatedMessage::Close(_)) => break,
            Err(e) => {
                // An oversized or broken frame: the stream cannot continue.
                let _ = refuse(&mut session, format!("protocol error: {e}")).await;
                break;
            }
        }
    }
    worker.do_send(LinkClosed);
    let _ = session.close(None).await;
    tracing::info!(worker = %id, "worker disconnected");
}
