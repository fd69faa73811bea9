//! `EventConsumer`: consume Kafka topics as typed events and deliver each to one sink.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

pub use crate::worker_report::{ConsumerCounters, RejectedCounters};

use crate::common::{
    ConfigMapKeyRef, ConsumerAutoscaling, Duration, IMAGE_PATTERN, KafkaConnection, Observability,
    SQL_IDENTIFIER_PATTERN, SQL_TABLE_PATTERN, SecretKeyRef, SecretRef, TOPIC_PATTERN, WorkerPod,
    duration_between, duration_not_longer,
};

/// Consumes Kafka topics as typed events (`{"event_type": ...}`) with a consumer group and
/// delivers each event to one sink (HTTP, Kafka, PostgreSQL or the log), through a bounded,
/// ordered pipeline with retries and a dead-letter topic. The operator runs it as a worker
/// Deployment and reports consumer lag in its status.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pipewright.io",
    version = "v1alpha1",
    kind = "EventConsumer",
    plural = "eventconsumers",
    namespaced,
    status = "EventConsumerStatus",
    derive = "PartialEq",
    shortname = "ec",
    category = "pipewright",
    doc = "EventConsumer consumes Kafka topics as typed events and delivers each to one sink (http, kafka, postgres or log), with retries, a dead-letter topic and per-key ordering.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the consumer runs and delivers"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why it is (not) ready"
    ),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.totalLag",
        description = "Records not yet committed, over all partitions"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.replicas",
        description = "Worker pods"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS label (lower case alphanumerics and '-', at most 63 characters): it names the worker Deployment and labels its pods"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.groupId) == has(oldSelf.groupId) && (!has(self.groupId) || self.groupId == oldSelf.groupId)")
        .message("groupId is immutable: it can only be set when the EventConsumer is created (changing it would restart consumption from initialOffset)")
        .field_path(".groupId"),
    validation = Rule::new("!has(self.processing.deadLetterTopic) || !(self.processing.deadLetterTopic in self.topics)")
        .message("processing.deadLetterTopic must not be one of the consumed topics")
        .field_path(".processing.deadLetterTopic"),
    validation = Rule::new("!has(self.sink.kafka) || !(self.sink.kafka.topic in self.topics)")
        .message("sink.kafka.topic must not be one of the consumed topics (the consumer would read its own output)")
        .field_path(".sink.kafka.topic"),
    // The policy applies to every record that cannot be handled (malformed, oversized, unknown
    // type), declared events or not; its default, deadLetter, needs somewhere to put them.
    validation = Rule::new("has(self.processing.deadLetterTopic) || has(self.processing.deadLetterSink) || (has(self.events) && self.events.onUnknownType != 'deadLetter')")
        .message("processing.deadLetterTopic (or deadLetterSink) is required when events.onUnknownType is deadLetter (the default, also without events): set one, or set events.onUnknownType to skip or fail")
        .field_path(".processing.deadLetterTopic"),
    validation = Rule::new("!(has(self.processing.deadLetterTopic) && has(self.processing.deadLetterSink))")
        .message("processing: set at most one of deadLetterTopic, deadLetterSink")
        .field_path(".processing.deadLetterSink")
        .reason(Reason::FieldValueForbidden),
    validation = Rule::new("!has(self.events) || self.events.format != 'raw' || !has(self.sink.postgres)")
        .message("sink.postgres maps the fields of JSON events to columns: it cannot take events.format raw")
        .field_path(".sink.postgres"),
)]
pub struct EventConsumerSpec {
    /// The Kafka cluster to consume from (and, for a kafka sink and the dead-letter topic,
    /// to produce to).
    pub kafka: KafkaConnection,
    /// Topics to consume, 1 to 64 distinct names.
    #[schemars(
        length(min = 1, max = 64),
        inner(length(min = 1, max = 249), pattern(TOPIC_PATTERN))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub topics: Vec<String>,
    /// Kafka consumer group. Unset: `<namespace>.<name>` (reported in status.groupId).
    /// Immutable: it can only be set when the EventConsumer is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), pattern(TOPIC_PATTERN))]
    pub group_id: Option<String>,
    /// Where a new consumer group starts in each partition: `earliest` (every retained
    /// record) or `latest` (only records produced from now on). Default `earliest`.
    #[serde(default)]
    pub initial_offset: InitialOffset,
    /// The event types this consumer handles and what it does with others. Unset: every
    /// record that decodes as a JSON event with an `event_type` is delivered unchecked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Events>,
    /// How records are processed: concurrency, ordering, retries, dead-lettering, draining.
    #[serde(default)]
    pub processing: Processing,
    /// Where events are delivered: exactly one of http, kafka, postgres, log.
    pub sink: Sink,
    /// Worker image. Unset: the pipewright-worker image the operator was installed with. Set
    /// it to run a custom worker built on the pipewright `worker` library.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), pattern(IMAGE_PATTERN))]
    pub image: Option<String>,
    /// Worker replicas; they share the partitions through the consumer group. 0 pauses the
    /// consumer. Managed by the autoscaler when autoscaling is set. Default 1.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1024))]
    pub replicas: i32,
    /// Scale the workers on consumer lag. Unset: replicas is fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<ConsumerAutoscaling>,
    /// CPU and memory requests and limits of each worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Scheduling, image pull Secrets, labels, annotations and extra environment of the
    /// worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<WorkerPod>,
    /// Traces of the data path (OpenTelemetry over OTLP/HTTP). Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observability: Option<Observability>,
}

