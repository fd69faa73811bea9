//! `Outbox` → a `pipewright-worker outbox` Deployment, and its backlog in status.
//!
//! The spec is rendered into the worker's configuration file ([`worker_config::Outbox`],
//! docs/worker-config.md). The backlog is counted in the outbox table with the DSN
//! from the referenced Secret ([`crate::measure::postgres`]).
//!
//! Replicas: the worker runs one active publisher per table (a PostgreSQL advisory lock; the
//! other replicas stand by for failover), so more replicas do not drain a backlog faster. The
//! API therefore has no autoscaling for an Outbox: the operator runs `spec.replicas` and
//! reports the backlog in status.
//!
//! No finalizer: every child is garbage-collected through its owner reference; the outbox table
//! and its rows belong to the application.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use pipewright_crds::outbox::CleanupPolicy;
use pipewright_crds::worker_config;
use pipewright_crds::{Outbox, OutboxStatus};
use sqlx::postgres::PgConnectOptions;

use crate::context::Settings;
use crate::controller::{CommonStatus, Pipeline, Scale, SecretUse, Secrets};
use crate::error::{Error, Result};
use crate::measure::postgres::{self, Backlog};
use crate::measure::{Clients, address};
use crate::metrics::Metrics;
use crate::render::{self, count, duration};
use crate::report::Reports;
use crate::sink::Destinations;
use crate::workload::{Component, SecretMount, WorkerConfig, WorkerPlan};

/// The worker's drain deadline (`shutdownGrace`); the Outbox spec has no field
/// for it.
pub const SHUTDOWN_GRACE_SECONDS: i64 = 30;

/// The worker configuration of an Outbox, and the Secret mounts its paths point into (pure).
pub fn worker_config(obx: &Outbox) -> Result<(worker_config::Outbox, Vec<SecretMount>)> {
    let spec = &obx.spec;
    let mut secret_mounts = Vec::new();
    if postgres::quoted_table(&spec.table).is_none() {
        return Err(Error::InvalidSpec {
            field: "table",
            reason: "must be a lower-case SQL identifier, optionally schema-qualified".into(),
        });
    }
    if spec.topic.is_some() == spec.topic_template.is_some() {
        return Err(Error::InvalidSpec {
            field: "topic",
            reason: "exactly one of topic, topicTemplate must be set".into(),
        });
    }
    let retention = match (spec.cleanup.policy, &spec.cleanup.retention) {
        (CleanupPolicy::MarkPublished, Some(r)) => Some(duration("cleanup.retention", r)?),
        _ => None,
    };
    let config = worker_config::Outbox {
        database: worker_config::Database {
            url_file: Some(render::database(
                &mut secret_mounts,
                &spec.database.dsn_secret_ref,
            )),
        },
        table: spec.table.clone(),
        topic: spec.topic.clone(),
        topic_template: spec.topic_template.clone(),
        kafka: render::kafka(&mut secret_mounts, &spec.kafka),
        poll: worker_config::Poll {
            interval: duration("poll.interval", &spec.poll.interval)?,
            batch_size: count("poll.batchSize", spec.poll.batch_size)?,
            max_in_flight: count("poll.maxInFlight", spec.poll.max_in_flight)?,
            notify: spec.poll.notify,
        },
        cleanup: worker_config::Cleanup {
            policy: spec.cleanup.policy,
            retention,
        },
        shutdown_grace: std::time::Duration::from_secs(SHUTDOWN_GRACE_SECONDS as u64),
        // Worker tuning the API does not offer: the worker's default.
        lock_retry_interval: worker_config::Outbox::default_lock_retry_interval(),
    };
    Ok((config, secret_mounts))
}

