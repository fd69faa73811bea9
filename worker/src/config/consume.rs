//! The `consume` configuration ([`worker_config::Consume`]) checked and turned into the
//! consumer's settings, the declared event types and the sink.

use std::sync::Arc;

use pipewright_crds::worker_config::{self, Sink as SinkConfig, UnknownTypePolicy};

use super::{DatabaseUrl, kafka_settings};
use crate::Error;
use crate::consume::events::JsonSchema;
use crate::consume::sinks::Sink;
use crate::consume::sinks::discard::DiscardSink;
use crate::consume::sinks::http::{HttpSink, HttpSinkConfig};
use crate::consume::sinks::kafka::{KafkaSink, Transaction};
use crate::consume::sinks::log::LogSink;
use crate::consume::sinks::postgres::{PostgresSink, PostgresSinkConfig};
use crate::consume::{
    Compression, ConsumeConfig, ConsumerConfig, DeclaredTypes, InitialOffset, InvalidPolicy,
    Ordering, PipelineConfig, RetryPolicy, TypeSource,
};
use crate::outbox::Table;

/// Checks `file` and builds the consumer's settings, its sink's settings and the declared
/// event types (their schemas read and compiled).
pub fn settings(
    file: worker_config::Consume,
) -> Result<(ConsumeConfig, SinkSettings, DeclaredTypes), Error> {
    let raw = file.events.format == worker_config::EventFormat::Raw;
    if raw {
        check_raw(&file)?;
    }
    let cloud_events = file.events.format == worker_config::EventFormat::CloudEvents;
    if cloud_events && file.events.type_from.is_some() {
        return Err(Error::InvalidConfig {
            field: "events.typeFrom",
            reason: "events.format cloudEvents reads the type from the CloudEvent's type attribute"
                .into(),
        });
    }
    let types = declared_types(&file.events.types)?
        .with_raw(raw)
        .with_cloud_events(cloud_events)
        .with_source(match &file.events.type_from {
            None => TypeSource::EventTypeField,
            Some(worker_config::EventTypeFrom {
                header: Some(h),
                field: None,
            }) => TypeSource::Header(h.clone()),
            Some(worker_config::EventTypeFrom {
                header: None,
                field: Some(f),
            }) if f == "event_type" => TypeSource::EventTypeField,
            Some(worker_config::EventTypeFrom {
                header: None,
                field: Some(f),
            }) => TypeSource::Field(f.clone()),
            Some(_) => {
                return Err(Error::InvalidConfig {
                    field: "events.typeFrom",
                    reason: "set exactly one of header, field".into(),
                });
            }
        });
    let p = file.processing;
    let config = ConsumeConfig {
        consumer: ConsumerConfig {
            kafka: kafka_settings(&file.kafka)?,
            topics: file.topics,
            group_id: file.group_id,
            group_instance_id: file.group_instance_id.filter(|s| !s.is_empty()),
            initial_offset: match file.initial_offset {
                worker_config::InitialOffset::Earliest => InitialOffset::Earliest,
                worker_config::InitialOffset::Latest => InitialOffset::Latest,
            },
            commit_interval: p.commit_interval,
            drain_timeout: p.drain_timeout,
            revoke_timeout: p.revoke_timeout,
        },
        pipeline: PipelineConfig {
            concurrency: p.concurrency,
            ordering: match p.ordering {
                worker_config::Ordering::Key => Ordering::Key,
                worker_config::Ordering::Partition => Ordering::Partition,
                worker_config::Ordering::None => Ordering::None,
            },
            retry: RetryPolicy {
                max_attempts: p.retry.max_attempts,
                initial: p.retry.backoff.initial,
                max: p.retry.backoff.max,
            },
            on_invalid: match file.events.on_unknown_type {
                UnknownTypePolicy::DeadLetter => InvalidPolicy::DeadLetter,
                UnknownTypePolicy::Skip => InvalidPolicy::Skip,
                UnknownTypePolicy::Fail => InvalidPolicy::Fail,
            },
            max_record_bytes: p.max_record_bytes,
            max_uncommitted_per_partition: p.max_uncommitted_per_partition,
            max_buffered_bytes_per_partition: p.max_buffered_bytes_per_partition,
        },
        dead_letter_topic: p.dead_letter_topic.filter(|s| !s.is_empty()),
        dead_letter_http: p
            .dead_letter_http
            .as_ref()
            .map(crate::consume::sinks::http::HttpSinkConfig::dead_letters)
            .transpose()?,
        compression: match p.compression {
            worker_config::Compression::None => Compression::None,
            worker_config::Compression::Gzip => Compression::Gzip,
            worker_config::Compression::Snappy => Compression::Snappy,
            worker_config::Compression::Lz4 => Compression::Lz4,
            worker_config::Compression::Zstd => Compression::Zstd,
        },
    };
    config.validate()?;
    let sink = SinkSettings {
        sink: file.sink,
        raw,
    };
    sink.validate()?;
    Ok((config, sink, types))
}

