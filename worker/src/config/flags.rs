//! Flags for running a worker by hand (tests, benchmarks, a shell). They are not a second
//! definition of the configuration: each set flag becomes one field of a JSON document shaped
//! like the configuration file, which is then read by the same [`worker_config::from_json`]
//! as the operator's file. Defaults, spellings (`deadLetter`, `markPublished`), required
//! fields and unknown values are the types' (`pipewright_crds::worker_config`); a flag left
//! unset leaves its field to the type's default. The test
//! `every_field_of_the_configuration_is_reachable_from_flags` keeps the flags complete.

use std::path::PathBuf;

use clap::Args;
use pipewright_crds::worker_config;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::Error;

/// A JSON document built one field path at a time.
#[derive(Debug, Default)]
struct Doc(Map<String, Value>);

impl Doc {
    /// Sets `path` (dot-separated) to `value` when it is `Some`.
    fn set<T: Serialize>(&mut self, path: &str, value: Option<T>) {
        let Some(value) = value else { return };
        let value = serde_json::to_value(value).expect("flag values serialise to JSON");
        let mut map = &mut self.0;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                map.insert(part.to_string(), value);
                return;
            }
            map = map
                .entry(part)
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("flag paths do not overlap");
        }
    }

    /// Sets `path` to a list when it is not empty.
    fn set_list<T: Serialize>(&mut self, path: &str, values: &[T]) {
        self.set(path, (!values.is_empty()).then_some(values));
    }

    fn read<T: serde::de::DeserializeOwned>(self) -> Result<T, Error> {
        let text = Value::Object(self.0).to_string();
        worker_config::from_json(&text).map_err(Error::InvalidConfigFile)
    }
}

fn duration(d: Option<humantime::Duration>) -> Option<String> {
    d.map(|d| d.to_string())
}

/// `name=value` (a map entry given as a flag).
fn pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not name=value"))
}

/// The Kafka connection (shared by the modes): `kafka.*`.
#[derive(Debug, Args)]
pub struct KafkaFlags {
    /// kafka.bootstrapServers: `host:port`, comma-separated.
    #[arg(
        long = "kafka-bootstrap-servers",
        value_delimiter = ',',
        required_unless_present = "config"
    )]
    pub bootstrap_servers: Vec<String>,
    /// kafka.config: an extra librdkafka setting, `key=value` (repeat the flag; allow-listed
    /// tuning keys only).
    #[arg(id = "kafka_config", long = "kafka-config", value_parser = pair)]
    pub config: Vec<(String, String)>,
    /// kafka.secretDir: directory of the mounted `kafka.secretRef` Secret (one file per
    /// librdkafka security setting).
    #[arg(long = "kafka-secret-dir")]
    pub secret_dir: Option<PathBuf>,
    /// kafka.security: a security setting that is not secret, `key=value` (repeat the flag;
    /// e.g. `security.protocol=SASL_SSL`).
    #[arg(id = "kafka_security", long = "kafka-security", value_parser = pair)]
    pub security: Vec<(String, String)>,
    /// kafka.secretFiles: a security setting read from a file, `key=path` (repeat the flag;
    /// e.g. `sasl.password=/var/run/secrets/kafka/password`).
    #[arg(id = "kafka_secret_file", long = "kafka-secret-file", value_parser = pair)]
    pub secret_files: Vec<(String, String)>,
}

impl KafkaFlags {
    fn put(&self, doc: &mut Doc) {
        doc.set_list("kafka.bootstrapServers", &self.bootstrap_servers);
        if !self.config.is_empty() {
            let map: std::collections::BTreeMap<_, _> = self.config.iter().cloned().collect();
            doc.set("kafka.config", Some(map));
        }
        doc.set("kafka.secretDir", self.secret_dir.as_ref());
        if !self.security.is_empty() {
            let map: std::collections::BTreeMap<_, _> = self.security.iter().cloned().collect();
            doc.set("kafka.security", Some(map));
        }
        if !self.secret_files.is_empty() {
            let map: std::collections::BTreeMap<_, _> = self.secret_files.iter().cloned().collect();
            doc.set("kafka.secretFiles", Some(map));
        }
    }
}

