//! Configuration: command-line flags with environment fallbacks (what the operator renders into
//! the Deployment), and the database URL, read from a file mounted from a Secret
//! (`PIPEWRIGHT_DATABASE_URL_FILE`) or from `PIPEWRIGHT_DATABASE_URL` (an env var filled from a
//! Secret). The URL is wrapped in [`DatabaseUrl`], whose `Debug` shows nothing, and is never
//! logged. Invalid configuration is an [`Error`] whose message names the field; the binary
//! exits with code 2 on it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sqlx::postgres::PgConnectOptions;

use crate::Error;
use crate::consume::events::JsonSchema;
use crate::consume::sinks::Sink;
use crate::consume::sinks::discard::DiscardSink;
use crate::consume::sinks::http::{HttpSink, HttpSinkConfig};
use crate::consume::sinks::kafka::{KafkaSink, Transaction};
use crate::consume::sinks::log::LogSink;
use crate::consume::sinks::postgres::{PostgresSink, PostgresSinkConfig};
use crate::consume::{
    Compression, ConsumeConfig, ConsumerConfig, DEFAULT_MAX_BUFFERED_BYTES_PER_PARTITION,
    DEFAULT_MAX_UNCOMMITTED_PER_PARTITION, DeclaredTypes, InitialOffset, InvalidPolicy, Ordering,
    PipelineConfig, RetryPolicy,
};
use crate::kafka::KafkaSettings;
use crate::outbox::{Cleanup, Destination, PollerConfig, Table};
use crate::telemetry::LogFormat;

/// Environment variable naming a file that holds the database URL (a mounted Secret key).
pub const DATABASE_URL_FILE_ENV: &str = "PIPEWRIGHT_DATABASE_URL_FILE";
/// Environment variable holding the database URL (from a Secret through `valueFrom`).
pub const DATABASE_URL_ENV: &str = "PIPEWRIGHT_DATABASE_URL";

/// Environment variable naming the directory where the `kafka.secretRef` Secret is mounted.
pub const KAFKA_SECRET_DIR_ENV: &str = "PIPEWRIGHT_KAFKA_SECRET_DIR";

/// pipewright's worker.
#[derive(Debug, Parser)]
#[command(name = "pipewright-worker", version, about)]
pub struct Cli {
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "PIPEWRIGHT_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Log format.
    #[arg(
        long,
        env = "PIPEWRIGHT_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// The worker's modes.
#[derive(Debug, Subcommand)]
// Parsed once at start-up: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Publish the rows of a PostgreSQL outbox table to Kafka.
    Outbox(OutboxArgs),
    /// Consume Kafka topics as typed events and deliver each to a sink.
    Consume(ConsumeArgs),
}

