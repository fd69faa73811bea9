//! The generated CRDs, checked without a cluster: every field is documented, no field can hold
//! a secret, the YAML that crdgen writes reads back as the same CRD, the examples deserialize
//! into the Rust types, and the CEL rules accept and reject what they should. The CEL rules
//! run in kube's client-side evaluator (kube-cel); tests/tests/crds.rs runs the same kinds of
//! cases against the real apiserver.

use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::core::cel::Validator;
use pipewright_crds::common::KAFKA_CONFIG_ALLOWED_KEYS;
use pipewright_crds::{EventConsumer, Outbox, crd_yaml, crds};
use serde_json::{Value, json};

fn schema(crd: &CustomResourceDefinition) -> Value {
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("an openAPIV3Schema");
    serde_json::to_value(schema).unwrap()
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

fn event_consumer(spec_patch: Value) -> Value {
    let mut ec = json!({
        "apiVersion": "pipewright.io/v1alpha1",
        "kind": "EventConsumer",
        "metadata": {"name": "orders"},
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

fn outbox(spec_patch: Value) -> Value {
    let mut obx = json!({
        "apiVersion": "pipewright.io/v1alpha1",
        "kind": "Outbox",
        "metadata": {"name": "orders"},
        "spec": {
            "database": {"dsnSecretRef": {"name": "db", "key": "dsn"}},
            "kafka": {"bootstrapServers": ["kafka:9092"]},
            "topic": "orders",
        },
    });
    merge(&mut obx["spec"], &spec_patch);
    obx
}

/// Walks every property below `path`, calling `visit(path, schema)`.
fn walk(path: &str, schema: &Value, visit: &mut dyn FnMut(&str, &Value)) {
    visit(path, schema);
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            walk(&format!("{path}.{name}"), prop, visit);
        }
    }
    if let Some(items) = schema.get("items") {
        walk(&format!("{path}[]"), items, visit);
    }
}

#[test]
fn every_spec_and_status_field_has_a_description() {
    for crd in crds() {
        let schema = schema(&crd);
        let mut undocumented = Vec::new();
        for part in ["spec", "status"] {
            walk(part, &schema["properties"][part], &mut |path, s| {
                let documented = s
                    .get("description")
                    .and_then(Value::as_str)
                    .is_some_and(|d| !d.trim().is_empty());
                // Array items are documented by their array; scalar items have no own text.
                if !documented && !path.ends_with("[]") {
                    undocumented.push(path.to_string());
                }
            });
        }
        assert!(
            undocumented.is_empty(),
            "{}: fields without a doc comment: {undocumented:?}",
            crd.spec.names.kind
        );
    }
}

#[test]
fn descriptions_are_paragraphs_without_hard_line_breaks() {
    for crd in crds() {
        walk(
            "spec",
            &schema(&crd)["properties"]["spec"],
            &mut |path, s| {
                if let Some(d) = s.get("description").and_then(Value::as_str) {
                    assert!(!d.replace("\n\n", "").contains('\n'), "{path}: {d:?}");
                }
            },
        );
    }
}

#[test]
fn no_spec_field_can_carry_a_secret_value() {
    let secretish = ["password", "token", "secret", "dsn", "credential", "apikey"];
    for crd in crds() {
        let schema = schema(&crd);
        walk("spec", &schema["properties"]["spec"], &mut |path, s| {
            let name = path.rsplit('.').next().unwrap().to_ascii_lowercase();
            if secretish.iter().any(|w| name.contains(w)) {
                // Only references to Secrets may be named like one: objects of name (and key,
                // and the pod API's `optional`), or lists of them (`imagePullSecrets`).
                let object = s.get("items").unwrap_or(s);
                let props = object.get("properties").and_then(Value::as_object);
                let keys: Vec<&str> = props
                    .map(|p| p.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let reference = keys == ["name"]
                    || keys == ["key", "name"]
                    || keys == ["key", "name", "optional"];
                assert!(
                    (name.ends_with("secretref")
                        || name == "secretkeyref"
                        || name.starts_with("imagepullsecrets"))
                        && reference,
                    "{}: {path} looks like it could hold a secret value (properties {keys:?})",
                    crd.spec.names.kind
                );
            }
        });
    }
}

#[test]
fn both_kinds_have_short_names_category_printer_columns_and_subresources() {
    for (crd, short, lag_column) in [
        (EventConsumer::crd(), "ec", "Lag"),
        (Outbox::crd(), "obx", "Backlog"),
    ] {
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec![short.to_string()]));
        assert_eq!(
            crd.spec.names.categories,
            Some(vec!["pipewright".to_string()])
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Ready", "Reason", lag_column, "Replicas", "Age"]);
        let subresources = version.subresources.as_ref().unwrap();
        assert!(subresources.status.is_some());
        let scale = subresources.scale.as_ref().unwrap();
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
    }
}

#[test]
fn conditions_are_a_list_map_keyed_by_type_with_observed_generation() {
    for crd in crds() {
        let conditions = &schema(&crd)["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
        assert!(conditions["items"]["properties"]["observedGeneration"].is_object());
        let status = &schema(&crd)["properties"]["status"]["properties"];
        assert!(status["observedGeneration"].is_object());
    }
}

#[test]
fn crd_yaml_reads_back_as_the_same_crd() {
    for crd in crds() {
        let yaml = crd_yaml(&crd).unwrap();
        let back: CustomResourceDefinition = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, crd);
    }
}

#[test]
fn kafka_config_documentation_lists_exactly_the_allowed_keys() {
    let kafka = &schema(&crds()[0])["properties"]["spec"]["properties"]["kafka"];
    let doc = kafka["properties"]["config"]["description"]
        .as_str()
        .unwrap();
    let listed = doc
        .split_once("Allowed keys: ")
        .and_then(|(_, rest)| rest.split_once(". Credentials"))
        .map(|(keys, _)| keys)
        .unwrap_or_else(|| panic!("no list of allowed keys in {doc:?}"));
    let mut listed: Vec<&str> = listed.split(", ").collect();
    let mut allowed = KAFKA_CONFIG_ALLOWED_KEYS.to_vec();
    listed.sort();
    allowed.sort();
    assert_eq!(listed, allowed);
}

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Every document of every YAML file in examples/, with its file name.
fn examples() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        for doc in serde_saphyr::from_multiple::<Value>(&text).unwrap() {
            docs.push((name.clone(), doc));
        }
    }
    docs
}