/// What `events.format: raw` cannot go with: the values are not read, so nothing may need
/// them as JSON.
fn check_raw(file: &worker_config::Consume) -> Result<(), Error> {
    let refuse = |field, reason: &str| {
        Err(Error::InvalidConfig {
            field,
            reason: format!("events.format raw: {reason}"),
        })
    };
    let header = file
        .events
        .type_from
        .as_ref()
        .is_some_and(|t| t.header.is_some());
    if file
        .events
        .type_from
        .as_ref()
        .is_some_and(|t| t.field.is_some())
    {
        return refuse(
            "events.typeFrom.field",
            "the values are not read; the type can only come from a header",
        );
    }
    if !file.events.types.is_empty() && !header {
        return refuse(
            "events.types",
            "declared types need events.typeFrom.header (the values are not read)",
        );
    }
    if file.events.types.iter().any(|t| t.schema.is_some()) {
        return refuse(
            "events.types[].schema",
            "a JSON Schema cannot check values that are not JSON",
        );
    }
    if matches!(file.sink, SinkConfig::Postgres(_)) {
        return refuse(
            "sink.postgres",
            "the postgres sink maps the fields of JSON events to columns",
        );
    }
    Ok(())
}

/// The declared event types with their schemas (inline, or read from their file).
fn declared_types(declared: &[worker_config::EventType]) -> Result<DeclaredTypes, Error> {
    let field = "events.types[].schema";
    let invalid = |reason: String| Error::InvalidConfig { field, reason };
    if declared.is_empty() {
        return Ok(DeclaredTypes::any());
    }
    let mut types = DeclaredTypes::names(declared.iter().map(|t| t.name.clone()));
    for t in declared {
        let name = &t.name;
        let schema = match &t.schema {
            None => continue,
            Some(worker_config::SchemaSource::Inline(schema)) => schema.clone(),
            Some(worker_config::SchemaSource::File(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    invalid(format!(
                        "the schema of {name:?}: cannot read {}: {e}",
                        path.display()
                    ))
                })?;
                serde_json::from_str(&text).map_err(|e| {
                    invalid(format!(
                        "the schema of {name:?} in {} is not JSON: {e}",
                        path.display()
                    ))
                })?
            }
        };
        let compiled = JsonSchema::compile(&schema)
            .map_err(|e| invalid(format!("the schema of {name:?} is invalid: {e}")))?;
        types = types.with_schema(name, Box::new(compiled));
    }
    Ok(types)
}

/// The sink's settings (`sink.*`), checked; [`SinkSettings::build`] connects it.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub sink: SinkConfig,
    /// `events.format: raw`: the values are bytes, not JSON (the HTTP and log sinks show them
    /// as such).
    pub raw: bool,
}

