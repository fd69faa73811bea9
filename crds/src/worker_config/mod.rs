//! The worker's configuration file: the one contract between the operator and
//! `pipewright-worker`. The operator renders a resource's spec into a [`Consume`] or an
//! [`Outbox`], writes it as JSON into the worker's ConfigMap (key [`CONFIG_FILE`], mounted
//! read-only at [`CONFIG_DIR`]) and starts `pipewright-worker <mode> --config <path>`; the
//! worker reads it with [`from_json`] and validates it. Hand-run flags build the same types.
//!
//! The types decide the encoding: field names are camelCase and follow the CRD's paths
//! (`sink.http.headers`, `processing.retry.backoff.initial`), durations are humantime strings
//! (`250ms`, `30s`, `1h 30m`), lists are JSON arrays and maps JSON objects. Every struct denies
//! unknown fields, so a field one side renamed is an error naming its path, not a silent
//! default. Secrets stay references: the file carries the paths of mounted Secret files and
//! directories, never a value.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::event_consumer::{
    ContentMode, EventFormat, EventTypeFrom, HttpMethod, InitialOffset, Ordering, RAW_EVENT_TYPE,
    UnknownTypePolicy,
};
pub use crate::outbox::CleanupPolicy;

/// The ConfigMap key (and file name) of the configuration.
pub const CONFIG_FILE: &str = "worker.json";
/// Where the operator mounts the ConfigMap holding [`CONFIG_FILE`].
pub const CONFIG_DIR: &str = "/etc/pipewright/config";

/// Default of [`Processing::max_uncommitted_per_partition`].
pub const DEFAULT_MAX_UNCOMMITTED_PER_PARTITION: u64 = 10_000;
/// Default of [`Processing::max_buffered_bytes_per_partition`] (16 MiB).
pub const DEFAULT_MAX_BUFFERED_BYTES_PER_PARTITION: usize = 16 * 1024 * 1024;
/// Default of [`Processing::revoke_timeout`].
pub const DEFAULT_REVOKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A configuration file the worker cannot read: the field path and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The field path, e.g. `sink.http.headers` (`.` for the document itself).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for FileError {}

/// Parses a configuration file, naming the field path of any error.
pub fn from_json<T: DeserializeOwned>(text: &str) -> Result<T, FileError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| FileError {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// Renders a configuration file (pretty JSON; stable: maps are sorted).
pub fn to_json<T: Serialize>(config: &T) -> String {
    // The types hold only strings, numbers, maps with string keys and JSON values.
    serde_json::to_string_pretty(config).expect("worker configuration serialises to JSON")
}

/// The field paths of a rendered configuration: every leaf, with `[]` for list items and the
/// keys of free-form maps (`kafka.config`, `sink.http.headers`, schemas) not descended into.
/// docs/worker-config.md lists exactly these for a configuration that sets every field.
pub fn field_paths(value: &serde_json::Value) -> BTreeSet<String> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut BTreeSet<String>) {
        const OPAQUE: &[&str] = &[
            "kafka.config",
            "kafka.security",
            "kafka.secretFiles",
            "sink.http.headers",
            "inline",
        ];
        let opaque = OPAQUE.iter().any(|o| prefix.ends_with(o));
        match value {
            serde_json::Value::Object(map) if !opaque && !map.is_empty() => {
                for (k, v) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, v, out);
                }
            }
            serde_json::Value::Array(items) if !items.is_empty() => {
                for item in items {
                    walk(&format!("{prefix}[]"), item, out);
                }
            }
            _ => {
                out.insert(prefix.to_string());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk("", value, &mut out);
    out
}

/// Durations as humantime strings (`250ms`, `1h 30m`).
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration (like 250ms, 1h 30m): {e}"
            ))
        })
    }

    /// The same for an optional duration.
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(with = "super")] Duration);
            Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
        }
    }
}