#[test]
fn examples_cover_every_sink_and_both_outbox_topic_modes() {
    let docs = examples();
    let sinks: Vec<String> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "EventConsumer")
        .flat_map(|(_, d)| d["spec"]["sink"].as_object().unwrap().keys().cloned())
        .collect();
    for sink in ["http", "kafka", "postgres", "log"] {
        assert!(
            sinks.iter().any(|s| s == sink),
            "no example with a {sink} sink"
        );
    }
    let outboxes: Vec<&Value> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "Outbox")
        .map(|(_, d)| d)
        .collect();
    assert!(outboxes.len() >= 2);
    assert!(outboxes.iter().any(|o| o["spec"]["topic"].is_string()));
    assert!(
        outboxes
            .iter()
            .any(|o| o["spec"]["topicTemplate"].is_string())
    );
    for path in std::fs::read_dir(examples_dir()).unwrap() {
        let path = path.unwrap().path();
        if !path.is_file() {
            continue; // examples/kind/: what the kind quickstart deploys beside the examples
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# "),
            "{} has no leading comment",
            path.display()
        );
    }
}

#[test]
fn examples_deserialize_into_the_rust_types_and_pass_the_cel_rules() {
    let validator = Validator::new();
    for (file, doc) in examples() {
        let (result, crd) = match doc["kind"].as_str() {
            Some("EventConsumer") => (
                serde_json::from_value::<EventConsumer>(doc.clone()).map(|_| ()),
                EventConsumer::crd(),
            ),
            Some("Outbox") => (
                serde_json::from_value::<Outbox>(doc.clone()).map(|_| ()),
                Outbox::crd(),
            ),
            other => panic!("{file}: unexpected kind {other:?}"),
        };
        result.unwrap_or_else(|e| panic!("{file}: {e}"));
        validator
            .validate(&schema(&crd), &doc, None)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

/// (what is wrong, the resource, a text the failure must contain).
type Case = (&'static str, Value, &'static str);

fn invalid_event_consumers() -> Vec<Case> {
    vec![
        (
            "no sink",
            event_consumer(json!({"sink": {"log": null}})),
            "sink must set exactly one of http, kafka, postgres, log",
        ),
        (
            "two sinks",
            event_consumer(json!({"sink": {"kafka": {"topic": "copy"}}})),
            "sink must set exactly one of http, kafka, postgres, log",
        ),
        (
            "an ftp URL",
            event_consumer(json!({"sink": {"log": null, "http": {"url": "ftp://example.com/x"}}})),
            "sink.http.url must be an absolute http:// or https:// URL",
        ),
        (
            "credentials in the URL",
            event_consumer(
                json!({"sink": {"log": null, "http": {"url": "https://user:pw@example.com/x"}}}),
            ),
            "sink.http.url must not contain credentials",
        ),
        (
            "an Authorization header",
            event_consumer(json!({"sink": {"log": null, "http": {
                "url": "https://example.com/x", "headers": {"Authorization": "Bearer x"}}}})),
            "sink.http.headers must not carry credentials",
        ),
        (
            "an X-Api-Key header",
            event_consumer(json!({"sink": {"log": null, "http": {
                "url": "https://example.com/x", "headers": {"X-Api-Key": "k"}}}})),
            "sink.http.headers must not carry credentials",
        ),
        (
            "an HTTP timeout over 5m",
            event_consumer(json!({"sink": {"log": null, "http": {
                "url": "https://example.com/x", "timeout": "10m"}}})),
            "sink.http.timeout must be between 1ms and 5m",
        ),
        (
            "a librdkafka key outside the allow-list",
            event_consumer(json!({"kafka": {"config": {"sasl.password": "x"}}})),
            "kafka.config may only set the allowed librdkafka tuning keys",
        ),
        (
            "maxReplicas below minReplicas",
            event_consumer(json!({"autoscaling": {"minReplicas": 3, "maxReplicas": 2}})),
            "autoscaling.maxReplicas must be greater than or equal to autoscaling.minReplicas",
        ),
        (
            "backoff initial longer than max",
            event_consumer(
                json!({"processing": {"retry": {"backoff": {"initial": "1m", "max": "1s"}}}}),
            ),
            "processing.retry.backoff.initial must not be longer than processing.retry.backoff.max",
        ),
        (
            "a drain timeout of 2h",
            event_consumer(json!({"processing": {"drainTimeout": "2h"}})),
            "processing.drainTimeout must be between 1s and 1h",
        ),
        (
            "a dead-letter topic that is consumed",
            event_consumer(json!({"processing": {"deadLetterTopic": "orders"}})),
            "processing.deadLetterTopic must not be one of the consumed topics",
        ),
        (
            "a kafka sink into a consumed topic",
            event_consumer(json!({"sink": {"log": null, "kafka": {"topic": "orders"}}})),
            "sink.kafka.topic must not be one of the consumed topics",
        ),
        (
            "dead-lettering unknown types without a dead-letter topic",
            event_consumer(json!({"events": {"types": [{"name": "order.created"}]},
                "processing": {"deadLetterTopic": null}})),
            "processing.deadLetterTopic (or deadLetterSink) is required when events.onUnknownType is deadLetter",
        ),
        (
            "no dead-letter topic and no events (bad records are dead-lettered by default)",
            event_consumer(json!({"processing": {"deadLetterTopic": null}})),
            "processing.deadLetterTopic (or deadLetterSink) is required when events.onUnknownType is deadLetter",
        ),
        (
            "a dead-letter topic and a dead-letter sink together",
            event_consumer(
                json!({"processing": {"deadLetterSink": {"http": {"url": "http://dl.example/x"}}}}),
            ),
            "processing: set at most one of deadLetterTopic, deadLetterSink",
        ),
        (
            "a dead-letter sink with neither url nor ref",
            event_consumer(json!({"processing": {"deadLetterTopic": null,
                "deadLetterSink": {"http": {"timeout": "5s"}}}})),
            "processing.deadLetterSink.http must set exactly one of url, ref",
        ),
        (
            "a dead-letter sink URL with credentials in it",
            event_consumer(json!({"processing": {"deadLetterTopic": null,
                "deadLetterSink": {"http": {"url": "https://user:pw@dl.example/x"}}}})),
            "processing.deadLetterSink.http.url must not contain credentials",
        ),
        (
            "an event schema both inline and from a ConfigMap",
            event_consumer(json!({"events": {"onUnknownType": "skip", "types": [{
                "name": "order.created",
                "schema": {"inline": {"type": "object"}, "configMapKeyRef": {"name": "s", "key": "k"}}}]}})),
            "events.types[].schema must set exactly one of configMapKeyRef, inline",
        ),
    ]
}

fn invalid_outboxes() -> Vec<Case> {
    vec![
        (
            "both topic and topicTemplate",
            outbox(json!({"topicTemplate": "outbox.{aggregatetype}"})),
            "exactly one of topic, topicTemplate must be set",
        ),
        (
            "neither topic nor topicTemplate",
            outbox(json!({"topic": null})),
            "exactly one of topic, topicTemplate must be set",
        ),
        (
            "a topicTemplate without {aggregatetype}",
            outbox(json!({"topic": null, "topicTemplate": "outbox.{type}"})),
            "topicTemplate must contain {aggregatetype}",
        ),
        (
            "maxInFlight below batchSize",
            outbox(json!({"poll": {"batchSize": 500, "maxInFlight": 100}})),
            "poll.maxInFlight must be greater than or equal to poll.batchSize",
        ),
        (
            "a poll interval of 2h",
            outbox(json!({"poll": {"interval": "2h"}})),
            "poll.interval must be between 10ms and 1h",
        ),
        (
            "a retention with policy delete",
            outbox(json!({"cleanup": {"retention": "1h"}})),
            "cleanup.retention applies only to cleanup.policy markPublished",
        ),
    ]
}

fn expect_rejected(crd: &CustomResourceDefinition, cases: Vec<Case>) {
    let validator = Validator::new();
    let schema = schema(crd);
    let mut wrong = Vec::new();
    for (what, object, expected) in cases {
        match validator.validate(&schema, &object, None) {
            Ok(()) => wrong.push(format!("{what}: accepted")),
            Err(errors) if !errors.to_string().contains(expected) => {
                wrong.push(format!("{what}: {errors} (expected {expected:?})"))
            }
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn cel_rules_accept_minimal_and_full_resources() {
    let validator = Validator::new();
    validator
        .validate(
            &schema(&EventConsumer::crd()),
            &event_consumer(json!({})),
            None,
        )
        .unwrap();
    validator
        .validate(&schema(&Outbox::crd()), &outbox(json!({})), None)
        .unwrap();
    let full = event_consumer(json!({
        "kafka": {"config": {"linger.ms": "5", "client.rack": "a"}},
        "groupId": "g",
        "events": {"types": [{"name": "a", "schema": {"configMapKeyRef": {"name": "s", "key": "k"}}}]},
        "processing": {"deadLetterTopic": "orders.dlq", "drainTimeout": "1h"},
        "sink": {"log": null, "http": {"url": "http://svc.ns:8080/in", "timeout": "5m",
                 "headers": {"X-Tenant": "t"}, "headersSecretRef": {"name": "auth"}}},
        "autoscaling": {"minReplicas": 2, "maxReplicas": 2},
    }));
    validator
        .validate(&schema(&EventConsumer::crd()), &full, None)
        .unwrap();
}

#[test]
fn cel_rules_reject_each_invalid_event_consumer_naming_the_field() {
    expect_rejected(&EventConsumer::crd(), invalid_event_consumers());
}

#[test]
fn cel_rules_reject_each_invalid_outbox_naming_the_field() {
    expect_rejected(&Outbox::crd(), invalid_outboxes());
}

#[test]
fn cel_rules_reject_a_name_that_is_not_a_dns_label() {
    let mut ec = event_consumer(json!({}));
    ec["metadata"]["name"] = json!("orders.v2");
    let err = Validator::new()
        .validate(&schema(&EventConsumer::crd()), &ec, None)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("metadata.name must be a DNS label"),
        "{err}"
    );
}

#[test]
fn group_id_cannot_be_changed_added_or_removed_after_creation() {
    let validator = Validator::new();
    let schema = schema(&EventConsumer::crd());
    let with_group = |g: &str| event_consumer(json!({"groupId": g}));
    let without = event_consumer(json!({}));
    for (what, old, new) in [
        ("changed", with_group("a"), with_group("b")),
        ("added", without.clone(), with_group("a")),
        ("removed", with_group("a"), without.clone()),
    ] {
        let err = validator
            .validate(&schema, &new, Some(&old))
            .expect_err(what);
        assert!(
            err.to_string().contains("groupId is immutable"),
            "{what}: {err}"
        );
    }
    validator
        .validate(&schema, &with_group("a"), Some(&with_group("a")))
        .unwrap();
    validator
        .validate(&schema, &without, Some(&without))
        .unwrap();
}

#[test]
fn outbox_table_cannot_be_changed_after_creation() {
    let validator = Validator::new();
    let schema = schema(&Outbox::crd());
    let old = outbox(json!({"table": "outbox"}));
    let err = validator
        .validate(
            &schema,
            &outbox(json!({"table": "events.outbox"})),
            Some(&old),
        )
        .unwrap_err();
    assert!(err.to_string().contains("table is immutable"), "{err}");
    // The default is `outbox`: spelling it out later is no change.
    validator
        .validate(&schema, &old, Some(&outbox(json!({}))))
        .unwrap();
}
