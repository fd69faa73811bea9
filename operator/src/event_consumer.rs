//! `EventConsumer` → a `pipewright-worker consume` Deployment, and its consumer lag in status.
//!
//! The spec is rendered into the worker's configuration file ([`worker_config::Consume`],
//! docs/worker-config.md).
//! The consumer group is `spec.groupId` or `<namespace>.<name>`; its lag is measured on the
//! broker (see [`crate::measure::kafka`]). With `autoscaling`, the operator sets the replicas
//! from the lag ([`crate::autoscale`]), never above the partition count; without it, replicas
//! follow `spec.replicas`, which an HPA or KEDA may drive through the scale subresource.
//!
//! No finalizer: every child is garbage-collected through its owner reference, and the
//! consumer group's committed offsets are deliberately kept (a resource re-created with the
//! same group resumes where the old one stopped).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use pipewright_crds::event_consumer::{EventSchema, SinkKind};
use pipewright_crds::termination::RecordRef;
use pipewright_crds::worker_config::{self, SchemaSource};
use pipewright_crds::{EventConsumer, EventConsumerStatus};

use crate::autoscale;
use crate::context::Settings;
use crate::controller::{CommonStatus, Pipeline, Scale, SecretUse, Secrets};
use crate::error::{Error, Result};
use crate::measure::kafka::{self, Lag, Target};
use crate::measure::{Clients, address};
use crate::metrics::{Metrics, PartitionLag};
use crate::render::{self, count, duration};
use crate::report::Reports;
use crate::sink::{Destinations, SinkAddress};
use crate::status::Workers;
use crate::workload::{Component, ConfigMapMount, SecretMount, WorkerConfig, WorkerPlan};

/// Where the `sink.http.headersSecretRef` Secret is mounted.
pub const HTTP_HEADERS_DIR: &str = "/var/run/secrets/pipewright/http-headers";
/// Where the dead-letter sink's headers Secret is mounted.
pub const DEAD_LETTER_HEADERS_DIR: &str = "/var/run/secrets/pipewright/dead-letter-headers";
/// Where ConfigMaps holding event schemas are mounted (`<dir>/<configmap>/<key>`).
pub const SCHEMAS_DIR: &str = "/etc/pipewright/schemas";

/// The consumer group of `ec`: spec.groupId or `<namespace>.<name>`.
pub fn group_id(ec: &EventConsumer) -> String {
    ec.spec
        .group_id
        .clone()
        .unwrap_or_else(|| format!("{}.{}", ec.namespace().unwrap_or_default(), ec.name_any()))
}

