//! The contract between the operator and the worker, tested by running one on the other's
//! output: for every resource in `examples/` and for generated specs that set every optional
//! field with every sink, the operator's render ([`event_consumer::plan`], [`outbox::plan`],
//! [`workload::desired`]) is turned into a pod run as a local process (its arguments, its
//! ConfigMap and stand-ins for its Secrets and ConfigMaps at their mount points, see
//! `common/pod.rs`), and the real `pipewright-worker` must accept it and do what the spec
//! says against the test environment's Kafka and PostgreSQL: log, HTTP (with the configured
//! headers, method and idempotency header), Kafka (transactional) and PostgreSQL sinks
//! deliver, schemas (inline and from a ConfigMap) send invalid events to the dead-letter
//! topic, and outboxes publish with their cleanup policy.
//!
//! A resource is bound to the test environment only where it names the environment: the
//! bootstrap servers, topic and table names (made unique), the HTTP URL (the receiver here),
//! the consumer group. Everything else is the file's.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::any;
use common::consume::{TopicReader, produce_with_headers};
use common::pod::{Objects, Pod, WAIT};
use common::{OutboxFixture, Recorder};
use pipewright_crds::event_consumer::ContentMode;
use pipewright_crds::event_consumer::{EventSchema, Sink};
use pipewright_crds::outbox::CleanupPolicy;
use pipewright_crds::worker_config;
use pipewright_crds::{EventConsumer, Outbox};
use pipewright_operator::context::Settings;
use pipewright_operator::workload::WorkerConfig;
use pipewright_operator::{event_consumer, outbox};
use pipewright_testenv::{TestEnv, TestSchema, create_topic, eventually, unique_name};
use serde_json::{Map, Value, json};

/// One request the HTTP receiver answered (200).
#[derive(Debug, Clone)]
struct Received {
    method: Method,
    headers: HeaderMap,
    body: String,
}

/// An HTTP endpoint in the test process that records every request.
/// A generated spec with `kafka.sasl` runs against the test broker's SCRAM-over-TLS
/// listener, with the user the environment made: the worker authenticates with what the
/// operator rendered (files of Secret keys).
fn use_scram_listener(
    what: &str,
    kafka: &mut pipewright_crds::KafkaConnection,
    objects: &mut Objects,
) {
    let Some(sasl) = &mut kafka.sasl else {
        return;
    };
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} (tests/env/up)"));
    sasl.username = Some(var("KAFKA_SCRAM_USER"));
    kafka.bootstrap_servers = vec![var("KAFKA_SCRAM_BOOTSTRAP")];
    let ca = std::path::Path::new(&var("KAFKA_PKI")).join("cluster-ca.crt");
    let ca = std::fs::read_to_string(&ca).unwrap();
    for (setting, key) in kafka.secret_key_settings() {
        let value = match setting {
            "ssl.ca.pem" => ca.clone(),
            "sasl.password" => var("KAFKA_SCRAM_PASSWORD"),
            other => panic!("{what}: no test value for {other}"),
        };
        objects
            .secrets
            .entry(key.name.clone())
            .or_default()
            .insert(key.key.clone(), value);
    }
}

/// Credentials key by key, as Strimzi's Secrets hold them (the other generated specs use
/// `secretRef`).
fn strimzi_kafka() -> Value {
    json!({
        "bootstrapServers": ["my-cluster-kafka-bootstrap:9093"],
        "tls": {"caSecretRef": {"name": "my-cluster-cluster-ca-cert", "key": "ca.crt"}},
        "sasl": {"mechanism": "SCRAM-SHA-512", "username": "orders",
                 "passwordSecretRef": {"name": "orders", "key": "password"}},
    })
}

#[derive(Debug, Clone)]
struct Receiver {
    url: String,
    log: Arc<Mutex<Vec<Received>>>,
}