/// Settings of `pipewright-worker consume` (the `EventConsumer` spec, flattened; list-valued
/// settings are comma-separated in their environment variable).
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topics to consume.
    #[arg(
        long,
        env = "PIPEWRIGHT_CONSUMER_TOPICS",
        value_delimiter = ',',
        required = true
    )]
    pub topics: Vec<String>,
    /// Kafka consumer group.
    #[arg(long, env = "PIPEWRIGHT_CONSUMER_GROUP_ID")]
    pub group_id: String,
    /// Static group membership (`group.instance.id`): for an instance that comes back under
    /// the same name (a static member that goes away holds its partitions until its session
    /// times out). Unset (what the operator renders): dynamic membership.
    #[arg(long, env = "PIPEWRIGHT_CONSUMER_GROUP_INSTANCE_ID")]
    pub group_instance_id: Option<String>,
    /// Where a new consumer group starts in each partition.
    #[arg(
        long,
        env = "PIPEWRIGHT_CONSUMER_INITIAL_OFFSET",
        value_enum,
        default_value = "earliest"
    )]
    pub initial_offset: InitialOffset,
    /// Declared event types (`events.types[].name`). Unset: every JSON event with a string
    /// `event_type` is accepted.
    #[arg(long, env = "PIPEWRIGHT_CONSUMER_EVENT_TYPES", value_delimiter = ',')]
    pub event_types: Vec<String>,
    /// JSON Schemas of event types (`events.types[].schema`), as the operator renders them: a
    /// JSON object mapping each type to `{"inline": <schema>}` or `{"file": "<path>"}` (a
    /// mounted ConfigMap key holding the schema as JSON). Each type in it is declared too.
    #[arg(long, env = "PIPEWRIGHT_CONSUMER_EVENT_SCHEMAS")]
    pub event_schemas: Option<String>,
    /// What happens to a record that is not a valid event: no value, not JSON, no string
    /// `event_type`, an undeclared type, a schema mismatch, a value over --max-record-bytes
    /// (`events.onUnknownType`; dead-letter needs --dead-letter-topic).
    #[arg(
        long,
        env = "PIPEWRIGHT_CONSUMER_ON_UNKNOWN_TYPE",
        value_enum,
        default_value = "dead-letter"
    )]
    pub on_unknown_type: InvalidPolicy,
    /// Records running at most (1..1024): the sink called for them, or waiting to retry.
    /// Records waiting behind their key or for a free slot are bounded per partition by
    /// --max-uncommitted-per-partition and --max-buffered-bytes-per-partition.
    #[arg(long, env = "PIPEWRIGHT_CONSUMER_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,
    /// Which records are delivered in order.
    #[arg(
        long,
        env = "PIPEWRIGHT_CONSUMER_ORDERING",
        value_enum,
        default_value = "key"
    )]
    pub ordering: Ordering,
    /// Delivery attempts per record, the first included (1..100).
    #[arg(
        long,
        env = "PIPEWRIGHT_CONSUMER_RETRY_MAX_ATTEMPTS",
        default_value_t = 5
    )]
    pub retry_max_attempts: u32,
    /// Wait before the first retry (doubles per attempt, with jitter).
    #[arg(
        long,
        env = "PIPEWRIGHT_CONSUMER_RETRY_BACKOFF_INITIAL",
        default_value = "100ms"
    )]
    pub retry_backoff_initial: humantime::Duration,
    /// Longest wait between two attempts.
    #[arg(
        long,
        env = "PIPEWRIGHT_CONSUMER_RETRY_BACKOFF_MAX",
        default_value = "30s"
    )]
    pub retry_backoff_max: humantime::Duration,
    /// Topic for records that fail every attempt (or permanently) or are not valid events,
    /// with the error in pipewright.* headers. Unset: such a record stops the worker (exit 1).
    #[arg(long, env = "PIPEWRIGHT_CONSUMER_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,
    /// How long a shutdown waits for the records in flight before committing.
    #[arg(long, env = "PIPEWRIGHT_CONSUMER_DRAIN_TIMEOUT", default_value = "30s")]
    pub drain_timeout: humantime::Duration,
    /// How often finished offsets are committed, asynchronously (also early, when a quarter
    /// of a partition's window is finished and unsent); with a transactional kafka sink, how
    /// often its transaction is committed.
    #[arg(
        long,
        env = "PIPEWRIGHT_CONSUMER_COMMIT_INTERVAL",
        default_value = "1s"
    )]
    pub commit_interval: humantime::Duration,
    /// Per partition: offsets taken and not covered by an acknowledged commit, at most; the
    /// partition pauses at this bound while the others flow. A crash delivers at most this
    /// many records of a partition again.
    #[arg(
        long,
        env = "PIPEWRIGHT_CONSUMER_MAX_UNCOMMITTED_PER_PARTITION",
        default_value_t = DEFAULT_MAX_UNCOMMITTED_PER_PARTITION
    )]
    pub max_uncommitted_per_partition: u64,
    /// Per partition: bytes (key + value) of the records taken and not finished, at most; the
    /// partition pauses at this bound.
    #[arg(
        long,
        env = "PIPEWRIGHT_CONSUMER_MAX_BUFFERED_BYTES_PER_PARTITION",
        default_value_t = DEFAULT_MAX_BUFFERED_BYTES_PER_PARTITION
    )]
    pub max_buffered_bytes_per_partition: usize,
    /// How long a partition revocation waits for its running records before cancelling them
    /// (uncommitted: the partition's next owner delivers them).
    #[arg(
        long,
        env = "PIPEWRIGHT_CONSUMER_REVOKE_TIMEOUT",
        default_value = "10s"
    )]
    pub revoke_timeout: humantime::Duration,
    /// Largest record value accepted, bytes; larger ones are invalid events.
    #[arg(
        long,
        env = "PIPEWRIGHT_CONSUMER_MAX_RECORD_BYTES",
        default_value_t = 1048576
    )]
    pub max_record_bytes: usize,
    /// Compression of produced records (dead-letter topic, kafka sink).
    #[arg(
        long,
        env = "PIPEWRIGHT_KAFKA_COMPRESSION",
        value_enum,
        default_value = "zstd"
    )]
    pub compression: Compression,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub sink: SinkArgs,
}

