//! The pipewright CRDs on the real apiserver: they install and become Established, the
//! examples apply, `kubectl explain` prints the field documentation, the schema rejects
//! invalid resources with a message naming the field, immutable fields stay put, and the
//! status and scale subresources work.
//!
//! CRDs are cluster-scoped and shared by tests running in parallel: every test installs them
//! with the same server-side apply (idempotent) and works in a namespace of its own.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use pipewright_crds::event_consumer::{
    ConsumerCounters, InitialOffset, PartitionStatus, Processing, RejectedCounters,
};
use pipewright_crds::outbox::{Cleanup, Poll};
use pipewright_crds::{EventConsumer, EventConsumerStatus, Outbox, OutboxStatus, conditions};
use pipewright_testenv::{
    HOW_TO_START, TestNamespace, eventually, install_crds, kube_client, unique_name,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// The header and first row of `kubectl get` table output, split into columns.
fn header_and_first_row(table: &str) -> (Vec<&str>, Vec<&str>) {
    let mut lines = table.lines().map(|l| l.split_whitespace().collect());
    let header = lines.next().unwrap_or_default();
    let row = lines.next().unwrap_or_default();
    (header, row)
}

/// Runs the test environment's kubectl (`$KUBECTL`, against `$KUBECONFIG`).
fn kubectl(args: &[&str]) -> Output {
    let kubectl =
        std::env::var("KUBECTL").unwrap_or_else(|_| panic!("KUBECTL is not set; {HOW_TO_START}"));
    Command::new(&kubectl)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {kubectl}: {e}"))
}

/// Runs kubectl and returns its stdout; panics with its stderr when it fails.
fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn examples_dir() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .display()
        .to_string()
}

/// JSON merge patch (RFC 7386): `null` removes a key.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// A valid EventConsumer named `name`, its spec changed by `spec_patch`.
fn event_consumer(name: &str, spec_patch: Value) -> Value {
    let mut ec = json!({
        "apiVersion": "pipewright.io/v1alpha1",
        "kind": "EventConsumer",
        "metadata": {"name": name},
        "spec": {
            "kafka": {"bootstrapServers": ["kafka:9092"]},
            "topics": ["orders"],
            "processing": {"deadLetterTopic": "orders.dlq"},
            "sink": {"log": {}},
        },
    });
    merge(&mut ec["spec"], &spec_patch);
    ec
}

/// A valid Outbox named `name`, its spec changed by `spec_patch`.
fn outbox(name: &str, spec_patch: Value) -> Value {
    let mut obx = json!({
        "apiVersion": "pipewright.io/v1alpha1",
        "kind": "Outbox",
        "metadata": {"name": name},
        "spec": {
            "database": {"dsnSecretRef": {"name": "db", "key": "dsn"}},
            "kafka": {"bootstrapServers": ["kafka:9092"]},
            "topic": "orders",
        },
    });
    merge(&mut obx["spec"], &spec_patch);
    obx
}

fn dynamic_api<K: Resource<DynamicType = ()>>(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<K>(&()))
}

async fn create(api: &Api<DynamicObject>, object: Value) -> Result<DynamicObject, kube::Error> {
    let object: DynamicObject = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &object).await
}

/// The apiserver's message when it rejects `result`, or `None` when it accepted it.
fn rejection<T>(result: Result<T, kube::Error>) -> Option<String> {
    match result {
        Ok(_) => None,
        Err(kube::Error::Api(status)) => Some(status.message),
        Err(e) => panic!("request failed for another reason than validation: {e}"),
    }
}

#[tokio::test]
async fn crds_install_and_become_established_with_names_and_category() {
    let client = kube_client().await;
    install_crds(&client).await;
    let api: Api<CustomResourceDefinition> = Api::all(client);
    for (name, short) in [
        ("eventconsumers.pipewright.io", "ec"),
        ("outboxes.pipewright.io", "obx"),
    ] {
        let crd = api.get(name).await.unwrap();
        let status = crd.status.unwrap();
        let conditions = status.conditions.unwrap();
        for wanted in ["NamesAccepted", "Established"] {
            assert!(
                conditions
                    .iter()
                    .any(|c| c.type_ == wanted && c.status == "True"),
                "{name}: {wanted} is not True: {conditions:?}"
            );
        }
        let accepted = status.accepted_names.unwrap();
        assert_eq!(accepted.short_names, Some(vec![short.to_string()]));
        assert_eq!(accepted.categories, Some(vec!["pipewright".to_string()]));
    }
}

