//! One connection to the server, from connect to close: `hello`, wait for
//! `welcome`, then one loop that reads the server's messages, forwards the
//! attempts' reports, heartbeats and follows the shutdown state. Nothing in
//! the loop waits for an attempt; attempts run in their own tasks.
//!
//! A connection is one worker to the server: a reconnect starts from
//! scratch, and nothing of the old connection (attempts, reports) is
//! carried over.

use std::rc::Rc;
use std::time::Duration;

use actix_codec::Framed;
use admedia_actors::job::FailureClass;
use admedia_actors::wire::{FromWorker, ToWorker};
use awc::error::WsClientError;
use awc::http::header::AUTHORIZATION;
use awc::ws::{CloseCode, Codec, Frame, Message};
use awc::BoxedSocket;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::attempts::{AttemptKey, Attempts, Report};
use crate::cli::Config;
use crate::executor::{Assignment, Executor};
use crate::shutdown::{self, Shutdown};

type Socket = Framed<BoxedSocket, Codec>;

/// Connecting, including the HTTP upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The server answers `hello` at once; longer means something is wrong.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// The protocol's frame limit, both ways.
const MAX_FRAME: usize = 64 * 1024;
/// How long to wait for the server to answer our close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A `heartbeat_ms` of 0 (or nearly) would spin; nobody needs faster.
const MIN_HEARTBEAT: Duration = Duration::from_millis(50);

/// How a connection ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// A drain finished (or there was nothing to drain): exit 0.
    Drained,
    /// A second signal: attempts were abandoned.
    Aborted,
    /// The connection failed or dropped; `welcomed` tells whether it got as
    /// far as a `welcome`, i.e. whether the server is reachable and takes
    /// our token.
    Lost { welcomed: bool, reason: String },
    /// The node does not run the active scheduler and named the one that
    /// does (an `http://` or `ws://` base URL).
    Redirect(String),
}

/// Why a handshake did not end in `welcome`.
enum Refused {
    Failed(String),
    Redirect(String),
}

impl SessionEnd {
    fn stopped(state: Shutdown) -> SessionEnd {
        match state {
            Shutdown::Abort => SessionEnd::Aborted,
            Shutdown::Drain | Shutdown::Running => SessionEnd::Drained,
        }
    }
}

fn lost(reason: impl Into<String>) -> SessionEnd {
    SessionEnd::Lost {
        welcomed: true,
        reason: reason.into(),
    }
}

/// Runs one connection until it ends.
pub async fn run(
    config: &Config,
    executor: &Rc<Executor>,
    shutdown: &mut watch::Receiver<Shutdown>,
) -> SessionEnd {
    tracing::info!(url = %config.url, "connecting");
    let mut ws = tokio::select! {
        connected = connect(config) => match connected {
            Ok(ws) => ws,
            Err(reason) => return SessionEnd::Lost { welcomed: false, reason },
        },
        state = shutdown::requested(shutdown) => return SessionEnd::stopped(state),
    };
    tracing::info!("connected; saying hello");
    let heartbeat = tokio::select! {
        welcomed = handshake(&mut ws, config) => match welcomed {
            Ok(heartbeat) => heartbeat,
            Err(Refused::Failed(reason)) => return SessionEnd::Lost { welcomed: false, reason },
            Err(Refused::Redirect(url)) => {
                close(&mut ws).await;
                return SessionEnd::Redirect(url);
            }
        },
        state = shutdown::requested(shutdown) => {
            close(&mut ws).await;
            return SessionEnd::stopped(state);
        }
    };
    let (attempts, reports) = Attempts::new(config.slots);
    let session = Session {
        ws,
        config,
        executor: Rc::clone(executor),
        attempts,
        reports,
        draining: false,
        server_draining: false,
    };
    session.run(heartbeat, shutdown).await
}

