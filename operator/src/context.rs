//! What every reconcile shares: the client, the operator's settings, metrics, the Event
//! recorder, the leadership it runs under, a per-object failure count for backoff, the last
//! measured figures and the readings of the workers' reports.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::Client;
use kube::runtime::events::Reporter;
use tokio_util::sync::CancellationToken;

use crate::events::Recorder;
use crate::measure::Clients;
use crate::metrics::Metrics;
use crate::report::{HttpClient, Rates, Reports};

/// Settings of the operator process (from its command line).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The worker image used when a resource names none.
    pub worker_image: String,
    /// How often measured figures (lag, backlog) are refreshed.
    pub status_period: Duration,
    /// The autoscaler waits this long after a change before scaling down.
    pub scale_cooldown: Duration,
    /// Deadline of one measurement (Kafka or PostgreSQL).
    pub measure_timeout: Duration,
    /// Reconciles running at once, per kind.
    pub concurrency: u16,
    /// The cluster's DNS domain (sink Service references resolve to names in it).
    pub cluster_domain: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            worker_image: "pipewright-worker:latest".into(),
            status_period: Duration::from_secs(30),
            scale_cooldown: Duration::from_secs(120),
            measure_timeout: Duration::from_secs(10),
            concurrency: 16,
            cluster_domain: "cluster.local".into(),
        }
    }
}

/// Shared state of the controllers.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Metrics,
    pub recorder: Recorder,
    /// Cancelled when this process stops leading: a reconcile in flight is dropped at its next
    /// await and sends nothing more ([`crate::Error::NotLeading`]).
    pub leadership: CancellationToken,
    /// The pooled measurement clients: one Kafka client per cluster, one PostgreSQL pool per
    /// database.
    pub clients: Clients,
    failures: Mutex<HashMap<String, u32>>,
    /// The last figures measured per resource, with what they were measured for.
    measured: Mutex<HashMap<String, Measured>>,
    /// The earlier readings of each resource's worker reports (the delivery rate).
    rates: Mutex<HashMap<String, Rates>>,
    /// The client that reads the workers' reports.
    pub reports_client: HttpClient,
}

/// Figures measured for one resource: reused by the reconciles its own applies trigger, so
/// that only the status period's requeue (or a changed spec or Secret) measures again.
struct Measured {
    /// uid, generation and Secrets hash of what was measured.
    of: String,
    at: std::time::Instant,
    figures: Box<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Metrics,
        reporter: Reporter,
        leadership: CancellationToken,
    ) -> Self {
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            leadership,
            client,
            settings,
            metrics,
            clients: Clients::default(),
            failures: Mutex::new(HashMap::new()),
            measured: Mutex::new(HashMap::new()),
            rates: Mutex::new(HashMap::new()),
            reports_client: crate::report::client(),
        }
    }

    /// Records a reading of `key`'s worker reports and fills in its delivery rate from the
    /// earlier ones.
    pub fn record_reports(&self, key: &str, reports: &mut Reports) {
        let mut rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        reports.processed_last_minute = rates.entry(key.to_string()).or_default().record(reports);
    }

    /// The figures measured for `key` less than half a status period ago for the same `of`
    /// (uid, generation, Secrets hash), if any.
    pub fn recent_figures<F: Clone + 'static>(&self, key: &str, of: &str) -> Option<F> {
        let measured = self.measured.lock().unwrap_or_else(|e| e.into_inner());
        let m = measured.get(key)?;
        (m.of == of && m.at.elapsed() < self.settings.status_period / 2)
            .then(|| m.figures.downcast_ref::<F>().cloned())
            .flatten()
    }

    /// Records figures just measured for `key`.
    pub fn measured<F: Send + Sync + 'static>(&self, key: &str, of: String, figures: F) {
        self.measured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                key.to_string(),
                Measured {
                    of,
                    at: std::time::Instant::now(),
                    figures: Box::new(figures),
                },
            );
    }

    /// Records a failed reconcile of `key` and returns the backoff before the next attempt:
    /// 1 s doubling up to 5 min.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let secs = 1u64 << (*n - 1).min(9);
        Duration::from_secs(secs.min(300))
    }

    /// Forgets everything kept for the resource `key` (`Kind/namespace/name`) and its
    /// readings (`<key>/...`): it was deleted.
    pub fn forget(&self, key: &str) {
        let of = |k: &String| of_resource(k, key);
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| !of(k));
        self.measured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| !of(k));
        self.rates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| !of(k));
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// `k` is the key of the resource `key` or of one of its readings (`<key>/...`).
fn of_resource(k: &str, key: &str) -> bool {
    k.strip_prefix(key)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::of_resource;

    #[test]
    fn a_deleted_resource_takes_its_readings_and_nothing_else() {
        let key = "EventConsumer/ns/orders";
        assert!(of_resource("EventConsumer/ns/orders", key));
        assert!(of_resource("EventConsumer/ns/orders/reports", key));
        assert!(!of_resource("EventConsumer/ns/orders-2", key));
        assert!(!of_resource("EventConsumer/ns/order", key));
        assert!(!of_resource("Outbox/ns/orders", key));
    }
}
