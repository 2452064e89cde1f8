//! `admedia-worker`: the GPU worker agent. It connects to the orchestrator
//! over a WebSocket (docs/worker-protocol.md), runs the attempts it is
//! assigned through an executor (`simulate` or `command`), and reconnects
//! with backoff whenever the connection is lost. Attempts keep running
//! while it is away and are presented again on reconnecting, so a server
//! restart or a scheduler failover does not cost them. SIGTERM or SIGINT
//! drains.
//!
//! Everything runs on one thread (the actix runtime): the socket loop and
//! the attempts are tasks that only wait, and real work happens in the
//! programs the `command` executor starts.

mod attempts;
mod backoff;
mod cli;
mod connection;
mod executor;
mod shutdown;

use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use admedia_process::telemetry;
use admedia_worker::socket;
use clap::Parser;

use crate::backoff::Backoff;
use crate::connection::SessionEnd;
use crate::executor::Executor;
use crate::shutdown::Shutdown;

const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// The longest reconnect delay while the agent holds attempts: the server
/// waits for them only for its grace (`ADMEDIA_REPRESENT_GRACE`, 30 s by
/// default), so it must be back well within it.
const HOLDING_MAX_RETRY: Duration = Duration::from_secs(5);
// Back within the time the server's default grace is sized for: the
// longest delay, then a connect and a welcome that both time out.
const _: () = assert!(
    HOLDING_MAX_RETRY.as_millis()
        + socket::CONNECT_TIMEOUT.as_millis()
        + socket::WELCOME_TIMEOUT.as_millis()
        <= admedia_actors::wire::AGENT_RETURN_WITHIN.as_millis()
);
/// A connection up this long counts as working again.
const STABLE_AFTER: Duration = Duration::from_secs(10);

#[actix_rt::main]
async fn main() -> ExitCode {
    let args = cli::Args::parse();
    telemetry::init(args.log_format);
    let mut config = match args.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("admedia-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let mut shutdown = match shutdown::listen() {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("admedia-worker: cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(hello = ?config.hello, executor = ?config.executor, "admedia-worker starting");
    let executor = Rc::new(Executor::new(&config.executor));
    let mut backoff = Backoff::new(FIRST_RETRY, MAX_RETRY);
    // The attempts outlive every connection (see `attempts`).
    let (mut attempts, mut reports) = attempts::Attempts::new(config.slots);
    // Where a redirect leads is only a hint: when it stops answering, the
    // agent goes back to the server it was configured with.
    let configured_url = config.url.clone();
    loop {
        let session_started = Instant::now();
        match connection::run(
            &config,
            &executor,
            &mut attempts,
            &mut reports,
            &mut shutdown,
        )
        .await
        {
            SessionEnd::Drained => {
                tracing::info!("drained; exiting");
                return ExitCode::SUCCESS;
            }
            SessionEnd::Aborted => return ExitCode::FAILURE,
            SessionEnd::Redirect(base) => {
                // Follow a standby's pointer to the leader; a short pause
                // keeps two nodes that disagree mid-election from bouncing
                // the agent in a tight loop.
                let target = base.replacen("http://", "ws://", 1);
                match cli::connect_url(&target) {
                    Ok(url) => config.url = url,
                    Err(e) => {
                        tracing::warn!(error = %e, "unusable redirect; keeping the configured server")
                    }
                }
                tokio::time::sleep(FIRST_RETRY).await;
            }
            SessionEnd::Lost { welcomed, reason } => {
                if !welcomed && config.url != configured_url {
                    tracing::info!(url = %configured_url, "redirect target unreachable; back to the configured server");
                    config.url = configured_url.clone();
                }
                let state = *shutdown.borrow();
                match state {
                    Shutdown::Running => {}
                    // Draining with the connection gone: come back to report
                    // what still runs; with nothing held, there is nothing
                    // left to finish.
                    Shutdown::Drain if attempts.is_empty() => {
                        tracing::info!(%reason, "connection lost while draining; exiting");
                        return ExitCode::SUCCESS;
                    }
                    Shutdown::Drain => {}
                    Shutdown::Abort => return ExitCode::FAILURE,
                }
                // Only a connection that stayed up starts the delays over: a
                // server that welcomes and then drops us at once must not be
                // hammered.
                if welcomed && session_started.elapsed() >= STABLE_AFTER {
                    backoff.reset();
                }
                let mut delay = backoff.next_delay();
                if !attempts.is_empty() {
                    delay = delay.min(HOLDING_MAX_RETRY);
                }
                let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                if welcomed {
                    // The session already logged why it ended.
                    tracing::info!(retry_in_ms, holding = attempts.len(), "reconnecting");
                } else {
                    tracing::warn!(%reason, retry_in_ms, holding = attempts.len(), "could not connect; retrying");
                }
                if state == Shutdown::Drain {
                    // Only an abort cuts the wait short now.
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = aborted(&mut shutdown) => return ExitCode::FAILURE,
                    }
                    continue;
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    state = shutdown::requested(&mut shutdown) => match state {
                        Shutdown::Abort => return ExitCode::FAILURE,
                        // Reconnect at once to finish and report.
                        Shutdown::Drain if !attempts.is_empty() => {}
                        Shutdown::Drain | Shutdown::Running => {
                            tracing::info!("shutdown while disconnected; exiting");
                            return ExitCode::SUCCESS;
                        }
                    },
                }
            }
        }
    }
}

/// Waits for a second signal.
async fn aborted(shutdown: &mut tokio::sync::watch::Receiver<Shutdown>) {
    loop {
        if *shutdown.borrow_and_update() == Shutdown::Abort {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
