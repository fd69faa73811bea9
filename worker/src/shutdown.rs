//! Graceful shutdown: one [`CancellationToken`], cancelled by the first SIGTERM or SIGINT.
//! Every task watches it (or a child of it) and finishes its work in flight.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Returns a token that is cancelled on SIGTERM or SIGINT. Call once, inside the runtime.
pub fn on_signals() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(signal = name, "shutting down: finishing the work in flight");
        cancel.cancel();
    });
    Ok(token)
}