/// The worker configuration of an EventConsumer, and the Secret and ConfigMap mounts its paths
/// point into (pure). `resolved`: where the HTTP sink and dead-letter sink deliver, as
/// resolved (see [`crate::sink`]); `None`: their `url`.
pub fn worker_config(
    ec: &EventConsumer,
    resolved: &Destinations<String>,
) -> Result<(
    worker_config::Consume,
    Vec<SecretMount>,
    Vec<ConfigMapMount>,
)> {
    let spec = &ec.spec;
    let mut secret_mounts = Vec::new();
    let mut config_map_mounts: Vec<ConfigMapMount> = Vec::new();
    let p = &spec.processing;
    let processing = worker_config::Processing {
        concurrency: count("processing.concurrency", p.concurrency)?,
        ordering: p.ordering,
        retry: worker_config::Retry {
            max_attempts: count("processing.retry.maxAttempts", p.retry.max_attempts)?,
            backoff: worker_config::Backoff {
                initial: duration("processing.retry.backoff.initial", &p.retry.backoff.initial)?,
                max: duration("processing.retry.backoff.max", &p.retry.backoff.max)?,
            },
        },
        dead_letter_topic: p.dead_letter_topic.clone(),
        dead_letter_http: match p.dead_letter_sink.as_ref().map(|d| &d.http) {
            None => None,
            Some(h) => Some(worker_config::DeadLetterHttp {
                url: destination_url(
                    resolved.dead_letter.as_deref(),
                    h.url.as_deref(),
                    "processing.deadLetterSink.http.ref",
                )?,
                timeout: duration("processing.deadLetterSink.http.timeout", &h.timeout)?,
                headers_secret_dir: h.headers_secret_ref.as_ref().map(|s| {
                    headers_mount(
                        &mut secret_mounts,
                        "dead-letter-headers",
                        &s.name,
                        DEAD_LETTER_HEADERS_DIR,
                    )
                }),
            }),
        },
        drain_timeout: duration("processing.drainTimeout", &p.drain_timeout)?,
        // Worker tuning the API does not offer: the worker's defaults.
        ..worker_config::Processing::default()
    };
    let mut events = worker_config::Events::default();
    if let Some(declared) = &spec.events {
        events.format = declared.format;
        events.on_unknown_type = declared.on_unknown_type;
        events.type_from = declared.type_from.clone();
        for (i, t) in declared.types.iter().enumerate() {
            let schema = match &t.schema {
                None => None,
                Some(EventSchema {
                    inline: Some(inline),
                    ..
                }) => Some(SchemaSource::Inline(inline.clone())),
                Some(EventSchema {
                    config_map_key_ref: Some(cm),
                    ..
                }) => {
                    let dir = format!("{SCHEMAS_DIR}/{}", cm.name);
                    if !config_map_mounts.iter().any(|m| m.config_map == cm.name) {
                        config_map_mounts.push(ConfigMapMount {
                            volume: format!("schema-{i}"),
                            config_map: cm.name.clone(),
                            path: dir.clone(),
                        });
                    }
                    Some(SchemaSource::File(format!("{dir}/{}", cm.key).into()))
                }
                Some(_) => {
                    return Err(Error::InvalidSpec {
                        field: "events.types[].schema",
                        reason: "exactly one of configMapKeyRef, inline must be set".into(),
                    });
                }
            };
            events.types.push(worker_config::EventType {
                name: t.name.clone(),
                schema,
            });
        }
    }
    let sink = match spec.sink.kind() {
        None => {
            return Err(Error::InvalidSpec {
                field: "sink",
                reason: "exactly one of http, kafka, postgres, log must be set".into(),
            });
        }
        Some(SinkKind::Http(h)) => worker_config::Sink::Http(worker_config::HttpSink {
            url: destination_url(resolved.sink.as_deref(), h.url.as_deref(), "sink.http.ref")?,
            method: h.method,
            timeout: duration("sink.http.timeout", &h.timeout)?,
            headers: h.headers.clone(),
            headers_secret_dir: h.headers_secret_ref.as_ref().map(|s| {
                headers_mount(
                    &mut secret_mounts,
                    "http-headers",
                    &s.name,
                    HTTP_HEADERS_DIR,
                )
            }),
            idempotency_header: h.idempotency_header.clone(),
            content_mode: h.content_mode,
            ce_source: h.ce_source.clone(),
            ce_type: h.ce_type.clone(),
            forward_headers: h.forward_headers.clone(),
        }),
        Some(SinkKind::Kafka(k)) => worker_config::Sink::Kafka(worker_config::KafkaSink {
            topic: k.topic.clone(),
            transactional: k.transactional,
            // The worker derives it from the group and the pod name ($HOSTNAME).
            transactional_id: None,
        }),
        Some(SinkKind::Postgres(pg)) => {
            worker_config::Sink::Postgres(worker_config::PostgresSink {
                dsn_file: Some(render::database(&mut secret_mounts, &pg.dsn_secret_ref)),
                table: pg.table.clone(),
                upsert_key: pg.upsert_key.clone(),
                offsets_table: pg.offsets_table.clone(),
            })
        }
        Some(SinkKind::Log(l)) => {
            worker_config::Sink::Log(worker_config::LogSink { payload: l.payload })
        }
    };
    let config = worker_config::Consume {
        kafka: render::kafka(&mut secret_mounts, &spec.kafka),
        topics: spec.topics.clone(),
        group_id: group_id(ec),
        // Dynamic group membership: see workload.rs.
        group_instance_id: None,
        initial_offset: spec.initial_offset,
        events,
        processing,
        sink,
    };
    Ok((config, secret_mounts, config_map_mounts))
}