/// The worker plan of an Outbox (pure).
pub fn plan(obx: &Outbox, settings: &Settings) -> Result<WorkerPlan> {
    let spec = &obx.spec;
    let (config, secret_mounts) = worker_config(obx)?;
    Ok(WorkerPlan {
        component: Component::Outbox,
        name: obx.name_any(),
        namespace: obx.namespace().unwrap_or_default(),
        owner: obx
            .controller_owner_ref(&())
            .ok_or_else(|| Error::InvalidSpec {
                field: "metadata",
                reason: "the resource has no uid yet".into(),
            })?,
        image: spec
            .image
            .clone()
            .unwrap_or_else(|| settings.worker_image.clone()),
        config: WorkerConfig::Outbox(Box::new(config)),
        secret_mounts,
        config_map_mounts: vec![],
        replicas: spec.replicas,
        resources: spec.resources.clone(),
        pod: spec.pod.clone(),
        tracing: spec.observability.as_ref().and_then(|o| o.tracing.clone()),
        drain_seconds: SHUTDOWN_GRACE_SECONDS,
        secrets_hash: String::new(),
        last_scale_time: None,
    })
}

impl Pipeline for Outbox {
    const COMPONENT: Component = Component::Outbox;
    const KIND: &'static str = "Outbox";
    type Status = OutboxStatus;
    type Figures = Backlog;

    fn secret_uses(&self) -> Vec<SecretUse> {
        let dsn = &self.spec.database.dsn_secret_ref;
        let mut uses = vec![SecretUse {
            name: dsn.name.clone(),
            key: Some(dsn.key.clone()),
        }];
        uses.extend(render::kafka_secret_uses(&self.spec.kafka));
        uses
    }

    fn plan(&self, settings: &Settings, _resolved: &Destinations<String>) -> Result<WorkerPlan> {
        plan(self, settings)
    }

    async fn measure(
        &self,
        secrets: &Secrets,
        settings: &Settings,
        clients: &Clients,
    ) -> Result<Backlog> {
        let dsn = &self.spec.database.dsn_secret_ref;
        let url = secrets
            .value(&dsn.name, &dsn.key)
            .ok_or_else(|| Error::SecretNotFound {
                name: dsn.name.clone(),
                key: Some(dsn.key.clone()),
            })?;
        // The parse error would not show the URL, but say nothing of it anyway.
        let url = url.trim();
        let options: PgConnectOptions = url.parse().map_err(|_| Error::InvalidSpec {
            field: "database.dsnSecretRef",
            reason: format!(
                "the value of key {:?} in Secret {:?} is not a PostgreSQL URL",
                dsn.key, dsn.name
            ),
        })?;
        // The database as the workers in the namespace reach it (see address.rs); the pool is
        // the database's at that address.
        let host = address::in_namespace(
            options.get_host(),
            options.get_port(),
            self.namespace().as_deref().unwrap_or_default(),
        )
        .await;
        let key = format!("{host}\n{url}");
        let options = options.host(&host);
        postgres::measure(
            &clients.postgres,
            (&key, options),
            &self.spec.table,
            self.spec.cleanup.policy,
            settings.measure_timeout,
        )
        .await
    }

    fn export(&self, backlog: &Backlog, metrics: &Metrics) {
        metrics.export_backlog(
            self.namespace().as_deref().unwrap_or_default(),
            &self.name_any(),
            backlog.pending,
            backlog.oldest_age_seconds,
        );
    }

    fn replicas(&self, _scale: Scale<'_, Backlog>) -> i32 {
        self.spec.replicas
    }

    fn stored_status(&self) -> Option<&OutboxStatus> {
        self.status.as_ref()
    }

    fn conditions_of(status: &OutboxStatus) -> &[Condition] {
        &status.conditions
    }

    fn observed_generation_of(status: &OutboxStatus) -> Option<i64> {
        status.observed_generation
    }

