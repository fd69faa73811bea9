//! Prometheus metrics of the operator: reconciles, errors by reason, reconcile durations, and
//! whether this process holds the leader Lease, status writes, unanswered worker reports and
//! child applies (sent or skipped); and the figures it measures for the status, under the
//! names kafka_exporter's users query (`…_consumergroup_lag{consumergroup,topic,partition}`,
//! its per-topic sum) and the outbox backlog, one series per resource, removed with it.

use std::collections::HashMap;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

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

/// Labels of the child-apply counter: the child's kind, and `created` (it did not exist),
/// `sent` (server-side applied) or `unchanged` (skipped: the child is as last applied, see
/// [`crate::children`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApplyLabels {
    pub kind: String,
    pub outcome: &'static str,
}

// The label values of the per-resource series are `Arc<str>`: one resource's namespace, name,
// group and topic are shared by all of its series (a partition's lag is in two families and
// in the record of what was exported), where a `String` each was the operator's largest
// steady allocation at 1,200 resources (docs/benchmarks.md, part 4b).

/// Labels of a partition's lag: the EventConsumer, its group, the partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LagLabels {
    pub namespace: Arc<str>,
    pub eventconsumer: Arc<str>,
    pub consumergroup: Arc<str>,
    pub topic: Arc<str>,
    pub partition: i32,
}

/// Labels of a topic's summed lag.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LagSumLabels {
    pub namespace: Arc<str>,
    pub eventconsumer: Arc<str>,
    pub consumergroup: Arc<str>,
    pub topic: Arc<str>,
}

/// Labels of a resource's condition (kube-state-metrics' `*_status_condition` shape).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    pub kind: &'static str,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// The condition's type (`Ready`, `Degraded`, ...).
    pub condition: Arc<str>,
    pub status: Arc<str>,
    pub reason: Arc<str>,
}

/// Labels of a consumer group's figures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub namespace: Arc<str>,
    pub eventconsumer: Arc<str>,
    pub consumergroup: Arc<str>,
}

/// One partition's figures as exported: topic, partition, lag (records), lag in seconds.
pub type PartitionLag = (String, i32, i64, Option<i64>);

/// Labels of an Outbox's figures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboxLabels {
    pub namespace: Arc<str>,
    pub outbox: Arc<str>,
}