impl SinkSettings {
    /// Checks the settings of the sink (before connecting anywhere).
    pub fn validate(&self) -> Result<(), Error> {
        match &self.sink {
            SinkConfig::Log(_) | SinkConfig::Discard(_) => Ok(()),
            SinkConfig::Http(h) => HttpSinkConfig::parse(h).map(|_| ()),
            SinkConfig::Kafka(k) if k.topic.is_empty() => Err(Error::InvalidConfig {
                field: "sink.kafka.topic",
                reason: "must not be empty".into(),
            }),
            SinkConfig::Kafka(_) => Ok(()),
            SinkConfig::Postgres(pg) => {
                Table::parse(&pg.table)?;
                Table::parse(&pg.offsets_table)?;
                if let Some(bad) = pg
                    .upsert_key
                    .iter()
                    .find(|c| !crate::outbox::is_identifier(c))
                {
                    return Err(Error::InvalidConfig {
                        field: "sink.postgres.upsertKey",
                        reason: format!("{bad:?} is not a lower-case SQL identifier"),
                    });
                }
                Ok(())
            }
        }
    }

    /// The transactional.id of a transactional kafka sink.
    fn transactional_id(configured: Option<&str>, config: &ConsumeConfig) -> Result<String, Error> {
        if let Some(id) = configured.filter(|s| !s.is_empty()) {
            return Ok(id.to_string());
        }
        let instance = config
            .consumer
            .group_instance_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
            .ok_or(Error::InvalidConfig {
                field: "sink.kafka.transactional",
                reason: "needs a stable instance name: set groupInstanceId, HOSTNAME (the pod \
                         name), or sink.kafka.transactionalId"
                    .into(),
            })?;
        Ok(format!(
            "pipewright-{}-{instance}",
            config.consumer.group_id
        ))
    }

    /// Connects the sink; a transactional kafka sink also returns its transaction, for
    /// [`crate::consume::run_with_transaction`].
    pub async fn build(
        &self,
        config: &ConsumeConfig,
    ) -> Result<(Sink, Option<Arc<Transaction>>), Error> {
        self.validate()?;
        match &self.sink {
            SinkConfig::Log(l) => Ok((
                Sink::Log(LogSink {
                    payload: l.payload,
                    raw: self.raw,
                }),
                None,
            )),
            SinkConfig::Discard(d) => {
                Ok((Sink::Discard(DiscardSink::new(d.delay, d.jitter)), None))
            }
            SinkConfig::Http(h) => Ok((
                Sink::Http(Box::new(HttpSink::new(HttpSinkConfig {
                    raw: self.raw,
                    ..HttpSinkConfig::parse(h)?
                })?)),
                None,
            )),
            SinkConfig::Kafka(k) => {
                if config.consumer.topics.contains(&k.topic) {
                    return Err(Error::InvalidConfig {
                        field: "sink.kafka.topic",
                        reason: "must not be one of the consumed topics".into(),
                    });
                }
                let kafka = &config.consumer.kafka;
                if k.transactional {
                    let id = Self::transactional_id(k.transactional_id.as_deref(), config)?;
                    let sink =
                        KafkaSink::transactional(kafka, &k.topic, config.compression, &id).await?;
                    let tx = sink.transaction();
                    Ok((Sink::Kafka(sink), tx))
                } else {
                    Ok((
                        Sink::Kafka(KafkaSink::new(kafka, &k.topic, config.compression)?),
                        None,
                    ))
                }
            }
            SinkConfig::Postgres(pg) => {
                let options = DatabaseUrl::load(pg.dsn_file.as_deref())?.connect_options()?;
                let sink_config = PostgresSinkConfig {
                    table: Table::parse(&pg.table)?,
                    upsert_key: pg.upsert_key.clone(),
                    offsets_table: Table::parse(&pg.offsets_table)?,
                    group_id: config.consumer.group_id.clone(),
                    max_connections: config.pipeline.concurrency as u32,
                };
                Ok((
                    Sink::Postgres(PostgresSink::connect(options, sink_config).await?),
                    None,
                ))
            }
        }
    }
}