async fn record(
    State(log): State<Arc<Mutex<Vec<Received>>>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    log.lock().unwrap().push(Received {
        method,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    StatusCode::OK
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        let log: Arc<Mutex<Vec<Received>>> = Arc::default();
        let app = Router::new()
            .route("/events", any(record))
            .with_state(log.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, log }
    }

    fn with(&self, marker: &str) -> Option<Received> {
        let log = self.log.lock().unwrap();
        log.iter().find(|r| r.body.contains(marker)).cloned()
    }
}

/// A topic of the test environment standing in for the one a resource names.
async fn topic_for(name: &str) -> String {
    create_topic(&name.replace(['.', '_'], "-"), 1).await
}

/// A JSON value valid against the small schemas of the examples (required properties of type
/// string, integer, number or boolean, with `const` and `minimum`).
fn sample(schema: &Value) -> Map<String, Value> {
    let mut event = Map::new();
    for name in schema["required"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap();
        let property = &schema["properties"][name];
        let value = match (property.get("const"), property["type"].as_str()) {
            (Some(c), _) => c.clone(),
            (None, Some("integer" | "number")) => {
                property.get("minimum").cloned().unwrap_or_else(|| json!(1))
            }
            (None, Some("boolean")) => json!(true),
            _ => json!("contract"),
        };
        event.insert(name.to_string(), value);
    }
    event
}

/// What a bound EventConsumer must be seen doing.
enum Delivery {
    Log { payload: bool },
    Http { receiver: Receiver },
    Kafka { reader: TopicReader },
    Postgres { schema: TestSchema, table: String },
}

/// Binds `ec` to the test environment, runs its worker, produces a valid event (and an
/// invalid one where a schema and a dead-letter topic allow), and checks the sink delivered
/// it as the spec says. `objects` are the Secret and ConfigMap stand-ins.
async fn event_consumer_does_what_its_spec_says(
    what: &str,
    mut ec: EventConsumer,
    mut objects: Objects,
) {
    let env = TestEnv::get();
    let spec = &mut ec.spec;
    spec.kafka.bootstrap_servers = vec![env.kafka_bootstrap_servers.clone()];
    if let Some(secret) = &spec.kafka.secret_ref {
        objects
            .secrets
            .entry(secret.name.clone())
            .or_insert_with(|| [("security.protocol".to_string(), "plaintext".to_string())].into());
    }
    use_scram_listener(what, &mut spec.kafka, &mut objects);
    for topic in &mut spec.topics {
        *topic = topic_for(topic).await;
    }
    spec.group_id = Some(unique_name("contract"));
    let dead_letters = match &mut spec.processing.dead_letter_topic {
        Some(dlq) => {
            *dlq = topic_for(dlq).await;
            Some(TopicReader::start(dlq, "read_committed"))
        }
        None => None,
    };
    let marker = unique_name("marker");
    // A valid event of the first declared type (any type when none is declared), and an
    // invalid one of the first type with a schema.
    let declared = spec
        .events
        .as_ref()
        .map(|e| e.types.clone())
        .unwrap_or_default();
    let schema_of = |t: &pipewright_crds::event_consumer::EventType| -> Option<Value> {
        match t.schema.as_ref()? {
            EventSchema {
                inline: Some(s), ..
            } => Some(s.clone()),
            EventSchema {
                config_map_key_ref: Some(r),
                ..
            } => Some(serde_json::from_str(&objects.config_maps[&r.name][&r.key]).unwrap()),
            _ => None,
        }
    };
    let (event_type, mut event) = match declared.first() {
        Some(t) => (
            t.name.clone(),
            schema_of(t).map(|s| sample(&s)).unwrap_or_default(),
        ),
        None => ("contract.event".to_string(), Map::new()),
    };
    let invalid = declared.iter().find_map(|t| {
        let schema = schema_of(t)?;
        let required = schema["required"].as_array()?;
        required
            .iter()
            .any(|r| r != "event_type")
            .then(|| json!({"event_type": t.name, "marker": marker}))
    });
    event.insert("event_type".into(), json!(event_type));
    event.insert("marker".into(), json!(marker));
    // Where the worker reads the type (events.typeFrom): the field, or a header to add.
    let type_from = spec.events.as_ref().and_then(|e| e.type_from.clone());
    let mut invalid = invalid;
    if let Some(field) = type_from.as_ref().and_then(|t| t.field.clone()) {
        event.insert(field.clone(), json!(event_type));
        if let Some(Value::Object(i)) = &mut invalid {
            let t = i["event_type"].clone();
            i.insert(field, t);
        }
    }
    // Each record carries the headers the HTTP sink forwards (`fwd-<name>`).
    let forwarded: Vec<String> = spec
        .sink
        .http
        .as_ref()
        .map(|h| h.forward_headers.clone())
        .unwrap_or_default();
    let header_of = |value: &Value| -> Vec<(String, String)> {
        let header = type_from.as_ref().and_then(|t| t.header.clone());
        let mut headers: Vec<_> = forwarded
            .iter()
            .map(|h| (h.clone(), format!("fwd-{h}")))
            .collect();
        if let (Some(h), Some(t)) = (header, value["event_type"].as_str()) {
            headers.push((h, t.to_string()));
        }
        headers
    };

    let delivery = match &mut spec.sink {
        Sink { log: Some(l), .. } => Delivery::Log { payload: l.payload },
        Sink { http: Some(h), .. } => {
            let receiver = Receiver::start().await;
            // The contract is the worker's side: the address the operator resolved (a ref's
            // resolution is the operator test's `an_http_sink_naming_a_service_...`).
            h.url = Some(receiver.url.clone());
            h.service_ref = None;
            h.path = None;
            if let Some(secret) = &h.headers_secret_ref {
                objects
                    .secrets
                    .entry(secret.name.clone())
                    .or_insert_with(|| {
                        [("authorization".to_string(), "Bearer contract".to_string())].into()
                    });
            }
            Delivery::Http { receiver }
        }
        Sink { kafka: Some(k), .. } => {
            k.topic = topic_for(&k.topic).await;
            let isolation = if k.transactional {
                "read_committed"
            } else {
                "read_uncommitted"
            };
            Delivery::Kafka {
                reader: TopicReader::start(&k.topic, isolation),
            }
        }
        Sink {
            postgres: Some(pg), ..
        } => {
            let schema = TestSchema::create("contract").await;
            let name = pg.table.rsplit('.').next().unwrap().to_string();
            let mut columns: Vec<String> =
                pg.upsert_key.iter().map(|c| format!("{c} text")).collect();
            columns.push("marker text".into());
            let key = if pg.upsert_key.is_empty() {
                String::new()
            } else {
                format!(", PRIMARY KEY ({})", pg.upsert_key.join(", "))
            };
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE TABLE {}.{name} ({}{key})",
                schema.name,
                columns.join(", ")
            )))
            .execute(&schema.pool)
            .await
            .unwrap();
            for column in &pg.upsert_key {
                event.entry(column.clone()).or_insert_with(|| json!("k1"));
            }
            pg.table = format!("{}.{name}", schema.name);
            if pg.offsets_table.contains('.') {
                let offsets = pg.offsets_table.rsplit('.').next().unwrap();
                pg.offsets_table = format!("{}.{offsets}", schema.name);
            }
            objects.secrets.insert(
                pg.dsn_secret_ref.name.clone(),
                [(pg.dsn_secret_ref.key.clone(), env.database_url.clone())].into(),
            );
            let table = pg.table.clone();
            Delivery::Postgres { schema, table }
        }
        _ => panic!("{what}: no sink"),
    };

    let plan = event_consumer::plan(&ec, &Settings::default())
        .unwrap_or_else(|e| panic!("{what}: the operator renders it: {e}"));
    let mut pod = Pod::start(&plan, &objects);
    pod.wait_ready(what).await;
    let event = Value::Object(event);
    let mut records = vec![(
        Some("k1".to_string()),
        Some(event.to_string().into_bytes()),
        header_of(&event),
    )];
    if let (Some(invalid), Some(_)) = (&invalid, &dead_letters) {
        records.push((
            Some("k2".into()),
            Some(invalid.to_string().into_bytes()),
            header_of(invalid),
        ));
    }
    produce_with_headers(&ec.spec.topics[0], records).await;

    match delivery {
        Delivery::Log { payload } => {
            eventually(&format!("{what}: the event is logged"), WAIT, || async {
                (pod.counter("pipewright_consumer_processed_total").await >= 1.0).then_some(())
            })
            .await;
            assert_eq!(
                pod.log_text().contains(&marker),
                payload,
                "{what}: the payload is logged exactly when sink.log.payload says so"
            );
        }
        Delivery::Http { receiver } => {
            let got = eventually(
                &format!("{what}: the event reaches the receiver"),
                WAIT,
                || {
                    let got = receiver.with(&marker);
                    async move { got }
                },
            )
            .await;
            let http = ec.spec.sink.http.as_ref().unwrap();
            let method = serde_json::to_value(http.method).unwrap();
            assert_eq!(got.method.as_str(), method.as_str().unwrap(), "{what}");
            for (name, value) in &http.headers {
                assert_eq!(
                    got.headers.get(name).map(|v| v.to_str().unwrap()),
                    Some(value.as_str()),
                    "{what}: the configured header {name}"
                );
            }
            if let Some(secret) = &http.headers_secret_ref {
                for (name, value) in &objects.secrets[&secret.name] {
                    assert_eq!(
                        got.headers.get(name).map(|v| v.to_str().unwrap()),
                        Some(value.as_str()),
                        "{what}: the header {name} from the headers Secret"
                    );
                }
            }
            let id = got
                .headers
                .get(&http.idempotency_header)
                .unwrap_or_else(|| panic!("{what}: no {} header", http.idempotency_header));
            assert!(
                id.to_str().unwrap().starts_with(&ec.spec.topics[0]),
                "{what}: {id:?}"
            );
            for name in &http.forward_headers {
                assert_eq!(
                    got.headers.get(name).map(|v| v.to_str().unwrap()),
                    Some(format!("fwd-{name}").as_str()),
                    "{what}: the forwarded record header {name}"
                );
            }
            let (source, ce_type) = match http.content_mode {
                ContentMode::Binary => {
                    let header = |n| got.headers.get(n).map(|v| v.to_str().unwrap().to_string());
                    (header("ce-source"), header("ce-type"))
                }
                ContentMode::Structured => {
                    assert_eq!(
                        got.headers["content-type"], "application/cloudevents+json",
                        "{what}"
                    );
                    let body: Value = serde_json::from_str(&got.body).unwrap();
                    assert!(
                        body["data"].to_string().contains(&marker),
                        "{what}: the event is the data: {body}"
                    );
                    let attribute = |n: &str| body[n].as_str().map(str::to_string);
                    (attribute("source"), attribute("type"))
                }
            };
            if let Some(s) = &http.ce_source {
                assert_eq!(source.as_ref(), Some(s), "{what}: sink.http.ceSource");
            }
            if let Some(t) = &http.ce_type {
                assert_eq!(ce_type.as_ref(), Some(t), "{what}: sink.http.ceType");
            }
        }
        Delivery::Kafka { reader } => {
            eventually(
                &format!("{what}: the event reaches the sink topic"),
                WAIT,
                || {
                    let found = reader.snapshot().into_iter().any(|r| {
                        r.value
                            .is_some_and(|v| String::from_utf8_lossy(&v).contains(&marker))
                    });
                    async move { found.then_some(()) }
                },
            )
            .await;
        }
        Delivery::Postgres { schema, table } => {
            let query = format!("SELECT count(*) FROM {table} WHERE marker = '{marker}'");
            eventually(&format!("{what}: the event is a row"), WAIT, || async {
                let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(query.clone()))
                    .fetch_one(&schema.pool)
                    .await
                    .unwrap();
                (rows == 1).then_some(())
            })
            .await;
            drop(pod);
            schema.drop().await;
            return;
        }
    }
    if let (Some(_), Some(reader)) = (invalid, dead_letters) {
        eventually(
            &format!("{what}: the event its schema refuses is dead-lettered"),
            WAIT,
            || {
                let found = reader.snapshot().into_iter().any(|r| {
                    r.value
                        .is_some_and(|v| String::from_utf8_lossy(&v).contains(&marker))
                });
                async move { found.then_some(()) }
            },
        )
        .await;
    }
}