/// The declared event types: the names, plus those of the schemas file, with their schemas.
fn declared_types(names: &[String], schemas: Option<&str>) -> Result<DeclaredTypes, Error> {
    let field = "events.types[].schema";
    let invalid = |reason: String| Error::InvalidConfig { field, reason };
    let sources: serde_json::Map<String, serde_json::Value> = match schemas {
        None | Some("") => serde_json::Map::new(),
        Some(text) => serde_json::from_str(text).map_err(|e| {
            invalid(format!(
                "not a JSON object of event type -> {{\"inline\": schema}} or {{\"file\": path}}: {e}"
            ))
        })?,
    };
    let mut schemas = serde_json::Map::new();
    for (name, source) in sources {
        let schema = match (
            source.get("inline"),
            source.get("file").and_then(|f| f.as_str()),
        ) {
            (Some(inline), None) => inline.clone(),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    invalid(format!("the schema of {name:?}: cannot read {path}: {e}"))
                })?;
                serde_json::from_str(&text).map_err(|e| {
                    invalid(format!("the schema of {name:?} in {path} is not JSON: {e}"))
                })?
            }
            _ => {
                return Err(invalid(format!(
                    "the schema of {name:?} must be {{\"inline\": schema}} or {{\"file\": path}}"
                )));
            }
        };
        schemas.insert(name, schema);
    }
    if names.is_empty() && schemas.is_empty() {
        return Ok(DeclaredTypes::any());
    }
    let mut all: Vec<String> = names.to_vec();
    all.extend(schemas.keys().cloned());
    let mut types = DeclaredTypes::names(all);
    for (name, schema) in &schemas {
        let compiled = JsonSchema::compile(schema).map_err(|e| Error::InvalidConfig {
            field,
            reason: format!("the schema of {name:?} is invalid: {e}"),
        })?;
        types = types.with_schema(name, Box::new(compiled));
    }
    Ok(types)
}

/// The Kafka connection (shared by the modes).
#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(
        long = "kafka-bootstrap-servers",
        env = "PIPEWRIGHT_KAFKA_BOOTSTRAP_SERVERS"
    )]
    pub bootstrap_servers: String,
    /// Extra librdkafka settings, `key=value` (the API's allow-listed tuning keys only;
    /// comma-separated in the environment variable).
    #[arg(
        long = "kafka-config",
        env = "PIPEWRIGHT_KAFKA_CONFIG",
        value_delimiter = ','
    )]
    pub config: Vec<String>,
    /// Directory of the mounted `kafka.secretRef` Secret: one file per librdkafka security
    /// setting (security.protocol, sasl.mechanism, sasl.username, sasl.password, ssl.ca.pem,
    /// ssl.certificate.pem, ssl.key.pem).
    #[arg(long = "kafka-secret-dir", env = KAFKA_SECRET_DIR_ENV)]
    pub secret_dir: Option<PathBuf>,
}

