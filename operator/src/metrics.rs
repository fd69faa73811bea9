//! Prometheus metrics of the operator: reconciles, errors by reason, reconcile durations, and
//! whether this process holds the leader Lease, status writes, unanswered worker reports and
//! child applies (sent or skipped).

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the per-kind metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Labels of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: &'static str,
    pub reason: &'static str,
}

/// Labels of the child-apply counter: the child's kind, and `sent` or `unchanged` (skipped:
/// the child is as last applied, see [`crate::children`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApplyLabels {
    pub kind: String,
    pub outcome: &'static str,
}

/// The operator's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub reconciles: Family<KindLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Family<KindLabels, Histogram>,
    pub leader: Gauge<i64, AtomicI64>,
    pub status_writes: Family<KindLabels, Counter>,
    /// Running worker pods that did not answer their report in time.
    pub reports_unanswered: Family<KindLabels, Counter>,
    /// Server-side applies of children, sent or skipped as unchanged.
    pub applies: Family<ApplyLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` (prefix `pipewright_operator`).
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            leader: Gauge::default(),
            status_writes: Family::default(),
            reports_unanswered: Family::default(),
            applies: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("pipewright_operator");
        r.register("reconciles", "Reconciles run", m.reconciles.clone());
        r.register(
            "reconcile_errors",
            "Reconciles that failed, by cause",
            m.errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time a reconcile takes, measurements included",
            m.duration.clone(),
        );
        r.register(
            "leader",
            "1 while this process holds the leader Lease",
            m.leader.clone(),
        );
        r.register(
            "status_writes",
            "Status updates written (only when something changed)",
            m.status_writes.clone(),
        );
        r.register(
            "worker_reports_unanswered",
            "Running worker pods that did not answer their report within 2 s",
            m.reports_unanswered.clone(),
        );
        r.register(
            "child_applies",
            "Server-side applies of children: sent, or skipped as unchanged since the last one",
            m.applies.clone(),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operator_metric_has_a_row_in_docs_metrics_md_and_every_row_is_exposed() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        // A family shows in the exposition once it has a member. Every field named (no
        // `..`): a new metric does not compile here until it is exposed for the check.
        let Metrics {
            reconciles,
            errors,
            duration,
            leader: _,
            status_writes,
            reports_unanswered,
            applies,
        } = &m;
        let kind = KindLabels {
            kind: "EventConsumer",
        };
        reconciles.get_or_create(&kind).inc();
        status_writes.get_or_create(&kind).inc();
        reports_unanswered.get_or_create(&kind).inc();
        duration.get_or_create(&kind).observe(0.1);
        errors
            .get_or_create(&ErrorLabels {
                kind: "EventConsumer",
                reason: "KafkaUnreachable",
            })
            .inc();
        applies
            .get_or_create(&ApplyLabels {
                kind: "Deployment".into(),
                outcome: "sent",
            })
            .inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        pipewright_testenv::check_metrics_doc(&text, &["pipewright_operator_"]);
    }
}