/// The flags of `pipewright-worker consume` (the [`worker_config::Consume`] fields).
#[derive(Debug, Args)]
pub struct ConsumeFlags {
    /// topics: the topics to consume, comma-separated.
    #[arg(long, value_delimiter = ',', required_unless_present = "config")]
    pub topics: Vec<String>,
    /// groupId: the Kafka consumer group.
    #[arg(long, required_unless_present = "config")]
    pub group_id: Option<String>,
    /// groupInstanceId: static group membership, for an instance that comes back under the
    /// same name. Unset: dynamic membership.
    #[arg(long)]
    pub group_instance_id: Option<String>,
    /// initialOffset: `earliest` (default) or `latest`.
    #[arg(long)]
    pub initial_offset: Option<String>,
    /// events.types[].name: declared event types, comma-separated. Unset: every JSON event
    /// with a string `event_type` is accepted.
    #[arg(long, value_delimiter = ',')]
    pub event_types: Vec<String>,
    /// events.types[].schema: JSON object of event type to `{"inline": <schema>}` or
    /// `{"file": "<path>"}`; each type in it is declared too.
    #[arg(long)]
    pub event_schemas: Option<String>,
    /// events.onUnknownType: `deadLetter` (default), `skip` or `fail`, for every record that
    /// is not a valid event.
    #[arg(long)]
    pub on_unknown_type: Option<String>,
    /// events.typeFrom.header: read the event type from this record header (e.g. `type`,
    /// `ce_type`) instead of the value's `event_type`.
    #[arg(long, conflicts_with = "event_type_field")]
    pub event_type_header: Option<String>,
    /// events.typeFrom.field: read the event type from this top-level field of the value.
    #[arg(long)]
    pub event_type_field: Option<String>,
    /// events.format: `json` (default: each value a JSON object, checked), `raw` (values
    /// delivered as they are, whatever their bytes; not with the postgres sink) or
    /// `cloudEvents` (CloudEvents in Kafka's binding, binary or structured).
    #[arg(long)]
    pub event_format: Option<String>,
    /// processing.concurrency: records running at most (1..1024; default 16).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// processing.ordering: `key` (default), `partition` or `none`.
    #[arg(long)]
    pub ordering: Option<String>,
    /// processing.retry.maxAttempts: delivery attempts per record (1..100; default 5).
    #[arg(long)]
    pub retry_max_attempts: Option<u32>,
    /// processing.retry.backoff.initial: wait before the first retry (default 100ms).
    #[arg(long)]
    pub retry_backoff_initial: Option<humantime::Duration>,
    /// processing.retry.backoff.max: longest wait between attempts (default 30s).
    #[arg(long)]
    pub retry_backoff_max: Option<humantime::Duration>,
    /// processing.deadLetterTopic. Unset: a record that fails for good stops the worker.
    #[arg(long)]
    pub dead_letter_topic: Option<String>,
    /// processing.deadLetterHttp.url: POST such records to this URL instead of a topic.
    #[arg(long)]
    pub dead_letter_url: Option<String>,
    /// processing.deadLetterHttp.timeout: how long to wait for its answer (default 10s).
    #[arg(long)]
    pub dead_letter_timeout: Option<humantime::Duration>,
    /// processing.deadLetterHttp.headersSecretDir: a directory whose every file is a header
    /// sent with each dead letter (name = file name).
    #[arg(long)]
    pub dead_letter_headers_secret_dir: Option<PathBuf>,
    /// processing.drainTimeout: how long a shutdown waits for records in flight (default 30s).
    #[arg(long)]
    pub drain_timeout: Option<humantime::Duration>,
    /// processing.commitInterval: how often offsets (or a transaction) are committed
    /// (default 1s).
    #[arg(long)]
    pub commit_interval: Option<humantime::Duration>,
    /// processing.maxUncommittedPerPartition: offsets taken and not committed, at most, per
    /// partition (a crash delivers at most this many again).
    #[arg(long)]
    pub max_uncommitted_per_partition: Option<u64>,
    /// processing.maxBufferedBytesPerPartition: bytes of records taken and not finished, at
    /// most, per partition.
    #[arg(long)]
    pub max_buffered_bytes_per_partition: Option<usize>,
    /// processing.revokeTimeout: how long a revocation waits for running records (default
    /// 10s).
    #[arg(long)]
    pub revoke_timeout: Option<humantime::Duration>,
    /// processing.maxRecordBytes: largest record value accepted.
    #[arg(long)]
    pub max_record_bytes: Option<usize>,
    /// processing.compression: of produced records (`none`, `gzip`, `snappy`, `lz4`, `zstd`).
    #[arg(long)]
    pub compression: Option<String>,
    #[command(flatten)]
    pub kafka: KafkaFlags,
    #[command(flatten)]
    pub sink: SinkFlags,
}

