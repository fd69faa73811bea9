//! Types both kinds share: references to Secrets and ConfigMaps, the Kafka connection,
//! durations, autoscaling bounds and the condition vocabulary.
//!
//! Secrets enter the API only by reference ([`SecretKeyRef`], [`SecretRef`]): no field of a
//! spec can hold a password, token or DSN itself.

use std::collections::BTreeMap;
use std::fmt;

use kube::KubeSchema;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The API group of both kinds.
pub const GROUP: &str = "pipewright.io";
/// The API version of both kinds.
pub const VERSION: &str = "v1alpha1";
/// The category both kinds belong to: `kubectl get pipewright` lists them together.
pub const CATEGORY: &str = "pipewright";

/// Condition types the operator sets on both kinds, and the reasons it gives.
pub mod conditions {
    /// The workers run and do their job (consume and deliver, or publish).
    pub const READY: &str = "Ready";
    /// The operator is rolling out a change (new generation, scaling).
    pub const PROGRESSING: &str = "Progressing";
    /// Something needs a person: a bad reference, an unreachable dependency, a poison message.
    pub const DEGRADED: &str = "Degraded";
    /// Deliveries succeed, as the workers report them (`GET /report`): False once a worker
    /// has been failing every delivery attempt for longer than [`DELIVERY_FAILING_AFTER`]
    /// (reason [`DELIVERY_FAILING`], the error class in the message), True when no worker
    /// has, Unknown when no worker answered. It does not change Ready: Ready says the workers
    /// run; a sink that is down is not something a rollout caused or can fix.
    pub const DELIVERING: &str = "Delivering";

    /// How long a worker must have been failing deliveries (no success since its first
    /// failed attempt) before Delivering turns False: longer than a retry backoff's usual
    /// span and a receiver's restart, so that one slow record or a brief blip does not flap
    /// the condition.
    pub const DELIVERY_FAILING_AFTER: std::time::Duration = std::time::Duration::from_secs(60);
    /// Delivering is False: a worker has been failing deliveries for longer than
    /// [`DELIVERY_FAILING_AFTER`].
    pub const DELIVERY_FAILING: &str = "DeliveryFailing";
    /// Delivering is True: no worker has been failing deliveries for that long.
    pub const DELIVERY_SUCCEEDING: &str = "DeliverySucceeding";
    /// Delivering is Unknown: no worker pod answered with its report.
    pub const NO_WORKER_REPORT: &str = "NoWorkerReport";

    /// The worker Deployment has fewer available replicas than desired.
    pub const DEPLOYMENT_UNAVAILABLE: &str = "DeploymentUnavailable";
    /// A referenced Secret, or a key in it, does not exist.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// An HTTP sink's Service reference does not resolve (no such Service or port, or one the
    /// operator may not read).
    pub const SINK_UNRESOLVABLE: &str = "SinkUnresolvable";
    /// The Kafka cluster does not answer.
    pub const KAFKA_UNREACHABLE: &str = "KafkaUnreachable";
    /// The PostgreSQL database does not answer.
    pub const DATABASE_UNREACHABLE: &str = "DatabaseUnreachable";
    /// The PostgreSQL database answers but refuses the DSN's login (SQLSTATE class 28: no
    /// such role, a wrong password, no pg_hba.conf entry).
    pub const DATABASE_LOGIN_REFUSED: &str = "DatabaseLoginRefused";
    /// The outbox table is not one the relay can read: it does not exist or lacks a column
    /// (the operator's query), or a worker refused it (no stamping trigger, a column of the
    /// wrong type; the worker's check, reported as it stopped).
    pub const OUTBOX_TABLE_INVALID: &str = "OutboxTableInvalid";
    /// A record failed every retry and there is no dead-letter topic to park it in.
    pub const POISON_MESSAGE: &str = "PoisonMessage";
    /// A worker refused the configuration it was given and stopped (exit code 2): the
    /// resource passed the schema but something only the worker checks does not hold (a
    /// referenced schema that is not valid JSON Schema, a database URL it cannot parse, ...).
    pub const WORKER_CONFIG_REJECTED: &str = "WorkerConfigRejected";
    /// The resource carries the annotation `pipewright.io/paused: "true"`: the operator
    /// leaves its workers as they are until the annotation goes.
    pub const PAUSED: &str = "Paused";
}

