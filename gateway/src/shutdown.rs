//! SIGTERM / SIGINT: the first one starts a graceful drain, a second one exits at once.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Waits for the first SIGTERM or SIGINT, flips `stop` to true, and keeps listening so that a
/// second signal ends the process immediately.
pub async fn on_signal(stop: watch::Sender<bool>) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: no longer accepting; draining live connections"),
        _ = int.recv() => tracing::info!("SIGINT: no longer accepting; draining live connections"),
    }
    let _ = stop.send(true);
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: exiting without waiting for the drain");
    std::process::exit(1);
}
