//! The consumer's Prometheus metrics, registered under `pipewright_consumer_*`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::report::DeliveryHealth;

/// Labels of the per-kind rejection counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// Labels of the per-partition gauges.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: i32,
}

/// Metrics of one consumer.
#[derive(Debug, Clone)]
pub struct ConsumerMetrics {
    /// Records delivered to the sink.
    pub processed: Counter,
    /// Delivery attempts that failed and were retried.
    pub retried: Counter,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: Counter,
    /// Records skipped by policy.
    pub skipped: Counter,
    /// Records that are not valid events, by kind (malformed, unknown_type, schema_invalid,
    /// oversized).
    pub rejected: Family<KindLabels, Counter>,
    /// Records taken from Kafka and not finished (bounded by the concurrency).
    pub in_flight: Gauge,
    /// Duration of one delivery attempt.
    pub handler_latency_seconds: Histogram,
    /// Per assigned partition: the high watermark minus the committable offset, as this
    /// consumer sees it.
    pub lag: Family<PartitionLabels, Gauge>,
    /// Offset commits that failed (retried with the next commit).
    pub commit_errors: Counter,
    /// Whether deliveries currently fail (the report's, not a Prometheus metric).
    pub delivery: DeliveryHealth,
}

impl ConsumerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> ConsumerMetrics {
        let m = ConsumerMetrics::unregistered();
        let r = registry.sub_registry_with_prefix("pipewright_consumer");
        r.register(
            "processed",
            "Records delivered to the sink",
            m.processed.clone(),
        );
        r.register(
            "retried",
            "Delivery attempts that failed and were retried",
            m.retried.clone(),
        );
        r.register(
            "dead_lettered",
            "Records sent to the dead-letter topic",
            m.dead_lettered.clone(),
        );
        r.register("skipped", "Records skipped by policy", m.skipped.clone());
        r.register(
            "rejected",
            "Records that are not valid events, by kind",
            m.rejected.clone(),
        );
        r.register(
            "in_flight",
            "Records taken from Kafka and not finished",
            m.in_flight.clone(),
        );
        r.register(
            "handler_latency_seconds",
            "Duration of one delivery attempt",
            m.handler_latency_seconds.clone(),
        );
        r.register(
            "lag",
            "High watermark minus committable offset, per assigned partition",
            m.lag.clone(),
        );
        r.register(
            "commit_errors",
            "Offset commits that failed",
            m.commit_errors.clone(),
        );
        m
    }

    /// Metrics not registered anywhere (benchmarks, tests).
    pub fn unregistered() -> ConsumerMetrics {
        ConsumerMetrics {
            processed: Counter::default(),
            retried: Counter::default(),
            dead_lettered: Counter::default(),
            skipped: Counter::default(),
            rejected: Family::default(),
            in_flight: Gauge::default(),
            handler_latency_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 18)),
            lag: Family::default(),
            commit_errors: Counter::default(),
            delivery: DeliveryHealth::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_worker_metric_has_a_row_in_docs_metrics_md_and_every_row_is_exposed() {
        let mut registry = Registry::default();
        let m = ConsumerMetrics::register(&mut registry);
        crate::outbox::OutboxMetrics::register(&mut registry);
        // A family shows in the exposition once it has a member. Every field named (no
        // `..`): a new metric does not compile here until it is exposed for the check.
        let ConsumerMetrics {
            processed: _,
            retried: _,
            dead_lettered: _,
            skipped: _,
            rejected,
            in_flight: _,
            handler_latency_seconds: _,
            lag,
            commit_errors: _,
            delivery: _,
        } = &m;
        rejected
            .get_or_create(&KindLabels {
                kind: "malformed".into(),
            })
            .inc();
        lag.get_or_create(&PartitionLabels {
            topic: "t".into(),
            partition: 0,
        })
        .set(1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        pipewright_testenv::check_metrics_doc(
            &text,
            &["pipewright_consumer_", "pipewright_outbox_"],
        );
    }
}