/// A DNS-1123 subdomain: the name of a Secret or ConfigMap.
pub(crate) const OBJECT_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A key of a Secret's or ConfigMap's data.
pub(crate) const DATA_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";
/// A Kafka topic name (the broker's own rule; at most 249 characters).
pub(crate) const TOPIC_PATTERN: &str = r"^[a-zA-Z0-9._-]+$";
/// A PostgreSQL identifier that needs no quoting: lower case, at most 63 bytes.
pub(crate) const SQL_IDENTIFIER_PATTERN: &str = r"^[a-z_][a-z0-9_]{0,62}$";
/// A table name: an identifier, optionally qualified by a schema (`schema.table`).
pub(crate) const SQL_TABLE_PATTERN: &str = r"^([a-z_][a-z0-9_]{0,62}\.)?[a-z_][a-z0-9_]{0,62}$";
/// A container image reference: no whitespace (the registry resolves the rest).
pub(crate) const IMAGE_PATTERN: &str = r"^[^\s]+$";
/// Go `time.ParseDuration` syntax without sign: one or more `<number><unit>`.
pub(crate) const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$";

/// The librdkafka settings that `kafka.config` may set. Credentials (`sasl.*`, `ssl.*`) come
/// from `kafka.secretRef`; the settings that carry pipewright's guarantees (`group.id`,
/// `enable.auto.commit`, `enable.idempotence`, `acks`, `transactional.id`, `isolation.level`,
/// `message.timeout.ms`, ...) are the worker's, not the user's.
pub const KAFKA_CONFIG_ALLOWED_KEYS: &[&str] = &[
    "client.rack",
    "socket.timeout.ms",
    "socket.keepalive.enable",
    "socket.connection.setup.timeout.ms",
    "reconnect.backoff.ms",
    "reconnect.backoff.max.ms",
    "request.timeout.ms",
    "metadata.max.age.ms",
    "topic.metadata.refresh.interval.ms",
    "broker.address.family",
    "statistics.interval.ms",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "fetch.min.bytes",
    "fetch.max.bytes",
    "fetch.wait.max.ms",
    "max.partition.fetch.bytes",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "compression.type",
    "linger.ms",
    "batch.size",
    "batch.num.messages",
    "message.max.bytes",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
];

/// The keys a `kafka.secretRef` Secret may hold: librdkafka security settings, passed to the
/// client as they are. The worker refuses a Secret with any other key; the operator's own
/// measurement client takes the same keys from the same Secret.
pub const KAFKA_SECRET_KEYS: &[&str] = &[
    "security.protocol",
    "sasl.mechanism",
    "sasl.username",
    "sasl.password",
    "ssl.ca.pem",
    "ssl.certificate.pem",
    "ssl.key.pem",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
];

/// A Kafka security setting's value as read from a Secret key: PEM values (`*.pem`) keep their
/// newlines; single-line settings lose trailing whitespace (a file written with `echo`). The
/// workers (from mounted files) and the operator's measurement client (from the API) both use
/// it, so they read the same value.
pub fn kafka_setting_value(key: &str, value: String) -> String {
    if key.ends_with(".pem") {
        value
    } else {
        value.trim_end().to_string()
    }
}

/// A key in a Secret: where a credential (a DSN, a token) is read from. The Secret must be in
/// the same namespace as the resource that names it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the resource's namespace.
    #[schemars(length(min = 1, max = 253), pattern(OBJECT_NAME_PATTERN))]
    pub name: String,
    /// Key in the Secret's data whose value is used.
    #[schemars(length(min = 1, max = 253), pattern(DATA_KEY_PATTERN))]
    pub key: String,
}

/// A whole Secret, in the resource's namespace, whose keys the consumer of the reference
/// documents.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret, in the resource's namespace.
    #[schemars(length(min = 1, max = 253), pattern(OBJECT_NAME_PATTERN))]
    pub name: String,
}

/// A key in a ConfigMap, in the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap, in the resource's namespace.
    #[schemars(length(min = 1, max = 253), pattern(OBJECT_NAME_PATTERN))]
    pub name: String,
    /// Key in the ConfigMap's data whose value is used.
    #[schemars(length(min = 1, max = 253), pattern(DATA_KEY_PATTERN))]
    pub key: String,
}

/// How to reach a Kafka cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.secretRef) || (!has(self.tls) && !has(self.sasl))")
    .message("kafka.secretRef (a whole Secret of librdkafka keys) and kafka.tls/kafka.sasl (one Secret key per credential) are two ways to say the same: use one")
    .reason(Reason::FieldValueForbidden))]
