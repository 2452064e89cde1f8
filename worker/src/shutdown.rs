//! SIGTERM and SIGINT. The first one drains: tell the server, take nothing
//! new, let running attempts finish and report, then exit 0. A second one
//! stops at once, abandoning whatever still runs (the server counts those
//! attempts lost and retries them elsewhere).

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Shutdown {
    Running,
    Drain,
    Abort,
}

/// Starts listening for the signals; the receiver follows the state.
pub fn listen() -> std::io::Result<watch::Receiver<Shutdown>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let (tx, rx) = watch::channel(Shutdown::Running);
    actix_rt::spawn(async move {
        let mut received = 0u32;
        loop {
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            received += 1;
            if received == 1 {
                tracing::info!(
                    signal = name,
                    "shutdown requested: draining (signal again to stop at once)"
                );
                tx.send_replace(Shutdown::Drain);
            } else {
                tracing::warn!(signal = name, "second signal: stopping at once");
                tx.send_replace(Shutdown::Abort);
            }
        }
    });
    Ok(rx)
}

/// Waits until a shutdown is requested; at once if one already was.
pub async fn requested(rx: &mut watch::Receiver<Shutdown>) -> Shutdown {
    loop {
        let state = *rx.borrow_and_update();
        if state != Shutdown::Running {
            return state;
        }
        if rx.changed().await.is_err() {
            // Nobody can request a shutdown any more.
            std::future::pending::<()>().await;
        }
    }
}