impl ConsumeFlags {
    /// The configuration these flags describe.
    pub fn read(&self) -> Result<worker_config::Consume, Error> {
        let mut doc = Doc::default();
        self.kafka.put(&mut doc);
        doc.set_list("topics", &self.topics);
        doc.set("groupId", self.group_id.as_ref());
        doc.set("groupInstanceId", self.group_instance_id.as_ref());
        doc.set("initialOffset", self.initial_offset.as_ref());
        let mut types: Vec<Value> = self
            .event_types
            .iter()
            .map(|name| serde_json::json!({ "name": name }))
            .collect();
        if let Some(text) = &self.event_schemas {
            let schemas: Map<String, Value> =
                serde_json::from_str(text).map_err(|e| Error::InvalidConfig {
                    field: "events.types[].schema",
                    reason: format!(
                        "--event-schemas is not a JSON object of event type -> schema: {e}"
                    ),
                })?;
            for (name, schema) in schemas {
                types.retain(|t| t["name"] != name.as_str());
                types.push(serde_json::json!({ "name": name, "schema": schema }));
            }
        }
        doc.set_list("events.types", &types);
        doc.set("events.onUnknownType", self.on_unknown_type.as_ref());
        doc.set("events.typeFrom.header", self.event_type_header.as_ref());
        doc.set("events.typeFrom.field", self.event_type_field.as_ref());
        doc.set("events.format", self.event_format.as_ref());
        doc.set("processing.concurrency", self.concurrency);
        doc.set("processing.ordering", self.ordering.as_ref());
        doc.set("processing.retry.maxAttempts", self.retry_max_attempts);
        doc.set(
            "processing.retry.backoff.initial",
            duration(self.retry_backoff_initial),
        );
        doc.set(
            "processing.retry.backoff.max",
            duration(self.retry_backoff_max),
        );
        doc.set(
            "processing.deadLetterTopic",
            self.dead_letter_topic.as_ref(),
        );
        doc.set(
            "processing.deadLetterHttp.url",
            self.dead_letter_url.as_ref(),
        );
        doc.set(
            "processing.deadLetterHttp.timeout",
            duration(self.dead_letter_timeout),
        );
        doc.set(
            "processing.deadLetterHttp.headersSecretDir",
            self.dead_letter_headers_secret_dir.as_ref(),
        );
        doc.set("processing.drainTimeout", duration(self.drain_timeout));
        doc.set("processing.commitInterval", duration(self.commit_interval));
        doc.set("processing.revokeTimeout", duration(self.revoke_timeout));
        doc.set(
            "processing.maxUncommittedPerPartition",
            self.max_uncommitted_per_partition,
        );
        doc.set(
            "processing.maxBufferedBytesPerPartition",
            self.max_buffered_bytes_per_partition,
        );
        doc.set("processing.maxRecordBytes", self.max_record_bytes);
        doc.set("processing.compression", self.compression.as_ref());
        self.sink.put(&mut doc);
        doc.read()
    }
}