fn one() -> i32 {
    1
}

/// Where a new consumer group starts reading.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum InitialOffset {
    /// From the oldest retained record.
    #[default]
    Earliest,
    /// From the records produced after the group first joins.
    Latest,
}

/// What the records are, and the declared event types.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.format != 'raw' || !has(self.typeFrom) || !has(self.typeFrom.field)")
        .message("events.format raw: the values are not read, so the type can only come from a header (events.typeFrom.header)")
        .field_path(".typeFrom"),
    validation = Rule::new("self.format != 'raw' || !has(self.types) || (has(self.typeFrom) && has(self.typeFrom.header))")
        .message("events.format raw: declared types need events.typeFrom.header (the values are not read)")
        .field_path(".types"),
    validation = Rule::new("self.format != 'raw' || !has(self.types) || self.types.all(t, !has(t.schema))")
        .message("events.format raw: a JSON Schema cannot check values that are not JSON")
        .field_path(".types"),
    validation = Rule::new("self.format != 'cloudEvents' || !has(self.typeFrom)")
        .message("events.format cloudEvents: the type is the CloudEvent's type attribute; typeFrom does not apply")
        .field_path(".typeFrom"),
)]
pub struct Events {
    /// `json` (default): every value must be a JSON object; its type is its `event_type`
    /// (or what typeFrom names). `raw`: the values are delivered as they are, whatever their
    /// bytes (text, Avro, Protobuf, ...), with retries and dead letters; their type comes
    /// from typeFrom.header when set, else it is `pipewright.raw`. Not with the postgres
    /// sink. `cloudEvents`: every record is a CloudEvent 1.0 in Kafka's binding, binary
    /// (`ce_*` headers) or structured (`application/cloudevents+json`); its type is the
    /// `type` attribute, a schema checks its data, the postgres sink maps its data, and the
    /// HTTP sink sends its own attributes on (`id`, `source`, `time`, extensions such as
    /// `traceparent`) with its data.
    #[serde(default)]
    pub format: EventFormat,
    /// Event types this consumer handles, each by its `event_type` name, optionally with a
    /// JSON Schema its payload must match. Unset: every type is handled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub types: Vec<EventType>,
    /// What to do with a record whose `event_type` is not declared: `deadLetter` (park it in
    /// processing.deadLetterTopic and go on), `skip` (commit it undelivered) or `fail` (stop
    /// and report Degraded/PoisonMessage). Default `deadLetter`.
    #[serde(default)]
    pub on_unknown_type: UnknownTypePolicy,
    /// Where a record's event type is read. Unset: the `event_type` field of the JSON value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_from: Option<EventTypeFrom>,
}

/// What a record's value is (`events.format`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum EventFormat {
    /// A JSON object, checked before delivery.
    #[default]
    Json,
    /// Bytes, delivered as they are.
    Raw,
    /// CloudEvents 1.0 as Kafka's protocol binding carries them: binary mode (`ce_*`
    /// headers, the value is the data) or structured mode (one JSON object with the
    /// attributes and `data`/`data_base64`).
    CloudEvents,
}