/// `pipewright-worker consume`: an `EventConsumer`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Consume {
    /// The Kafka cluster (`spec.kafka`).
    pub kafka: Kafka,
    /// The topics to consume (`spec.topics`).
    pub topics: Vec<String>,
    /// The consumer group (`spec.groupId`, default `<namespace>.<name>`).
    pub group_id: String,
    /// Static group membership (`group.instance.id`), for a hand-run instance that comes back
    /// under the same name. The operator never sets it: its pods are dynamic members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_instance_id: Option<String>,
    /// Where a new consumer group starts in each partition.
    #[serde(default)]
    pub initial_offset: InitialOffset,
    /// The declared event types (`spec.events`).
    #[serde(default)]
    pub events: Events,
    /// How records are processed (`spec.processing`, plus worker tuning).
    #[serde(default)]
    pub processing: Processing,
    /// Where events are delivered (`spec.sink`).
    pub sink: Sink,
}

/// The Kafka connection (both modes).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Kafka {
    /// Bootstrap servers, `host:port`.
    pub bootstrap_servers: Vec<String>,
    /// Extra librdkafka settings (allow-listed tuning keys only; values may hold any text).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// Directory of the mounted `kafka.secretRef` Secret: one file per librdkafka security
    /// setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_dir: Option<PathBuf>,
    /// Security settings that are not secret (`security.protocol`, `sasl.mechanism`, a
    /// `sasl.username` given as text), from the resource's `kafka.tls`/`kafka.sasl`. Keys:
    /// [`crate::common::KAFKA_SECRET_KEYS`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub security: BTreeMap<String, String>,
    /// Security settings read from files: librdkafka key → the file of a mounted Secret key
    /// (`ssl.ca.pem`, `ssl.certificate.pem`, `ssl.key.pem`, `sasl.username`, `sasl.password`),
    /// from the resource's `kafka.tls`/`kafka.sasl`. Keys: [`crate::common::KAFKA_SECRET_KEYS`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_files: BTreeMap<String, PathBuf>,
}

/// The declared event types. No types: every JSON event with a string `event_type` is
/// accepted.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Events {
    /// `json` (default) or `raw` (values delivered as they are). Left out when `json`, as
    /// every field added with a default is: a new operator renders the configurations of
    /// resources that do not use it as before, and rolls no pod.
    #[serde(default, skip_serializing_if = "is_default")]
    pub format: EventFormat,
    /// The declared types.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<EventType>,
    /// What happens to a record that is not a valid event.
    #[serde(default)]
    pub on_unknown_type: UnknownTypePolicy,
    /// Where a record's event type is read (`spec.events.typeFrom`). Unset: `event_type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_from: Option<EventTypeFrom>,
}

/// One declared event type.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventType {
    /// The `event_type` value.
    pub name: String,
    /// The JSON Schema its events must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<SchemaSource>,
}

/// Where a JSON Schema comes from.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum SchemaSource {
    /// The schema document itself.
    Inline(serde_json::Value),
    /// A file holding the schema as JSON (a mounted ConfigMap key).
    File(PathBuf),
}

/// How records are processed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Processing {
    /// Records running at most (1..1024).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Which records are delivered in order.
    #[serde(default)]
    pub ordering: Ordering,
    /// Delivery attempts and the wait between them.
    #[serde(default)]
    pub retry: Retry,
    /// Topic for records that fail every attempt or are not valid events. Unset: such a
    /// record stops the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// An HTTP destination for those records instead of a topic (at most one of the two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_http: Option<DeadLetterHttp>,
    /// How long a shutdown waits for the records in flight before committing.
    #[serde(default = "thirty_seconds", with = "duration")]
    pub drain_timeout: Duration,
    /// How often finished offsets (or a transactional sink's transaction) are committed.
    #[serde(default = "one_second", with = "duration")]
    pub commit_interval: Duration,
    /// How long a partition revocation waits for its running records.
    #[serde(default = "default_revoke_timeout", with = "duration")]
    pub revoke_timeout: Duration,
    /// Per partition: offsets taken and not covered by an acknowledged commit, at most.
    #[serde(default = "default_max_uncommitted")]
    pub max_uncommitted_per_partition: u64,
    /// Per partition: bytes (key + value) of the records taken and not finished, at most.
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes_per_partition: usize,
    /// Largest record value accepted, bytes; larger ones are invalid events.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Compression of produced records (dead-letter topic, kafka sink).
    #[serde(default)]
    pub compression: Compression,
}