/// Binds `obx` to the test environment, runs its worker, enqueues rows and checks they are
/// published and cleaned up as the spec says.
async fn outbox_does_what_its_spec_says(what: &str, mut obx: Outbox, mut objects: Objects) {
    let env = TestEnv::get();
    let fx = OutboxFixture::new("contract_obx", 1).await;
    let spec = &mut obx.spec;
    spec.kafka.bootstrap_servers = vec![env.kafka_bootstrap_servers.clone()];
    if let Some(secret) = &spec.kafka.secret_ref {
        objects
            .secrets
            .entry(secret.name.clone())
            .or_insert_with(|| [("security.protocol".to_string(), "plaintext".to_string())].into());
    }
    use_scram_listener(what, &mut spec.kafka, &mut objects);
    spec.table = fx.table();
    let recorder = if spec.topic_template.is_some() {
        // The fixture's events have the aggregate type `order`.
        let topic = create_topic("order", 1).await;
        let suffix = topic.strip_prefix("order").unwrap();
        spec.topic_template = Some(format!("{{aggregatetype}}{suffix}"));
        Recorder::start(&topic)
    } else {
        spec.topic = Some(fx.topic.clone());
        Recorder::start(&fx.topic)
    };
    let dsn = &spec.database.dsn_secret_ref;
    objects.secrets.insert(
        dsn.name.clone(),
        [(dsn.key.clone(), env.database_url.clone())].into(),
    );
    let plan = outbox::plan(&obx, &Settings::default())
        .unwrap_or_else(|e| panic!("{what}: the operator renders it: {e}"));
    let mut pod = Pod::start(&plan, &objects);
    pod.wait_ready(what).await;

    let ids = fx.enqueue_many(10, 3).await;
    let published = format!(
        "SELECT count(*) FROM {} WHERE published_at IS NOT NULL",
        fx.table()
    );
    eventually(
        &format!("{what}: every row published and cleaned up"),
        WAIT,
        || async {
            let got = recorder.ids();
            if !ids.iter().all(|id| got.contains(id)) {
                return None;
            }
            let done = match obx.spec.cleanup.policy {
                CleanupPolicy::Delete => fx.pending().await == 0,
                CleanupPolicy::MarkPublished => {
                    let marked: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(published.clone()))
                        .fetch_one(&fx.schema.pool)
                        .await
                        .unwrap();
                    marked == 10 && fx.pending().await == 10
                }
            };
            done.then_some(())
        },
    )
    .await;
    drop(pod);
    fx.schema.drop().await;
}