#[tokio::test]
async fn every_example_applies_and_reads_back_as_the_rust_types() {
    let client = kube_client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "crds-examples").await;
    let dir = examples_dir();

    let dry_run = kubectl_ok(&["apply", "--dry-run=server", "-n", &ns.name, "-f", &dir]);
    let applied = kubectl_ok(&["apply", "-n", &ns.name, "-f", &dir]);
    let count = applied.lines().filter(|l| l.contains(" created")).count();
    assert_eq!(dry_run.lines().count(), count, "{dry_run}\n{applied}");

    let consumers = Api::<EventConsumer>::namespaced(client.clone(), &ns.name)
        .list(&Default::default())
        .await
        .unwrap();
    let outboxes = Api::<Outbox>::namespaced(client.clone(), &ns.name)
        .list(&Default::default())
        .await
        .unwrap();
    assert!(consumers.items.len() >= 4, "{applied}");
    assert!(outboxes.items.len() >= 2, "{applied}");
    assert_eq!(consumers.items.len() + outboxes.items.len(), count);
    for ec in &consumers.items {
        assert!(ec.spec.sink.kind().is_some(), "{:?}", ec.metadata.name);
    }
    ns.delete().await;
}

#[tokio::test]
async fn kubectl_explain_prints_the_documentation_of_spec_and_nested_fields() {
    let client = kube_client().await;
    install_crds(&client).await;
    let cases = [
        (
            "eventconsumer.spec",
            "exactly one of http, kafka, postgres, log",
        ),
        (
            "eventconsumer.spec.sink.postgres.table",
            "lower-case SQL identifier",
        ),
        (
            "eventconsumer.spec.processing.retry.backoff.initial",
            "Wait before the first retry",
        ),
        ("outbox.spec.topicTemplate", "{aggregatetype}"),
        ("outbox.spec.database.dsnSecretRef", "connection string"),
    ];
    for (field, text) in cases {
        // The apiserver publishes a new CRD's OpenAPI a moment after it is Established.
        let out = eventually(&format!("kubectl explain {field}"), WAIT, || async {
            let out = kubectl(&["explain", field]);
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            (out.status.success() && stdout.contains(text)).then_some(stdout)
        })
        .await;
        assert!(out.contains("DESCRIPTION"), "{out}");
    }
}

/// (what is wrong, the resource, the field the apiserver must name).
type Case = (&'static str, Value, &'static str);