impl Default for Processing {
    fn default() -> Self {
        Processing {
            concurrency: default_concurrency(),
            ordering: Ordering::default(),
            retry: Retry::default(),
            dead_letter_topic: None,
            dead_letter_http: None,
            drain_timeout: thirty_seconds(),
            commit_interval: one_second(),
            revoke_timeout: default_revoke_timeout(),
            max_uncommitted_per_partition: default_max_uncommitted(),
            max_buffered_bytes_per_partition: default_max_buffered_bytes(),
            max_record_bytes: default_max_record_bytes(),
            compression: Compression::default(),
        }
    }
}

/// Delivery attempts.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// Attempts per record, the first included (1..100).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The wait between attempts.
    #[serde(default)]
    pub backoff: Backoff,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: default_max_attempts(),
            backoff: Backoff::default(),
        }
    }
}

/// Exponential backoff with jitter.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backoff {
    /// Wait before the first retry (doubles per attempt).
    #[serde(default = "hundred_millis", with = "duration")]
    pub initial: Duration,
    /// Longest wait between two attempts.
    #[serde(default = "thirty_seconds", with = "duration")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: hundred_millis(),
            max: thirty_seconds(),
        }
    }
}

/// Compression of produced records.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Compression {
    /// None.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    #[default]
    Zstd,
}

/// Where events are delivered: exactly one sink.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum Sink {
    /// One log line per event.
    Log(LogSink),
    /// One HTTP request per event (a CloudEvent in binary content mode).
    Http(HttpSink),
    /// Produce each event to a Kafka topic.
    Kafka(KafkaSink),
    /// One row per event in a PostgreSQL table, offsets in the same transaction.
    Postgres(PostgresSink),
    /// Accept and drop each event (worker only: benchmarks and dry runs; not in the API).
    Discard(DiscardSink),
}

/// The log sink.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogSink {
    /// Include the event's JSON in the line.
    #[serde(default = "yes")]
    pub payload: bool,
}

/// The HTTP destination of dead letters.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeadLetterHttp {
    /// The absolute http(s) URL each dead letter is POSTed to.
    pub url: String,
    /// How long to wait for an answer (1ms..5m).
    #[serde(default = "ten_seconds", with = "duration")]
    pub timeout: Duration,
    /// Directory of the mounted `headersSecretRef` Secret: each file is a header (name = file
    /// name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_secret_dir: Option<PathBuf>,
}

/// The HTTP sink.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSink {
    /// The absolute http(s) URL each event is sent to.
    pub url: String,
    /// `POST` or `PUT`.
    #[serde(default)]
    pub method: HttpMethod,
    /// How long to wait for an answer (1ms..5m).
    #[serde(default = "ten_seconds", with = "duration")]
    pub timeout: Duration,
    /// Extra headers, name to value (not credentials).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Directory of the mounted `headersSecretRef` Secret: each file is a header (name = file
    /// name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_secret_dir: Option<PathBuf>,
    /// The header carrying `<topic>/<partition>/<offset>` for deduplication.
    #[serde(default = "default_idempotency_header")]
    pub idempotency_header: String,
    /// `binary` (default) or `structured` CloudEvents. Left out when `binary` (see
    /// [`Events::format`]).
    #[serde(default, skip_serializing_if = "is_default")]
    pub content_mode: ContentMode,
    /// The CloudEvents `source`. Unset: `/kafka/<topic>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_source: Option<String>,
    /// The CloudEvents `type` of every event. Unset: the event's type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_type: Option<String>,
    /// Record headers copied to the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_headers: Vec<String>,
}

/// The Kafka sink.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSink {
    /// The topic to produce to (not one of the consumed topics).
    pub topic: String,
    /// Produce and commit the consumed offsets in Kafka transactions.
    #[serde(default)]
    pub transactional: bool,
    /// The producer's `transactional.id` (stable per instance). Unset:
    /// `pipewright-<group id>-<group instance id, else $HOSTNAME>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transactional_id: Option<String>,
}

