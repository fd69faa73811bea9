//! `EventConsumer` → a `pipewright-worker consume` Deployment, and its consumer lag in status.
//!
//! The spec is rendered into the environment contract of docs/worker-config.md ("consume").
//! The consumer group is `spec.groupId` or `<namespace>.<name>`; its lag is measured on the
//! broker (see [`crate::measure::kafka`]). With `autoscaling`, the operator sets the replicas
//! from the lag ([`crate::autoscale`]), never above the partition count; without it, replicas
//! follow `spec.replicas`, which an HPA or KEDA may drive through the scale subresource.
//!
//! No finalizer: every child is garbage-collected through its owner reference, and the
//! consumer group's committed offsets are deliberately kept (a resource re-created with the
//! same group resumes where the old one stopped).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use pipewright_crds::event_consumer::{InitialOffset, Ordering, SinkKind, UnknownTypePolicy};
use pipewright_crds::{EventConsumer, EventConsumerStatus};
use serde_json::json;

use crate::autoscale;
use crate::context::Settings;
use crate::controller::{CommonStatus, Pipeline, Scale, SecretUse, Secrets};
use crate::error::{Error, Result};
use crate::measure::kafka::{self, Lag, Target};
use crate::render;
use crate::workload::{Component, ConfigMapMount, SecretMount, WorkerPlan, render_duration};

/// Where the `sink.http.headersSecretRef` Secret is mounted.
pub const HTTP_HEADERS_DIR: &str = "/var/run/secrets/pipewright/http-headers";
/// Where ConfigMaps holding event schemas are mounted (`<dir>/<configmap>/<key>`).
pub const SCHEMAS_DIR: &str = "/etc/pipewright/schemas";

/// The consumer group of `ec`: spec.groupId or `<namespace>.<name>`.
pub fn group_id(ec: &EventConsumer) -> String {
    ec.spec
        .group_id
        .clone()
        .unwrap_or_else(|| format!("{}.{}", ec.namespace().unwrap_or_default(), ec.name_any()))
}

fn duration(field: &'static str, d: &pipewright_crds::Duration) -> Result<std::time::Duration> {
    d.to_std().map_err(|e| Error::InvalidSpec {
        field,
        reason: e.to_string(),
    })
}

