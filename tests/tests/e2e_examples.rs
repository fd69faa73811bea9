//! The files in `examples/`, applied unchanged with `kubectl apply` into a namespace of the
//! local cluster, as a user would: they name Kafka as `kafka:9092` and PostgreSQL as
//! `postgres:5432` (in their Secrets), which resolve there as they would in a cluster that runs
//! both (CoreDNS; the Services of `$PIPEWRIGHT_SERVICES_MANIFEST`, routed by kube-proxy to the
//! environment's broker and database). The operator runs in another namespace (the chart,
//! watching the examples' namespace), as the quickstart installs it: it must measure what the
//! workers reach, so it resolves the names as the workers' namespace does.
//!
//! `eventconsumer-http-service.yaml` names the Service `payments-api`: here a selector-less
//! Service whose endpoint is the test's own server on the node address.
//!
//! Left out: `outbox-topic-template.yaml`, written for a Strimzi cluster's SCRAM-over-TLS
//! listener (`my-cluster-kafka-bootstrap.kafka:9093`) that the environment does not name that
//! way; the worker runs it against the test broker's SCRAM listener in
//! `worker/tests/operator_contract.rs`, and `e2e_kafka_auth.rs` proves the same credentials
//! form end to end.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Cleanup, NODE, WAIT, repo, require_node_and_images, run, var};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::PostParams;
use kube::{Api, Client};
use pipewright_crds::{EventConsumer, Outbox};
use pipewright_testenv::{
    TestEnv, TestNamespace, ensure_topic, eventually, install_crds, kafka_config, kube_client,
    unique_name,
};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::{Value, json};

/// The example files applied, and the resources they hold (kind, name).
const APPLIED: &[&str] = &[
    "eventconsumer-http.yaml",
    "eventconsumer-http-service.yaml",
    "eventconsumer-kafka.yaml",
    "eventconsumer-log.yaml",
    "eventconsumer-postgres.yaml",
    "outbox-orders.yaml",
];
const EVENT_CONSUMERS: &[&str] = &[
    "orders-to-webhook",
    "orders-to-audit-topic",
    "tail-events",
    "payments-to-postgres",
    "payments-to-service",
];
const OUTBOX: &str = "orders-outbox";
/// The topics the applied examples name.
const TOPICS: &[&str] = &[
    "orders",
    "orders.dlq",
    "orders.audit",
    "payments",
    "payments.dlq",
    "tail-events.dlq",
];

/// Ready=True and Degraded=False, with figures the operator measured (through the names the
/// examples use), or what the conditions say instead.
fn ready(conditions: &[Condition], measured: bool) -> Result<(), String> {
    let status = |t: &str| conditions.iter().find(|c| c.type_ == t);
    match (status("Ready"), status("Degraded")) {
        (Some(r), Some(d)) if r.status == "True" && d.status == "False" && measured => Ok(()),
        _ => Err(conditions
            .iter()
            .map(|c| format!("{}={}/{}: {}", c.type_, c.status, c.reason, c.message))
            .collect::<Vec<_>>()
            .join("; ")),
    }
}

