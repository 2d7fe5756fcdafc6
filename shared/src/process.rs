//! What every Hermes binary does the same way: logging set-up and the shutdown signal.

/// Structured logs on stderr: `HERMES_LOG` is the filter (default `info`),
/// `HERMES_LOG_FORMAT=json` gives one JSON object per line; colours only on a terminal.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HERMES_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("HERMES_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
        }
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; waiting for SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
