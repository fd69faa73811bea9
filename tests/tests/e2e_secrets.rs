//! Secrets on the running system: values planted in the Secrets a user references (a database
//! password in a DSN, a SASL password in the Kafka Secret, an HTTP bearer token) are used, and
//! appear in nothing else the system writes — no pod log (the operator's and the workers',
//! previous containers included), no Event, no resource (spec or status), no ConfigMap, no
//! Deployment or pod spec — also on the error paths (a sink answering 503, a DSN naming a
//! database that does not exist). And worker pods mount no service-account token.
//!
//! Needs the local node and the images (`make test` builds them).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{NODE, Stack, WAIT, bootstrap, event_consumer, outbox, serve_on_node};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Secret};
use kube::api::{ListParams, LogParams};
use kube::{Api, ResourceExt};
use pipewright_crds::{EventConsumer, Outbox};
use pipewright_testenv::{TestEnv, create_topic, eventually, unique_name};
use pipewright_worker::outbox::{self, OutboxEvent, Table};
use serde::Serialize;
use serde_json::json;

#[derive(Debug, Serialize)]
#[serde(tag = "event_type")]
enum Tick {
    Tick { id: u64 },
}

impl OutboxEvent for Tick {
    fn aggregate_type(&self) -> &str {
        "tick"
    }
    fn aggregate_id(&self) -> String {
        let Tick::Tick { id } = self;
        format!("t{}", id % 5)
    }
}

