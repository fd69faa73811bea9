//! Logging: `tracing` with an env filter (`RUST_LOG`, default `info`), text or JSON.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
