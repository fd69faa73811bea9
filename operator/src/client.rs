//! The operator's Kubernetes client and the settings of every watch it runs.
//!
//! kube's client has no read timeout by default: a request the API server accepted but never
//! answers (a LIST sent while it starts up, a connection dropped without a reset) would hang
//! for ever, and a watcher whose initial LIST hangs never lists: its store stays empty and
//! nothing is reconciled. Here every response must make progress within [`READ_TIMEOUT`]; a
//! request that does not fails, and the watcher's backoff retries it. Watches are asked to end
//! server-side after [`WATCH_TIMEOUT_SECS`] (and are then resumed from their resource
//! version), well within the read timeout, so an idle watch is never cut by it.

use std::time::Duration;

use kube::Client;
use kube::runtime::watcher;

/// How long a watch runs before the API server ends it (the watcher resumes it at once).
pub const WATCH_TIMEOUT_SECS: u32 = 45;

/// How long a response may go without a byte before the request fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The client, from the in-cluster service account or the kubeconfig.
pub async fn connect() -> Result<Client, Box<dyn std::error::Error + Send + Sync>> {
    let mut config = kube::Config::infer().await?;
    config.read_timeout = Some(READ_TIMEOUT);
    // The timeout counts from each request, not from when its pooled connection went idle.
    config.reset_reader_on_write = true;
    Ok(Client::try_from(config)?)
}

/// The settings of every watch.
pub fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_watch_ends_server_side_before_the_read_timeout_cuts_it() {
        // kube's own idle timeout adds 5 s to the watch timeout.
        assert!(Duration::from_secs(u64::from(WATCH_TIMEOUT_SECS) + 5) < READ_TIMEOUT);
        assert_eq!(watch_config().timeout, Some(WATCH_TIMEOUT_SECS));
    }
}