fn invalid_event_consumers() -> Vec<Case> {
    let ec = |spec: Value| event_consumer("invalid", spec);
    let http = |extra: Value| {
        let mut sink = json!({"url": "https://example.com/in"});
        merge(&mut sink, &extra);
        ec(json!({"sink": {"log": null, "http": sink}}))
    };
    let postgres = |extra: Value| {
        let mut sink = json!({"dsnSecretRef": {"name": "db", "key": "dsn"}, "table": "events"});
        merge(&mut sink, &extra);
        ec(json!({"sink": {"log": null, "postgres": sink}}))
    };
    let mut not_a_label = ec(json!({}));
    not_a_label["metadata"]["name"] = json!("orders.v2");
    vec![
        ("no topics", ec(json!({"topics": []})), "spec.topics"),
        (
            "a pod label under app.kubernetes.io/ (the selector's)",
            ec(json!({"pod": {"labels": {"app.kubernetes.io/instance": "other"}}})),
            "spec.pod.labels",
        ),
        (
            "a pod annotation under pipewright.io/",
            ec(json!({"pod": {"annotations": {"pipewright.io/secrets-hash": "x"}}})),
            "spec.pod.annotations",
        ),
        (
            "a ServiceAccount annotation under pipewright.io/",
            ec(json!({"pod": {"serviceAccountAnnotations": {"pipewright.io/x": "y"}}})),
            "spec.pod.serviceAccountAnnotations",
        ),
        (
            "an environment variable of the worker's own (PIPEWRIGHT_)",
            ec(json!({"pod": {"env": [{"name": "PIPEWRIGHT_LISTEN", "value": "0.0.0.0:1"}]}})),
            "spec.pod.env",
        ),
        (
            "a topic name with a space",
            ec(json!({"topics": ["my topic"]})),
            "spec.topics[0]",
        ),
        (
            "a group id with a slash",
            ec(json!({"groupId": "a/b"})),
            "spec.groupId",
        ),
        (
            "an unknown initial offset",
            ec(json!({"initialOffset": "middle"})),
            "spec.initialOffset",
        ),
        ("no sink", ec(json!({"sink": {"log": null}})), "spec.sink"),
        (
            "two sinks",
            ec(json!({"sink": {"kafka": {"topic": "copy"}}})),
            "spec.sink",
        ),
        (
            "an ftp URL",
            http(json!({"url": "ftp://example.com/in"})),
            "spec.sink.http.url",
        ),
        (
            "credentials in the URL",
            http(json!({"url": "https://user:pw@example.com/in"})),
            "spec.sink.http.url",
        ),
        (
            "both a URL and a Service reference",
            http(json!({"ref": {"kind": "Service", "name": "hooks"}})),
            "spec.sink.http",
        ),
        (
            "neither a URL nor a Service reference",
            http(json!({"url": null, "timeout": "5s"})),
            "spec.sink.http",
        ),
        (
            "a path with a URL",
            http(json!({"path": "/in"})),
            "spec.sink.http",
        ),
        (
            "a reference to a kind other than Service",
            http(json!({"url": null, "ref": {"kind": "Broker", "name": "default"}})),
            "spec.sink.http.ref.kind",
        ),
        (
            "a Service name that is no DNS label",
            http(json!({"url": null, "ref": {"kind": "Service", "name": "Hooks.v2"}})),
            "spec.sink.http.ref.name",
        ),
        (
            "a Service port of 0",
            http(json!({"url": null, "ref": {"kind": "Service", "name": "hooks", "port": 0}})),
            "spec.sink.http.ref.port",
        ),
        (
            "a relative path",
            http(json!({"url": null, "ref": {"kind": "Service", "name": "hooks"}, "path": "in"})),
            "spec.sink.http.path",
        ),
        (
            "an Authorization header",
            http(json!({"headers": {"Authorization": "Bearer abc"}})),
            "spec.sink.http.headers",
        ),
        (
            "an HTTP timeout of 10m",
            http(json!({"timeout": "10m"})),
            "spec.sink.http.timeout",
        ),
        (
            "an unknown CloudEvents content mode",
            http(json!({"contentMode": "batched"})),
            "spec.sink.http.contentMode",
        ),
        (
            "a CloudEvents source with a space",
            http(json!({"ceSource": "my source"})),
            "spec.sink.http.ceSource",
        ),
        (
            "an empty CloudEvents type",
            http(json!({"ceType": ""})),
            "spec.sink.http.ceType",
        ),
        (
            "forwarding a CloudEvents header",
            http(json!({"forwardHeaders": ["traceparent", "ce-type"]})),
            "spec.sink.http.forwardHeaders",
        ),
        (
            "forwarding Content-Length",
            http(json!({"forwardHeaders": ["Content-Length"]})),
            "spec.sink.http.forwardHeaders",
        ),
        (
            "forwarding a header that is no header name",
            http(json!({"forwardHeaders": ["a b"]})),
            "spec.sink.http.forwardHeaders",
        ),
        (
            "forwarding the idempotency header",
            http(json!({"forwardHeaders": ["idempotency-key"]})),
            "spec.sink.http",
        ),
        (
            "a librdkafka key outside the allow-list",
            ec(json!({"kafka": {"config": {"sasl.password": "x"}}})),
            "spec.kafka.config",
        ),
        (
            "a bootstrap server without a port",
            ec(json!({"kafka": {"bootstrapServers": ["kafka"]}})),
            "spec.kafka.bootstrapServers[0]",
        ),
        (
            "a Kafka secretRef that is no Secret name",
            ec(json!({"kafka": {"secretRef": {"name": "Not_A_Name"}}})),
            "spec.kafka.secretRef.name",
        ),
        (
            "concurrency 0",
            ec(json!({"processing": {"concurrency": 0}})),
            "spec.processing.concurrency",
        ),
        (
            "101 attempts",
            ec(json!({"processing": {"retry": {"maxAttempts": 101}}})),
            "spec.processing.retry.maxAttempts",
        ),
        (
            "a backoff that is no duration",
            ec(json!({"processing": {"retry": {"backoff": {"initial": "soon"}}}})),
            "spec.processing.retry.backoff.initial",
        ),
        (
            "a backoff initial longer than its max",
            ec(json!({"processing": {"retry": {"backoff": {"initial": "1m", "max": "1s"}}}})),
            "spec.processing.retry.backoff.initial",
        ),
        (
            "a drain timeout of 2h",
            ec(json!({"processing": {"drainTimeout": "2h"}})),
            "spec.processing.drainTimeout",
        ),
        (
            "a dead-letter topic that is consumed",
            ec(json!({"processing": {"deadLetterTopic": "orders"}})),
            "spec.processing.deadLetterTopic",
        ),
        (
            "dead-lettering unknown types without a dead-letter topic",
            ec(json!({"events": {"types": [{"name": "order.created"}]},
                "processing": {"deadLetterTopic": null}})),
            "spec.processing.deadLetterTopic",
        ),
        (
            "no dead-letter topic and no events (bad records are dead-lettered by default)",
            ec(json!({"processing": {"deadLetterTopic": null}})),
            "spec.processing.deadLetterTopic",
        ),
        (
            "a dead-letter topic and a dead-letter sink together",
            ec(json!({"processing": {"deadLetterSink": {"http": {"url": "http://dl.example/x"}}}})),
            "spec.processing.deadLetterSink",
        ),
        (
            "a dead-letter sink with neither url nor ref",
            ec(json!({"processing": {"deadLetterTopic": null,
                "deadLetterSink": {"http": {"timeout": "5s"}}}})),
            "spec.processing.deadLetterSink.http",
        ),
        (
            "a dead-letter sink URL with credentials in it",
            ec(json!({"processing": {"deadLetterTopic": null,
                "deadLetterSink": {"http": {"url": "https://user:pw@dl.example/x"}}}})),
            "spec.processing.deadLetterSink.http.url",
        ),
        (
            "an event schema both inline and from a ConfigMap",
            ec(
                json!({"events": {"onUnknownType": "skip", "types": [{"name": "a", "schema": {
                "inline": {"type": "object"}, "configMapKeyRef": {"name": "s", "key": "k"}}}]}}),
            ),
            "spec.events.types[0].schema",
        ),
        (
            "the event type from both a header and a field",
            ec(
                json!({"events": {"onUnknownType": "skip", "types": [{"name": "a"}],
                "typeFrom": {"header": "type", "field": "kind"}}}),
            ),
            "spec.events.typeFrom",
        ),
        (
            "the event type from nowhere",
            ec(
                json!({"events": {"onUnknownType": "skip", "types": [{"name": "a"}],
                "typeFrom": {}}}),
            ),
            "spec.events.typeFrom",
        ),
        (
            "an event type header that is no header name",
            ec(
                json!({"events": {"onUnknownType": "skip", "types": [{"name": "a"}],
                "typeFrom": {"header": "a b"}}}),
            ),
            "spec.events.typeFrom.header",
        ),
        (
            "raw values typed by a field of the value",
            ec(json!({"events": {"format": "raw", "onUnknownType": "skip",
                "typeFrom": {"field": "kind"}}})),
            "spec.events.typeFrom",
        ),
        (
            "raw values with declared types but no type header",
            ec(json!({"events": {"format": "raw", "onUnknownType": "skip",
                "types": [{"name": "a"}]}})),
            "spec.events.types",
        ),
        (
            "raw values with a JSON Schema",
            ec(json!({"events": {"format": "raw", "onUnknownType": "skip",
                "typeFrom": {"header": "type"},
                "types": [{"name": "a", "schema": {"inline": {"type": "object"}}}]}})),
            "spec.events.types",
        ),
        (
            "raw values into the postgres sink",
            ec(json!({"events": {"format": "raw", "onUnknownType": "skip"},
                "sink": {"log": null, "postgres": {"dsnSecretRef": {"name": "db", "key": "dsn"},
                "table": "events"}}})),
            "spec.sink.postgres",
        ),
        (
            "an unknown event format",
            ec(json!({"events": {"format": "avro", "onUnknownType": "skip"}})),
            "spec.events.format",
        ),
        (
            "an event type declared twice",
            ec(
                json!({"events": {"onUnknownType": "skip", "types": [{"name": "a"}, {"name": "a"}]}}),
            ),
            "spec.events.types[1]",
        ),
        (
            "a kafka sink into a consumed topic",
            ec(json!({"sink": {"log": null, "kafka": {"topic": "orders"}}})),
            "spec.sink.kafka.topic",
        ),
        (
            "a table name that is SQL",
            postgres(json!({"table": "events; drop table users"})),
            "spec.sink.postgres.table",
        ),
        (
            "a DSN reference without a key",
            postgres(json!({"dsnSecretRef": {"key": null}})),
            "spec.sink.postgres.dsnSecretRef.key",
        ),
        (
            "an upper-case upsert key column",
            postgres(json!({"upsertKey": ["Id"]})),
            "spec.sink.postgres.upsertKey[0]",
        ),
        (
            "maxReplicas below minReplicas",
            ec(json!({"autoscaling": {"minReplicas": 3, "maxReplicas": 2}})),
            "spec.autoscaling.maxReplicas",
        ),
        (
            "negative replicas",
            ec(json!({"replicas": -1})),
            "spec.replicas",
        ),
        (
            "kafka.secretRef together with kafka.sasl",
            ec(
                json!({"kafka": {"bootstrapServers": ["k:9093"], "secretRef": {"name": "kafka"},
                "sasl": {"mechanism": "SCRAM-SHA-512", "username": "u",
                         "passwordSecretRef": {"name": "u", "key": "password"}}}}),
            ),
            "spec.kafka",
        ),
        (
            "a client certificate without its key",
            ec(json!({"kafka": {"bootstrapServers": ["k:9093"],
                "tls": {"certSecretRef": {"name": "u", "key": "user.crt"}}}})),
            "spec.kafka.tls",
        ),
        (
            "SASL with both username and usernameSecretRef",
            ec(json!({"kafka": {"bootstrapServers": ["k:9093"],
                "sasl": {"mechanism": "SCRAM-SHA-512", "username": "u",
                         "usernameSecretRef": {"name": "u", "key": "user"},
                         "passwordSecretRef": {"name": "u", "key": "password"}}}})),
            "spec.kafka.sasl",
        ),
        (
            "an unknown SASL mechanism",
            ec(json!({"kafka": {"bootstrapServers": ["k:9093"],
                "sasl": {"mechanism": "GSSAPI", "username": "u",
                         "passwordSecretRef": {"name": "u", "key": "password"}}}})),
            "spec.kafka.sasl.mechanism",
        ),
        (
            "typeFrom with events.format cloudEvents",
            ec(json!({"events": {"format": "cloudEvents", "typeFrom": {"header": "type"}}})),
            "spec.events.typeFrom",
        ),
        (
            "a tracing endpoint that is not an http(s) URL",
            ec(json!({"observability": {"tracing": {"endpoint": "collector:4317"}}})),
            "spec.observability.tracing.endpoint",
        ),
        (
            "a tracing sampling percentage over 100",
            ec(
                json!({"observability": {"tracing": {"endpoint": "http://c:4318", "samplingPercent": 150}}}),
            ),
            "spec.observability.tracing.samplingPercent",
        ),
        (
            "a name that is not a DNS label",
            not_a_label,
            "metadata.name",
        ),
    ]
}