/// The event type of a record in `events.format: raw` when no header names one.
pub const RAW_EVENT_TYPE: &str = "pipewright.raw";

/// Where a record's event type is read: exactly one of header, field. Either way the value
/// must be JSON (the sinks forward it, a schema checks it).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.header) != has(self.field)")
    .message("events.typeFrom must set exactly one of header, field"))]
pub struct EventTypeFrom {
    /// A record header whose value (UTF-8) is the type: `type` is the header pipewright's
    /// outbox and Debezium's outbox event router write, `ce_type` the one of a CloudEvent in
    /// Kafka's binary content mode. A record without it is not a valid event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249), pattern(r"^[A-Za-z0-9._-]+$"))]
    pub header: Option<String>,
    /// A top-level string field of the JSON object, e.g. `type` or `eventType`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(r"^[A-Za-z0-9_.-]+$"))]
    pub field: Option<String>,
}

/// One declared event type.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventType {
    /// The `event_type` value, e.g. `order.created`.
    #[schemars(length(min = 1, max = 253), pattern(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$"))]
    pub name: String,
    /// A JSON Schema the event must match; events that do not are treated like records of an
    /// unknown type. Unset: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<EventSchema>,
}

/// A JSON Schema, from a ConfigMap or inline: exactly one of configMapKeyRef, inline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.configMapKeyRef) != has(self.inline)")
    .message("events.types[].schema must set exactly one of configMapKeyRef, inline"))]
pub struct EventSchema {
    /// A ConfigMap key holding the JSON Schema document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<ConfigMapKeyRef>,
    /// The JSON Schema document itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub inline: Option<serde_json::Value>,
}

/// An object whose content the apiserver keeps as it is (a JSON Schema document).
fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// What happens to a record of an undeclared event type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum UnknownTypePolicy {
    /// Park it in the dead-letter topic and go on.
    #[default]
    DeadLetter,
    /// Commit it without delivering it.
    Skip,
    /// Stop consuming and report Degraded with reason PoisonMessage.
    Fail,
}

/// How records are processed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Processing {
    /// Records in flight at once per worker (bounded; the fetcher pauses when it is reached).
    /// Default 16.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 1024))]
    pub concurrency: i32,
    /// Which records are delivered in order: `key` (records with the same Kafka key, one at a
    /// time, in offset order), `partition` (one record at a time per partition) or `none` (no
    /// order). Offsets are committed only up to the last contiguous delivered record in every
    /// mode. Default `key`.
    #[serde(default)]
    pub ordering: Ordering,
    /// Retries of a failed delivery.
    #[serde(default)]
    pub retry: Retry,
    /// Topic that receives records which fail every retry or are rejected by the events
    /// settings, with the error in their headers. Unset: such a record stops the consumer
    /// (Degraded, reason PoisonMessage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249), pattern(TOPIC_PATTERN))]
    pub dead_letter_topic: Option<String>,
    /// An HTTP destination for the records deadLetterTopic would take, instead of a topic
    /// (as Knative's deadLetterSink): each is POSTed as it was in Kafka — its value the body —
    /// with the error in `pipewright.*` headers, and committed only once the destination
    /// answered 2xx. At most one of deadLetterTopic and deadLetterSink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_sink: Option<DeadLetterSink>,
    /// How long a worker that is told to stop may take to finish its in-flight records and
    /// commit, between 1s and 1h. Default `30s`.
    #[serde(default = "default_drain_timeout")]
    #[x_kube(validation = Rule::new(duration_between("1s", "1h"))
        .message("processing.drainTimeout must be between 1s and 1h"))]
    pub drain_timeout: Duration,
}

impl Default for Processing {
    fn default() -> Self {
        Processing {
            concurrency: default_concurrency(),
            ordering: Ordering::default(),
            retry: Retry::default(),
            dead_letter_topic: None,
            dead_letter_sink: None,
            drain_timeout: default_drain_timeout(),
        }
    }
}

fn default_concurrency() -> i32 {
    16
}

fn default_drain_timeout() -> Duration {
    Duration::from("30s")
}

/// Which records are delivered in order.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Ordering {
    /// Per Kafka key.
    #[default]
    Key,
    /// Per partition.
    Partition,
    /// No order.
    None,
}