/// Every pipewright resource in the YAML files of `examples/` (recursively), with its file.
fn examples() -> Vec<(String, Value)> {
    fn walk(dir: &std::path::Path, out: &mut Vec<(String, Value)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                for doc in docs {
                    if doc["apiVersion"] == "pipewright.io/v1alpha1" {
                        let name = format!("{} ({})", path.display(), doc["metadata"]["name"]);
                        out.push((name, doc));
                    }
                }
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut out = Vec::new();
    walk(&root, &mut out);
    out
}

/// A resource as the apiserver stores it: a uid (the operator's owner references need one)
/// and a namespace.
fn stored(mut resource: Value) -> Value {
    let meta = resource["metadata"].as_object_mut().unwrap();
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.entry("namespace").or_insert(json!("contract"));
    resource
}

async fn run(what: String, resource: Value, objects: Objects) {
    match resource["kind"].as_str() {
        Some("EventConsumer") => {
            let ec: EventConsumer = serde_json::from_value(stored(resource)).unwrap();
            event_consumer_does_what_its_spec_says(&what, ec, objects).await
        }
        Some("Outbox") => {
            let obx: Outbox = serde_json::from_value(stored(resource)).unwrap();
            outbox_does_what_its_spec_says(&what, obx, objects).await
        }
        other => panic!("{what}: unknown kind {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_runs_every_example_as_the_operator_renders_it() {
    let examples = examples();
    let kinds: BTreeSet<&str> = examples
        .iter()
        .filter_map(|(_, r)| r["kind"].as_str())
        .collect();
    assert_eq!(kinds, BTreeSet::from(["EventConsumer", "Outbox"]));
    futures::future::join_all(
        examples
            .into_iter()
            .map(|(what, resource)| run(what, resource, Objects::default())),
    )
    .await;
}

/// A JSON Schema served from a ConfigMap in the generated specs.
fn order_schema() -> Value {
    json!({"type": "object", "required": ["order_id", "total_cents"],
        "properties": {"order_id": {"type": "string"}, "total_cents": {"type": "integer", "minimum": 0}}})
}

/// An EventConsumer that sets every optional field, with `sink`.
fn every_field_event_consumer(sink: Value) -> Value {
    // Exactly one way to name the type: a field with the PostgreSQL sink, a header otherwise.
    let type_from = if sink.get("postgres").is_some() {
        json!({"field": "kind"})
    } else {
        json!({"header": "type"})
    };
    json!({
        "apiVersion": "pipewright.io/v1alpha1", "kind": "EventConsumer",
        "metadata": {"name": "every-field"},
        "spec": {
            "kafka": {
                "bootstrapServers": ["kafka:9092"],
                "secretRef": {"name": "kafka-credentials"},
                // A value with commas and `=`: a map entry, not a list item.
                "config": {"client.rack": "r1", "partition.assignment.strategy": "range,roundrobin",
                    "fetch.wait.max.ms": "50"},
            },
            "topics": ["orders"],
            "groupId": "every-field",
            "initialOffset": "earliest",
            "events": {
                "types": [
                    {"name": "order.placed", "schema": {"configMapKeyRef": {"name": "schemas", "key": "order.json"}}},
                    {"name": "order.paid", "schema": {"inline": {"type": "object", "required": ["order_id"]}}},
                    {"name": "order.shipped"},
                ],
                "onUnknownType": "deadLetter",
                "typeFrom": type_from,
            },
            "processing": {
                "concurrency": 4, "ordering": "partition", "deadLetterTopic": "orders.dlq",
                "retry": {"maxAttempts": 3, "backoff": {"initial": "50ms", "max": "1s"}},
                "drainTimeout": "5s",
            },
            "sink": sink,
            "image": "pipewright-worker:contract",
            "replicas": 1,
        },
    })
}

/// The sinks of the generated specs, every optional field set.
fn every_sink() -> Vec<(&'static str, Value)> {
    vec![
        ("log", json!({"log": {"payload": false}})),
        (
            "http",
            json!({"http": {
                "url": "https://hooks.example.com/orders", "method": "PUT", "timeout": "3s",
                "headers": {"X-Source": "pipewright", "X-Filter": "region=eu,tier=gold"},
                "headersSecretRef": {"name": "hook-auth"}, "idempotencyHeader": "X-Dedup-Key",
                "contentMode": "structured", "ceSource": "urn:shop:orders",
                "ceType": "com.example.order", "forwardHeaders": ["traceparent", "X-Tenant"],
            }}),
        ),
        (
            "kafka",
            json!({"kafka": {"topic": "orders.copy", "transactional": true}}),
        ),
        (
            "postgres",
            json!({"postgres": {
                "dsnSecretRef": {"name": "read-model-db", "key": "dsn"}, "table": "read_model.orders",
                "upsertKey": ["order_id"], "offsetsTable": "read_model.offsets",
            }}),
        ),
    ]
}

/// The generated EventConsumer with the HTTP sink in binary mode over values delivered as
/// they are (`events.format: raw`, typed by a header), its dead letters to an HTTP destination.
fn raw_event_consumer() -> Value {
    let mut http = every_sink()[1].1.clone();
    http["http"].as_object_mut().unwrap().remove("contentMode");
    let mut ec = every_field_event_consumer(http);
    ec["metadata"]["name"] = json!("raw-values");
    ec["spec"]["kafka"] = strimzi_kafka();
    ec["spec"]["events"] = json!({
        "format": "raw",
        "types": [{"name": "order.placed"}, {"name": "order.paid"}],
        "onUnknownType": "deadLetter",
        "typeFrom": {"header": "type"},
    });
    let processing = ec["spec"]["processing"].as_object_mut().unwrap();
    processing.remove("deadLetterTopic");
    processing.insert(
        "deadLetterSink".into(),
        json!({"http": {"url": "https://hooks.example.com/dead-letters", "timeout": "4s",
            "headersSecretRef": {"name": "hook-auth"}}}),
    );
    ec
}

/// An Outbox that sets every optional field.
fn every_field_outbox() -> Value {
    json!({
        "apiVersion": "pipewright.io/v1alpha1", "kind": "Outbox",
        "metadata": {"name": "every-field"},
        "spec": {
            "database": {"dsnSecretRef": {"name": "orders-db", "key": "dsn"}},
            "table": "public.outbox",
            "kafka": {"bootstrapServers": ["kafka:9092"], "secretRef": {"name": "kafka-credentials"},
                "config": {"linger.ms": "5", "client.rack": "a,b"}},
            "topicTemplate": "outbox.event.{aggregatetype}",
            "poll": {"interval": "100ms", "batchSize": 5, "maxInFlight": 20, "notify": false},
            "cleanup": {"policy": "markPublished", "retention": "1h"},
            "image": "pipewright-worker:contract",
            "replicas": 1,
        },
    })
}

/// The generated Outbox with credentials key by key.
fn strimzi_outbox() -> Value {
    let mut obx = every_field_outbox();
    obx["metadata"]["name"] = json!("scram");
    obx["spec"]["kafka"] = strimzi_kafka();
    obx
}

#[tokio::test]
async fn the_generated_specs_render_every_field_of_the_worker_configuration_the_api_offers() {
    // What only a hand-run worker sets: the rest of the configuration comes from the API.
    let worker_only: BTreeSet<&str> = [
        "groupInstanceId",
        "sink.kafka.transactionalId",
        "sink.discard.delay",
        "sink.discard.jitter",
    ]
    .into();
    let mut rendered = BTreeSet::new();
    let specs = every_sink()
        .into_iter()
        .map(|(_, sink)| every_field_event_consumer(sink))
        .chain([raw_event_consumer()]);
    for spec in specs {
        let ec: EventConsumer = serde_json::from_value(stored(spec)).unwrap();
        let WorkerConfig::Consume(c) = event_consumer::plan(&ec, &Settings::default())
            .unwrap()
            .config
        else {
            panic!("not a consume configuration")
        };
        rendered.extend(worker_config::field_paths(
            &serde_json::to_value(c).unwrap(),
        ));
    }
    let mut every = BTreeSet::new();
    for c in worker_config::fixtures::every_field_consume() {
        every.extend(worker_config::field_paths(
            &serde_json::to_value(c).unwrap(),
        ));
    }
    every.retain(|p| !worker_only.contains(p.as_str()));
    assert_eq!(rendered, every, "consume");

    let mut rendered = BTreeSet::new();
    for spec in [every_field_outbox(), strimzi_outbox()] {
        let obx: Outbox = serde_json::from_value(stored(spec)).unwrap();
        let WorkerConfig::Outbox(o) = outbox::plan(&obx, &Settings::default()).unwrap().config
        else {
            panic!("not an outbox configuration")
        };
        rendered.extend(worker_config::field_paths(
            &serde_json::to_value(o).unwrap(),
        ));
    }
    let mut every = BTreeSet::new();
    for o in worker_config::fixtures::every_field_outbox() {
        every.extend(worker_config::field_paths(
            &serde_json::to_value(o).unwrap(),
        ));
    }
    // `topic` is the other destination: examples/outbox-orders.yaml renders it.
    every.remove("topic");
    assert_eq!(rendered, every, "outbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_runs_generated_specs_with_every_sink_and_every_optional_field() {
    let objects = Objects {
        secrets: BTreeMap::new(),
        config_maps: [(
            "schemas".to_string(),
            [("order.json".to_string(), order_schema().to_string())].into(),
        )]
        .into(),
    };
    let mut runs: Vec<_> = every_sink()
        .into_iter()
        .map(|(name, sink)| {
            run(
                format!("generated EventConsumer, {name} sink"),
                every_field_event_consumer(sink),
                objects.clone(),
            )
        })
        .collect();
    runs.push(run(
        "generated EventConsumer, raw values, http sink (binary)".to_string(),
        raw_event_consumer(),
        objects.clone(),
    ));
    runs.push(run(
        "generated Outbox".to_string(),
        every_field_outbox(),
        objects.clone(),
    ));
    runs.push(run(
        "generated Outbox, SCRAM over TLS".to_string(),
        strimzi_outbox(),
        objects.clone(),
    ));
    futures::future::join_all(runs).await;
}

#[tokio::test]
async fn a_configuration_with_an_unknown_field_is_refused_naming_the_field() {
    let ec: EventConsumer = serde_json::from_value(stored(every_field_event_consumer(
        every_sink()[1].1.clone(),
    )))
    .unwrap();
    let plan = event_consumer::plan(&ec, &Settings::default()).unwrap();
    // The operator and worker of different versions: a field the worker does not know.
    let WorkerConfig::Consume(c) = &plan.config else {
        unreachable!()
    };
    let mut file = serde_json::to_value(c).unwrap();
    file["sink"]["http"]["headerz"] = json!({"X-Source": "pipewright"});
    let text = file.to_string();
    let err = worker_config::from_json::<worker_config::Consume>(&text).unwrap_err();
    assert_eq!(err.path, "sink.http.headerz");
    // And the binary: exit code 2, the path in the termination message.
    let dir = std::env::temp_dir().join(unique_name("pw-bad"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("worker.json");
    std::fs::write(&path, text).unwrap();
    let report = dir.join("termination-log");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_pipewright-worker"))
        .env_clear()
        .env("PIPEWRIGHT_TERMINATION_LOG", &report)
        .args(["consume", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
    let message = std::fs::read_to_string(&report).unwrap();
    assert!(
        message.starts_with("WorkerConfigRejected: ") && message.contains("sink.http.headerz"),
        "{message}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