fn invalid_outboxes() -> Vec<Case> {
    let obx = |spec: Value| outbox("invalid", spec);
    vec![
        (
            "no database",
            obx(json!({"database": null})),
            "spec.database",
        ),
        (
            "an upper-case table",
            obx(json!({"table": "Outbox"})),
            "spec.table",
        ),
        (
            "both topic and topicTemplate",
            obx(json!({"topicTemplate": "outbox.{aggregatetype}"})),
            "topicTemplate",
        ),
        (
            "neither topic nor topicTemplate",
            obx(json!({"topic": null})),
            "topicTemplate",
        ),
        (
            "a topicTemplate without {aggregatetype}",
            obx(json!({"topic": null, "topicTemplate": "outbox.{type}"})),
            "spec.topicTemplate",
        ),
        (
            "batch size 0",
            obx(json!({"poll": {"batchSize": 0}})),
            "spec.poll.batchSize",
        ),
        (
            "maxInFlight below batchSize",
            obx(json!({"poll": {"batchSize": 500, "maxInFlight": 100}})),
            "spec.poll.maxInFlight",
        ),
        (
            "a poll interval of 2h",
            obx(json!({"poll": {"interval": "2h"}})),
            "spec.poll.interval",
        ),
        (
            "an unknown cleanup policy",
            obx(json!({"cleanup": {"policy": "truncate"}})),
            "spec.cleanup.policy",
        ),
        (
            "a retention with policy delete",
            obx(json!({"cleanup": {"retention": "1h"}})),
            "spec.cleanup.retention",
        ),
        (
            "a pod label under pipewright.io/",
            obx(json!({"pod": {"labels": {"pipewright.io/config-hash": "x"}}})),
            "spec.pod.labels",
        ),
        (
            "tracing without an endpoint",
            obx(json!({"observability": {"tracing": {"serviceName": "orders"}}})),
            "spec.observability.tracing.endpoint",
        ),
    ]
}