/// Retries of a failed delivery.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Attempts per record, the first included (1 = no retry), at most 100. Default 5.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: i32,
    /// Exponential backoff between attempts.
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

fn default_max_attempts() -> i32 {
    5
}

/// Exponential backoff: the wait doubles from `initial` up to `max`, with jitter.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(duration_not_longer("initial", "max"))
    .message("processing.retry.backoff.initial must not be longer than processing.retry.backoff.max")
    .field_path(".initial"))]
pub struct Backoff {
    /// Wait before the first retry. Default `100ms`.
    #[serde(default = "default_backoff_initial")]
    pub initial: Duration,
    /// Longest wait between two attempts. Default `30s`.
    #[serde(default = "default_backoff_max")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: default_backoff_initial(),
            max: default_backoff_max(),
        }
    }
}

fn default_backoff_initial() -> Duration {
    Duration::from("100ms")
}

fn default_backoff_max() -> Duration {
    Duration::from("30s")
}

/// Where events are delivered: exactly one of http, kafka, postgres, log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.http), has(self.kafka), has(self.postgres), has(self.log)].filter(s, s).size() == 1")
    .message("sink must set exactly one of http, kafka, postgres, log"))]
pub struct Sink {
    /// POST each event to an HTTP endpoint as a CloudEvent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSink>,
    /// Produce each event to a Kafka topic of the same cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSink>,
    /// Write each event as a row of a PostgreSQL table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSink>,
    /// Write each event to the worker's log (for trying things out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogSink>,
}

/// Which sink a [`Sink`] selects.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SinkKind<'a> {
    /// `sink.http`.
    Http(&'a HttpSink),
    /// `sink.kafka`.
    Kafka(&'a KafkaSink),
    /// `sink.postgres`.
    Postgres(&'a PostgresSink),
    /// `sink.log`.
    Log(&'a LogSink),
}

impl Sink {
    /// The one sink that is set; `None` when none is (the schema rejects that, and more than
    /// one).
    pub fn kind(&self) -> Option<SinkKind<'_>> {
        match (&self.http, &self.kafka, &self.postgres, &self.log) {
            (Some(s), None, None, None) => Some(SinkKind::Http(s)),
            (None, Some(s), None, None) => Some(SinkKind::Kafka(s)),
            (None, None, Some(s), None) => Some(SinkKind::Postgres(s)),
            (None, None, None, Some(s)) => Some(SinkKind::Log(s)),
            _ => None,
        }
    }
}

/// Where dead letters go when not to a topic.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSink {
    /// An HTTP(S) endpoint, by URL or Service reference.
    pub http: DeadLetterHttp,
}

/// An HTTP destination for dead letters: one `POST` per record, the record's value as the body
/// (`content-type` from the record's own header, else `application/octet-stream`), and as
/// headers: the error (`pipewright.error.kind`, `.message`, `pipewright.attempts`,
/// `pipewright.first.failure.time`), where the record came from
/// (`pipewright.original.topic`, `.partition`, `.offset`, `.key` — base64 in
/// `pipewright.original.key-base64` when it is no valid header value), its Kafka headers as
/// `pipewright.header.<name>` (those HTTP can carry), and `Idempotency-Key:
/// <topic>/<partition>/<offset>`. A 2xx answer is the acknowledgement; anything else is
/// retried (waiting up to 10s between attempts) for up to 5 minutes, then the worker stops
/// without committing the record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.url) != has(self.ref)")
        .message("processing.deadLetterSink.http must set exactly one of url, ref")
        .reason(Reason::FieldValueRequired),
    validation = Rule::new("!has(self.path) || has(self.ref)")
        .message("processing.deadLetterSink.http.path goes with ref (with url, the path is part of the URL)")
        .reason(Reason::FieldValueForbidden),
)]
pub struct DeadLetterHttp {
    /// Absolute http:// or https:// URL. Must not contain credentials (put them in
    /// headersSecretRef). Exactly one of url and ref.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(
        validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''")
            .message("processing.deadLetterSink.http.url must be an absolute http:// or https:// URL"),
        validation = Rule::new("!self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*@')")
            .message("processing.deadLetterSink.http.url must not contain credentials (user:password@): reference them with headersSecretRef")
            .reason(Reason::FieldValueForbidden),
    )]
    pub url: Option<String>,
    /// A Service instead of a URL: resolved by the operator as sink.http.ref is, shown as
    /// status.deadLetterSinkUri; Degraded/SinkUnresolvable while it does not resolve.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub service_ref: Option<ServiceReference>,
    /// The request path with ref, starting with `/`. Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), pattern(r"^/[!-~]*$"))]
    pub path: Option<String>,
    /// How long to wait for an answer, between 1ms and 5m. Default `10s`.
    #[serde(default = "default_http_timeout")]
    #[x_kube(validation = Rule::new(duration_between("1ms", "5m"))
        .message("processing.deadLetterSink.http.timeout must be between 1ms and 5m"))]
    pub timeout: Duration,
    /// A Secret whose every key is a header name and value the header value, sent with every
    /// request: the place for Authorization and API-key headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_secret_ref: Option<SecretRef>,
}

