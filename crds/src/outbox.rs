//! `Outbox`: publish the rows of a PostgreSQL transactional-outbox table to Kafka.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    Duration, IMAGE_PATTERN, KafkaConnection, Observability, SQL_TABLE_PATTERN, SecretKeyRef,
    TOPIC_PATTERN, WorkerPod, duration_between,
};

/// The placeholder a topic template must contain.
pub const AGGREGATE_TYPE_PLACEHOLDER: &str = "{aggregatetype}";

/// Publishes the rows of a PostgreSQL outbox table (written in the same transaction as the
/// application's data) to Kafka, in per-aggregate order. The table has the Debezium outbox
/// columns `id uuid, aggregatetype, aggregateid, type, payload jsonb, created_at` (and
/// optionally `headers jsonb`): the record key is `aggregateid`, `id` and `type` go into
/// record headers.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pipewright.io",
    version = "v1alpha1",
    kind = "Outbox",
    plural = "outboxes",
    namespaced,
    status = "OutboxStatus",
    derive = "PartialEq",
    shortname = "obx",
    category = "pipewright",
    doc = "Outbox publishes the rows of a PostgreSQL transactional-outbox table to Kafka, in per-aggregate order (key = aggregateid).",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the publisher runs and publishes"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why it is (not) ready"
    ),
    printcolumn(
        name = "Backlog",
        type_ = "integer",
        json_path = ".status.pending",
        description = "Outbox rows not yet published"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.replicas",
        description = "Publisher pods"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS label (lower case alphanumerics and '-', at most 63 characters): it names the publisher Deployment and labels its pods"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.topic) != has(self.topicTemplate)")
        .message("exactly one of topic, topicTemplate must be set"),
)]
pub struct OutboxSpec {
    /// The database that holds the outbox table.
    pub database: Database,
    /// The outbox table: a lower-case SQL identifier (`^[a-z_][a-z0-9_]{0,62}$`), optionally
    /// qualified by a schema (`schema.table`). Immutable. Default `outbox`.
    #[serde(default = "default_table")]
    #[schemars(length(min = 1, max = 127), pattern(SQL_TABLE_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("table is immutable: create a new Outbox to publish another table"))]
    pub table: String,
    /// The Kafka cluster to publish to.
    pub kafka: KafkaConnection,
    /// Topic every row is published to. Exactly one of topic, topicTemplate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 249), pattern(TOPIC_PATTERN))]
    pub topic: Option<String>,
    /// Topic name per row, with `{aggregatetype}` replaced by the row's aggregatetype, e.g.
    /// `outbox.event.{aggregatetype}` (Debezium's convention). Exactly one of topic,
    /// topicTemplate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200), pattern(r"^[a-zA-Z0-9._{}-]+$"))]
    #[x_kube(validation = Rule::new("self.contains('{aggregatetype}')")
        .message("topicTemplate must contain {aggregatetype}"))]
    pub topic_template: Option<String>,
    /// How the table is read.
    #[serde(default)]
    pub poll: Poll,
    /// What happens to a row once it is published.
    #[serde(default)]
    pub cleanup: Cleanup,
    /// Publisher image. Unset: the pipewright-worker image the operator was installed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), pattern(IMAGE_PATTERN))]
    pub image: Option<String>,
    /// Publisher replicas. One publishes the table at a time (a PostgreSQL advisory lock keeps
    /// per-aggregate order and the commit-order fence); the others stand by and take over
    /// within seconds when it goes, so more replicas buy failover, not throughput. There is no
    /// autoscaling for that reason. 0 pauses publishing. Default 1.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1024))]
    pub replicas: i32,
    /// CPU and memory requests and limits of each publisher container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Scheduling, image pull Secrets, labels, annotations and extra environment of the
    /// publisher pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<WorkerPod>,
    /// Traces of the data path (OpenTelemetry over OTLP/HTTP). Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observability: Option<Observability>,
}

fn default_table() -> String {
    "outbox".to_string()
}

fn one() -> i32 {
    1
}

/// The database that holds the outbox table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Database {
    /// The Secret key holding the connection string (`postgres://user:password@host/db`).
    pub dsn_secret_ref: SecretKeyRef,
}

/// How the outbox table is read.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxInFlight >= self.batchSize")
    .message("poll.maxInFlight must be greater than or equal to poll.batchSize")
    .field_path(".maxInFlight"))]
pub struct Poll {
    /// Wait between two reads of the table when the last one found nothing, between 10ms and
    /// 1h. Default `1s`.
    #[serde(default = "default_poll_interval")]
    #[x_kube(validation = Rule::new(duration_between("10ms", "1h"))
        .message("poll.interval must be between 10ms and 1h"))]
    pub interval: Duration,
    /// Rows read per query, 1 to 10000. Default 100.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 10000))]
    pub batch_size: i32,
    /// Rows sent to Kafka but not yet acknowledged, at most (backpressure), 1 to 100000 and at
    /// least batchSize. Default 1000.
    #[serde(default = "default_max_in_flight")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_in_flight: i32,
    /// Wake up on PostgreSQL LISTEN/NOTIFY (a trigger on the table) instead of waiting for the
    /// next interval. Default true.
    #[serde(default = "yes")]
    pub notify: bool,
}

impl Default for Poll {
    fn default() -> Self {
        Poll {
            interval: default_poll_interval(),
            batch_size: default_batch_size(),
            max_in_flight: default_max_in_flight(),
            notify: true,
        }
    }
}

fn default_poll_interval() -> Duration {
    Duration::from("1s")
}

fn default_batch_size() -> i32 {
    100
}

fn default_max_in_flight() -> i32 {
    1000
}

fn yes() -> bool {
    true
}

/// What happens to a published row.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.retention) || self.policy == 'markPublished'")
    .message("cleanup.retention applies only to cleanup.policy markPublished")
    .field_path(".retention"))]
pub struct Cleanup {
    /// `delete`: delete a row as soon as Kafka acknowledges it. `markPublished`: set its
    /// `published_at` column and delete it after retention. Default `delete`.
    #[serde(default)]
    pub policy: CleanupPolicy,
    /// With markPublished: how long a published row is kept, e.g. `168h`. Unset: published
    /// rows are kept (the application deletes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Duration>,
}

/// What happens to a published row.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CleanupPolicy {
    /// Delete it once acknowledged.
    #[default]
    Delete,
    /// Mark it published; delete it after the retention.
    MarkPublished,
}

/// What the operator observed: conditions, replicas and figures measured from the table.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboxStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded and Delivering, one entry per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Publisher pods that exist (for the scale subresource).
    #[serde(default)]
    pub replicas: i32,
    /// Publisher pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the publisher pods, in string form (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Rows not yet published, counted at measuredTime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<i64>,
    /// Age in seconds of the oldest unpublished row, at measuredTime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_pending_age_seconds: Option<i64>,
    /// Rows published by the active publisher (the pod holding the publisher lock) since it
    /// started, as it reports it (`GET /report`) at reportTime. A standby that takes over
    /// starts again from 0. Absent while no pod reports holding the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_total: Option<i64>,
    /// When the active publisher last published a row. Absent while it has published none
    /// since it started, or no pod reports holding the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_publish_time: Option<Time>,
    /// When the operator last read the publishers' reports and found something new: a
    /// reading that says the same does not move it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_time: Option<Time>,
    /// When pending and oldestPendingAgeSeconds were measured with the values shown. They are measured again every
    /// status period, but the status is written only when something changed: a measurement
    /// that finds the same values does not move this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_time: Option<Time>,
}