async fn wait_ready(client: &Client, ns: &str) {
    let consumers: Api<EventConsumer> = Api::namespaced(client.clone(), ns);
    let outboxes: Api<Outbox> = Api::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut waiting = Vec::new();
        for name in EVENT_CONSUMERS {
            let status = consumers
                .get(name)
                .await
                .ok()
                .and_then(|c| c.status)
                .unwrap_or_default();
            let measured = status.total_lag.is_some();
            if let Err(e) = ready(&status.conditions, measured) {
                waiting.push(format!("EventConsumer {name}: {e}"));
            }
        }
        let status = outboxes
            .get(OUTBOX)
            .await
            .ok()
            .and_then(|o| o.status)
            .unwrap_or_default();
        let measured = status.pending.is_some();
        if let Err(e) = ready(&status.conditions, measured) {
            waiting.push(format!("Outbox {OUTBOX}: {e}"));
        }
        if waiting.is_empty() {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "not Ready=True and Degraded=False within {WAIT:?}:\n{}",
                waiting.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs `program` with `input` on its standard input; panics with its output if it fails.
fn run_with_stdin(program: &str, args: &[&str], input: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The first record of `topic` whose value contains `needle`.
async fn find_record(topic: &str, needle: &str) -> String {
    let consumer: BaseConsumer = kafka_config()
        .set("group.id", unique_name("examples-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let consumer = std::sync::Arc::new(consumer);
    let needle = needle.to_owned();
    eventually(&format!("a record with {needle} in {topic}"), WAIT, || {
        let consumer = consumer.clone();
        let needle = needle.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                for _ in 0..50 {
                    let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                        continue;
                    };
                    let value = String::from_utf8_lossy(m.payload().unwrap_or_default());
                    if value.contains(&needle) {
                        return Some(value.into_owned());
                    }
                }
                None
            })
            .await
            .unwrap()
        }
    })
    .await
}

#[tokio::test]
async fn e2e_examples_apply_unchanged_and_deliver_through_kafka_and_postgres_by_service_name() {
    let _node = NODE.lock().await;
    require_node_and_images();
    let client = kube_client().await;
    install_crds(&client).await;
    let kubectl = var("KUBECTL");

    // The examples' namespace (restricted, as the chart's pods must be admitted anywhere) with
    // kafka and postgres as Services.
    let ns = TestNamespace::create(&client, "examples").await;
    common::enforce_restricted(&client, &ns.name).await;
    run(
        &kubectl,
        &[
            "apply",
            "--namespace",
            &ns.name,
            "-f",
            &var("PIPEWRIGHT_SERVICES_MANIFEST"),
        ],
    );

    // The operator in a namespace of its own, watching the examples' namespace.
    let operator_ns = TestNamespace::create(&client, "examples-operator").await;
    let release = unique_name("pw");
    let cleanup = Cleanup::new(&release, &operator_ns.name, &[&ns.name]);
    common::install_operator(&release, &operator_ns.name, &ns.name);

    // A database of its own (the Outbox example's table is public.outbox), with the outbox
    // table of the migration users run and the read model the postgres example writes.
    let env_url = &TestEnv::get().database_url;
    let database = unique_name("examples").replace('-', "_");
    let admin = sqlx::PgPool::connect(env_url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&admin)
        .await
        .unwrap();
    let (base, _) = env_url.rsplit_once('/').unwrap();
    let db = sqlx::PgPool::connect(&format!("{base}/{database}"))
        .await
        .unwrap();
    let migration = std::fs::read_to_string(
        repo().join("worker/src/outbox/migrations/20260101000000_outbox.sql"),
    )
    .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(migration))
        .execute(&db)
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE SCHEMA read_model; \
         CREATE TABLE read_model.payments (payment_id text PRIMARY KEY, amount numeric NOT NULL, status text NOT NULL)",
    )
    .execute(&db)
    .await
    .unwrap();

    // The Secrets the examples reference; the DSNs name the database by its Service.
    let dsn = format!("postgres://postgres@postgres:5432/{database}");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    for (name, data) in [
        ("orders-db", json!({"dsn": dsn})),
        ("read-model-db", json!({"dsn": dsn})),
        (
            "webhook-auth",
            json!({"Authorization": "Bearer examples-test"}),
        ),
    ] {
        let secret: Secret =
            serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data}))
                .unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    for topic in TOPICS {
        ensure_topic(topic, 3).await;
    }
    // payments-api: the test's server behind a Service, counting the CloudEvents it gets.
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post({
            let received = received.clone();
            move |body: String| {
                let received = received.clone();
                async move {
                    received
                        .lock()
                        .unwrap()
                        .push(serde_json::from_str(&body).unwrap());
                    axum::http::StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let address = common::serve_on_node(app).await;
    let services = json!([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "payments-api"},
         "spec": {"ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "payments-api-test",
                      "labels": {"kubernetes.io/service-name": "payments-api"}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": [address.ip().to_string()], "conditions": {"ready": true}}],
         "ports": [{"name": "http", "port": address.port(), "protocol": "TCP"}]},
    ]);
    for object in services.as_array().unwrap() {
        run_with_stdin(
            &kubectl,
            &["apply", "--namespace", &ns.name, "-f", "-"],
            &object.to_string(),
        );
    }

    // The files, unchanged.
    for file in APPLIED {
        let path = repo().join("examples").join(file);
        run(
            &kubectl,
            &[
                "apply",
                "--namespace",
                &ns.name,
                "-f",
                path.to_str().unwrap(),
            ],
        );
    }
    wait_ready(&client, &ns.name).await;

    // Data through the names: a row in the outbox table (plain SQL) reaches orders.audit
    // through the Outbox (PostgreSQL at postgres:5432, Kafka at kafka:9092) and the Kafka
    // sink's EventConsumer; a payment produced here reaches the read model through the
    // PostgreSQL sink's.
    let order_id = unique_name("o");
    sqlx::query(
        "INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) \
         VALUES (gen_random_uuid(), 'order', $1, 'order.created', $2)",
    )
    .bind(&order_id)
    .bind(json!({"event_type": "order.created", "order_id": order_id}))
    .execute(&db)
    .await
    .unwrap();
    let audited = find_record("orders.audit", &order_id).await;
    assert!(audited.contains("order.created"), "{audited}");

    let payment_id = unique_name("p");
    let producer: ThreadedProducer<DefaultProducerContext> = kafka_config().create().unwrap();
    let value = json!({"event_type": "payment.captured", "payment_id": payment_id, "amount": 42.5, "status": "captured"})
        .to_string();
    producer
        .send(BaseRecord::to("payments").key(&payment_id).payload(&value))
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
    let (amount, status): (String, String) = eventually(
        &format!("payment {payment_id} in read_model.payments"),
        WAIT,
        || async {
            sqlx::query_as(
                "SELECT amount::text, status FROM read_model.payments WHERE payment_id = $1",
            )
            .bind(&payment_id)
            .fetch_optional(&db)
            .await
            .unwrap()
        },
    )
    .await;
    assert_eq!((amount.as_str(), status.as_str()), ("42.5", "captured"));
    // ... and, as a structured CloudEvent, payments-api through its Service.
    let event = eventually(
        &format!("payment {payment_id} at payments-api"),
        WAIT,
        || async {
            received
                .lock()
                .unwrap()
                .iter()
                .find(|e| e["data"]["payment_id"] == payment_id.as_str())
                .cloned()
        },
    )
    .await;
    assert_eq!(event["type"], "payment.captured", "{event}");

    db.close().await;
    run(
        &var("HELM"),
        &[
            "uninstall",
            &release,
            "--namespace",
            &operator_ns.name,
            "--wait",
        ],
    );
    ns.delete().await;
    operator_ns.delete().await;
    cleanup.disarm();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}
