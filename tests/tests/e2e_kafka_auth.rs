//! Kafka credentials the way Strimzi users hold them: the test broker has a SCRAM-SHA-512 over
//! TLS listener and a TLS listener that requires client certificates (tests/env/up), and the
//! EventConsumers name the Secrets Strimzi writes — the cluster CA Secret
//! (`<cluster>-cluster-ca-cert`: `ca.crt`, `ca.p12`, `ca.password`), a SCRAM KafkaUser's
//! (`password`, `sasl.jaas.config`) and a TLS KafkaUser's (`ca.crt`, `user.crt`, `user.key`,
//! `user.p12`, `user.password`) — key by key, as they are. The workers consume through them,
//! the operator measures lag through them, and a wrong password is a Degraded condition that
//! says so, as is a missing client certificate on the TLS listener.
//!
//! Needs the local node and the images (`make test` builds them).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use common::{NODE, Stack, WAIT, event_consumer, serve_on_node, var};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use pipewright_crds::EventConsumer;
use pipewright_testenv::{create_topic, eventually, kafka_config, unique_name};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

fn pem(name: &str) -> String {
    let path = PathBuf::from(var("KAFKA_PKI")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An EventConsumer of `topic` reaching the broker with `kafka`, delivering to `url`.
fn consumer(name: &str, topic: &str, kafka: serde_json::Value, url: &str) -> serde_json::Value {
    event_consumer(
        name,
        json!({
            "kafka": kafka,
            "topics": [topic],
            "groupId": unique_name(name),
            "events": {"onUnknownType": "skip"},
            "sink": {"http": {"url": url}},
        }),
    )
}

#[tokio::test]
async fn e2e_consumers_authenticate_with_strimzi_shaped_secrets_over_scram_sha_512_and_mutual_tls_and_a_wrong_password_is_degraded()
 {
    let _node = NODE.lock().await;
    let stack = Stack::up("e2e-kafka-auth").await;
    let topic = create_topic("e2e-kafka-auth", 2).await;
    let (user, password) = (var("KAFKA_SCRAM_USER"), var("KAFKA_SCRAM_PASSWORD"));
    let jaas = format!(
        "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"{user}\" password=\"{password}\";"
    );
    let secrets: Api<Secret> = stack.api();
    for (name, data) in [
        (
            "my-cluster-cluster-ca-cert",
            json!({"ca.crt": pem("cluster-ca.crt"), "ca.p12": "(a PKCS#12 store)", "ca.password": "p12"}),
        ),
        (
            user.as_str(),
            json!({"password": password, "sasl.jaas.config": jaas}),
        ),
        (
            "pipewright-tls",
            json!({"ca.crt": pem("clients-ca.crt"), "user.crt": pem("user.crt"),
                   "user.key": pem("user.key"), "user.p12": "(a PKCS#12 store)", "user.password": "p12"}),
        ),
        ("wrong-user", json!({"password": "not-the-password"})),
    ] {
        let secret: Secret =
            serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data}))
                .unwrap();
        secrets.create(&Default::default(), &secret).await.unwrap();
    }

    // The receiver counts the deliveries of each consumer (by path).
    let received: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let app = axum::Router::new().route(
        "/{consumer}",
        axum::routing::post({
            let received = received.clone();
            move |axum::extract::Path(consumer): axum::extract::Path<String>| {
                let received = received.clone();
                async move {
                    *received.lock().unwrap().entry(consumer).or_default() += 1;
                    axum::http::StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let base = format!("http://{}", serve_on_node(app).await);
    let cluster_ca = json!({"name": "my-cluster-cluster-ca-cert", "key": "ca.crt"});
    let scram = |password_secret: &str| {
        json!({
            "bootstrapServers": [var("KAFKA_SCRAM_BOOTSTRAP")],
            "tls": {"caSecretRef": cluster_ca},
            "sasl": {"mechanism": "SCRAM-SHA-512", "username": user,
                     "passwordSecretRef": {"name": password_secret, "key": "password"}},
        })
    };
    let mtls = json!({
        "bootstrapServers": [var("KAFKA_MTLS_BOOTSTRAP")],
        "tls": {"caSecretRef": cluster_ca,
                "certSecretRef": {"name": "pipewright-tls", "key": "user.crt"},
                "keySecretRef": {"name": "pipewright-tls", "key": "user.key"}},
    });
    let no_client_certificate = json!({
        "bootstrapServers": [var("KAFKA_MTLS_BOOTSTRAP")],
        "tls": {"caSecretRef": cluster_ca},
    });
    for (name, kafka) in [
        ("via-scram", scram(&user)),
        ("via-mtls", mtls),
        ("wrong-password", scram("wrong-user")),
        ("no-client-certificate", no_client_certificate),
    ] {
        let _: EventConsumer = stack
            .apply(consumer(name, &topic, kafka, &format!("{base}/{name}")))
            .await;
    }
    stack.wait_workers_ready("via-scram", 1).await;
    stack.wait_workers_ready("via-mtls", 1).await;

    // Produced over the plaintext listener: the same topic behind every listener.
    let count = 50;
    let producer: FutureProducer = kafka_config().create().expect("producer");
    for i in 0..count {
        let value = json!({"event_type": "Ping", "i": i}).to_string();
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&format!("k{}", i % 5))
                    .payload(&value),
                std::time::Duration::from_secs(10),
            )
            .await
            .expect("produce");
    }
    eventually(
        "every record through both authenticated listeners",
        WAIT,
        || async {
            let got = received.lock().unwrap().clone();
            for name in ["via-scram", "via-mtls"] {
                let n = got.get(name).copied().unwrap_or(0);
                assert!(n <= count, "{name}: {n} deliveries of {count} records");
            }
            for refused in ["wrong-password", "no-client-certificate"] {
                assert_eq!(got.get(refused), None, "{refused} consumed: {got:?}");
            }
            (got.get("via-scram") == Some(&count) && got.get("via-mtls") == Some(&count))
                .then_some(())
        },
    )
    .await;

    // The operator measured the lag through the same credentials: caught up, Ready.
    let consumers: Api<EventConsumer> = stack.api();
    for name in ["via-scram", "via-mtls"] {
        eventually(&format!("{name}: Ready with lag 0"), WAIT, || async {
            let status = consumers.get(name).await.ok()?.status?;
            let ready = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let degraded = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Degraded" && c.status == "True");
            (ready && !degraded && status.total_lag == Some(0)).then_some(())
        })
        .await;
    }
    // The broker refuses the wrong password: the condition says so.
    let degraded = stack
        .wait_degraded("wrong-password", "KafkaUnreachable")
        .await;
    assert!(
        degraded.message.contains("Authentication") || degraded.message.contains("SASL"),
        "the condition names the authentication failure: {}",
        degraded.message
    );
    assert!(
        !degraded.message.contains("not-the-password") && !degraded.message.contains(&password),
        "no password in the condition: {}",
        degraded.message
    );
    eprintln!("wrong password: {}", degraded.message);
    // The TLS listener requires a client certificate: without one, the handshake fails.
    let degraded = stack
        .wait_degraded("no-client-certificate", "KafkaUnreachable")
        .await;
    assert!(
        degraded.message.contains("SSL") || degraded.message.contains("handshake"),
        "the condition names the TLS failure: {}",
        degraded.message
    );
    eprintln!("no client certificate: {}", degraded.message);
    stack.down().await;
}