async fn connect(config: &Config) -> Result<Socket, String> {
    let mut connector =
        awc::Connector::new().connector(crate::nodelay::NoDelayConnector::default());
    if let Some(tls) = &config.tls {
        connector = connector.rustls_0_23(tls.clone());
    }
    let client = awc::Client::builder()
        .timeout(CONNECT_TIMEOUT)
        .connector(connector)
        .finish();
    let (_, ws) = client
        .ws(config.url.as_str())
        .header(AUTHORIZATION, config.authorization.clone())
        .max_frame_size(MAX_FRAME)
        .connect()
        .await
        .map_err(|e| match e {
            WsClientError::InvalidResponseStatus(status) if status.as_u16() == 401 => {
                "the server refused the worker token (401)".to_owned()
            }
            e if e.to_string().contains("certificate") => format!(
                "cannot connect: the server's TLS certificate is not trusted ({e}); \
                 give the CA that signed it with --ca-file"
            ),
            e => format!("cannot connect: {e}"),
        })?;
    Ok(ws)
}

/// Sends `hello` and waits for `welcome`; the heartbeat interval it sets.
async fn handshake(ws: &mut Socket, config: &Config) -> Result<Duration, Refused> {
    send(ws, &config.hello).await.map_err(Refused::Failed)?;
    let welcome = async {
        loop {
            match ws.next().await {
                None => {
                    return Err(Refused::Failed(
                        "the server closed the connection before welcome".to_owned(),
                    ))
                }
                Some(Err(e)) => {
                    return Err(Refused::Failed(format!(
                        "websocket error before welcome: {e}"
                    )))
                }
                Some(Ok(Frame::Text(text))) => match serde_json::from_slice::<ToWorker>(&text) {
                    Ok(ToWorker::Welcome {
                        worker_id,
                        heartbeat_ms,
                        lease_ms,
                    }) => {
                        tracing::info!(%worker_id, heartbeat_ms, lease_ms, "welcomed");
                        return Ok(Duration::from_millis(heartbeat_ms).max(MIN_HEARTBEAT));
                    }
                    Ok(ToWorker::Error { message }) => {
                        return Err(Refused::Failed(format!(
                            "the server refused hello: {message}"
                        )))
                    }
                    Ok(ToWorker::Redirect { url }) => {
                        tracing::info!(%url, "this node stands by; following it to the leader");
                        return Err(Refused::Redirect(url));
                    }
                    Ok(other) => tracing::warn!(message = ?other, "ignored before welcome"),
                    Err(e) => tracing::warn!(error = %e, "unreadable message before welcome"),
                },
                Some(Ok(Frame::Ping(payload))) => send_frame(ws, Message::Pong(payload))
                    .await
                    .map_err(Refused::Failed)?,
                Some(Ok(Frame::Close(reason))) => {
                    return Err(Refused::Failed(format!(
                        "the server closed the connection before welcome: {reason:?}"
                    )))
                }
                Some(Ok(_)) => {}
            }
        }
    };
    tokio::time::timeout(WELCOME_TIMEOUT, welcome)
        .await
        .map_err(|_| {
            Refused::Failed(format!("no welcome within {} s", WELCOME_TIMEOUT.as_secs()))
        })?
}

async fn send(ws: &mut Socket, message: &FromWorker) -> Result<(), String> {
    let text = serde_json::to_string(message).map_err(|e| format!("cannot encode: {e}"))?;
    send_frame(ws, Message::Text(text.into())).await
}

async fn send_frame(ws: &mut Socket, frame: Message) -> Result<(), String> {
    ws.send(frame)
        .await
        .map_err(|e| format!("cannot send to the server: {e}"))
}

/// Closes the connection from our side: sends a close frame and waits for
/// the server's (RFC 6455 §7.1.1). Dropping the TCP connection at once can
/// lose the last frames we sent (a drain's final `complete`) at a server
/// that has not read them yet. Errors do not matter: the connection is
/// dropped right after.
async fn close(ws: &mut Socket) {
    if ws
        .send(Message::Close(Some(CloseCode::Normal.into())))
        .await
        .is_err()
    {
        return;
    }
    let server_closed = async {
        while let Some(Ok(frame)) = ws.next().await {
            if matches!(frame, Frame::Close(_)) {
                break;
            }
        }
    };
    if tokio::time::timeout(CLOSE_TIMEOUT, server_closed)
        .await
        .is_err()
    {
        tracing::debug!("the server did not answer our close frame");
    }
    let _ = ws.close().await;
}