/// Checks every case is refused naming its field; returns the table of what the apiserver
/// answered (for the bad-input catalogue in docs/reliability.md).
async fn expect_rejected(api: &Api<DynamicObject>, cases: Vec<Case>) -> String {
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut wrong = Vec::new();
    let mut table = String::new();
    for (what, object, field) in cases {
        let object: DynamicObject = serde_json::from_value(object).unwrap();
        match rejection(api.create(&dry_run, &object).await) {
            None => wrong.push(format!("{what}: accepted")),
            Some(message) if !message.contains(field) => {
                wrong.push(format!("{what}: {message:?} does not name {field}"))
            }
            Some(message) => {
                // The apiserver's own text, without the object's name it starts with.
                let answer = message
                    .split_once(" is invalid: ")
                    .map_or(message.as_str(), |(_, m)| m)
                    .replace('|', "\\|")
                    .replace('\n', " ");
                table.push_str(&format!("| {what} | `{field}` | {answer} |\n"));
            }
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    table
}

#[tokio::test]
async fn invalid_event_consumers_are_rejected_with_a_message_naming_the_field() {
    let client = kube_client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "crds-invalid-ec").await;
    let api = dynamic_api::<EventConsumer>(&client, &ns.name);
    // The base of every case is valid.
    create(&api, event_consumer("valid", json!({})))
        .await
        .unwrap();
    let cases = invalid_event_consumers();
    assert!(cases.len() >= 15);
    let count = cases.len();
    let table = expect_rejected(&api, cases).await;
    pipewright_testenv::catalogue(
        "bad-input-event-consumers",
        &format!(
            "{count} EventConsumers refused by the apiserver (schema and CEL), each answer \
             naming the field; nothing is stored, so nothing runs.\n\n\
             | resource | field | the apiserver's answer |\n|---|---|---|\n{table}"
        ),
    );
    ns.delete().await;
}

#[tokio::test]
async fn invalid_outboxes_are_rejected_with_a_message_naming_the_field() {
    let client = kube_client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "crds-invalid-obx").await;
    let api = dynamic_api::<Outbox>(&client, &ns.name);
    create(&api, outbox("valid", json!({}))).await.unwrap();
    let cases = invalid_outboxes();
    let count = cases.len();
    let table = expect_rejected(&api, cases).await;
    pipewright_testenv::catalogue(
        "bad-input-outboxes",
        &format!(
            "{count} Outboxes refused by the apiserver, each answer naming the field.\n\n\
             | resource | field | the apiserver's answer |\n|---|---|---|\n{table}"
        ),
    );
    ns.delete().await;
}

