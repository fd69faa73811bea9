//! The poller's Prometheus metrics.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::report::{DeliveryHealth, LastPublish};

/// Metrics of one outbox poller, registered under `pipewright_outbox_*`.
#[derive(Debug, Clone)]
pub struct OutboxMetrics {
    /// Rows acknowledged by Kafka and cleaned up.
    pub published: Counter,
    /// Publishing sessions that ended in an error (then retried after a backoff).
    pub errors: Counter,
    /// Rows not yet published, measured with SQL by the active replica.
    pub pending: Gauge,
    /// Age of the oldest pending row, seconds, measured with SQL by the active replica.
    pub oldest_pending_age_seconds: Gauge<f64, AtomicU64>,
    /// Rows sent and not yet acknowledged and cleaned up (bounded by maxInFlight).
    pub in_flight: Gauge,
    /// 1 while this replica holds the publisher lock.
    pub active: Gauge,
    /// From handing a record to the producer to Kafka's acknowledgement.
    pub publish_latency_seconds: Histogram,
    /// From the row's created_at to Kafka's acknowledgement.
    pub end_to_end_latency_seconds: Histogram,
    /// Whether publishing currently fails (the report's, not a Prometheus metric).
    pub delivery: DeliveryHealth,
    /// When rows were last published, and whether this replica holds the lock (the report's).
    pub last_publish: LastPublish,
}

impl OutboxMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> OutboxMetrics {
        let metrics = OutboxMetrics {
            published: Counter::default(),
            errors: Counter::default(),
            pending: Gauge::default(),
            oldest_pending_age_seconds: Gauge::default(),
            in_flight: Gauge::default(),
            active: Gauge::default(),
            publish_latency_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            end_to_end_latency_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
            delivery: DeliveryHealth::default(),
            last_publish: LastPublish::default(),
        };
        let r = registry.sub_registry_with_prefix("pipewright_outbox");
        r.register(
            "published",
            "Rows published to Kafka (acknowledged) and cleaned up",
            metrics.published.clone(),
        );
        r.register(
            "errors",
            "Publishing sessions ended by an error",
            metrics.errors.clone(),
        );
        r.register("pending", "Rows not yet published", metrics.pending.clone());
        r.register(
            "oldest_pending_age_seconds",
            "Age of the oldest row not yet published",
            metrics.oldest_pending_age_seconds.clone(),
        );
        r.register(
            "in_flight",
            "Rows sent but not yet acknowledged and cleaned up",
            metrics.in_flight.clone(),
        );
        r.register(
            "active",
            "1 while this replica holds the publisher lock",
            metrics.active.clone(),
        );
        r.register(
            "publish_latency_seconds",
            "Time from send to Kafka acknowledgement",
            metrics.publish_latency_seconds.clone(),
        );
        r.register(
            "end_to_end_latency_seconds",
            "Time from the row's created_at to Kafka acknowledgement",
            metrics.end_to_end_latency_seconds.clone(),
        );
        metrics
    }
}