/// Every object of a kind in the namespace, as (what, JSON text).
async fn as_text<K>(api: Api<K>, kind: &str) -> Vec<(String, String)>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug,
{
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| {
            (
                format!("{kind} {}", o.name_any()),
                serde_json::to_string(o).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn e2e_planted_secret_values_are_used_but_appear_in_no_log_event_resource_or_configmap_and_worker_pods_mount_no_token()
 {
    let _node = NODE.lock().await;
    let stack = Stack::up("e2e-secrets").await;
    let schema = stack.schema.name.clone();
    let topic = create_topic("e2e-secrets", 2).await;
    outbox::MIGRATOR
        .run(&stack.schema.pool)
        .await
        .expect("outbox migration");

    let marker = unique_name("planted");
    let dsn_password = format!("{marker}-dsn-password");
    let sasl_password = format!("{marker}-sasl-password");
    let http_token = format!("{marker}-http-token");
    let planted = [&dsn_password, &sasl_password, &http_token];

    // The test database trusts its clients, so the password is carried but not checked.
    let url = TestEnv::get().database_url.clone();
    let dsn = url.replacen("://postgres@", &format!("://postgres:{dsn_password}@"), 1);
    assert_ne!(
        dsn, url,
        "DATABASE_URL has the form postgres://postgres@...: {url}"
    );
    let (base, _) = dsn.rsplit_once('/').unwrap();
    let missing_db = format!("{base}/no_such_db_{}", marker.replace('-', "_"));
    for (name, data) in [
        ("db-planted", json!({"dsn": dsn, "missing": missing_db})),
        (
            "kafka-planted",
            // Plaintext: the test broker has no SASL listener; librdkafka is given the
            // password all the same (the worker mounts the Secret's keys as its settings).
            json!({"security.protocol": "plaintext", "sasl.mechanism": "PLAIN",
                   "sasl.username": "pipewright", "sasl.password": sasl_password}),
        ),
        (
            "hook-planted",
            json!({"authorization": format!("Bearer {http_token}")}),
        ),
    ] {
        let secret: Secret =
            serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data}))
                .unwrap();
        stack
            .api::<Secret>()
            .create(&Default::default(), &secret)
            .await
            .unwrap();
    }

    // The receiver refuses the first deliveries (503), then takes them, checking the token.
    let refused = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let expected = format!("Bearer {http_token}");
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let (refused, accepted) = (refused.clone(), accepted.clone());
            move |headers: axum::http::HeaderMap| {
                let (refused, accepted, expected) =
                    (refused.clone(), accepted.clone(), expected.clone());
                async move {
                    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
                    if auth != Some(expected.as_str()) {
                        return axum::http::StatusCode::FORBIDDEN;
                    }
                    if refused.fetch_add(1, Ordering::SeqCst) < 5 {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    accepted.fetch_add(1, Ordering::SeqCst);
                    axum::http::StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let hook = format!("http://{}/hook", serve_on_node(app).await);

    let kafka = json!({"bootstrapServers": bootstrap(), "secretRef": {"name": "kafka-planted"}});
    let table = format!("{schema}.outbox");
    let mut ticks = outbox("ticks", &table, &topic);
    ticks["spec"]["database"]["dsnSecretRef"] = json!({"name": "db-planted", "key": "dsn"});
    ticks["spec"]["kafka"] = kafka.clone();
    let _: Outbox = stack.apply(ticks).await;
    let mut broken = outbox("broken-db", &table, &topic);
    broken["spec"]["database"]["dsnSecretRef"] = json!({"name": "db-planted", "key": "missing"});
    let _: Outbox = stack.apply(broken).await;
    let _: EventConsumer = stack
        .apply(event_consumer(
            "hook",
            json!({
                "kafka": kafka,
                "topics": [topic],
                "groupId": unique_name("e2e-secrets"),
                "events": {"types": [{"name": "Tick"}], "onUnknownType": "skip"},
                "processing": {"retry": {"maxAttempts": 100,
                    "backoff": {"initial": "100ms", "max": "500ms"}}},
                "sink": {"http": {"url": hook, "headersSecretRef": {"name": "hook-planted"}}},
            }),
        ))
        .await;
    stack.wait_workers_ready("ticks", 1).await;
    stack.wait_workers_ready("hook", 1).await;

    let count = 30_u64;
    let table = Table::parse(&format!("{schema}.outbox")).unwrap();
    for id in 0..count {
        let mut tx = stack.schema.pool.begin().await.unwrap();
        outbox::enqueue_into(&mut tx, &table, &Tick::Tick { id })
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    // Used: every event arrived with the planted token (after 5 refusals).
    eventually(
        "every event delivered with the planted token",
        WAIT,
        || async { (accepted.load(Ordering::SeqCst) >= count).then_some(()) },
    )
    .await;
    // The error path with the planted DSN ran: the operator could not measure the table.
    let outboxes = stack.api::<Outbox>();
    eventually(
        "broken-db Degraded=True/DatabaseUnreachable",
        WAIT,
        || async {
            let status = outboxes.get("broken-db").await.ok()?.status?;
            status
                .conditions
                .iter()
                .any(|c| {
                    c.type_ == "Degraded" && c.status == "True" && c.reason == "DatabaseUnreachable"
                })
                .then_some(())
        },
    )
    .await;

    // Everything the system wrote, as text.
    let mut written: Vec<(String, String)> = Vec::new();
    let pods = stack
        .api::<Pod>()
        .list(&ListParams::default())
        .await
        .unwrap();
    let mut log_bytes = 0;
    for pod in &pods.items {
        for c in pod.spec.iter().flat_map(|s| &s.containers) {
            for previous in [false, true] {
                let params = LogParams {
                    container: Some(c.name.clone()),
                    previous,
                    ..LogParams::default()
                };
                // `previous` fails for a container that never restarted.
                if let Ok(log) = stack.api::<Pod>().logs(&pod.name_any(), &params).await {
                    log_bytes += log.len();
                    let what = format!(
                        "log of {}/{} (previous: {previous})",
                        pod.name_any(),
                        c.name
                    );
                    written.push((what, log));
                }
            }
        }
        written.push((
            format!("pod {}", pod.name_any()),
            serde_json::to_string(pod).unwrap(),
        ));
    }
    let events = stack
        .api::<Event>()
        .list(&ListParams::default())
        .await
        .unwrap();
    for e in &events.items {
        written.push((
            format!("Event {}", e.name_any()),
            serde_json::to_string(e).unwrap(),
        ));
    }
    written.extend(as_text(stack.api::<Outbox>(), "Outbox").await);
    written.extend(as_text(stack.api::<EventConsumer>(), "EventConsumer").await);
    written.extend(as_text(stack.api::<ConfigMap>(), "ConfigMap").await);
    written.extend(as_text(stack.api::<Deployment>(), "Deployment").await);
    // Not vacuous: the logs hold the error paths, and the Events were read.
    let all_logs: String = written
        .iter()
        .filter(|(what, _)| what.starts_with("log of "))
        .map(|(_, text)| text.as_str())
        .collect();
    assert!(log_bytes > 0 && !events.items.is_empty(), "nothing to scan");
    assert!(
        all_logs.contains("delivery failed; retrying") && all_logs.contains("http_status_503"),
        "the workers' logs do not show the refused deliveries"
    );
    let mut hits = Vec::new();
    for (what, text) in &written {
        for value in planted {
            if text.contains(value.as_str()) {
                hits.push(format!("{value} in {what}"));
            }
        }
    }
    assert!(
        hits.is_empty(),
        "planted secret values found:\n{}",
        hits.join("\n")
    );
    println!(
        "scanned {} objects and logs ({log_bytes} bytes of logs, {} Events): no planted value",
        written.len(),
        events.items.len()
    );

    // Worker pods mount no service-account token.
    for pod in pods.items.iter().filter(|p| {
        p.labels().get("app.kubernetes.io/name").map(String::as_str) == Some("pipewright-worker")
    }) {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(
            spec.automount_service_account_token,
            Some(false),
            "{}",
            pod.name_any()
        );
        let projected_token = spec.volumes.iter().flatten().any(|v| {
            v.projected.as_ref().is_some_and(|p| {
                p.sources
                    .iter()
                    .flatten()
                    .any(|s| s.service_account_token.is_some())
            })
        });
        assert!(
            !projected_token,
            "{} mounts a service-account token",
            pod.name_any()
        );
    }
    stack.down().await;
}