pub struct KafkaConnection {
    /// Brokers to bootstrap from, as `host:port` (`[ipv6]:port` for IPv6 literals).
    #[schemars(length(min = 1, max = 16))]
    #[schemars(inner(
        length(min = 3, max = 261),
        pattern(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")
    ))]
    pub bootstrap_servers: Vec<String>,
    /// A Secret whose keys are librdkafka security settings, passed to the client as they are:
    /// `security.protocol`, `sasl.mechanism`, `sasl.username`, `sasl.password`,
    /// `ssl.ca.pem`, `ssl.certificate.pem`, `ssl.key.pem`, `ssl.key.password`,
    /// `ssl.endpoint.identification.algorithm`; a worker refuses a Secret with any other key.
    /// Unset: plaintext, no authentication (or `tls`/`sasl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// TLS to the brokers, each certificate and key from a key of a Secret — the Secrets
    /// Strimzi writes work as they are: the cluster CA from `<cluster>-cluster-ca-cert`
    /// (`ca.crt`), a TLS KafkaUser's certificate and key from its Secret (`user.crt`,
    /// `user.key`). With `sasl`: SASL over TLS (`SASL_SSL`); alone: `SSL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTls>,
    /// SASL authentication (SCRAM or PLAIN), the password from a key of a Secret — a SCRAM
    /// KafkaUser's Secret (`password`) works as it is. Without `tls`: `SASL_PLAINTEXT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSasl>,
    /// Extra librdkafka settings (tuning only). Allowed keys: client.rack, socket.timeout.ms,
    /// socket.keepalive.enable, socket.connection.setup.timeout.ms, reconnect.backoff.ms,
    /// reconnect.backoff.max.ms, request.timeout.ms, metadata.max.age.ms,
    /// topic.metadata.refresh.interval.ms, broker.address.family, statistics.interval.ms,
    /// session.timeout.ms, heartbeat.interval.ms, max.poll.interval.ms,
    /// partition.assignment.strategy, fetch.min.bytes, fetch.max.bytes, fetch.wait.max.ms,
    /// max.partition.fetch.bytes, queued.min.messages, queued.max.messages.kbytes,
    /// compression.type, linger.ms, batch.size, batch.num.messages, message.max.bytes,
    /// queue.buffering.max.messages, queue.buffering.max.kbytes.
    /// Credentials belong in secretRef.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = string_map_limits::<32, 256>)]
    #[x_kube(validation = Rule::new(kafka_config_rule()).message(
        "kafka.config may only set the allowed librdkafka tuning keys (see kubectl explain); credentials belong in kafka.secretRef"
    ).reason(Reason::FieldValueForbidden))]
    pub config: BTreeMap<String, String>,
}

/// TLS settings of a Kafka connection (librdkafka `ssl.*`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.certSecretRef) == has(self.keySecretRef)")
    .message("kafka.tls: certSecretRef and keySecretRef go together (a client certificate and its key)")
    .reason(Reason::FieldValueInvalid))]
pub struct KafkaTls {
    /// The CA that signed the brokers' certificates, PEM (Strimzi:
    /// `{name: <cluster>-cluster-ca-cert, key: ca.crt}`). Unset: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// The client certificate, PEM, for brokers that authenticate clients by TLS (Strimzi:
    /// `{name: <kafkauser>, key: user.crt}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<SecretKeyRef>,
    /// The client certificate's private key, PEM, unencrypted (Strimzi:
    /// `{name: <kafkauser>, key: user.key}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_ref: Option<SecretKeyRef>,
}

/// A SASL mechanism.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SaslMechanism {
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// The password travels as it is: only over TLS.
    #[serde(rename = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    /// The name librdkafka and the brokers use.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::Plain => "PLAIN",
        }
    }
}

/// SASL settings of a Kafka connection (librdkafka `sasl.*`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.username) != has(self.usernameSecretRef)")
    .message("kafka.sasl: set exactly one of username and usernameSecretRef")
    .reason(Reason::FieldValueInvalid))]
pub struct KafkaSasl {
    /// `SCRAM-SHA-512` (Strimzi's `scram-sha-512` authentication), `SCRAM-SHA-256` or
    /// `PLAIN` (only with `tls`).
    pub mechanism: SaslMechanism,
    /// The user name (Strimzi: the KafkaUser's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub username: Option<String>,
    /// The user name from a Secret key, where it is kept secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_secret_ref: Option<SecretKeyRef>,
    /// The password (Strimzi: `{name: <kafkauser>, key: password}`).
    pub password_secret_ref: SecretKeyRef,
}