/// An HTTP destination's address: the Service `ref` as resolved (`field` names it), else the
/// spec's `url`.
fn destination_url(
    resolved: Option<&str>,
    url: Option<&str>,
    field: &'static str,
) -> Result<String> {
    resolved
        .or(url)
        .map(str::to_owned)
        .ok_or_else(|| Error::InvalidSpec {
            field,
            reason: "the Service reference was not resolved".into(),
        })
}

/// Mounts a headers Secret (each key a header) whole at `dir` as `volume`; the directory the
/// worker reads it from.
fn headers_mount(
    mounts: &mut Vec<SecretMount>,
    volume: &str,
    secret: &str,
    dir: &str,
) -> std::path::PathBuf {
    mounts.push(SecretMount {
        volume: volume.into(),
        secret: secret.into(),
        items: vec![],
        path: dir.into(),
    });
    dir.into()
}

/// The worker plan of an EventConsumer (pure).
pub fn plan(ec: &EventConsumer, settings: &Settings) -> Result<WorkerPlan> {
    plan_with_destinations(ec, settings, &Destinations::default())
}

/// The worker plan of an EventConsumer whose HTTP destinations resolved to `resolved` (pure;
/// `None`: their `url`).
pub fn plan_with_destinations(
    ec: &EventConsumer,
    settings: &Settings,
    resolved: &Destinations<String>,
) -> Result<WorkerPlan> {
    let spec = &ec.spec;
    let (config, secret_mounts, config_map_mounts) = worker_config(ec, resolved)?;
    let drain = config.processing.drain_timeout;
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
        config: WorkerConfig::Consume(Box::new(config)),
        secret_mounts,
        config_map_mounts,
        replicas: spec.replicas,
        resources: spec.resources.clone(),
        pod: spec.pod.clone(),
        tracing: spec.observability.as_ref().and_then(|o| o.tracing.clone()),
        drain_seconds: i64::try_from(drain.as_secs()).unwrap_or(i64::MAX / 2),
        secrets_hash: String::new(),
        last_scale_time: None,
    })
}

