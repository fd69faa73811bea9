//! An EventConsumer whose HTTP sink and dead-letter sink name a Service (`sink.http.ref`,
//! `processing.deadLetterSink.http.ref`), end to end on the nodes: the operator resolves them
//! into `status.sinkUri` and `status.deadLetterSinkUri`, the worker pods reach them through the
//! cluster DNS and kube-proxy, and a receiver pod (tests/env/receiver, a Deployment behind the
//! Service) is deleted mid-stream and replaced by its Deployment while events and records that
//! are no events flow: every event arrives, and every bad record as a dead letter.
//!
//! The receiver pod acknowledges a request only once the test's own server on the node address
//! has it (it forwards each request there and answers with its answer), so what the test
//! counts is what the sink saw acknowledged.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use common::{
    NODE, Stack, WAIT, bootstrap, event_consumer, produce_steadily, running_and_ready, var,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use pipewright_crds::EventConsumer;
use pipewright_testenv::{create_topic, eventually, unique_name};
use serde_json::{Value, json};

/// The receiver: a Deployment of the test receiver image and a Service `hooks` on port 80.
fn receiver(forward_url: &str) -> (Value, Value) {
    let restricted = json!({
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": true,
        "runAsUser": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    });
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "hooks"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "hooks"}},
            "template": {
                "metadata": {"labels": {"app": "hooks"}},
                "spec": {
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "receiver",
                        "image": var("PIPEWRIGHT_RECEIVER_IMAGE"),
                        "imagePullPolicy": "Never",
                        "env": [{"name": "FORWARD_URL", "value": forward_url}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                            "periodSeconds": 1},
                        "securityContext": restricted,
                    }],
                },
            },
        },
    });
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "hooks"},
        "spec": {
            "selector": {"app": "hooks"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        },
    });
    (deployment, service)
}