/// The PostgreSQL sink.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresSink {
    /// File holding the database URL (a mounted Secret key). Unset: the environment variable
    /// `PIPEWRIGHT_DATABASE_URL` (hand-run workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsn_file: Option<PathBuf>,
    /// The table, `table` or `schema.table`.
    pub table: String,
    /// Columns identifying a row (upsert); empty: every event inserts a row.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upsert_key: Vec<String>,
    /// The table of applied offsets.
    #[serde(default = "default_offsets_table")]
    pub offsets_table: String,
}

/// The discard sink: each delivery takes `delay` plus a uniform `0..=jitter` (a slow handler
/// for benchmarks that holds its concurrency slot; both zero by default).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiscardSink {
    /// How long each delivery takes.
    #[serde(default, with = "duration")]
    pub delay: Duration,
    /// Each delivery takes up to this much longer than `delay`, uniformly distributed over the
    /// records (a function of the record's partition and offset: the same record always takes
    /// the same time).
    #[serde(default, with = "duration")]
    pub jitter: Duration,
}

/// `pipewright-worker outbox`: an `Outbox`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Outbox {
    /// The database holding the outbox table.
    #[serde(default)]
    pub database: Database,
    /// The outbox table, `table` or `schema.table`.
    #[serde(default = "default_outbox_table")]
    pub table: String,
    /// Topic every row goes to (exactly one of topic, topicTemplate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Topic per row, `{aggregatetype}` replaced by the row's aggregatetype.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_template: Option<String>,
    /// The Kafka cluster.
    pub kafka: Kafka,
    /// How the table is read.
    #[serde(default)]
    pub poll: Poll,
    /// What happens to a published row.
    #[serde(default)]
    pub cleanup: Cleanup,
    /// How often a standby replica tries to become the publisher (10ms..60s).
    #[serde(default = "one_second", with = "duration")]
    pub lock_retry_interval: Duration,
    /// How long a graceful shutdown waits for the rows in flight.
    #[serde(default = "thirty_seconds", with = "duration")]
    pub shutdown_grace: Duration,
}

impl Outbox {
    /// The default of [`Outbox::lock_retry_interval`].
    pub fn default_lock_retry_interval() -> Duration {
        one_second()
    }
}

/// The outbox's database.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Database {
    /// File holding the database URL (a mounted Secret key). Unset: the environment variable
    /// `PIPEWRIGHT_DATABASE_URL` (hand-run workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_file: Option<PathBuf>,
}

/// How the outbox table is read.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Poll {
    /// Wait between reads when the last one found nothing (10ms..1h).
    #[serde(default = "one_second", with = "duration")]
    pub interval: Duration,
    /// Rows per read (1..10000).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Rows sent and not yet acknowledged and cleaned up, at most.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Wake up on LISTEN/NOTIFY (polling stays the fallback).
    #[serde(default = "yes")]
    pub notify: bool,
}

impl Default for Poll {
    fn default() -> Self {
        Poll {
            interval: one_second(),
            batch_size: default_batch_size(),
            max_in_flight: default_max_in_flight(),
            notify: true,
        }
    }
}

/// What happens to a published row.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cleanup {
    /// `delete` or `markPublished`.
    #[serde(default)]
    pub policy: CleanupPolicy,
    /// With markPublished: delete rows published longer ago than this.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub retention: Option<Duration>,
}

fn yes() -> bool {
    true
}
fn default_concurrency() -> usize {
    16
}
fn default_max_attempts() -> u32 {
    5
}
fn hundred_millis() -> Duration {
    Duration::from_millis(100)
}
fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}
fn default_revoke_timeout() -> Duration {
    DEFAULT_REVOKE_TIMEOUT
}
fn default_max_uncommitted() -> u64 {
    DEFAULT_MAX_UNCOMMITTED_PER_PARTITION
}
fn default_max_buffered_bytes() -> usize {
    DEFAULT_MAX_BUFFERED_BYTES_PER_PARTITION
}
fn default_max_record_bytes() -> usize {
    1 << 20
}
fn default_idempotency_header() -> String {
    crate::common::DEFAULT_IDEMPOTENCY_HEADER.into()
}
fn default_offsets_table() -> String {
    "pipewright_offsets".into()
}
fn default_outbox_table() -> String {
    "outbox".into()
}
fn default_batch_size() -> usize {
    100
}
fn default_max_in_flight() -> usize {
    1000
}