impl KafkaArgs {
    /// The librdkafka settings (allow-listed tuning keys, credentials from the Secret).
    pub fn settings(&self) -> Result<KafkaSettings, Error> {
        let mut settings = KafkaSettings::new(&self.bootstrap_servers);
        for entry in &self.config {
            settings.add_tuning(entry)?;
        }
        if let Some(dir) = &self.secret_dir {
            settings.add_secret_dir(dir)?;
        }
        Ok(settings)
    }
}

/// Which sink receives the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    /// One log line per event.
    Log,
    /// One HTTP request per event, as a CloudEvent in binary content mode.
    Http,
    /// Produce each event to a Kafka topic (optionally exactly once, with transactions).
    Kafka,
    /// One row per event in a PostgreSQL table, offsets in the same transaction.
    Postgres,
    /// Accept and drop each event (decoded and checked like any other): for benchmarks and
    /// dry runs of a topic. Not offered by the EventConsumer API.
    Discard,
}

/// The sink (`sink.*`): `--sink` selects one; only its settings apply.
#[derive(Debug, Args)]
pub struct SinkArgs {
    /// The sink.
    #[arg(long = "sink", env = "PIPEWRIGHT_SINK", value_enum)]
    pub kind: SinkKind,
    /// log: include the event's JSON in the line.
    #[arg(long = "sink-log-payload", env = "PIPEWRIGHT_SINK_LOG_PAYLOAD", default_value_t = true, action = clap::ArgAction::Set)]
    pub log_payload: bool,
    /// http: the absolute http(s) URL each event is sent to (no credentials in it).
    #[arg(long = "sink-http-url", env = "PIPEWRIGHT_SINK_HTTP_URL")]
    pub http_url: Option<String>,
    /// http: POST or PUT.
    #[arg(
        long = "sink-http-method",
        env = "PIPEWRIGHT_SINK_HTTP_METHOD",
        default_value = "POST"
    )]
    pub http_method: String,
    /// http: how long to wait for an answer (1ms..5m); no answer in time is retried.
    #[arg(
        long = "sink-http-timeout",
        env = "PIPEWRIGHT_SINK_HTTP_TIMEOUT",
        default_value = "10s"
    )]
    pub http_timeout: humantime::Duration,
    /// http: extra headers, `name=value` (not credentials).
    #[arg(
        long = "sink-http-headers",
        env = "PIPEWRIGHT_SINK_HTTP_HEADERS",
        value_delimiter = ','
    )]
    pub http_headers: Vec<String>,
    /// http: directory of the mounted headersSecretRef Secret: each file is a header (name =
    /// file name), sent with every request, never logged.
    #[arg(
        long = "sink-http-headers-secret-dir",
        env = "PIPEWRIGHT_SINK_HTTP_HEADERS_SECRET_DIR"
    )]
    pub http_headers_secret_dir: Option<PathBuf>,
    /// http: the header carrying `<topic>/<partition>/<offset>` for deduplication.
    #[arg(
        long = "sink-http-idempotency-header",
        env = "PIPEWRIGHT_SINK_HTTP_IDEMPOTENCY_HEADER",
        default_value = "Idempotency-Key"
    )]
    pub http_idempotency_header: String,
    /// kafka: the topic to produce to (not one of the consumed topics).
    #[arg(long = "sink-kafka-topic", env = "PIPEWRIGHT_SINK_KAFKA_TOPIC")]
    pub kafka_topic: Option<String>,
    /// kafka: produce and commit the consumed offsets in Kafka transactions (exactly once for
    /// read_committed readers).
    #[arg(long = "sink-kafka-transactional", env = "PIPEWRIGHT_SINK_KAFKA_TRANSACTIONAL", default_value_t = false, action = clap::ArgAction::Set)]
    pub kafka_transactional: bool,
    /// kafka, transactional: the producer's `transactional.id`; must be stable per worker
    /// instance. Default `pipewright-<group id>-<group instance id, else $HOSTNAME>`.
    #[arg(
        long = "sink-kafka-transactional-id",
        env = "PIPEWRIGHT_SINK_KAFKA_TRANSACTIONAL_ID"
    )]
    pub kafka_transactional_id: Option<String>,
    /// postgres: the table, `table` or `schema.table` (lower-case SQL identifiers). The
    /// connection string comes from PIPEWRIGHT_DATABASE_URL_FILE (a mounted Secret key) or
    /// PIPEWRIGHT_DATABASE_URL, and is never logged.
    #[arg(long = "sink-postgres-table", env = "PIPEWRIGHT_SINK_POSTGRES_TABLE")]
    pub postgres_table: Option<String>,
    /// postgres: columns identifying a row (upsert); unset: every event inserts a row.
    #[arg(
        long = "sink-postgres-upsert-key",
        env = "PIPEWRIGHT_SINK_POSTGRES_UPSERT_KEY",
        value_delimiter = ','
    )]
    pub postgres_upsert_key: Vec<String>,
    /// postgres: the table of applied offsets (created when missing).
    #[arg(
        long = "sink-postgres-offsets-table",
        env = "PIPEWRIGHT_SINK_POSTGRES_OFFSETS_TABLE",
        default_value = "pipewright_offsets"
    )]
    pub postgres_offsets_table: String,
    /// discard: how long each delivery takes (a benchmarking aid: a slow handler that holds
    /// its slot of --concurrency; not offered by the EventConsumer API).
    #[arg(long = "sink-discard-delay", default_value = "0s")]
    pub discard_delay: humantime::Duration,
    /// discard: each delivery takes up to this much longer than --sink-discard-delay,
    /// uniformly distributed (a benchmarking aid).
    #[arg(long = "sink-discard-jitter", default_value = "0s")]
    pub discard_jitter: humantime::Duration,
}