/// Outbox autoscaling was accepted and ignored (one publisher per table); it left the API, so
/// a resource that still sets it is refused (kubectl validates strictly by default) rather
/// than silently pruned.
#[tokio::test]
async fn an_outbox_with_autoscaling_is_refused_by_strict_field_validation_naming_the_field() {
    let client = kube_client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "crds-obx-autoscaling").await;
    let object = outbox(
        "scaled",
        json!({"autoscaling": {"minReplicas": 1, "maxReplicas": 4, "backlogThreshold": 100}}),
    );
    let file = std::env::temp_dir().join(format!("{}.json", unique_name("outbox")));
    std::fs::write(&file, object.to_string()).unwrap();
    let path = file.display().to_string();
    let out = kubectl(&["create", "--dry-run=server", "-n", &ns.name, "-f", &path]);
    std::fs::remove_file(&file).ok();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "accepted: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("unknown field \"spec.autoscaling\""),
        "{stderr}"
    );
    // The same object without the field is valid: the refusal is about autoscaling alone.
    let mut valid = object.clone();
    valid["spec"].as_object_mut().unwrap().remove("autoscaling");
    let file = std::env::temp_dir().join(format!("{}.json", unique_name("outbox")));
    std::fs::write(&file, valid.to_string()).unwrap();
    let path = file.display().to_string();
    kubectl_ok(&["create", "--dry-run=server", "-n", &ns.name, "-f", &path]);
    std::fs::remove_file(&file).ok();
    ns.delete().await;
}

#[tokio::test]
async fn group_id_and_outbox_table_cannot_change_after_creation() {
    let client = kube_client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "crds-immutable").await;
    let consumers = dynamic_api::<EventConsumer>(&client, &ns.name);
    let outboxes = dynamic_api::<Outbox>(&client, &ns.name);
    create(
        &consumers,
        event_consumer("with-group", json!({"groupId": "billing"})),
    )
    .await
    .unwrap();
    create(&consumers, event_consumer("without-group", json!({})))
        .await
        .unwrap();
    create(&outboxes, outbox("orders", json!({})))
        .await
        .unwrap();

    let merge_patch = |spec: Value| Patch::Merge(json!({ "spec": spec }));
    let pp = PatchParams::default();
    for (what, api, name, spec, field) in [
        (
            "changing groupId",
            &consumers,
            "with-group",
            json!({"groupId": "other"}),
            "spec.groupId",
        ),
        (
            "removing groupId",
            &consumers,
            "with-group",
            json!({"groupId": null}),
            "spec.groupId",
        ),
        (
            "adding groupId",
            &consumers,
            "without-group",
            json!({"groupId": "late"}),
            "spec.groupId",
        ),
        (
            "changing table",
            &outboxes,
            "orders",
            json!({"table": "other"}),
            "spec.table",
        ),
    ] {
        let message = rejection(api.patch(name, &pp, &merge_patch(spec)).await)
            .unwrap_or_else(|| panic!("{what} was accepted"));
        assert!(
            message.contains(field) && message.contains("immutable"),
            "{what}: {message}"
        );
    }
    // Other fields still change.
    consumers
        .patch("with-group", &pp, &merge_patch(json!({"replicas": 3})))
        .await
        .unwrap();
    outboxes
        .patch("orders", &pp, &merge_patch(json!({"topic": "orders.v2"})))
        .await
        .unwrap();
    ns.delete().await;
}