/// The sink (`sink.*`): `--sink` selects one; only the flags of that sink apply.
#[derive(Debug, Args)]
pub struct SinkFlags {
    /// sink: `log`, `http`, `kafka`, `postgres`, or `discard` (accept and drop each event,
    /// after decoding and checking it: benchmarks and dry runs; not in the EventConsumer API).
    #[arg(long = "sink", required_unless_present = "config")]
    pub kind: Option<String>,
    /// sink.log.payload: include the event's JSON in the line (default true).
    #[arg(long = "sink-log-payload")]
    pub log_payload: Option<bool>,
    /// sink.http.url: the absolute http(s) URL each event is sent to.
    #[arg(long = "sink-http-url")]
    pub http_url: Option<String>,
    /// sink.http.method: `POST` (default) or `PUT`.
    #[arg(long = "sink-http-method")]
    pub http_method: Option<String>,
    /// sink.http.timeout: how long to wait for an answer (1ms..5m; default 10s).
    #[arg(long = "sink-http-timeout")]
    pub http_timeout: Option<humantime::Duration>,
    /// sink.http.headers: an extra header, `name=value` (repeat the flag; not credentials).
    #[arg(long = "sink-http-headers", value_parser = pair)]
    pub http_headers: Vec<(String, String)>,
    /// sink.http.headersSecretDir: directory of the mounted headers Secret (each file a
    /// header, name = file name; never logged).
    #[arg(long = "sink-http-headers-secret-dir")]
    pub http_headers_secret_dir: Option<PathBuf>,
    /// sink.http.idempotencyHeader: the header carrying `<topic>/<partition>/<offset>`.
    #[arg(long = "sink-http-idempotency-header")]
    pub http_idempotency_header: Option<String>,
    /// sink.http.contentMode: `binary` (default: `ce-*` headers, the value as the body) or
    /// `structured` (`application/cloudevents+json`).
    #[arg(long = "sink-http-content-mode")]
    pub http_content_mode: Option<String>,
    /// sink.http.ceSource: the CloudEvents `source` (default `/kafka/<topic>`).
    #[arg(long = "sink-http-ce-source")]
    pub http_ce_source: Option<String>,
    /// sink.http.ceType: the CloudEvents `type` of every event (default: the event's type).
    #[arg(long = "sink-http-ce-type")]
    pub http_ce_type: Option<String>,
    /// sink.http.forwardHeaders: a record header copied to the request (repeat the flag).
    #[arg(long = "sink-http-forward-headers")]
    pub http_forward_headers: Vec<String>,
    /// sink.kafka.topic: the topic to produce to.
    #[arg(long = "sink-kafka-topic")]
    pub kafka_topic: Option<String>,
    /// sink.kafka.transactional: produce and commit offsets in Kafka transactions.
    #[arg(long = "sink-kafka-transactional")]
    pub kafka_transactional: Option<bool>,
    /// sink.kafka.transactionalId: the producer's `transactional.id` (stable per instance).
    #[arg(long = "sink-kafka-transactional-id")]
    pub kafka_transactional_id: Option<String>,
    /// sink.postgres.dsnFile: file holding the database URL. Unset: $PIPEWRIGHT_DATABASE_URL.
    #[arg(long = "sink-postgres-dsn-file")]
    pub postgres_dsn_file: Option<PathBuf>,
    /// sink.postgres.table: `table` or `schema.table`.
    #[arg(long = "sink-postgres-table")]
    pub postgres_table: Option<String>,
    /// sink.postgres.upsertKey: columns identifying a row, comma-separated.
    #[arg(long = "sink-postgres-upsert-key", value_delimiter = ',')]
    pub postgres_upsert_key: Vec<String>,
    /// sink.postgres.offsetsTable: the table of applied offsets.
    #[arg(long = "sink-postgres-offsets-table")]
    pub postgres_offsets_table: Option<String>,
    /// sink.discard.delay: how long each delivery takes (a benchmarking aid: a slow handler
    /// that holds its slot of --concurrency; default 0s).
    #[arg(long = "sink-discard-delay")]
    pub discard_delay: Option<humantime::Duration>,
    /// sink.discard.jitter: each delivery takes up to this much longer than
    /// --sink-discard-delay, uniformly distributed over the records (a function of the
    /// record's partition and offset: the same record always takes the same time; default 0s).
    #[arg(long = "sink-discard-jitter")]
    pub discard_jitter: Option<humantime::Duration>,
}