impl SinkArgs {
    /// Checks the settings of the selected sink (before connecting anywhere).
    pub fn validate(&self) -> Result<(), Error> {
        match self.kind {
            SinkKind::Log | SinkKind::Discard => Ok(()),
            SinkKind::Http => self.http_config().map(|_| ()),
            SinkKind::Kafka => match self.kafka_topic.as_deref() {
                Some(t) if !t.is_empty() => Ok(()),
                _ => Err(Error::InvalidConfig {
                    field: "sink.kafka.topic",
                    reason: "required with --sink kafka".into(),
                }),
            },
            SinkKind::Postgres => {
                let table = self.postgres_table.as_deref().ok_or(Error::InvalidConfig {
                    field: "sink.postgres.table",
                    reason: "required with --sink postgres".into(),
                })?;
                Table::parse(table)?;
                Table::parse(&self.postgres_offsets_table)?;
                if let Some(bad) = self
                    .postgres_upsert_key
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

    fn http_config(&self) -> Result<HttpSinkConfig, Error> {
        let url = self.http_url.as_deref().ok_or(Error::InvalidConfig {
            field: "sink.http.url",
            reason: "required with --sink http".into(),
        })?;
        HttpSinkConfig::parse(
            url,
            &self.http_method,
            self.http_timeout.into(),
            &self.http_headers,
            self.http_headers_secret_dir.as_deref(),
            &self.http_idempotency_header,
        )
    }

    /// The transactional.id of a transactional kafka sink.
    fn transactional_id(&self, config: &ConsumeConfig) -> Result<String, Error> {
        if let Some(id) = self
            .kafka_transactional_id
            .as_ref()
            .filter(|s| !s.is_empty())
        {
            return Ok(id.clone());
        }
        let instance = config
            .consumer
            .group_instance_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
            .ok_or(Error::InvalidConfig {
                field: "sink.kafka.transactional",
                reason: "needs a stable instance name: set --group-instance-id (the pod name), \
                         HOSTNAME, or --sink-kafka-transactional-id"
                    .into(),
            })?;
        Ok(format!(
            "pipewright-{}-{instance}",
            config.consumer.group_id
        ))
    }

    /// Connects the selected sink; a transactional kafka sink also returns its transaction,
    /// for [`crate::consume::run_with_transaction`].
    pub async fn build(
        &self,
        config: &ConsumeConfig,
    ) -> Result<(Sink, Option<Arc<Transaction>>), Error> {
        self.validate()?;
        let group_id = config.consumer.group_id.as_str();
        let concurrency = config.pipeline.concurrency;
        match self.kind {
            SinkKind::Log => Ok((
                Sink::Log(LogSink {
                    payload: self.log_payload,
                }),
                None,
            )),
            SinkKind::Discard => Ok((
                Sink::Discard(DiscardSink::new(
                    self.discard_delay.into(),
                    self.discard_jitter.into(),
                )),
                None,
            )),
            SinkKind::Http => Ok((Sink::Http(HttpSink::new(self.http_config()?)?), None)),
            SinkKind::Kafka => {
                let topic = self.kafka_topic.as_deref().unwrap_or_default();
                if config.consumer.topics.iter().any(|t| t == topic) {
                    return Err(Error::InvalidConfig {
                        field: "sink.kafka.topic",
                        reason: "must not be one of the consumed topics".into(),
                    });
                }
                let kafka = &config.consumer.kafka;
                if self.kafka_transactional {
                    let id = self.transactional_id(config)?;
                    let sink =
                        KafkaSink::transactional(kafka, topic, config.compression, &id).await?;
                    let tx = sink.transaction();
                    Ok((Sink::Kafka(sink), tx))
                } else {
                    Ok((
                        Sink::Kafka(KafkaSink::new(kafka, topic, config.compression)?),
                        None,
                    ))
                }
            }
            SinkKind::Postgres => {
                let options = DatabaseUrl::from_env()?.connect_options()?;
                let sink_config = PostgresSinkConfig {
                    table: Table::parse(self.postgres_table.as_deref().unwrap_or_default())?,
                    upsert_key: self.postgres_upsert_key.clone(),
                    offsets_table: Table::parse(&self.postgres_offsets_table)?,
                    group_id: group_id.to_string(),
                    max_connections: concurrency as u32,
                };
                Ok((
                    Sink::Postgres(PostgresSink::connect(options, sink_config).await?),
                    None,
                ))
            }
        }
    }
}

impl ConsumeArgs {
    /// Validates everything and builds the consumer's configuration.
    pub fn into_config(self) -> Result<(ConsumeConfig, SinkArgs, DeclaredTypes), Error> {
        let types = declared_types(&self.event_types, self.event_schemas.as_deref())?;
        let config = ConsumeConfig {
            consumer: ConsumerConfig {
                kafka: self.kafka.settings()?,
                topics: self.topics,
                group_id: self.group_id,
                group_instance_id: self.group_instance_id.filter(|s| !s.is_empty()),
                initial_offset: self.initial_offset,
                commit_interval: self.commit_interval.into(),
                drain_timeout: self.drain_timeout.into(),
                revoke_timeout: self.revoke_timeout.into(),
            },
            pipeline: PipelineConfig {
                concurrency: self.concurrency,
                ordering: self.ordering,
                retry: RetryPolicy {
                    max_attempts: self.retry_max_attempts,
                    initial: self.retry_backoff_initial.into(),
                    max: self.retry_backoff_max.into(),
                },
                on_invalid: self.on_unknown_type,
                max_record_bytes: self.max_record_bytes,
                max_uncommitted_per_partition: self.max_uncommitted_per_partition,
                max_buffered_bytes_per_partition: self.max_buffered_bytes_per_partition,
            },
            dead_letter_topic: self.dead_letter_topic.filter(|s| !s.is_empty()),
            compression: self.compression,
        };
        config.validate()?;
        self.sink.validate()?;
        Ok((config, self.sink, types))
    }
}

/// Settings of `pipewright-worker outbox` (the `Outbox` spec, flattened).
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("destination").required(true).args(["topic", "topic_template"])))]
pub struct OutboxArgs {
    /// The outbox table, `table` or `schema.table` (lower-case SQL identifiers).
    #[arg(long, env = "PIPEWRIGHT_OUTBOX_TABLE", default_value = "outbox")]
    pub table: String,
    /// Topic every row goes to.
    #[arg(long, env = "PIPEWRIGHT_OUTBOX_TOPIC")]
    pub topic: Option<String>,
    /// Topic per row, `{aggregatetype}` replaced by the row's aggregatetype.
    #[arg(long, env = "PIPEWRIGHT_OUTBOX_TOPIC_TEMPLATE")]
    pub topic_template: Option<String>,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Wait between reads when the last one found nothing (10ms..1h).
    #[arg(long, env = "PIPEWRIGHT_OUTBOX_POLL_INTERVAL", default_value = "1s")]
    pub poll_interval: humantime::Duration,
    /// Rows per read (1..10000).
    #[arg(long, env = "PIPEWRIGHT_OUTBOX_BATCH_SIZE", default_value_t = 100)]
    pub batch_size: usize,
    /// Rows sent but not acknowledged and cleaned up, at most (batch size..100000).
    #[arg(long, env = "PIPEWRIGHT_OUTBOX_MAX_IN_FLIGHT", default_value_t = 1000)]
    pub max_in_flight: usize,
    /// Wake up on LISTEN/NOTIFY (polling stays the fallback).
    #[arg(long, env = "PIPEWRIGHT_OUTBOX_NOTIFY", default_value_t = true, action = clap::ArgAction::Set)]
    pub notify: bool,
    /// What happens to a published row.
    #[arg(
        long,
        env = "PIPEWRIGHT_OUTBOX_CLEANUP",
        value_enum,
        default_value = "delete"
    )]
    pub cleanup: CleanupPolicy,
    /// With mark-published: delete rows published longer ago than this.
    #[arg(long, env = "PIPEWRIGHT_OUTBOX_RETENTION")]
    pub retention: Option<humantime::Duration>,
    /// How often a standby replica tries to become the publisher (10ms..60s).
    #[arg(
        long,
        env = "PIPEWRIGHT_OUTBOX_LOCK_RETRY_INTERVAL",
        default_value = "1s"
    )]
    pub lock_retry_interval: humantime::Duration,
    /// How long a graceful shutdown waits for the rows in flight.
    #[arg(long, env = "PIPEWRIGHT_SHUTDOWN_GRACE", default_value = "30s")]
    pub shutdown_grace: humantime::Duration,
}

