//! One connection to the server, from connect to close: `hello`, wait for
//! `welcome`, then one loop that reads the server's messages, forwards the
//! attempts' reports, heartbeats and follows the shutdown state. Nothing in
//! the loop waits for an attempt; attempts run in their own tasks.
//!
//! The attempts are not the connection's: they keep running while it is
//! down, and the next connection's `hello` presents them (see `attempts`).

use std::rc::Rc;
use std::time::Duration;

use admedia_actors::domain::job::FailureClass;
use admedia_actors::wire::{AttemptId, FromWorker, RefusedAttempt, ToWorker};
use admedia_worker::socket::{
    self, send, send_frame, Socket, CONNECT_TIMEOUT, MAX_FRAME, WELCOME_TIMEOUT,
};
use awc::error::WsClientError;
use awc::ws::{CloseCode, Frame, Message};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::attempts::{AttemptKey, Attempts, Report};
use crate::cli::Config;
use crate::executor::{Assignment, Executor};
use crate::shutdown::{self, Shutdown};

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

/// Waits for what ends a connection attempt: any shutdown, or only an
/// abort while a drain reconnects to report what it still holds.
async fn stop_requested(shutdown: &mut watch::Receiver<Shutdown>, draining: bool) -> Shutdown {
    loop {
        let state = shutdown::requested(shutdown).await;
        if !draining || state == Shutdown::Abort {
            return state;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Runs one connection until it ends. `attempts` outlive it.
pub async fn run(
    config: &Config,
    executor: &Rc<Executor>,
    attempts: &mut Attempts,
    reports: &mut mpsc::UnboundedReceiver<Report>,
    shutdown: &mut watch::Receiver<Shutdown>,
) -> SessionEnd {
    // A drain that lost its connection comes back only to finish and
    // report what it still holds.
    let draining = *shutdown.borrow() == Shutdown::Drain;
    if draining && attempts.is_empty() {
        return SessionEnd::Drained;
    }
    tracing::info!(url = %config.url, "connecting");
    let mut ws = tokio::select! {
        connected = connect(config) => match connected {
            Ok(ws) => ws,
            Err(reason) => return SessionEnd::Lost { welcomed: false, reason },
        },
        state = stop_requested(shutdown, draining) => return SessionEnd::stopped(state),
    };
    let presented = attempts.presented();
    tracing::info!(presented = presented.len(), "connected; saying hello");
    let hello = match &config.hello {
        FromWorker::Hello {
            name,
            slots,
            gpu_model,
            vram_mb,
            kinds,
            models,
            loaded_models,
            ..
        } => FromWorker::Hello {
            name: name.clone(),
            slots: *slots,
            gpu_model: gpu_model.clone(),
            vram_mb: *vram_mb,
            kinds: kinds.clone(),
            models: models.clone(),
            loaded_models: loaded_models.clone(),
            attempts: presented,
        },
        other => other.clone(),
    };
    let welcome = tokio::select! {
        welcomed = handshake(&mut ws, &hello) => match welcomed {
            Ok(welcome) => welcome,
            Err(Refused::Failed(reason)) => return SessionEnd::Lost { welcomed: false, reason },
            Err(Refused::Redirect(url)) => {
                close(&mut ws).await;
                return SessionEnd::Redirect(url);
            }
        },
        state = stop_requested(shutdown, draining) => {
            close(&mut ws).await;
            return SessionEnd::stopped(state);
        }
    };
    for refused in &welcome.refused {
        tracing::warn!(job_id = %refused.job_id, lease = %refused.lease, reason = %refused.reason,
            "the server refused a presented attempt");
    }
    let resend = attempts.keep_only(&welcome.resumed);
    if !welcome.resumed.is_empty() {
        tracing::info!(
            resumed = welcome.resumed.len(),
            "the server took back attempts this worker holds"
        );
    }
    let mut session = Session {
        ws,
        config,
        executor: Rc::clone(executor),
        attempts,
        reports,
        lease: welcome.lease,
        draining: false,
        server_draining: false,
    };
    // Reports of attempts that finished while no server heard them.
    for (key, message) in resend {
        if let Step::End(end) = session.send_final(key, message).await {
            return end;
        }
    }
    if draining {
        if let Step::End(end) = session.on_shutdown(Shutdown::Drain).await {
            return end;
        }
    }
    session.run(welcome.heartbeat, shutdown).await
}

/// What a `welcome` settles.
struct Welcomed {
    heartbeat: Duration,
    lease: Duration,
    resumed: Vec<AttemptId>,
    refused: Vec<RefusedAttempt>,
}

async fn connect(config: &Config) -> Result<Socket, String> {
    let mut connector = socket::connector();
    if let Some(tls) = &config.tls {
        connector = connector.rustls_0_23(tls.clone());
    }
    let client = awc::Client::builder()
        .timeout(CONNECT_TIMEOUT)
        .connector(connector)
        .finish();
    socket::dial(&client, &config.url, config.authorization.clone())
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
        })
}

/// Sends `hello` and waits for `welcome`.
async fn handshake(ws: &mut Socket, hello: &FromWorker) -> Result<Welcomed, Refused> {
    send(ws, hello).await.map_err(Refused::Failed)?;
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
                        resumed,
                        refused,
                    }) => {
                        tracing::info!(%worker_id, heartbeat_ms, lease_ms, "welcomed");
                        return Ok(Welcomed {
                            heartbeat: Duration::from_millis(heartbeat_ms).max(MIN_HEARTBEAT),
                            lease: Duration::from_millis(lease_ms),
                            resumed,
                            refused,
                        });
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
    attempts: &'a mut Attempts,
    reports: &'a mut mpsc::UnboundedReceiver<Report>,
    /// The server's heartbeat lease: how long written final reports are
    /// kept for presenting again.
    lease: Duration,
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
                _ = ticks.tick() => {
                    self.attempts.forget_delivered(self.lease);
                    Step::sent(send(&mut self.ws, &FromWorker::Heartbeat).await)
                }
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
                // The attempts keep running: the next connection presents
                // them.
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
            return self.send_final(report.key, fit_frame(report.message)).await;
        }
        Step::sent(send(&mut self.ws, &report.message).await)
    }

    /// Sends an attempt's last report; it is kept until known delivered,
    /// so a connection lost meanwhile presents it again.
    async fn send_final(&mut self, key: AttemptKey, message: FromWorker) -> Step {
        self.attempts.finish(&key, message.clone());
        match Step::sent(send(&mut self.ws, &message).await) {
            Step::Continue => {
                self.attempts.sent(&key);
                self.drained_yet().await
            }
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