impl KafkaConnection {
    /// The librdkafka security settings that are not secret, from `tls` and `sasl`
    /// (`security.protocol`, `sasl.mechanism`, a `sasl.username` given as text). Empty with
    /// neither (plaintext, or the whole-Secret form `secretRef`).
    pub fn security_settings(&self) -> Vec<(&'static str, String)> {
        let protocol = match (&self.tls, &self.sasl) {
            (None, None) => return vec![],
            (Some(_), None) => "SSL",
            (None, Some(_)) => "SASL_PLAINTEXT",
            (Some(_), Some(_)) => "SASL_SSL",
        };
        let mut out = vec![("security.protocol", protocol.to_string())];
        if let Some(sasl) = &self.sasl {
            out.push(("sasl.mechanism", sasl.mechanism.as_str().to_string()));
            if let Some(user) = &sasl.username {
                out.push(("sasl.username", user.clone()));
            }
        }
        out
    }

    /// The librdkafka settings whose values come from Secret keys, from `tls` and `sasl`:
    /// (librdkafka key, the Secret key holding its value).
    pub fn secret_key_settings(&self) -> Vec<(&'static str, &SecretKeyRef)> {
        let mut out = Vec::new();
        if let Some(tls) = &self.tls {
            out.extend(tls.ca_secret_ref.as_ref().map(|r| ("ssl.ca.pem", r)));
            out.extend(
                tls.cert_secret_ref
                    .as_ref()
                    .map(|r| ("ssl.certificate.pem", r)),
            );
            out.extend(tls.key_secret_ref.as_ref().map(|r| ("ssl.key.pem", r)));
        }
        if let Some(sasl) = &self.sasl {
            out.extend(
                sasl.username_secret_ref
                    .as_ref()
                    .map(|r| ("sasl.username", r)),
            );
            out.push(("sasl.password", &sasl.password_secret_ref));
        }
        out
    }
}

/// The CEL rule that keeps `kafka.config` to [`KAFKA_CONFIG_ALLOWED_KEYS`].
fn kafka_config_rule() -> String {
    let keys: Vec<String> = KAFKA_CONFIG_ALLOWED_KEYS
        .iter()
        .map(|k| format!("'{k}'"))
        .collect();
    format!("self.all(k, k in [{}])", keys.join(", "))
}

/// A CEL rule: the duration (a string that matches [`DURATION_PATTERN`]) lies in
/// `[min, max]`. A string that does not match is left to the pattern, so that a typo gets one
/// error that shows the expected syntax rather than a second one about conversion.
pub(crate) fn duration_between(min: &str, max: &str) -> String {
    let pattern = DURATION_PATTERN.replace('\\', "\\\\");
    format!(
        "!self.matches('{pattern}') || (duration(self) >= duration('{min}') && duration(self) <= duration('{max}'))"
    )
}

/// A CEL rule: duration field `shorter` is at most duration field `longer` (both of `self`).
/// Strings that are no durations are left to the pattern, as in [`duration_between`].
pub(crate) fn duration_not_longer(shorter: &str, longer: &str) -> String {
    let pattern = DURATION_PATTERN.replace('\\', "\\\\");
    format!(
        "!self.{shorter}.matches('{pattern}') || !self.{longer}.matches('{pattern}') || duration(self.{shorter}) <= duration(self.{longer})"
    )
}

/// Bounds a `map[string]string`: at most `N` entries, keys and values at most `LEN` characters.
/// The bounds also keep the CEL rules on such maps within the apiserver's cost budget.
pub(crate) fn string_map_limits<const N: usize, const LEN: usize>(schema: &mut Schema) {
    schema.insert("maxProperties".into(), N.into());
    if let Some(values) = schema
        .get_mut("additionalProperties")
        .and_then(|v| v.as_object_mut())
    {
        values.insert("maxLength".into(), LEN.into());
    }
}

/// A duration in Go syntax: one or more `<number><unit>` with unit `ns`, `us`, `ms`, `s`, `m`
/// or `h`, e.g. `500ms`, `30s`, `5m`, `1h30m`. Kept as written, so that what a user applied
/// is what they read back.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(transparent)]
pub struct Duration(pub String);

impl Duration {
    /// The duration as a [`std::time::Duration`]. The schema admits only strings that parse.
    pub fn to_std(&self) -> Result<std::time::Duration, kube::core::duration::ParseError> {
        self.0
            .parse::<kube::core::Duration>()
            .map(std::time::Duration::from)
    }
}