/// The series a resource's figures were last exported as, to remove those it no longer has.
#[derive(Debug, Default)]
struct Exported {
    lag: Vec<LagLabels>,
    sums: Vec<LagSumLabels>,
    group: Option<GroupLabels>,
    outbox: Option<OutboxLabels>,
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
    /// Writes of children: created, server-side applied, or skipped as unchanged.
    pub applies: Family<ApplyLabels, Counter>,
    /// Records of a partition the group has not committed, as last measured.
    pub consumergroup_lag: Family<LagLabels, Gauge>,
    /// The same, summed per topic.
    pub consumergroup_lag_sum: Family<LagSumLabels, Gauge>,
    /// Age of a partition's oldest record the group has not committed, as last measured.
    pub consumergroup_lag_seconds: Family<LagLabels, Gauge>,
    /// The largest of those per group.
    pub consumergroup_max_lag_seconds: Family<GroupLabels, Gauge>,
    /// Outbox rows not yet published, as last measured.
    pub outbox_pending: Family<OutboxLabels, Gauge>,
    /// Age of the oldest of them (0 when none is pending).
    pub outbox_oldest_pending_age_seconds: Family<OutboxLabels, Gauge>,
    /// Each resource's conditions as its status last had them: 1 per condition.
    pub resource_condition: Family<ConditionLabels, Gauge>,
    /// Resource (`<kind>/<namespace>/<name>`) → the series of its figures.
    exported: std::sync::Arc<Mutex<HashMap<String, Exported>>>,
    /// Resource → the series of its conditions.
    conditions: std::sync::Arc<Mutex<HashMap<String, Vec<ConditionLabels>>>>,
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
            consumergroup_lag: Family::default(),
            consumergroup_lag_sum: Family::default(),
            consumergroup_lag_seconds: Family::default(),
            consumergroup_max_lag_seconds: Family::default(),
            outbox_pending: Family::default(),
            outbox_oldest_pending_age_seconds: Family::default(),
            resource_condition: Family::default(),
            exported: Default::default(),
            conditions: Default::default(),
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
            "Writes of children: created, server-side applied (sent), or skipped as unchanged since the last one",
            m.applies.clone(),
        );
        r.register(
            "consumergroup_lag",
            "Records of a partition an EventConsumer's group has not committed, as last measured",
            m.consumergroup_lag.clone(),
        );
        r.register(
            "consumergroup_lag_sum",
            "Records of a topic an EventConsumer's group has not committed, as last measured",
            m.consumergroup_lag_sum.clone(),
        );
        r.register(
            "consumergroup_lag_seconds",
            "Age in seconds of the oldest record of a partition an EventConsumer's group has not committed (its timestamp to now; 0 without lag), as last measured",
            m.consumergroup_lag_seconds.clone(),
        );
        r.register(
            "consumergroup_max_lag_seconds",
            "The largest consumergroup_lag_seconds of an EventConsumer's group",
            m.consumergroup_max_lag_seconds.clone(),
        );
        r.register(
            "resource_condition",
            "1 for each condition of an EventConsumer or Outbox, with its type, status and reason, as its status last had them",
            m.resource_condition.clone(),
        );
        r.register(
            "outbox_pending",
            "Rows of an Outbox's table not yet published, as last measured",
            m.outbox_pending.clone(),
        );
        r.register(
            "outbox_oldest_pending_age_seconds",
            "Age of the oldest row of an Outbox's table not yet published (0: none)",
            m.outbox_oldest_pending_age_seconds.clone(),
        );
        m
    }

    /// Sets the lag series of an EventConsumer to `partitions` (topic, partition, lag),
    /// removing those of partitions it no longer has.
    pub fn export_lag(
        &self,
        namespace: &str,
        name: &str,
        group: &str,
        partitions: &[PartitionLag],
        max_seconds: Option<i64>,
    ) {
        let (namespace, name, group): (Arc<str>, Arc<str>, Arc<str>) =
            (namespace.into(), name.into(), group.into());
        let mut lag = Vec::new();
        let mut sums: HashMap<LagSumLabels, i64> = HashMap::new();
        let mut topic_label: Option<Arc<str>> = None;
        for (topic, partition, value, seconds) in partitions {
            // Consecutive partitions of one topic share its value.
            let topic = match &topic_label {
                Some(t) if **t == **topic => t.clone(),
                _ => topic_label.insert(topic.as_str().into()).clone(),
            };
            let labels = LagLabels {
                namespace: namespace.clone(),
                eventconsumer: name.clone(),
                consumergroup: group.clone(),
                topic: topic.clone(),
                partition: *partition,
            };
            self.consumergroup_lag.get_or_create(&labels).set(*value);
            match seconds {
                Some(s) => {
                    self.consumergroup_lag_seconds
                        .get_or_create(&labels)
                        .set(*s);
                }
                None => {
                    self.consumergroup_lag_seconds.remove(&labels);
                }
            }
            lag.push(labels);
            *sums
                .entry(LagSumLabels {
                    namespace: namespace.clone(),
                    eventconsumer: name.clone(),
                    consumergroup: group.clone(),
                    topic,
                })
                .or_default() += value;
        }
        for (labels, value) in &sums {
            self.consumergroup_lag_sum.get_or_create(labels).set(*value);
        }
        let sums: Vec<LagSumLabels> = sums.into_keys().collect();
        let group_labels = GroupLabels {
            namespace: namespace.clone(),
            eventconsumer: name.clone(),
            consumergroup: group,
        };
        match max_seconds {
            Some(s) => {
                self.consumergroup_max_lag_seconds
                    .get_or_create(&group_labels)
                    .set(s);
            }
            None => {
                self.consumergroup_max_lag_seconds.remove(&group_labels);
            }
        }
        let key = format!("EventConsumer/{namespace}/{name}");
        let mut exported = self.exported.lock().unwrap_or_else(|e| e.into_inner());
        let previous = exported.insert(
            key,
            Exported {
                lag: lag.clone(),
                sums: sums.clone(),
                group: Some(group_labels.clone()),
                outbox: None,
            },
        );
        for old in previous.iter().flat_map(|p| &p.lag) {
            if !lag.contains(old) {
                self.consumergroup_lag.remove(old);
                self.consumergroup_lag_seconds.remove(old);
            }
        }
        for old in previous.iter().filter_map(|p| p.group.as_ref()) {
            if *old != group_labels {
                self.consumergroup_max_lag_seconds.remove(old);
            }
        }
        for old in previous.iter().flat_map(|p| &p.sums) {
            if !sums.contains(old) {
                self.consumergroup_lag_sum.remove(old);
            }
        }
    }

    /// Sets the backlog series of an Outbox.
    pub fn export_backlog(
        &self,
        namespace: &str,
        name: &str,
        pending: i64,
        oldest_age_seconds: Option<i64>,
    ) {
        let labels = OutboxLabels {
            namespace: namespace.into(),
            outbox: name.into(),
        };
        self.outbox_pending.get_or_create(&labels).set(pending);
        self.outbox_oldest_pending_age_seconds
            .get_or_create(&labels)
            .set(oldest_age_seconds.unwrap_or(0));
        self.exported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                format!("Outbox/{namespace}/{name}"),
                Exported {
                    outbox: Some(labels),
                    ..Exported::default()
                },
            );
    }

    /// Sets the condition series of a resource to `conditions` (type, status, reason),
    /// removing those it no longer has.
    pub fn export_conditions(
        &self,
        kind: &'static str,
        namespace: &str,
        name: &str,
        conditions: &[(String, String, String)],
    ) {
        let (namespace_label, name_label): (Arc<str>, Arc<str>) = (namespace.into(), name.into());
        let labels: Vec<ConditionLabels> = conditions
            .iter()
            .map(|(type_, status, reason)| ConditionLabels {
                kind,
                namespace: namespace_label.clone(),
                name: name_label.clone(),
                condition: type_.as_str().into(),
                status: status.as_str().into(),
                reason: reason.as_str().into(),
            })
            .collect();
        for l in &labels {
            self.resource_condition.get_or_create(l).set(1);
        }
        let previous = self
            .conditions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(format!("{kind}/{namespace}/{name}"), labels.clone());
        for old in previous.iter().flatten() {
            if !labels.contains(old) {
                self.resource_condition.remove(old);
            }
        }
    }

    /// Removes every series of a resource's figures and conditions (it was deleted).
    pub fn forget_figures(&self, kind: &str, namespace: &str, name: &str) {
        let key = format!("{kind}/{namespace}/{name}");
        let conditions = self
            .conditions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        for labels in conditions.iter().flatten() {
            self.resource_condition.remove(labels);
        }
        let removed = self
            .exported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&format!("{kind}/{namespace}/{name}"));
        let Some(removed) = removed else { return };
        for labels in &removed.lag {
            self.consumergroup_lag.remove(labels);
            self.consumergroup_lag_seconds.remove(labels);
        }
        if let Some(labels) = &removed.group {
            self.consumergroup_max_lag_seconds.remove(labels);
        }
        for labels in &removed.sums {
            self.consumergroup_lag_sum.remove(labels);
        }
        if let Some(labels) = &removed.outbox {
            self.outbox_pending.remove(labels);
            self.outbox_oldest_pending_age_seconds.remove(labels);
        }
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
            consumergroup_lag: _,
            consumergroup_lag_sum: _,
            consumergroup_lag_seconds: _,
            consumergroup_max_lag_seconds: _,
            outbox_pending: _,
            outbox_oldest_pending_age_seconds: _,
            resource_condition: _,
            exported: _,
            conditions: _,
        } = &m;
        m.export_lag(
            "ns",
            "orders",
            "ns.orders",
            &[("t".into(), 0, 3, Some(7))],
            Some(7),
        );
        m.export_conditions(
            "EventConsumer",
            "ns",
            "orders",
            &[("Ready".into(), "True".into(), "DeploymentAvailable".into())],
        );
        m.export_backlog("ns", "orders", 2, Some(5));
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

    #[test]
    fn figures_are_exported_per_partition_and_topic_and_removed_with_the_partition_or_resource() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let text = |registry: &Registry| {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let partitions = [
            ("a".to_string(), 0, 3, Some(12)),
            ("a".into(), 1, 4, None),
            ("b".into(), 0, 1, Some(90)),
        ];
        m.export_lag("ns", "orders", "g", &partitions, Some(90));
        let lines = text(&registry);
        assert!(lines.contains(&"pipewright_operator_consumergroup_lag{namespace=\"ns\",eventconsumer=\"orders\",consumergroup=\"g\",topic=\"a\",partition=\"1\"} 4".to_string()), "{lines:#?}");
        assert!(lines.contains(&"pipewright_operator_consumergroup_lag_sum{namespace=\"ns\",eventconsumer=\"orders\",consumergroup=\"g\",topic=\"a\"} 7".to_string()), "{lines:#?}");
        assert!(lines.contains(&"pipewright_operator_consumergroup_lag_seconds{namespace=\"ns\",eventconsumer=\"orders\",consumergroup=\"g\",topic=\"b\",partition=\"0\"} 90".to_string()), "{lines:#?}");
        assert!(lines.contains(&"pipewright_operator_consumergroup_max_lag_seconds{namespace=\"ns\",eventconsumer=\"orders\",consumergroup=\"g\"} 90".to_string()), "{lines:#?}");
        // Not read: no series rather than a wrong 0.
        assert!(!lines.iter().any(
            |l| l.starts_with("pipewright_operator_consumergroup_lag_seconds")
                && l.contains("partition=\"1\"")
        ));
        // Topic b no longer consumed: its series go.
        m.export_lag("ns", "orders", "g", &partitions[..2], Some(12));
        assert!(!text(&registry).iter().any(|l| l.contains("topic=\"b\"")));
        m.export_backlog("ns", "relay", 5, None);
        assert!(text(&registry).contains(
            &"pipewright_operator_outbox_oldest_pending_age_seconds{namespace=\"ns\",outbox=\"relay\"} 0".to_string()
        ));
        m.forget_figures("EventConsumer", "ns", "orders");
        m.forget_figures("Outbox", "ns", "relay");
        assert!(
            text(&registry).iter().all(|l| !l.contains("ns")),
            "{:#?}",
            text(&registry)
        );
    }
}