/// The receiver pods Running and Ready.
async fn ready_receivers(pods: &Api<Pod>) -> Vec<Pod> {
    pods.list(&ListParams::default().labels("app=hooks"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && running_and_ready(p))
        .collect()
}

#[tokio::test]
async fn e2e_an_http_sink_and_dead_letter_sink_naming_a_service_deliver_every_event_and_every_dead_letter_while_the_receiver_pod_is_replaced()
 {
    let _node = NODE.lock().await;
    let stack = Stack::up("e2e-sinkref").await;
    let topic = create_topic("e2e-sinkref", 3).await;

    // The test's server: each event's id, and which receiver pod forwarded it.
    let received: Arc<Mutex<BTreeMap<u64, BTreeSet<String>>>> = Arc::default();
    let app = axum::Router::new().route(
        "/orders",
        axum::routing::post({
            let received = received.clone();
            move |headers: axum::http::HeaderMap, body: String| {
                let received = received.clone();
                async move {
                    let event: Value = serde_json::from_str(&body).unwrap();
                    let pod = headers
                        .get("x-receiver-pod")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    received
                        .lock()
                        .unwrap()
                        .entry(event["id"].as_u64().unwrap())
                        .or_default()
                        .insert(pod);
                    axum::http::StatusCode::NO_CONTENT
                }
            }
        }),
    );
    // Dead letters: each one's original offset and error kind.
    let letters: Arc<Mutex<BTreeMap<(String, String), String>>> = Arc::default();
    let app = app.route(
        "/dead",
        axum::routing::post({
            let letters = letters.clone();
            move |headers: axum::http::HeaderMap| {
                let letters = letters.clone();
                async move {
                    let h = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    letters.lock().unwrap().insert(
                        (
                            h("pipewright.original.partition"),
                            h("pipewright.original.offset"),
                        ),
                        h("pipewright.error.kind"),
                    );
                    axum::http::StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let address = common::serve_on_node(app).await;
    let (deployment, service) = receiver(&format!("http://{address}"));
    let _: Deployment = stack.apply(deployment).await;
    let _: Service = stack.apply(service).await;
    let pods: Api<Pod> = stack.api();
    eventually("a receiver pod Ready", WAIT, || async {
        (ready_receivers(&pods).await.len() == 1).then_some(())
    })
    .await;

    let _: EventConsumer = stack
        .apply(event_consumer(
            "orders",
            json!({
                "kafka": {"bootstrapServers": bootstrap()},
                "topics": [topic],
                "groupId": unique_name("e2e-sinkref"),
                // Attempts enough to outlast the receiver's replacement: no event
                // dead-lettered, only the records that are none.
                "processing": {"retry": {"maxAttempts": 100,
                    "backoff": {"initial": "50ms", "max": "1s"}},
                    "deadLetterSink": {"http": {
                        "ref": {"kind": "Service", "name": "hooks"}, "path": "/dead"}}},
                "sink": {"http": {"ref": {"kind": "Service", "name": "hooks"}, "path": "/orders"}},
            }),
        ))
        .await;
    let consumers: Api<EventConsumer> = stack.api();
    let expected = format!("http://hooks.{}.svc.cluster.local:80/orders", stack.ns.name);
    let sink_uri = eventually("status.sinkUri", WAIT, || async {
        consumers.get("orders").await.ok()?.status?.sink_uri
    })
    .await;
    assert_eq!(sink_uri, expected);
    let dead_letter_uri = eventually("status.deadLetterSinkUri", WAIT, || async {
        consumers
            .get("orders")
            .await
            .ok()?
            .status?
            .dead_letter_sink_uri
    })
    .await;
    assert_eq!(
        dead_letter_uri,
        format!("http://hooks.{}.svc.cluster.local:80/dead", stack.ns.name)
    );
    stack.wait_workers_ready("orders", 1).await;

    // Events flow; once some arrived, the receiver pod is deleted (its Deployment makes
    // another), while the rest are written.
    let count = 3_000_u64;
    let producing = tokio::spawn({
        let topic = topic.clone();
        async move { produce_steadily(&topic, count, 50, 300).await }
    });
    eventually("the first 300 events received", WAIT, || async {
        (received.lock().unwrap().len() >= 300).then_some(())
    })
    .await;
    let first = ready_receivers(&pods).await;
    let first_name = first[0].name_any();
    pods.delete(&first_name, &DeleteParams::default())
        .await
        .unwrap();
    let at_delete = received.lock().unwrap().len();
    // Records that are no events, while the receiver is being replaced: dead letters.
    let bad = 20;
    let producer: rdkafka::producer::FutureProducer =
        pipewright_testenv::kafka_config().create().unwrap();
    for i in 0..bad {
        let value = format!("not an event {i}");
        let key = format!("bad{i}");
        producer
            .send(
                rdkafka::producer::FutureRecord::to(&topic)
                    .key(&key)
                    .payload(&value),
                std::time::Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
    let second = eventually("a new receiver pod Ready", WAIT, || async {
        let ready = ready_receivers(&pods).await;
        ready
            .into_iter()
            .find(|p| p.name_any() != first_name)
            .map(|p| p.name_any())
    })
    .await;
    producing.await.unwrap();

    let all = eventually(&format!("all {count} events received"), WAIT, || async {
        let r = received.lock().unwrap();
        (r.len() as u64 == count).then(|| r.clone())
    })
    .await;
    assert_eq!(
        all.keys().copied().collect::<Vec<_>>(),
        (0..count).collect::<Vec<_>>(),
        "lost none"
    );
    let dead = eventually(
        &format!("all {bad} dead letters received"),
        WAIT,
        || async {
            let l = letters.lock().unwrap();
            (l.len() == bad).then(|| l.clone())
        },
    )
    .await;
    assert!(
        dead.values().all(|kind| kind == "malformed"),
        "each bad record dead-lettered as malformed: {dead:?}"
    );
    let through_second = all.values().filter(|pods| pods.contains(&second)).count();
    assert!(
        at_delete < count as usize && through_second > 0,
        "events went through the replacement pod {second} ({through_second}) after the first \
         was deleted at {at_delete} events"
    );
    println!(
        "{count} events: {at_delete} received when pod {first_name} was deleted, \
         {through_second} through {second}; {bad} dead letters; status.sinkUri {sink_uri}, \
         status.deadLetterSinkUri {dead_letter_uri}"
    );
    stack.down().await;
}