/// A pod count as the API's int32.
fn count_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
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
        if let Some(s) = self
            .spec
            .processing
            .dead_letter_sink
            .as_ref()
            .and_then(|d| d.http.headers_secret_ref.as_ref())
        {
            uses.push(SecretUse {
                name: s.name.clone(),
                key: None,
            });
        }
        uses
    }

    fn destinations(&self) -> Destinations<SinkAddress<'_>> {
        let sink = self.spec.sink.http.as_ref().map(|h| {
            SinkAddress::of(
                h.url.as_deref(),
                h.service_ref.as_ref(),
                h.path.as_deref(),
                "sink.http.ref",
            )
        });
        let dead_letter = self.spec.processing.dead_letter_sink.as_ref().map(|d| {
            SinkAddress::of(
                d.http.url.as_deref(),
                d.http.service_ref.as_ref(),
                d.http.path.as_deref(),
                "processing.deadLetterSink.http.ref",
            )
        });
        Destinations { sink, dead_letter }
    }

    fn plan(&self, settings: &Settings, resolved: &Destinations<String>) -> Result<WorkerPlan> {
        plan_with_destinations(self, settings, resolved)
    }

    async fn measure(
        &self,
        secrets: &Secrets,
        settings: &Settings,
        clients: &Clients,
    ) -> Result<Lag> {
        let target = Target {
            // As the workers in the namespace reach them (see address.rs).
            bootstrap_servers: address::bootstrap_servers(
                &self.spec.kafka.bootstrap_servers,
                self.namespace().as_deref().unwrap_or_default(),
            )
            .await,
            settings: render::kafka_settings(&self.spec.kafka, secrets),
            group_id: group_id(self),
            topics: self.spec.topics.clone(),
            initial_offset: self.spec.initial_offset,
        };
        kafka::measure(
            &clients.kafka,
            &clients.kafka_readers,
            target,
            settings.measure_timeout,
        )
        .await
    }

    fn export(&self, lag: &Lag, metrics: &Metrics) {
        let partitions: Vec<PartitionLag> = lag
            .partitions
            .iter()
            .map(|p| (p.topic.clone(), p.partition, p.lag, p.lag_seconds))
            .collect();
        metrics.export_lag(
            self.namespace().as_deref().unwrap_or_default(),
            &self.name_any(),
            &group_id(self),
            &partitions,
            lag.max_lag_seconds,
        );
    }

    fn replicas(&self, scale: Scale<'_, Lag>) -> i32 {
        let Some(a) = &self.spec.autoscaling else {
            return self.spec.replicas;
        };
        let stuck = scale
            .workers
            .map(|w| w.stuck.as_slice())
            .unwrap_or_default();
        autoscale::decide(&autoscale::Inputs {
            current: scale.current.unwrap_or(a.min_replicas),
            lag: scale.figures.map(|l| l.drainable(stuck)),
            stalled: scale.workers.is_some_and(Workers::stalled),
            threshold: a.lag_threshold,
            min: a.min_replicas,
            max: a.max_replicas,
            partitions: scale.figures.map(Lag::partition_count),
            last_scale: scale.last_scale,
            now: scale.now,
            cooldown: scale.settings.scale_cooldown,
        })
    }

    fn moved_past(lag: &Lag, record: &RecordRef) -> bool {
        lag.committed(&record.topic, record.partition)
            .is_some_and(|c| c > record.offset)
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
        reports: Option<&Reports>,
        now: Timestamp,
    ) -> EventConsumerStatus {
        let previous = self.status.clone().unwrap_or_default();
        let (partitions, total_lag, max_lag_seconds, measured_time) = match figures {
            Some(lag)
                if previous.partitions == lag.partitions
                    && previous.total_lag == Some(lag.total)
                    && previous.max_lag_seconds == lag.max_lag_seconds =>
            {
                (
                    previous.partitions,
                    previous.total_lag,
                    previous.max_lag_seconds,
                    previous.measured_time,
                )
            }
            Some(lag) => (
                lag.partitions.clone(),
                Some(lag.total),
                lag.max_lag_seconds,
                Some(Time(now)),
            ),
            None => (
                previous.partitions,
                previous.total_lag,
                previous.max_lag_seconds,
                previous.measured_time,
            ),
        };
        let read = reports.map(|r| (r.counters(), r.processed_last_minute, r.pods.len()));
        let (counters, processed_last_minute, reported_replicas, report_time) = match read {
            Some((counters, rate, answered))
                if previous.counters == counters
                    && previous.processed_last_minute == rate
                    && previous.reported_replicas == Some(count_i32(answered)) =>
            {
                (
                    counters,
                    rate,
                    Some(count_i32(answered)),
                    previous.report_time,
                )
            }
            Some((counters, rate, answered)) => (
                counters,
                rate,
                Some(count_i32(answered)),
                reports.map(|r| Time(r.at)),
            ),
            None => (
                previous.counters,
                previous.processed_last_minute,
                previous.reported_replicas,
                previous.report_time,
            ),
        };
        EventConsumerStatus {
            observed_generation: common.observed_generation,
            conditions: common.conditions,
            replicas: common.replicas,
            ready_replicas: common.ready_replicas,
            selector: common.selector,
            group_id: Some(group_id(self)),
            sink_uri: common.destinations.sink,
            dead_letter_sink_uri: common.destinations.dead_letter,
            partitions,
            total_lag,
            max_lag_seconds,
            counters,
            processed_last_minute,
            reported_replicas,
            report_time,
            measured_time,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::desired;
    use pipewright_crds::EventConsumerSpec;
    use serde_json::json;

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

    /// The rendered configuration, read back as the worker reads it.
    fn file(p: &WorkerPlan) -> worker_config::Consume {
        let WorkerConfig::Consume(c) = &p.config else {
            panic!("not a consume configuration")
        };
        let text = worker_config::to_json(c);
        worker_config::from_json(&text).unwrap()
    }

    #[test]
    fn the_spec_renders_into_the_consume_configuration_file() {
        let p = plan(
            &consumer(json!({"initialOffset": "latest"})),
            &Settings::default(),
        )
        .unwrap();
        let c = file(&p);
        assert_eq!(c.kafka.bootstrap_servers, ["kafka-0:9092", "kafka-1:9092"]);
        assert_eq!(c.topics, ["orders", "payments"]);
        assert_eq!(c.group_id, "shop.orders");
        assert_eq!(
            c.initial_offset,
            pipewright_crds::event_consumer::InitialOffset::Latest
        );
        assert_eq!(
            c.sink,
            worker_config::Sink::Log(worker_config::LogSink { payload: true })
        );
        assert_eq!(
            c.processing.drain_timeout,
            std::time::Duration::from_secs(30)
        );
        // Pods are dynamic group members: a departing pod hands its partitions on at once.
        assert_eq!(c.group_instance_id, None);
        assert_eq!(p.image, Settings::default().worker_image);
        let d = desired(&p);
        let pod = d.deployment.spec.template.spec.unwrap();
        assert_eq!(pod.containers[0].args.as_ref().unwrap()[4], "consume");
        assert_eq!(pod.termination_grace_period_seconds, Some(40));
    }

    #[test]
    fn http_headers_render_as_a_map_whatever_their_values_hold() {
        let ec = consumer(json!({"sink": {"http": {"url": "http://h/",
            "headers": {"X-Source": "pipewright", "X-List": "a=1,b=2"}}}}));
        let c = file(&plan(&ec, &Settings::default()).unwrap());
        let worker_config::Sink::Http(h) = c.sink else {
            panic!("not the http sink")
        };
        assert_eq!(h.headers["X-Source"], "pipewright");
        assert_eq!(h.headers["X-List"], "a=1,b=2");
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
        let worker_config::Sink::Postgres(pg) = file(&p).sink else {
            panic!("not the postgres sink")
        };
        assert_eq!(
            pg.dsn_file.unwrap(),
            std::path::Path::new("/var/run/secrets/pipewright/database/url")
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
        let c = file(&p);
        assert_eq!(c.kafka.config["linger.ms"], "5");
        assert_eq!(
            c.kafka.secret_dir.unwrap(),
            std::path::Path::new(render::KAFKA_SECRET_DIR)
        );
        assert!(p.secret_mounts.iter().any(|m| m.secret == "kafka-creds"));
        assert_eq!(ec.secret_uses()[0].name, "kafka-creds");
    }

    #[test]
    fn a_kafka_setting_with_a_comma_reaches_the_worker_as_it_is() {
        let ec = consumer(json!({"kafka": {"bootstrapServers": ["k:9092"],
            "config": {"partition.assignment.strategy": "range,roundrobin"}}}));
        let c = file(&plan(&ec, &Settings::default()).unwrap());
        assert_eq!(
            c.kafka.config["partition.assignment.strategy"],
            "range,roundrobin"
        );
    }

    #[test]
    fn schema_config_maps_are_mounted_and_named_in_the_events_declaration() {
        let ec = consumer(json!({"events": {"onUnknownType": "skip", "types": [
            {"name": "order.created", "schema": {"configMapKeyRef": {"name": "schemas", "key": "order.json"}}},
            {"name": "order.paid", "schema": {"inline": {"type": "object"}}},
            {"name": "order.shipped"}
        ]}}));
        let p = plan(&ec, &Settings::default()).unwrap();
        let events = file(&p).events;
        let names: Vec<&str> = events.types.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["order.created", "order.paid", "order.shipped"]);
        assert_eq!(
            events.types[0].schema,
            Some(SchemaSource::File(
                "/etc/pipewright/schemas/schemas/order.json".into()
            ))
        );
        assert_eq!(
            events.types[1].schema,
            Some(SchemaSource::Inline(json!({"type": "object"})))
        );
        assert_eq!(events.types[2].schema, None);
        assert_eq!(
            events.on_unknown_type,
            pipewright_crds::event_consumer::UnknownTypePolicy::Skip
        );
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
                    lag_seconds: None,
                })
                .collect(),
            total: 300,
            max_lag_seconds: None,
        };
        let settings = Settings::default();
        let now = Timestamp::now();
        let r = ec.replicas(Scale {
            current: Some(1),
            figures: Some(&lag),
            last_scale: None,
            now,
            settings: &settings,
            workers: None,
        });
        assert_eq!(r, 3);
        let fixed = consumer(json!({"replicas": 7}));
        let r = fixed.replicas(Scale {
            current: Some(1),
            figures: Some(&lag),
            last_scale: None,
            now,
            settings: &settings,
            workers: None,
        });
        assert_eq!(r, 7);
    }

    #[test]
    fn lag_behind_a_poison_record_does_not_count_and_stalled_workers_are_not_scaled_up() {
        let ec = consumer(json!({
            "autoscaling": {"minReplicas": 1, "maxReplicas": 10, "lagThreshold": 10}}));
        let partition = |p: i32, lag: i64| pipewright_crds::event_consumer::PartitionStatus {
            topic: "orders".into(),
            partition: p,
            committed: Some(17),
            end: 17 + lag,
            lag,
            lag_seconds: None,
        };
        let lag = Lag {
            partitions: vec![partition(0, 1000), partition(1, 5), partition(2, 5)],
            total: 1010,
            max_lag_seconds: None,
        };
        let settings = Settings::default();
        let scale = |workers: &Workers| {
            ec.replicas(Scale {
                current: Some(1),
                figures: Some(&lag),
                last_scale: None,
                now: Timestamp::now(),
                settings: &settings,
                workers: Some(workers),
            })
        };
        // Unstalled, the 1,010 records ask for every partition.
        assert_eq!(scale(&Workers::default()), 3);
        // A worker stuck on orders/0/17: its partition's 1,000 do not count, and a stalled
        // group is not scaled up (10 drainable records ask for 1 replica anyway).
        let stuck = Workers {
            stuck: vec!["orders/0/17".parse().unwrap()],
            ..Workers::default()
        };
        assert_eq!(lag.drainable(&stuck.stuck), 10);
        assert_eq!(scale(&stuck), 1);
        // Crash-looping without a report: the lag counts, but no replica is added.
        let looping = Workers {
            crash_looping: true,
            ..Workers::default()
        };
        assert_eq!(scale(&looping), 1);
        // The group committed past the record: the report is history.
        let record = "orders/0/16".parse().unwrap();
        assert!(EventConsumer::moved_past(&lag, &record));
        assert!(!EventConsumer::moved_past(
            &lag,
            &"orders/0/17".parse().unwrap()
        ));
    }

    #[test]
    fn unchanged_figures_keep_their_measured_time_so_nothing_is_written() {
        let mut ec = consumer(json!({}));
        let lag = Lag {
            partitions: vec![],
            total: 0,
            max_lag_seconds: Some(0),
        };
        let t1 = Timestamp::from_second(100).unwrap();
        let first = ec.status(CommonStatus::default(), Some(&lag), None, t1);
        ec.status = Some(first.clone());
        let t2 = Timestamp::from_second(200).unwrap();
        let second = ec.status(CommonStatus::default(), Some(&lag), None, t2);
        assert_eq!(first, second);
    }
}