/// A Service an HTTP sink delivers to (Knative's Destination, for Services).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceReference {
    /// The kind referenced; `Service` is the only one.
    pub kind: ServiceKind,
    /// Name of the Service.
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Namespace of the Service. Default: the EventConsumer's. (With the chart's
    /// watchNamespace, the operator may read Services in that namespace only.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: Option<String>,
    /// The Service's port (its `port`, not the targetPort). Default: the Service's only port;
    /// required when it has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// What a sink reference may name.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ServiceKind {
    Service,
}

/// HTTP delivery: one request per event, a CloudEvent in binary content mode (`ce-*` headers,
/// the event as the body; the default) or structured mode (`application/cloudevents+json`).
/// A 2xx answer means delivered; 429, 5xx or no answer within timeout is retried (waiting at
/// least what a `Retry-After` header asks, up to processing.retry.backoff.max); any other
/// status is dead-lettered.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.forwardHeaders) || !self.forwardHeaders.exists(h, h.lowerAscii() == self.idempotencyHeader.lowerAscii())")
        .message("sink.http.forwardHeaders must not include the idempotency header, which the sink sets"),
    validation = Rule::new("has(self.url) != has(self.ref)")
        .message("sink.http must set exactly one of url, ref")
        .reason(Reason::FieldValueRequired),
    validation = Rule::new("!has(self.path) || has(self.ref)")
        .message("sink.http.path goes with ref (with url, the path is part of the URL)")
        .reason(Reason::FieldValueForbidden),
)]
pub struct HttpSink {
    /// Absolute http:// or https:// URL to send each event to. Must not contain credentials
    /// (put them in headersSecretRef). Exactly one of url and ref.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(
        validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''")
            .message("sink.http.url must be an absolute http:// or https:// URL"),
        validation = Rule::new("!self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*@')")
            .message("sink.http.url must not contain credentials (user:password@): reference them with sink.http.headersSecretRef")
            .reason(Reason::FieldValueForbidden),
    )]
    pub url: Option<String>,
    /// A Service to send each event to, instead of a URL: the operator resolves it into
    /// `http://<name>.<namespace>.svc.<cluster domain>:<port><path>` (`https` when the port is
    /// 443 or named `https`), shows it as status.sinkUri and sets Degraded/SinkUnresolvable
    /// while the Service or its port is not there.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub service_ref: Option<ServiceReference>,
    /// The request path with ref, starting with `/`. Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), pattern(r"^/[!-~]*$"))]
    pub path: Option<String>,
    /// HTTP method. Default `POST`.
    #[serde(default)]
    pub method: HttpMethod,
    /// How long to wait for an answer, between 1ms and 5m. Default `10s`.
    #[serde(default = "default_http_timeout")]
    #[x_kube(validation = Rule::new(duration_between("1ms", "5m"))
        .message("sink.http.timeout must be between 1ms and 5m"))]
    pub timeout: Duration,
    /// Extra headers sent with every request (at most 32). Not for credentials:
    /// Authorization, Proxy-Authorization, Cookie and *-Api-Key / *-Token headers are
    /// rejected; set them with headersSecretRef.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = crate::common::string_map_limits::<32, 1024>)]
    #[x_kube(
        validation = Rule::new("self.all(h, h.size() <= 128 && h.matches('^[A-Za-z0-9!#$%&*+.^_`|~-]+$'))")
            .message("sink.http.headers names must be HTTP header names (token characters, at most 128)"),
        validation = Rule::new("self.all(h, !(h.lowerAscii() in ['authorization', 'proxy-authorization', 'cookie']) && !h.lowerAscii().endsWith('api-key') && !h.lowerAscii().endsWith('token'))")
            .message("sink.http.headers must not carry credentials (Authorization, Cookie, API keys, tokens): put them in a Secret and reference it with sink.http.headersSecretRef")
            .reason(Reason::FieldValueForbidden),
    )]
    pub headers: BTreeMap<String, String>,
    /// A Secret whose every key is a header name and value the header value, sent with every
    /// request: the place for Authorization and API-key headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_secret_ref: Option<SecretRef>,
    /// Header that carries the record's `<topic>/<partition>/<offset>`, so that the receiver
    /// can drop a redelivered event. Default `Idempotency-Key`.
    #[serde(default = "default_idempotency_header")]
    #[schemars(length(min = 1, max = 128), pattern(r"^[A-Za-z0-9!#$%&*+.^_`|~-]+$"))]
    pub idempotency_header: String,
    /// CloudEvents content mode of the requests. Default `binary`.
    #[serde(default)]
    pub content_mode: ContentMode,
    /// The CloudEvents `source` attribute (a URI reference). Default `/kafka/<topic>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), pattern(r"^[!-~]+$"))]
    pub ce_source: Option<String>,
    /// The CloudEvents `type` attribute, the same for every event. Default: the event's own
    /// type (its `event_type`, or what events.typeFrom names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), pattern(r"^[!-~]+$"))]
    pub ce_type: Option<String>,
    /// Kafka record headers copied to the request as HTTP headers of the same name (at most
    /// 32; e.g. `traceparent`). Every value of a listed header is sent; a value that is not
    /// a valid HTTP header value (binary, control characters) is left out. Not the
    /// CloudEvents (`ce-`/`ce_`) headers, nor the ones that frame the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 128), pattern(r"^[A-Za-z0-9!#$%&*+.^_`|~-]+$"))
    )]
    #[x_kube(
        merge_strategy = ListMerge::Set,
        validation = Rule::new("self.all(h, !h.lowerAscii().startsWith('ce-') && !h.lowerAscii().startsWith('ce_') && !(h.lowerAscii() in ['content-type', 'content-length', 'transfer-encoding', 'host', 'connection', 'keep-alive', 'te', 'trailer', 'upgrade', 'expect']))")
            .message("sink.http.forwardHeaders must not name CloudEvents headers (ce-*, ce_*) or headers that frame the request (Content-Type, Content-Length, Transfer-Encoding, Host, Connection, Keep-Alive, TE, Trailer, Upgrade, Expect)")
            .reason(Reason::FieldValueForbidden),
    )]
    pub forward_headers: Vec<String>,
}