#[tokio::test]
async fn omitted_fields_get_their_documented_defaults() {
    let client = kube_client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "crds-defaults").await;
    create(
        &dynamic_api::<EventConsumer>(&client, &ns.name),
        event_consumer("minimal", json!({})),
    )
    .await
    .unwrap();
    create(
        &dynamic_api::<Outbox>(&client, &ns.name),
        outbox("minimal", json!({})),
    )
    .await
    .unwrap();

    let ec = Api::<EventConsumer>::namespaced(client.clone(), &ns.name)
        .get("minimal")
        .await
        .unwrap();
    assert_eq!(ec.spec.initial_offset, InitialOffset::Earliest);
    assert_eq!(
        ec.spec.processing,
        Processing {
            dead_letter_topic: Some("orders.dlq".into()),
            ..Processing::default()
        }
    );
    assert_eq!(ec.spec.replicas, 1);
    assert_eq!(ec.spec.group_id, None);
    assert!(ec.spec.sink.log.unwrap().payload);

    let obx = Api::<Outbox>::namespaced(client.clone(), &ns.name)
        .get("minimal")
        .await
        .unwrap();
    assert_eq!(obx.spec.table, "outbox");
    assert_eq!(obx.spec.poll, Poll::default());
    assert_eq!(obx.spec.cleanup, Cleanup::default());
    assert_eq!(obx.spec.replicas, 1);
    ns.delete().await;
}

fn condition(type_: &str, status: &str, reason: &str, generation: i64) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: format!("{type_} is {status} because {reason}"),
        last_transition_time: Time(Timestamp::from_second(1_800_000_000).unwrap()),
        observed_generation: Some(generation),
    }
}

#[tokio::test]
async fn status_round_trips_through_patch_status_and_shows_in_printer_columns() {
    let client = kube_client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "crds-status").await;
    let name = unique_name("orders");
    create(
        &dynamic_api::<EventConsumer>(&client, &ns.name),
        event_consumer(&name, json!({})),
    )
    .await
    .unwrap();
    create(
        &dynamic_api::<Outbox>(&client, &ns.name),
        outbox(&name, json!({})),
    )
    .await
    .unwrap();
    let consumers = Api::<EventConsumer>::namespaced(client.clone(), &ns.name);
    let outboxes = Api::<Outbox>::namespaced(client.clone(), &ns.name);

    let ec_status = EventConsumerStatus {
        observed_generation: Some(1),
        conditions: vec![condition(conditions::READY, "True", "Consuming", 1)],
        replicas: 1,
        ready_replicas: 1,
        selector: Some(format!("app.kubernetes.io/instance={name}")),
        group_id: Some(format!("{}.{name}", ns.name)),
        sink_uri: Some("http://hooks.shop.svc.cluster.local:80/".into()),
        dead_letter_sink_uri: Some("http://parked.shop.svc.cluster.local:8080/dead".into()),
        partitions: vec![PartitionStatus {
            topic: "orders".into(),
            partition: 0,
            committed: Some(58),
            end: 100,
            lag: 42,
            lag_seconds: Some(95),
        }],
        total_lag: Some(42),
        max_lag_seconds: Some(95),
        counters: Some(ConsumerCounters {
            processed: 58,
            retried: 2,
            dead_lettered: 1,
            skipped: 0,
            rejected: RejectedCounters {
                unknown_type: 1,
                ..RejectedCounters::default()
            },
        }),
        processed_last_minute: Some(120),
        reported_replicas: Some(1),
        report_time: Some(Time(Timestamp::from_second(1_800_000_090).unwrap())),
        measured_time: Some(Time(Timestamp::from_second(1_800_000_100).unwrap())),
    };
    let patched = consumers
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": ec_status })),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.as_ref(), Some(&ec_status));
    assert_eq!(consumers.get(&name).await.unwrap().status, Some(ec_status));

    let obx_status = OutboxStatus {
        observed_generation: Some(1),
        conditions: vec![condition(
            conditions::READY,
            "False",
            conditions::DATABASE_UNREACHABLE,
            1,
        )],
        replicas: 2,
        ready_replicas: 1,
        selector: Some(format!("app.kubernetes.io/instance={name}")),
        pending: Some(7),
        oldest_pending_age_seconds: Some(12),
        published_total: Some(1000),
        last_publish_time: Some(Time(Timestamp::from_second(1_800_000_000).unwrap())),
        report_time: Some(Time(Timestamp::from_second(1_800_000_090).unwrap())),
        measured_time: Some(Time(Timestamp::from_second(1_800_000_100).unwrap())),
    };
    outboxes
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": obx_status })),
        )
        .await
        .unwrap();
    assert_eq!(outboxes.get(&name).await.unwrap().status, Some(obx_status));

    // The status subresource leaves spec alone.
    let ignored = consumers
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 9}})),
        )
        .await
        .unwrap();
    assert_eq!(ignored.spec.replicas, 1);

    let ec_table = kubectl_ok(&["get", "ec", "-n", &ns.name]);
    let (header, row) = header_and_first_row(&ec_table);
    assert_eq!(
        header,
        ["NAME", "READY", "REASON", "LAG", "REPLICAS", "AGE"],
        "{ec_table}"
    );
    assert_eq!(
        &row[..5],
        [name.as_str(), "True", "Consuming", "42", "1"],
        "{ec_table}"
    );

    let obx_table = kubectl_ok(&["get", "obx", "-n", &ns.name]);
    let (header, row) = header_and_first_row(&obx_table);
    assert_eq!(
        header,
        ["NAME", "READY", "REASON", "BACKLOG", "REPLICAS", "AGE"],
        "{obx_table}"
    );
    assert_eq!(
        &row[..5],
        [name.as_str(), "False", "DatabaseUnreachable", "7", "2"],
        "{obx_table}"
    );

    // The category lists both kinds.
    let all = kubectl_ok(&["get", "pipewright", "-n", &ns.name, "-o", "name"]);
    assert!(
        all.contains(&format!("eventconsumer.pipewright.io/{name}")),
        "{all}"
    );
    assert!(
        all.contains(&format!("outbox.pipewright.io/{name}")),
        "{all}"
    );
    ns.delete().await;
}

