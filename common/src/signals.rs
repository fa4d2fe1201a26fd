//! The shutdown signal every long-running Feral binary waits for.

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, whichever comes first.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let Ok(mut terminate) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        let _ = interrupt.await;
        return;
    };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
}