/// How an event is laid out in an HTTP request (CloudEvents 1.0 HTTP binding).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ContentMode {
    /// The record's value is the body (`application/json`); the attributes are `ce-*`
    /// headers.
    #[default]
    Binary,
    /// The body is the whole CloudEvent as JSON (`application/cloudevents+json`): the
    /// attributes, and the record's value as `data`.
    Structured,
}

fn default_http_timeout() -> Duration {
    Duration::from("10s")
}

fn default_idempotency_header() -> String {
    crate::common::DEFAULT_IDEMPOTENCY_HEADER.to_string()
}

/// HTTP method of a delivery request.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// `POST`.
    #[default]
    Post,
    /// `PUT`.
    Put,
}

/// Kafka delivery: produce each event to a topic of the cluster in spec.kafka.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSink {
    /// Topic to produce to. Must not be one of the consumed topics.
    #[schemars(length(min = 1, max = 249), pattern(TOPIC_PATTERN))]
    pub topic: String,
    /// true: produce and commit the consumed offsets in one Kafka transaction, so each event
    /// appears in the target topic exactly once for read_committed readers. false: idempotent
    /// producer, at-least-once. Default false.
    #[serde(default)]
    pub transactional: bool,
}

/// PostgreSQL delivery: write each event as a row, and store the consumed offsets in the same
/// transaction (exactly-once into the table).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSink {
    /// The Secret key holding the connection string (`postgres://user:password@host/db`).
    pub dsn_secret_ref: SecretKeyRef,
    /// Table to write to: a lower-case SQL identifier (`^[a-z_][a-z0-9_]{0,62}$`), optionally
    /// qualified by a schema (`schema.table`).
    #[schemars(length(min = 1, max = 127), pattern(SQL_TABLE_PATTERN))]
    pub table: String,
    /// Columns that identify a row (lower-case SQL identifiers, 1 to 8): an event whose key
    /// columns match an existing row updates it (upsert). Unset: every event inserts a row.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(min = 1, max = 8),
        inner(length(min = 1, max = 63), pattern(SQL_IDENTIFIER_PATTERN))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub upsert_key: Vec<String>,
    /// Table in which the consumed offsets are stored, in the same transaction as the rows.
    /// Default `pipewright_offsets`.
    #[serde(default = "default_offsets_table")]
    #[schemars(length(min = 1, max = 127), pattern(SQL_TABLE_PATTERN))]
    pub offsets_table: String,
}

