//! `admedia-worker`: the GPU worker agent. It connects to the orchestrator
//! over a WebSocket (docs/worker-protocol.md), runs the attempts it is
//! assigned through an executor (`simulate` or `command`), and reconnects
//! with backoff whenever the connection is lost. SIGTERM or SIGINT drains.
//!
//! Everything runs on one thread (the actix runtime): the socket loop and
//! the attempts are tasks that only wait, and real work happens in the
//! programs the `command` executor starts.

mod attempts;
mod backoff;
mod cli;
mod connection;
mod executor;
mod nodelay;
mod shutdown;

use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::backoff::Backoff;
use crate::connection::SessionEnd;
use crate::executor::Executor;
use crate::shutdown::Shutdown;

const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// A connection up this long counts as working again.
const STABLE_AFTER: Duration = Duration::from_secs(10);

#[actix_web::main]
async fn main() -> ExitCode {
    let args = cli::Args::parse();
    admedia::telemetry::init(args.log_format);
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
    // Where a redirect leads is only a hint: when it stops answering, the
    // agent goes back to the server it was configured with.
    let configured_url = config.url.clone();
    loop {
        let session_started = Instant::now();
        match connection::run(&config, &executor, &mut shutdown).await {
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
                match *shutdown.borrow() {
                    Shutdown::Running => {}
                    // Draining with the connection gone: what still ran was
                    // abandoned with it, so there is nothing left to finish.
                    Shutdown::Drain => {
                        tracing::info!(%reason, "connection lost while draining; exiting");
                        return ExitCode::SUCCESS;
                    }
                    Shutdown::Abort => return ExitCode::FAILURE,
                }
                // Only a connection that stayed up starts the delays over: a
                // server that welcomes and then drops us at once must not be
                // hammered.
                if welcomed && session_started.elapsed() >= STABLE_AFTER {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                if welcomed {
                    // The session already logged why it ended.
                    tracing::info!(retry_in_ms, "reconnecting");
                } else {
                    tracing::warn!(%reason, retry_in_ms, "could not connect; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    state = shutdown::requested(&mut shutdown) => {
                        tracing::info!("shutdown while disconnected; exiting");
                        return match state {
                            Shutdown::Abort => ExitCode::FAILURE,
                            Shutdown::Drain | Shutdown::Running => ExitCode::SUCCESS,
                        };
                    }
                }
            }
        }
    }
}