    fn status(
        &self,
        common: CommonStatus,
        figures: Option<&Backlog>,
        reports: Option<&Reports>,
        now: Timestamp,
    ) -> OutboxStatus {
        let previous = self.status.clone().unwrap_or_default();
        let (pending, oldest, measured_time) = match figures {
            Some(b)
                if previous.pending == Some(b.pending)
                    && previous.oldest_pending_age_seconds == b.oldest_age_seconds =>
            {
                (
                    previous.pending,
                    previous.oldest_pending_age_seconds,
                    previous.measured_time,
                )
            }
            Some(b) => (Some(b.pending), b.oldest_age_seconds, Some(Time(now))),
            None => (
                previous.pending,
                previous.oldest_pending_age_seconds,
                previous.measured_time,
            ),
        };
        let read = reports.map(|r| {
            let active = r.active_publisher();
            (
                active.map(|a| a.published_total),
                active.and_then(|a| a.last_publish_time.clone()),
            )
        });
        let (published_total, last_publish_time, report_time) = match read {
            Some((total, last))
                if previous.published_total == total && previous.last_publish_time == last =>
            {
                (total, last, previous.report_time)
            }
            Some((total, last)) => (total, last, reports.map(|r| Time(r.at))),
            None => (
                previous.published_total,
                previous.last_publish_time,
                previous.report_time,
            ),
        };
        OutboxStatus {
            observed_generation: common.observed_generation,
            conditions: common.conditions,
            replicas: common.replicas,
            ready_replicas: common.ready_replicas,
            selector: common.selector,
            pending,
            oldest_pending_age_seconds: oldest,
            published_total,
            last_publish_time,
            report_time,
            measured_time,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipewright_crds::OutboxSpec;
    use serde_json::json;

    fn outbox(spec: serde_json::Value) -> Outbox {
        let mut base = json!({
            "database": {"dsnSecretRef": {"name": "db", "key": "dsn"}},
            "kafka": {"bootstrapServers": ["kafka:9092"]},
            "topic": "orders",
        });
        for (k, v) in spec.as_object().unwrap() {
            base[k] = v.clone();
        }
        let spec: OutboxSpec = serde_json::from_value(base).unwrap();
        let mut o = Outbox::new("orders", spec);
        o.metadata.namespace = Some("shop".into());
        o.metadata.uid = Some("uid-2".into());
        o
    }

    /// The rendered configuration, read back as the worker reads it.
    fn file(p: &WorkerPlan) -> worker_config::Outbox {
        let WorkerConfig::Outbox(o) = &p.config else {
            panic!("not an outbox configuration")
        };
        worker_config::from_json(&worker_config::to_json(o)).unwrap()
    }

    #[test]
    fn the_spec_renders_into_the_outbox_configuration_file() {
        let p = plan(
            &outbox(json!({"poll": {"interval": "250ms", "batchSize": 50,
            "maxInFlight": 500, "notify": false}})),
            &Settings::default(),
        )
        .unwrap();
        let o = file(&p);
        assert_eq!(o.table, "outbox");
        assert_eq!(o.topic.as_deref(), Some("orders"));
        assert_eq!(o.topic_template, None);
        assert_eq!(
            o.poll,
            worker_config::Poll {
                interval: std::time::Duration::from_millis(250),
                batch_size: 50,
                max_in_flight: 500,
                notify: false,
            }
        );
        assert_eq!(o.cleanup, worker_config::Cleanup::default());
        assert_eq!(o.kafka.bootstrap_servers, ["kafka:9092"]);
        assert_eq!(
            o.database.url_file.unwrap(),
            std::path::Path::new("/var/run/secrets/pipewright/database/url")
        );
        assert_eq!(p.secret_mounts[0].secret, "db");
    }

    #[test]
    fn mark_published_renders_its_retention() {
        let p = plan(
            &outbox(json!({"cleanup": {"policy": "markPublished", "retention": "168h"}})),
            &Settings::default(),
        )
        .unwrap();
        let cleanup = file(&p).cleanup;
        assert_eq!(cleanup.policy, CleanupPolicy::MarkPublished);
        assert_eq!(
            cleanup.retention,
            Some(std::time::Duration::from_secs(168 * 3600))
        );
    }

    #[test]
    fn a_topic_template_replaces_the_topic() {
        let p = plan(
            &outbox(json!({"topic": null, "topicTemplate": "outbox.event.{aggregatetype}"})),
            &Settings::default(),
        )
        .unwrap();
        let o = file(&p);
        assert_eq!(
            o.topic_template.as_deref(),
            Some("outbox.event.{aggregatetype}")
        );
        assert_eq!(o.topic, None);
    }

    #[test]
    fn the_dsn_secret_key_is_referenced() {
        assert_eq!(
            outbox(json!({})).secret_uses(),
            vec![SecretUse {
                name: "db".into(),
                key: Some("dsn".into())
            }]
        );
    }
}