fn default_offsets_table() -> String {
    "pipewright_offsets".to_string()
}

/// Log delivery: one structured log line per event.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogSink {
    /// Include the event payload in the line; false logs only its type, key, topic,
    /// partition and offset. Default true.
    #[serde(default = "yes")]
    pub payload: bool,
}

fn yes() -> bool {
    true
}

/// What the operator observed: conditions, replicas and figures measured from Kafka.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventConsumerStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded and Delivering, one entry per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Worker pods that exist (for the scale subresource).
    #[serde(default)]
    pub replicas: i32,
    /// Worker pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the worker pods, in string form (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The consumer group in use: spec.groupId or `<namespace>.<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Where the HTTP sink delivers: spec.sink.http.url, or the address its ref resolved to
    /// (absent while it does not resolve, or with another sink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink_uri: Option<String>,
    /// Where dead letters go over HTTP: spec.processing.deadLetterSink.http.url, or the
    /// address its ref resolved to (absent while it does not resolve, or without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_sink_uri: Option<String>,
    /// Per partition: the group's committed offset, the partition's end offset and the lag
    /// between them, as measured at measuredTime.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["topic".into(), "partition".into()]))]
    pub partitions: Vec<PartitionStatus>,
    /// Sum of the partitions' lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_lag: Option<i64>,
    /// The largest of the partitions' lagSeconds: how far behind in time the group is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag_seconds: Option<i64>,
    /// Records handled since the current worker pods started: the sum of the counters the
    /// workers report (`GET /report`), over the reportedReplicas pods that answered at
    /// reportTime. A pod that restarts or is replaced starts again from 0, so this sum can go
    /// down; it is no total over the resource's life (Prometheus keeps that, from the workers'
    /// `pipewright_consumer_*_total` metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<ConsumerCounters>,
    /// Records delivered to the sink per minute, over the pods that answered: the growth of
    /// each pod's `processed` counter since the operator's earlier reading of it that is at
    /// least a minute old (the oldest one while none is), scaled to one minute. A pod that
    /// started within that window counts from its start. Absent until a pod was read twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed_last_minute: Option<i64>,
    /// Worker pods whose report counters and processedLastMinute sum up. Pods that run but
    /// did not answer within 2 s are left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_replicas: Option<i32>,
    /// When the operator last read the workers' reports and found something new: a
    /// reading that says the same does not move it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_time: Option<Time>,
    /// When partitions and totalLag were measured with the values shown. They are measured again every
    /// status period, but the status is written only when something changed: a measurement
    /// that finds the same values does not move this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_time: Option<Time>,
}

/// Offsets of one partition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionStatus {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// The group's committed offset (next record to process). Unset: nothing committed yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<i64>,
    /// The partition's end offset (high watermark).
    pub end: i64,
    /// end minus committed (from the start offset when nothing is committed).
    pub lag: i64,
    /// How old the oldest record not yet processed is: now minus the timestamp of the record
    /// at the committed offset (or where the group will start), in whole seconds; 0 without
    /// lag. Unset when the record could not be read (the operator's Kafka credentials need
    /// Read on the topic for this, Describe for the rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<i64>,
}