impl SinkFlags {
    fn put(&self, doc: &mut Doc) {
        let Some(kind) = &self.kind else { return };
        // The selected sink's object, present even with no settings (`{"discard": {}}`).
        doc.set(&format!("sink.{kind}"), Some(Map::new()));
        match kind.as_str() {
            "log" => doc.set("sink.log.payload", self.log_payload),
            "http" => {
                doc.set("sink.http.url", self.http_url.as_ref());
                doc.set("sink.http.method", self.http_method.as_ref());
                doc.set("sink.http.timeout", duration(self.http_timeout));
                if !self.http_headers.is_empty() {
                    let map: std::collections::BTreeMap<_, _> =
                        self.http_headers.iter().cloned().collect();
                    doc.set("sink.http.headers", Some(map));
                }
                doc.set(
                    "sink.http.headersSecretDir",
                    self.http_headers_secret_dir.as_ref(),
                );
                doc.set(
                    "sink.http.idempotencyHeader",
                    self.http_idempotency_header.as_ref(),
                );
                doc.set("sink.http.contentMode", self.http_content_mode.as_ref());
                doc.set("sink.http.ceSource", self.http_ce_source.as_ref());
                doc.set("sink.http.ceType", self.http_ce_type.as_ref());
                doc.set_list("sink.http.forwardHeaders", &self.http_forward_headers);
            }
            "kafka" => {
                doc.set("sink.kafka.topic", self.kafka_topic.as_ref());
                doc.set("sink.kafka.transactional", self.kafka_transactional);
                doc.set(
                    "sink.kafka.transactionalId",
                    self.kafka_transactional_id.as_ref(),
                );
            }
            "postgres" => {
                doc.set("sink.postgres.dsnFile", self.postgres_dsn_file.as_ref());
                doc.set("sink.postgres.table", self.postgres_table.as_ref());
                doc.set_list("sink.postgres.upsertKey", &self.postgres_upsert_key);
                doc.set(
                    "sink.postgres.offsetsTable",
                    self.postgres_offsets_table.as_ref(),
                );
            }
            "discard" => {
                doc.set("sink.discard.delay", duration(self.discard_delay));
                doc.set("sink.discard.jitter", duration(self.discard_jitter));
            }
            // An unknown sink is refused by the type.
            _ => {}
        }
    }
}

/// The flags of `pipewright-worker outbox` (the [`worker_config::Outbox`] fields).
#[derive(Debug, Args)]
pub struct OutboxFlags {
    /// database.urlFile: file holding the database URL. Unset: $PIPEWRIGHT_DATABASE_URL.
    #[arg(long)]
    pub database_url_file: Option<PathBuf>,
    /// table: the outbox table, `table` or `schema.table` (default `outbox`).
    #[arg(long)]
    pub table: Option<String>,
    /// topic: the topic every row goes to.
    #[arg(long)]
    pub topic: Option<String>,
    /// topicTemplate: topic per row, `{aggregatetype}` replaced by the row's aggregatetype.
    #[arg(long)]
    pub topic_template: Option<String>,
    #[command(flatten)]
    pub kafka: KafkaFlags,
    /// poll.interval: wait between reads when the last one found nothing (default 1s).
    #[arg(long)]
    pub poll_interval: Option<humantime::Duration>,
    /// poll.batchSize: rows per read (1..10000; default 100).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// poll.maxInFlight: rows sent and not acknowledged, at most (default 1000).
    #[arg(long)]
    pub max_in_flight: Option<usize>,
    /// poll.notify: wake up on LISTEN/NOTIFY (default true).
    #[arg(long)]
    pub notify: Option<bool>,
    /// cleanup.policy: `delete` (default) or `markPublished`.
    #[arg(long)]
    pub cleanup: Option<String>,
    /// cleanup.retention: with markPublished, delete rows published longer ago than this.
    #[arg(long)]
    pub retention: Option<humantime::Duration>,
    /// lockRetryInterval: how often a standby tries to become the publisher (default 1s).
    #[arg(long)]
    pub lock_retry_interval: Option<humantime::Duration>,
    /// shutdownGrace: how long a graceful shutdown waits for rows in flight (default 30s).
    #[arg(long)]
    pub shutdown_grace: Option<humantime::Duration>,
}

impl OutboxFlags {
    /// The configuration these flags describe.
    pub fn read(&self) -> Result<worker_config::Outbox, Error> {
        let mut doc = Doc::default();
        doc.set("database.urlFile", self.database_url_file.as_ref());
        doc.set("table", self.table.as_ref());
        doc.set("topic", self.topic.as_ref());
        doc.set("topicTemplate", self.topic_template.as_ref());
        self.kafka.put(&mut doc);
        doc.set("poll.interval", duration(self.poll_interval));
        doc.set("poll.batchSize", self.batch_size);
        doc.set("poll.maxInFlight", self.max_in_flight);
        doc.set("poll.notify", self.notify);
        doc.set("cleanup.policy", self.cleanup.as_ref());
        doc.set("cleanup.retention", duration(self.retention));
        doc.set("lockRetryInterval", duration(self.lock_retry_interval));
        doc.set("shutdownGrace", duration(self.shutdown_grace));
        doc.read()
    }
}