impl From<&str> for Duration {
    fn from(value: &str) -> Self {
        Duration(value.to_string())
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 20,
            "pattern": DURATION_PATTERN,
        })
    }
}

/// Label and annotation key prefixes the operator owns on worker pods: a pod's
/// `app.kubernetes.io/*` labels are the Deployment's selector, its `pipewright.io/*`
/// annotations roll the pods when the configuration or a Secret changes.
pub const RESERVED_POD_LABEL_PREFIXES: &[&str] = &["app.kubernetes.io/", "pipewright.io/"];
/// The environment variable prefix the worker reads its own settings from.
pub const RESERVED_ENV_PREFIX: &str = "PIPEWRIGHT_";

/// Where and how the worker pods run: scheduling, pulling, metadata and extra environment.
/// Each field set here is copied into the pod template as it is; unset fields leave the pod as
/// the operator renders it (so adding this block later rolls the pods once, leaving it out
/// rolls nothing). The pods' security settings (restricted profile, no service-account token)
/// are the operator's and cannot be changed here.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPod {
    /// Extra labels on the worker pods. Keys under app.kubernetes.io/ and pipewright.io/
    /// are the operator's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = string_map_limits::<32, 63>)]
    #[x_kube(validation = Rule::new(reserved_keys_rule()).message(
        "pod.labels: keys under app.kubernetes.io/ and pipewright.io/ are set by the operator"
    ).reason(Reason::FieldValueForbidden))]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations on the worker pods (e.g. a service mesh's or a log collector's).
    /// Keys under app.kubernetes.io/ and pipewright.io/ are the operator's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = string_map_limits::<32, 4096>)]
    #[x_kube(validation = Rule::new(reserved_keys_rule()).message(
        "pod.annotations: keys under app.kubernetes.io/ and pipewright.io/ are set by the operator"
    ).reason(Reason::FieldValueForbidden))]
    pub annotations: BTreeMap<String, String>,
    /// Annotations on the workers' ServiceAccount (`<name>-consumer` or `<name>-outbox`): the
    /// cloud's workload identity, e.g. `eks.amazonaws.com/role-arn` (MSK with IAM),
    /// `iam.gke.io/gcp-service-account`, `azure.workload.identity/client-id`. Keys under
    /// app.kubernetes.io/ and pipewright.io/ are the operator's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = string_map_limits::<32, 4096>)]
    #[x_kube(validation = Rule::new(reserved_keys_rule()).message(
        "pod.serviceAccountAnnotations: keys under app.kubernetes.io/ and pipewright.io/ are set by the operator"
    ).reason(Reason::FieldValueForbidden))]
    pub service_account_annotations: BTreeMap<String, String>,
    /// The pods run only on nodes with these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = string_map_limits::<32, 63>)]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    /// Node and pod (anti-)affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<k8s_openapi::api::core::v1::Affinity>,
    /// How the pods spread over zones or nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub topology_spread_constraints: Vec<k8s_openapi::api::core::v1::TopologySpreadConstraint>,
    /// The PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// Secrets (in the resource's namespace) for pulling the worker image from a private
    /// registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub image_pull_secrets: Vec<k8s_openapi::api::core::v1::LocalObjectReference>,
    /// Extra environment of the worker container (e.g. `RUST_LOG`, proxy settings). A secret
    /// value belongs in `valueFrom.secretKeyRef`, never in `value`. Names starting with
    /// PIPEWRIGHT_ are the worker's own settings, which the operator sets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(format!(
        "self.all(e, !e.name.startsWith('{RESERVED_ENV_PREFIX}'))"
    )).message(
        "pod.env: names starting with PIPEWRIGHT_ are the worker's own settings, set by the operator"
    ).reason(Reason::FieldValueForbidden))]
    pub env: Vec<k8s_openapi::api::core::v1::EnvVar>,
}

impl WorkerPod {
    /// Whether nothing is set (the pod as the operator renders it).
    pub fn is_empty(&self) -> bool {
        *self == WorkerPod::default()
    }
}

/// The CEL rule that keeps a map's keys out of [`RESERVED_POD_LABEL_PREFIXES`].
fn reserved_keys_rule() -> String {
    let checks: Vec<String> = RESERVED_POD_LABEL_PREFIXES
        .iter()
        .map(|p| format!("!k.startsWith('{p}')"))
        .collect();
    format!("self.all(k, {})", checks.join(" && "))
}