/// A welcomed connection.
struct Session<'a> {
    ws: Socket,
    config: &'a Config,
    executor: Rc<Executor>,
    attempts: Attempts,
    reports: mpsc::UnboundedReceiver<Report>,
    /// We sent `drain` (a signal): finish, then exit.
    draining: bool,
    /// The server sent `drain`: take nothing new on this connection.
    server_draining: bool,
}

/// What the loop does after handling one event.
enum Step {
    Continue,
    End(SessionEnd),
}

impl Step {
    fn sent(result: Result<(), String>) -> Step {
        match result {
            Ok(()) => Step::Continue,
            Err(reason) => Step::End(lost(reason)),
        }
    }
}

impl Session<'_> {
    async fn run(
        mut self,
        heartbeat: Duration,
        shutdown: &mut watch::Receiver<Shutdown>,
    ) -> SessionEnd {
        let mut ticks = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut shutdown_open = true;
        loop {
            let step = tokio::select! {
                frame = self.ws.next() => self.on_frame(frame).await,
                Some(report) = self.reports.recv() => self.on_report(report).await,
                _ = ticks.tick() => Step::sent(send(&mut self.ws, &FromWorker::Heartbeat).await),
                changed = shutdown.changed(), if shutdown_open => match changed {
                    Ok(()) => {
                        let state = *shutdown.borrow_and_update();
                        self.on_shutdown(state).await
                    }
                    Err(_) => {
                        shutdown_open = false;
                        Step::Continue
                    }
                },
            };
            if let Step::End(end) = step {
                if let SessionEnd::Lost { reason, .. } = &end {
                    tracing::warn!(%reason, running = self.attempts.len(), "connection lost");
                }
                // Dropping `self` stops whatever still runs.
                return end;
            }
        }
    }

    async fn on_frame(
        &mut self,
        frame: Option<Result<Frame, awc::error::WsProtocolError>>,
    ) -> Step {
        match frame {
            None => Step::End(lost("the server closed the connection")),
            Some(Err(e)) => Step::End(lost(format!("websocket error: {e}"))),
            Some(Ok(Frame::Text(text))) => match serde_json::from_slice::<ToWorker>(&text) {
                Ok(message) => self.on_message(message).await,
                Err(e) => {
                    // Perhaps a newer server; the connection is still good.
                    tracing::warn!(error = %e, "unreadable message from the server, ignored");
                    Step::Continue
                }
            },
            Some(Ok(Frame::Ping(payload))) => {
                Step::sent(send_frame(&mut self.ws, Message::Pong(payload)).await)
            }
            Some(Ok(Frame::Close(reason))) => {
                // Answer the server's close; it closes the TCP connection.
                let _ = self.ws.send(Message::Close(None)).await;
                Step::End(lost(format!(
                    "the server closed the connection ({reason:?})"
                )))
            }
            Some(Ok(Frame::Binary(_) | Frame::Continuation(_))) => {
                tracing::warn!("binary frame from the server, ignored");
                Step::Continue
            }
            Some(Ok(Frame::Pong(_))) => Step::Continue,
        }
    }

    async fn on_message(&mut self, message: ToWorker) -> Step {
        match message {
            ToWorker::Assign {
                job_id,
                attempt,
                lease,
                kind,
                model,
                prompt,
                params,
                deadline_ms,
                inputs,
                outputs,
            } => {
                let job = Assignment {
                    job_id,
                    attempt,
                    lease,
                    kind,
                    model,
                    prompt,
                    params,
                    inputs,
                    outputs,
                };
                self.on_assign(job, deadline_ms).await
            }
            ToWorker::Cancel { job_id, lease } => {
                if self.attempts.cancel(&AttemptKey { job_id, lease }) {
                    tracing::info!(%job_id, %lease, "attempt cancelled");
                    self.drained_yet().await
                } else {
                    tracing::debug!(%job_id, %lease, "cancel of an attempt this worker does not hold");
                    Step::Continue
                }
            }
            ToWorker::Drain => {
                tracing::info!("the server asked this worker to drain: taking no new attempts");
                self.server_draining = true;
                Step::Continue
            }
            ToWorker::Welcome { .. } => {
                tracing::warn!("second welcome on one connection, ignored");
                Step::Continue
            }
            ToWorker::Redirect { url } => {
                tracing::warn!(%url, "redirect after welcome ignored");
                Step::Continue
            }
            ToWorker::Error { message } => {
                tracing::warn!(%message, "the server refused a message");
                Step::Continue
            }
        }
    }

    async fn on_assign(&mut self, job: Assignment, deadline_ms: u64) -> Step {
        let key = AttemptKey {
            job_id: job.job_id,
            lease: job.lease,
        };
        if self.attempts.holds(&key) {
            tracing::warn!(job_id = %key.job_id, lease = %key.lease, "duplicate assign of a running attempt, ignored");
            return Step::Continue;
        }
        let refusal = if self.draining || self.server_draining {
            Some("draining".to_owned())
        } else if !self.config.kinds.contains(&job.kind) {
            Some(format!(
                "this worker does not serve {} jobs",
                job.kind.as_str()
            ))
        } else if self.attempts.is_full() {
            Some("no free slot".to_owned())
        } else {
            None
        };
        if let Some(message) = refusal {
            tracing::info!(job_id = %key.job_id, attempt = job.attempt, %message, "assignment refused");
            let fail = FromWorker::Fail {
                job_id: key.job_id,
                lease: key.lease,
                class: FailureClass::System,
                message,
            };
            return Step::sent(send(&mut self.ws, &fail).await);
        }
        tracing::info!(
            job_id = %key.job_id,
            attempt = job.attempt,
            kind = job.kind.as_str(),
            model = %job.model,
            deadline_ms,
            "attempt started"
        );
        self.attempts.start(
            Rc::clone(&self.executor),
            job,
            Duration::from_millis(deadline_ms),
        );
        let accept = FromWorker::Accept {
            job_id: key.job_id,
            lease: key.lease,
        };
        Step::sent(send(&mut self.ws, &accept).await)
    }

    async fn on_report(&mut self, report: Report) -> Step {
        // Cancelled while the report was queued: say nothing more about it.
        if !self.attempts.holds(&report.key) {
            return Step::Continue;
        }
        if report.last {
            self.attempts.finish(&report.key);
        }
        let step = Step::sent(send(&mut self.ws, &fit_frame(report.message)).await);
        match step {
            Step::Continue if report.last => self.drained_yet().await,
            step => step,
        }
    }

    async fn on_shutdown(&mut self, state: Shutdown) -> Step {
        match state {
            Shutdown::Running => Step::Continue,
            Shutdown::Drain => {
                if !self.draining {
                    self.draining = true;
                    tracing::info!(
                        running = self.attempts.len(),
                        "draining: finishing running attempts, taking no new ones"
                    );
                    if let Step::End(end) = Step::sent(send(&mut self.ws, &FromWorker::Drain).await)
                    {
                        return Step::End(end);
                    }
                }
                self.drained_yet().await
            }
            Shutdown::Abort => {
                tracing::warn!(
                    abandoned = self.attempts.len(),
                    "stopping without waiting for running attempts"
                );
                close(&mut self.ws).await;
                Step::End(SessionEnd::Aborted)
            }
        }
    }

    /// Ends the session once a drain has nothing left to wait for.
    async fn drained_yet(&mut self) -> Step {
        if self.draining && self.attempts.is_empty() {
            tracing::info!("drained: every attempt reported; closing the connection");
            close(&mut self.ws).await;
            Step::End(SessionEnd::Drained)
        } else {
            Step::Continue
        }
    }
}

/// A `complete` too large for one frame would be refused by the server and
/// leave the job to time out; fail it now instead, so it is retried.
fn fit_frame(message: FromWorker) -> FromWorker {
    let FromWorker::Complete { job_id, lease, .. } = &message else {
        return message;
    };
    let size = serde_json::to_string(&message).map_or(usize::MAX, |text| text.len());
    if size <= MAX_FRAME {
        return message;
    }
    tracing::warn!(%job_id, size, "outputs too large for one frame");
    FromWorker::Fail {
        job_id: *job_id,
        lease: *lease,
        class: FailureClass::System,
        message: format!(
            "the outputs ({size} bytes of JSON) exceed the {MAX_FRAME}-byte frame limit"
        ),
    }
}