/// The worker plan of an EventConsumer (pure).
pub fn plan(ec: &EventConsumer, settings: &Settings) -> Result<WorkerPlan> {
    let spec = &ec.spec;
    let mut env = BTreeMap::new();
    let mut secret_mounts = Vec::new();
    let mut config_map_mounts = Vec::new();
    let mut put = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    put(
        "PIPEWRIGHT_LISTEN",
        format!("0.0.0.0:{}", crate::workload::WORKER_PORT),
    );
    put("PIPEWRIGHT_LOG_FORMAT", "json".into());
    put("PIPEWRIGHT_CONSUMER_TOPICS", spec.topics.join(","));
    put("PIPEWRIGHT_CONSUMER_GROUP_ID", group_id(ec));
    put(
        "PIPEWRIGHT_CONSUMER_INITIAL_OFFSET",
        match spec.initial_offset {
            InitialOffset::Earliest => "earliest",
            InitialOffset::Latest => "latest",
        }
        .into(),
    );
    let p = &spec.processing;
    put("PIPEWRIGHT_CONSUMER_CONCURRENCY", p.concurrency.to_string());
    put(
        "PIPEWRIGHT_CONSUMER_ORDERING",
        match p.ordering {
            Ordering::Key => "key",
            Ordering::Partition => "partition",
            Ordering::None => "none",
        }
        .into(),
    );
    put(
        "PIPEWRIGHT_CONSUMER_RETRY_MAX_ATTEMPTS",
        p.retry.max_attempts.to_string(),
    );
    put(
        "PIPEWRIGHT_CONSUMER_RETRY_BACKOFF_INITIAL",
        render_duration(duration(
            "processing.retry.backoff.initial",
            &p.retry.backoff.initial,
        )?),
    );
    put(
        "PIPEWRIGHT_CONSUMER_RETRY_BACKOFF_MAX",
        render_duration(duration(
            "processing.retry.backoff.max",
            &p.retry.backoff.max,
        )?),
    );
    if let Some(dlt) = &p.dead_letter_topic {
        put("PIPEWRIGHT_CONSUMER_DEAD_LETTER_TOPIC", dlt.clone());
    }
    let drain = duration("processing.drainTimeout", &p.drain_timeout)?;
    put("PIPEWRIGHT_CONSUMER_DRAIN_TIMEOUT", render_duration(drain));

    if let Some(events) = &spec.events {
        put(
            "PIPEWRIGHT_CONSUMER_EVENT_TYPES",
            events
                .types
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
        );
        let mut schemas = serde_json::Map::new();
        for (i, t) in events.types.iter().enumerate() {
            let Some(schema) = &t.schema else { continue };
            if let Some(inline) = &schema.inline {
                schemas.insert(t.name.clone(), json!({ "inline": inline }));
            }
            if let Some(cm) = &schema.config_map_key_ref {
                let dir = format!("{SCHEMAS_DIR}/{}", cm.name);
                if !config_map_mounts
                    .iter()
                    .any(|m: &ConfigMapMount| m.config_map == cm.name)
                {
                    config_map_mounts.push(ConfigMapMount {
                        volume: format!("schema-{i}"),
                        config_map: cm.name.clone(),
                        path: dir.clone(),
                    });
                }
                schemas.insert(
                    t.name.clone(),
                    json!({ "file": format!("{dir}/{}", cm.key) }),
                );
            }
        }
        if !schemas.is_empty() {
            put(
                "PIPEWRIGHT_CONSUMER_EVENT_SCHEMAS",
                serde_json::to_string(&schemas).map_err(|source| Error::Serialize {
                    what: "events",
                    source,
                })?,
            );
        }
        put(
            "PIPEWRIGHT_CONSUMER_ON_UNKNOWN_TYPE",
            match events.on_unknown_type {
                UnknownTypePolicy::DeadLetter => "dead-letter",
                UnknownTypePolicy::Skip => "skip",
                UnknownTypePolicy::Fail => "fail",
            }
            .into(),
        );
    }

    match spec.sink.kind() {
        None => {
            return Err(Error::InvalidSpec {
                field: "sink",
                reason: "exactly one of http, kafka, postgres, log must be set".into(),
            });
        }
        Some(SinkKind::Http(h)) => {
            put("PIPEWRIGHT_SINK", "http".into());
            put("PIPEWRIGHT_SINK_HTTP_URL", h.url.clone());
            put(
                "PIPEWRIGHT_SINK_HTTP_METHOD",
                serde_json::to_value(h.method)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| "POST".into()),
            );
            put(
                "PIPEWRIGHT_SINK_HTTP_TIMEOUT",
                render_duration(duration("sink.http.timeout", &h.timeout)?),
            );
            put(
                "PIPEWRIGHT_SINK_HTTP_IDEMPOTENCY_HEADER",
                h.idempotency_header.clone(),
            );
            if !h.headers.is_empty() {
                put(
                    "PIPEWRIGHT_SINK_HTTP_HEADERS",
                    serde_json::to_string(&h.headers).map_err(|source| Error::Serialize {
                        what: "sink.http.headers",
                        source,
                    })?,
                );
            }
            if let Some(s) = &h.headers_secret_ref {
                put(
                    "PIPEWRIGHT_SINK_HTTP_HEADERS_SECRET_DIR",
                    HTTP_HEADERS_DIR.into(),
                );
                secret_mounts.push(SecretMount {
                    volume: "http-headers".into(),
                    secret: s.name.clone(),
                    items: vec![],
                    path: HTTP_HEADERS_DIR.into(),
                });
            }
        }
        Some(SinkKind::Kafka(k)) => {
            put("PIPEWRIGHT_SINK", "kafka".into());
            put("PIPEWRIGHT_SINK_KAFKA_TOPIC", k.topic.clone());
            put(
                "PIPEWRIGHT_SINK_KAFKA_TRANSACTIONAL",
                k.transactional.to_string(),
            );
        }
        Some(SinkKind::Postgres(pg)) => {
            put("PIPEWRIGHT_SINK", "postgres".into());
            put("PIPEWRIGHT_SINK_POSTGRES_TABLE", pg.table.clone());
            if !pg.upsert_key.is_empty() {
                put(
                    "PIPEWRIGHT_SINK_POSTGRES_UPSERT_KEY",
                    pg.upsert_key.join(","),
                );
            }
            put(
                "PIPEWRIGHT_SINK_POSTGRES_OFFSETS_TABLE",
                pg.offsets_table.clone(),
            );
            render::database(&mut env, &mut secret_mounts, &pg.dsn_secret_ref);
        }
        Some(SinkKind::Log(l)) => {
            put("PIPEWRIGHT_SINK", "log".into());
            put("PIPEWRIGHT_SINK_LOG_PAYLOAD", l.payload.to_string());
        }
    }
    render::kafka(&mut env, &mut secret_mounts, &spec.kafka)?;

    Ok(WorkerPlan {
        component: Component::EventConsumer,
        name: ec.name_any(),
        namespace: ec.namespace().unwrap_or_default(),
        owner: ec
            .controller_owner_ref(&())
            .ok_or_else(|| Error::InvalidSpec {
                field: "metadata",
                reason: "the resource has no uid yet".into(),
            })?,
        image: spec
            .image
            .clone()
            .unwrap_or_else(|| settings.worker_image.clone()),
        env,
        secret_mounts,
        config_map_mounts,
        replicas: spec.replicas,
        resources: spec.resources.clone(),
        drain_seconds: i64::try_from(drain.as_secs()).unwrap_or(i64::MAX / 2),
        secrets_hash: String::new(),
        last_scale_time: None,
    })
}