/// The OpenTelemetry variables the operator sets for [`Tracing`] and the worker reads (the
/// SDK's standard names): one list for both sides.
pub mod otel_env {
    /// The OTLP/HTTP base URL; spans go to `<endpoint>/v1/traces`. Set: traces on.
    pub const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    /// The traces-only URL (used as it is); also turns traces on.
    pub const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
    /// Only `http/protobuf` is built into the worker.
    pub const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
    pub const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
    pub const PROTOCOL_HTTP_PROTOBUF: &str = "http/protobuf";
    pub const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
    pub const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
    pub const SAMPLER: &str = "OTEL_TRACES_SAMPLER";
    pub const SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
    /// The sampler the operator sets: a ratio of new traces, a parent's decision kept.
    pub const SAMPLER_PARENT_BASED_RATIO: &str = "parentbased_traceidratio";
    /// `true`: no traces, whatever else is set.
    pub const SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
    /// `none`: no traces, whatever else is set.
    pub const TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
}

/// What the workers report beyond metrics.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Observability {
    /// OpenTelemetry traces of each record's way through the worker (docs/tracing.md). Off
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
}

/// OpenTelemetry traces, exported over OTLP (HTTP/protobuf) to a collector or a tracing
/// backend (Jaeger, Tempo, an OpenTelemetry Collector). The worker continues the trace each
/// record carries (W3C `traceparent` header): a span per outbox row published and per record
/// delivered, retries as span events, the context passed on to the sink. Further `OTEL_*`
/// variables (`OTEL_EXPORTER_OTLP_HEADERS` from a Secret, timeouts, compression) go in
/// `pod.env`, which comes after these and wins.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tracing {
    /// The collector's OTLP/HTTP base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`), e.g.
    /// `http://otel-collector.observability:4318`; spans are sent to `<endpoint>/v1/traces`.
    /// Only OTLP over HTTP (protobuf) is supported, not gRPC (port 4317).
    #[schemars(
        length(min = 1, max = 2048),
        regex(pattern = r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    )]
    pub endpoint: String,
    /// The percentage of new traces recorded (0–100, default 100). A record whose producer
    /// sampled its trace is traced, one whose producer did not is not (parent-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub sampling_percent: Option<u8>,
    /// The spans' `service.name` (`OTEL_SERVICE_NAME`). Default: the workers' name,
    /// `<name>-consumer` or `<name>-outbox`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_name: Option<String>,
}

/// How many worker replicas an autoscaler may run for an EventConsumer, and the consumer lag
/// that calls for one more.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxReplicas >= self.minReplicas")
    .message("autoscaling.maxReplicas must be greater than or equal to autoscaling.minReplicas")
    .field_path(".maxReplicas"))]
pub struct ConsumerAutoscaling {
    /// The fewest replicas to run. Default 1.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1024))]
    pub min_replicas: i32,
    /// The most replicas to run. Replicas beyond the number of partitions of the consumed
    /// topics would sit idle, so the operator never runs more than that.
    #[schemars(range(min = 1, max = 1024))]
    pub max_replicas: i32,
    /// Target consumer lag (records not yet committed, over all partitions) per replica: the
    /// autoscaler runs ceil(totalLag / lagThreshold) replicas within the bounds. Default 1000.
    #[serde(default = "default_lag_threshold")]
    #[schemars(range(min = 1))]
    pub lag_threshold: i64,
}

fn one() -> i32 {
    1
}

fn default_lag_threshold() -> i64 {
    1000
}

/// The header an HTTP sink (by default) and an HTTP dead-letter destination carry the record's
/// `<topic>/<partition>/<offset>` in, so that a receiver can drop a redelivery.
pub const DEFAULT_IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_convert_to_std_durations() {
        assert_eq!(
            Duration::from("1h30m").to_std().unwrap(),
            std::time::Duration::from_secs(5400)
        );
        assert_eq!(
            Duration::from("250ms").to_std().unwrap(),
            std::time::Duration::from_millis(250)
        );
    }

    #[test]
    fn kafka_config_allow_list_has_no_credentials_or_guarantee_settings() {
        for key in KAFKA_CONFIG_ALLOWED_KEYS {
            assert!(
                !key.starts_with("sasl.") && !key.starts_with("ssl."),
                "{key}"
            );
            assert!(
                ![
                    "group.id",
                    "enable.auto.commit",
                    "enable.idempotence",
                    "transactional.id",
                    "isolation.level",
                    "bootstrap.servers",
                    "auto.offset.reset",
                    "acks",
                    "message.timeout.ms",
                ]
                .contains(key),
                "{key}"
            );
        }
    }
}