/// What happens to a published row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CleanupPolicy {
    Delete,
    MarkPublished,
}

impl OutboxArgs {
    /// Validates everything and builds the poller's configuration.
    pub fn into_config(self) -> Result<PollerConfig, Error> {
        let table = Table::parse(&self.table)?;
        let destination = match (self.topic, self.topic_template) {
            (Some(topic), None) => Destination::Topic(topic),
            (None, Some(template)) => Destination::Template(template),
            _ => {
                return Err(Error::InvalidConfig {
                    field: "topic",
                    reason: "exactly one of topic, topicTemplate must be set".into(),
                });
            }
        };
        let cleanup = match (self.cleanup, self.retention) {
            (CleanupPolicy::Delete, None) => Cleanup::Delete,
            (CleanupPolicy::Delete, Some(_)) => {
                return Err(Error::InvalidConfig {
                    field: "cleanup.retention",
                    reason: "applies only to the mark-published policy".into(),
                });
            }
            (CleanupPolicy::MarkPublished, retention) => Cleanup::MarkPublished {
                retention: retention.map(Duration::from),
            },
        };
        let mut config =
            PollerConfig::new(table, destination, self.kafka.bootstrap_servers.as_str());
        config.kafka = self.kafka.settings()?;
        config.poll_interval = self.poll_interval.into();
        config.batch_size = self.batch_size;
        config.max_in_flight = self.max_in_flight;
        config.notify = self.notify;
        config.cleanup = cleanup;
        config.lock_retry_interval = self.lock_retry_interval.into();
        config.shutdown_grace = self.shutdown_grace.into();
        config.validate()?;
        Ok(config)
    }
}