impl Pipeline for EventConsumer {
    const COMPONENT: Component = Component::EventConsumer;
    const KIND: &'static str = "EventConsumer";
    type Status = EventConsumerStatus;
    type Figures = Lag;

    fn secret_uses(&self) -> Vec<SecretUse> {
        let mut uses = render::kafka_secret_uses(&self.spec.kafka);
        match self.spec.sink.kind() {
            Some(SinkKind::Postgres(pg)) => uses.push(SecretUse {
                name: pg.dsn_secret_ref.name.clone(),
                key: Some(pg.dsn_secret_ref.key.clone()),
            }),
            Some(SinkKind::Http(h)) => {
                if let Some(s) = &h.headers_secret_ref {
                    uses.push(SecretUse {
                        name: s.name.clone(),
                        key: None,
                    });
                }
            }
            _ => {}
        }
        uses
    }

    fn plan(&self, settings: &Settings) -> Result<WorkerPlan> {
        plan(self, settings)
    }

    async fn measure(&self, secrets: &Secrets, settings: &Settings) -> Result<Lag> {
        let target = Target {
            bootstrap_servers: self.spec.kafka.bootstrap_servers.join(","),
            settings: render::kafka_settings(&self.spec.kafka, secrets),
            group_id: group_id(self),
            topics: self.spec.topics.clone(),
            initial_offset: self.spec.initial_offset,
        };
        kafka::measure(target, settings.measure_timeout).await
    }

    fn replicas(&self, scale: Scale<'_, Lag>) -> i32 {
        let Some(a) = &self.spec.autoscaling else {
            return self.spec.replicas;
        };
        autoscale::decide(&autoscale::Inputs {
            current: scale.current.unwrap_or(a.min_replicas),
            lag: scale.figures.map(|l| l.total),
            threshold: a.lag_threshold,
            min: a.min_replicas,
            max: a.max_replicas,
            partitions: scale.figures.map(Lag::partition_count),
            last_scale: scale.last_scale,
            now: scale.now,
            cooldown: scale.settings.scale_cooldown,
        })
    }

    fn stored_status(&self) -> Option<&EventConsumerStatus> {
        self.status.as_ref()
    }

    fn conditions_of(status: &EventConsumerStatus) -> &[Condition] {
        &status.conditions
    }

    fn observed_generation_of(status: &EventConsumerStatus) -> Option<i64> {
        status.observed_generation
    }