/// Whether a field holds its default (and so is left out of a rendered configuration).
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

pub mod fixtures;

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal_consume() -> &'static str {
        r#"{"kafka": {"bootstrapServers": ["k:9092"]}, "topics": ["t"], "groupId": "g",
            "sink": {"http": {"url": "http://h/", "headers": {"X-Source": "pipewright"}}}}"#
    }

    #[test]
    fn a_minimal_file_takes_the_defaults_and_keeps_the_headers_a_map() {
        let c: Consume = from_json(minimal_consume()).unwrap();
        assert_eq!(c.processing, Processing::default());
        let Sink::Http(h) = &c.sink else {
            panic!("not the http sink")
        };
        assert_eq!(h.headers["X-Source"], "pipewright");
        assert_eq!(h.timeout, Duration::from_secs(10));
        assert_eq!(from_json::<Consume>(&to_json(&c)).unwrap(), c);
    }

    /// Upgrading the operator must not change the configuration it renders for a resource
    /// that uses none of the new fields: the hash of that text rolls the pods.
    #[test]
    fn fields_added_with_a_default_are_left_out_while_default() {
        let c: Consume = from_json(minimal_consume()).unwrap();
        let rendered: serde_json::Value = serde_json::from_str(&to_json(&c)).unwrap();
        assert!(rendered["events"].get("format").is_none(), "{rendered}");
        assert!(
            rendered["sink"]["http"].get("contentMode").is_none(),
            "{rendered}"
        );
        let mut raw = c.clone();
        raw.events.format = EventFormat::Raw;
        let rendered: serde_json::Value = serde_json::from_str(&to_json(&raw)).unwrap();
        assert_eq!(rendered["events"]["format"], "raw");
    }

    #[test]
    fn an_unknown_field_is_an_error_naming_its_path() {
        let text = minimal_consume().replace("\"headers\"", "\"headerz\"");
        let err = from_json::<Consume>(&text).unwrap_err();
        assert_eq!(err.path, "sink.http.headerz");
        assert!(err.message.contains("headerz"), "{err}");
        let text = minimal_consume().replace("\"groupId\": \"g\",", "\"groupId\": \"g\", \"processing\": {\"retry\": {\"backoff\": {\"initial\": \"soon\"}}},");
        let err = from_json::<Consume>(&text).unwrap_err();
        assert_eq!(err.path, "processing.retry.backoff.initial", "{err}");
    }

    /// The field paths docs/worker-config.md lists in the table of a section.
    fn documented(section: &str) -> BTreeSet<String> {
        let doc = include_str!("../../../docs/worker-config.md");
        let start = doc.find(section).expect("the section exists");
        doc[start..]
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with("## "))
            .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_documentation_lists_every_field_of_the_configuration() {
        let mut consume = BTreeSet::new();
        for c in fixtures::every_field_consume() {
            consume.extend(field_paths(&serde_json::to_value(c).unwrap()));
        }
        assert_eq!(documented("## `consume` file"), consume);
        let mut outbox = BTreeSet::new();
        for o in fixtures::every_field_outbox() {
            outbox.extend(field_paths(&serde_json::to_value(o).unwrap()));
        }
        assert_eq!(documented("## `outbox` file"), outbox);
    }

    #[test]
    fn durations_are_humantime_strings() {
        let p = Poll {
            interval: Duration::from_millis(5400 * 1000 + 250),
            ..Poll::default()
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["interval"], "1h 30m 250ms");
        let c = Cleanup {
            policy: CleanupPolicy::MarkPublished,
            retention: Some(Duration::from_secs(7 * 86400)),
        };
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(text, r#"{"policy":"markPublished","retention":"7days"}"#);
        assert_eq!(serde_json::from_str::<Cleanup>(&text).unwrap(), c);
    }
}