/// A database URL. `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrl(<redacted>)")
    }
}

impl DatabaseUrl {
    /// From `PIPEWRIGHT_DATABASE_URL_FILE` (preferred) or `PIPEWRIGHT_DATABASE_URL`.
    pub fn from_env() -> Result<DatabaseUrl, Error> {
        DatabaseUrl::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`DatabaseUrl::from_env`], with a variable lookup (for tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<DatabaseUrl, Error> {
        if let Some(path) = lookup(DATABASE_URL_FILE_ENV).filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            let text = std::fs::read_to_string(&path)
                .map_err(|source| Error::DatabaseUrlFile { path, source })?;
            return Ok(DatabaseUrl(text.trim().to_string()));
        }
        lookup(DATABASE_URL_ENV)
            .filter(|u| !u.is_empty())
            .map(DatabaseUrl)
            .ok_or(Error::DatabaseUrlMissing)
    }

    /// Parses the URL into connection options.
    pub fn connect_options(&self) -> Result<PgConnectOptions, Error> {
        self.0.parse().map_err(Error::DatabaseUrlInvalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<PollerConfig, String> {
        let mut argv = vec![
            "pipewright-worker",
            "outbox",
            "--kafka-bootstrap-servers",
            "k:9092",
        ];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Command::Outbox(a) = cli.command else {
            panic!("not the outbox command")
        };
        a.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn hostile_table_names_are_rejected_as_invalid_configuration() {
        let err = args(&["--topic", "t", "--table", "outbox; DROP TABLE users"]).unwrap_err();
        assert!(err.contains("invalid table name"), "{err}");
        let err = args(&["--topic", "t", "--table", "x\"; --"]).unwrap_err();
        assert!(err.contains("invalid table name"), "{err}");
    }

    #[test]
    fn exactly_one_destination_is_required() {
        assert!(args(&[]).is_err());
        assert!(args(&["--topic", "t", "--topic-template", "a.{aggregatetype}"]).is_err());
        assert!(args(&["--topic-template", "a.{aggregatetype}"]).is_ok());
    }

    #[test]
    fn retention_needs_mark_published_and_kafka_keys_are_allow_listed() {
        let err = args(&["--topic", "t", "--retention", "1h"]).unwrap_err();
        assert!(err.contains("retention"), "{err}");
        let ok = args(&[
            "--topic",
            "t",
            "--cleanup",
            "mark-published",
            "--retention",
            "168h",
        ]);
        assert!(ok.is_ok(), "{ok:?}");
        let err =
            args(&["--topic", "t", "--kafka-config", "enable.idempotence=false"]).unwrap_err();
        assert!(err.contains("not an allowed key"), "{err}");
    }

    #[test]
    fn the_database_url_comes_from_a_file_first_and_is_never_shown() {
        let dir = std::env::temp_dir().join(format!("pw-dsn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("dsn");
        std::fs::write(&file, "postgres://u:s3cret@db/app\n").unwrap();
        let url = DatabaseUrl::from_lookup(|n| match n {
            DATABASE_URL_FILE_ENV => Some(file.display().to_string()),
            DATABASE_URL_ENV => Some("postgres://other@x/y".into()),
            _ => None,
        })
        .unwrap();
        assert!(url.connect_options().is_ok());
        assert!(!format!("{url:?}").contains("s3cret"));
        let missing = DatabaseUrl::from_lookup(|_| None).unwrap_err();
        assert!(missing.to_string().contains(DATABASE_URL_FILE_ENV));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