    fn status(
        &self,
        common: CommonStatus,
        figures: Option<&Lag>,
        now: Timestamp,
    ) -> EventConsumerStatus {
        let previous = self.status.clone().unwrap_or_default();
        let (partitions, total_lag, measured_time) = match figures {
            Some(lag)
                if previous.partitions == lag.partitions
                    && previous.total_lag == Some(lag.total) =>
            {
                (
                    previous.partitions,
                    previous.total_lag,
                    previous.measured_time,
                )
            }
            Some(lag) => (lag.partitions.clone(), Some(lag.total), Some(Time(now))),
            None => (
                previous.partitions,
                previous.total_lag,
                previous.measured_time,
            ),
        };
        EventConsumerStatus {
            observed_generation: common.observed_generation,
            conditions: common.conditions,
            replicas: common.replicas,
            ready_replicas: common.ready_replicas,
            selector: common.selector,
            group_id: Some(group_id(self)),
            partitions,
            total_lag,
            oldest_unprocessed_age_seconds: previous.oldest_unprocessed_age_seconds,
            counters: previous.counters,
            measured_time,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::desired;
    use pipewright_crds::EventConsumerSpec;

    fn consumer(spec: serde_json::Value) -> EventConsumer {
        let mut base = json!({
            "kafka": {"bootstrapServers": ["kafka-0:9092", "kafka-1:9092"]},
            "topics": ["orders", "payments"],
            "sink": {"log": {}},
        });
        for (k, v) in spec.as_object().unwrap() {
            base[k] = v.clone();
        }
        let spec: EventConsumerSpec = serde_json::from_value(base).unwrap();
        let mut ec = EventConsumer::new("orders", spec);
        ec.metadata.namespace = Some("shop".into());
        ec.metadata.uid = Some("uid-1".into());
        ec
    }

    #[test]
    fn the_consumer_group_defaults_to_namespace_dot_name() {
        assert_eq!(group_id(&consumer(json!({}))), "shop.orders");
        assert_eq!(group_id(&consumer(json!({"groupId": "g"}))), "g");
    }

    #[test]
    fn the_spec_renders_into_the_consume_environment_contract() {
        let p = plan(
            &consumer(json!({"initialOffset": "latest"})),
            &Settings::default(),
        )
        .unwrap();
        assert_eq!(
            p.env["PIPEWRIGHT_KAFKA_BOOTSTRAP_SERVERS"],
            "kafka-0:9092,kafka-1:9092"
        );
        assert_eq!(p.env["PIPEWRIGHT_CONSUMER_TOPICS"], "orders,payments");
        assert_eq!(p.env["PIPEWRIGHT_CONSUMER_GROUP_ID"], "shop.orders");
        assert_eq!(p.env["PIPEWRIGHT_CONSUMER_INITIAL_OFFSET"], "latest");
        assert_eq!(p.env["PIPEWRIGHT_SINK"], "log");
        assert_eq!(p.env["PIPEWRIGHT_CONSUMER_DRAIN_TIMEOUT"], "30s");
        assert_eq!(p.image, Settings::default().worker_image);
        let d = desired(&p);
        let pod = d.deployment.spec.template.spec.unwrap();
        assert_eq!(pod.containers[0].args, Some(vec!["consume".to_string()]));
        assert_eq!(pod.termination_grace_period_seconds, Some(40));
    }

    #[test]
    fn the_drain_deadline_sets_the_termination_grace_period() {
        let p = plan(
            &consumer(json!({"processing": {"drainTimeout": "2m"}})),
            &Settings::default(),
        )
        .unwrap();
        assert_eq!(p.drain_seconds, 120);
        assert_eq!(
            desired(&p)
                .deployment
                .spec
                .template
                .spec
                .unwrap()
                .termination_grace_period_seconds,
            Some(130)
        );
    }

    #[test]
    fn a_postgres_sink_mounts_its_dsn_and_references_its_secret() {
        let ec = consumer(json!({"sink": {"postgres": {
            "dsnSecretRef": {"name": "db", "key": "dsn"}, "table": "events"}}}));
        let p = plan(&ec, &Settings::default()).unwrap();
        assert_eq!(
            p.env["PIPEWRIGHT_DATABASE_URL_FILE"],
            "/var/run/secrets/pipewright/database/url"
        );
        assert_eq!(p.secret_mounts[0].secret, "db");
        assert_eq!(
            ec.secret_uses(),
            vec![SecretUse {
                name: "db".into(),
                key: Some("dsn".into())
            }]
        );
    }

    #[test]
    fn kafka_credentials_are_mounted_from_their_secret() {
        let ec = consumer(json!({"kafka": {"bootstrapServers": ["k:9092"],
            "secretRef": {"name": "kafka-creds"}, "config": {"linger.ms": "5"}}}));
        let p = plan(&ec, &Settings::default()).unwrap();
        assert_eq!(p.env["PIPEWRIGHT_KAFKA_CONFIG"], "linger.ms=5");
        assert_eq!(
            p.env["PIPEWRIGHT_KAFKA_SECRET_DIR"],
            render::KAFKA_SECRET_DIR
        );
        assert!(p.secret_mounts.iter().any(|m| m.secret == "kafka-creds"));
        assert_eq!(ec.secret_uses()[0].name, "kafka-creds");
    }

    #[test]
    fn a_kafka_setting_with_a_comma_is_an_invalid_spec() {
        let ec = consumer(json!({"kafka": {"bootstrapServers": ["k:9092"],
            "config": {"partition.assignment.strategy": "range,roundrobin"}}}));
        assert!(matches!(
            plan(&ec, &Settings::default()),
            Err(Error::InvalidSpec {
                field: "kafka.config",
                ..
            })
        ));
    }

    #[test]
    fn schema_config_maps_are_mounted_and_named_in_the_events_declaration() {
        let ec = consumer(json!({"events": {"onUnknownType": "skip", "types": [
            {"name": "order.created", "schema": {"configMapKeyRef": {"name": "schemas", "key": "order.json"}}},
            {"name": "order.paid", "schema": {"inline": {"type": "object"}}},
            {"name": "order.shipped"}
        ]}}));
        let p = plan(&ec, &Settings::default()).unwrap();
        assert_eq!(
            p.env["PIPEWRIGHT_CONSUMER_EVENT_TYPES"],
            "order.created,order.paid,order.shipped"
        );
        let schemas: serde_json::Value =
            serde_json::from_str(&p.env["PIPEWRIGHT_CONSUMER_EVENT_SCHEMAS"]).unwrap();
        assert_eq!(
            schemas["order.created"]["file"],
            "/etc/pipewright/schemas/schemas/order.json"
        );
        assert_eq!(schemas["order.paid"]["inline"]["type"], "object");
        assert!(schemas.get("order.shipped").is_none());
        assert_eq!(p.env["PIPEWRIGHT_CONSUMER_ON_UNKNOWN_TYPE"], "skip");
        assert_eq!(p.config_map_mounts[0].config_map, "schemas");
    }

    #[test]
    fn autoscaling_replaces_spec_replicas_and_caps_at_partitions() {
        let ec = consumer(json!({"replicas": 7,
            "autoscaling": {"minReplicas": 1, "maxReplicas": 10, "lagThreshold": 10}}));
        let lag = Lag {
            partitions: (0..3)
                .map(|p| pipewright_crds::event_consumer::PartitionStatus {
                    topic: "orders".into(),
                    partition: p,
                    committed: None,
                    end: 100,
                    lag: 100,
                })
                .collect(),
            total: 300,
        };
        let settings = Settings::default();
        let now = Timestamp::now();
        let r = ec.replicas(Scale {
            current: Some(1),
            figures: Some(&lag),
            last_scale: None,
            now,
            settings: &settings,
        });
        assert_eq!(r, 3);
        let fixed = consumer(json!({"replicas": 7}));
        let r = fixed.replicas(Scale {
            current: Some(1),
            figures: Some(&lag),
            last_scale: None,
            now,
            settings: &settings,
        });
        assert_eq!(r, 7);
    }

    #[test]
    fn unchanged_figures_keep_their_measured_time_so_nothing_is_written() {
        let mut ec = consumer(json!({}));
        let lag = Lag {
            partitions: vec![],
            total: 0,
        };
        let t1 = Timestamp::from_second(100).unwrap();
        let first = ec.status(CommonStatus::default(), Some(&lag), t1);
        ec.status = Some(first.clone());
        let t2 = Timestamp::from_second(200).unwrap();
        let second = ec.status(CommonStatus::default(), Some(&lag), t2);
        assert_eq!(first, second);
    }
}