#[tokio::test]
async fn conditions_from_two_field_managers_merge_by_type() {
    let client = kube_client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "crds-conditions").await;
    create(
        &dynamic_api::<EventConsumer>(&client, &ns.name),
        event_consumer("orders", json!({})),
    )
    .await
    .unwrap();
    let consumers = Api::<EventConsumer>::namespaced(client.clone(), &ns.name);
    let apply = |manager: &str, condition: Condition| {
        let consumers = consumers.clone();
        let manager = manager.to_string();
        async move {
            let patch = json!({
                "apiVersion": "pipewright.io/v1alpha1",
                "kind": "EventConsumer",
                "status": {"conditions": [condition]},
            });
            consumers
                .patch_status(
                    "orders",
                    &PatchParams::apply(&manager),
                    &Patch::Apply(patch),
                )
                .await
                .unwrap()
        }
    };
    apply(
        "operator",
        condition(conditions::READY, "True", "Consuming", 1),
    )
    .await;
    let both = apply(
        "lag-monitor",
        condition(conditions::DEGRADED, "False", "LagWithinBounds", 1),
    )
    .await;
    let mut types: Vec<String> = both
        .status
        .unwrap()
        .conditions
        .into_iter()
        .map(|c| c.type_)
        .collect();
    types.sort();
    assert_eq!(types, ["Degraded", "Ready"]);
    ns.delete().await;
}

#[tokio::test]
async fn kubectl_scale_changes_replicas_through_the_scale_subresource() {
    let client = kube_client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "crds-scale").await;
    create(
        &dynamic_api::<EventConsumer>(&client, &ns.name),
        event_consumer("orders", json!({})),
    )
    .await
    .unwrap();
    create(
        &dynamic_api::<Outbox>(&client, &ns.name),
        outbox("orders", json!({})),
    )
    .await
    .unwrap();
    let consumers = Api::<EventConsumer>::namespaced(client.clone(), &ns.name);
    let outboxes = Api::<Outbox>::namespaced(client.clone(), &ns.name);
    let selector = "app.kubernetes.io/instance=orders";
    let status = json!({"status": {"replicas": 1, "selector": selector}});
    consumers
        .patch_status("orders", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();

    kubectl_ok(&["scale", "-n", &ns.name, "ec/orders", "--replicas=3"]);
    kubectl_ok(&["scale", "-n", &ns.name, "outbox/orders", "--replicas=0"]);

    assert_eq!(consumers.get("orders").await.unwrap().spec.replicas, 3);
    assert_eq!(outboxes.get("orders").await.unwrap().spec.replicas, 0);
    let scale = consumers.get_scale("orders").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(3));
    let scale_status = scale.status.unwrap();
    assert_eq!(scale_status.replicas, 1);
    assert_eq!(scale_status.selector.as_deref(), Some(selector));

    // The scale subresource enforces the spec's bounds too.
    let out = kubectl(&["scale", "-n", &ns.name, "ec/orders", "--replicas=5000"]);
    assert!(!out.status.success());
    ns.delete().await;
}
