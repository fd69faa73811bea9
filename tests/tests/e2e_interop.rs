//! The payloads users already have: events written by applications that are not pipewright's
//! Rust helper reach an EventConsumer as they are.
//!
//! Needs the local node and the images (`make test` builds them).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{NODE, Stack, WAIT, bootstrap, event_consumer, outbox, serve_on_node};
use kube::Api;
use pipewright_crds::{EventConsumer, Outbox};
use pipewright_testenv::{create_topic, eventually, unique_name};
use pipewright_worker::outbox;
use serde_json::json;

/// A Debezium-style outbox table filled by plain SQL (no `event_type` in the payload; the type
/// in the `type` column, which the relay writes as the record's `type` header) reaches an
/// EventConsumer that reads the event type from that header: every declared event arrives,
/// typed (`ce-type`) and in each aggregate's order; an undeclared type is skipped (proven by
/// a later event of the same aggregate arriving, and the skipped counter).
#[tokio::test]
async fn e2e_outbox_rows_inserted_by_plain_sql_reach_a_consumer_that_takes_the_event_type_from_the_type_header()
 {
    let _node = NODE.lock().await;
    let stack = Stack::up("e2e-interop").await;
    let schema = stack.schema.name.clone();
    let topic = create_topic("e2e-interop", 2).await;
    outbox::MIGRATOR
        .run(&stack.schema.pool)
        .await
        .expect("outbox migration");

    // The receiver: (ce-type, body) of every request, in arrival order.
    let received: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post({
            let received = received.clone();
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let received = received.clone();
                async move {
                    let ce_type = headers
                        .get("ce-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    received.lock().unwrap().push((ce_type, body));
                    axum::http::StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let url = format!("http://{}/events", serve_on_node(app).await);

    let _: Outbox = stack
        .apply(outbox("legacy", &format!("{schema}.outbox"), &topic))
        .await;
    let _: EventConsumer = stack
        .apply(event_consumer(
            "by-header",
            json!({
                "kafka": {"bootstrapServers": bootstrap()},
                "topics": [topic],
                "groupId": unique_name("e2e-interop"),
                "events": {"types": [{"name": "OrderCreated"}, {"name": "OrderPaid"}],
                           "onUnknownType": "skip", "typeFrom": {"header": "type"}},
                "sink": {"http": {"url": url}},
            }),
        ))
        .await;
    stack.wait_workers_ready("legacy", 1).await;
    stack.wait_workers_ready("by-header", 1).await;

    // The application: plain SQL, as a Java or Go service would write it.
    let orders = 10;
    for step in ["OrderCreated", "OrderArchived", "OrderPaid"] {
        for o in 0..orders {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {schema}.outbox (id, aggregatetype, aggregateid, type, payload) \
                 VALUES (gen_random_uuid(), 'order', $1, $2, $3)"
            )))
            .bind(format!("o{o}"))
            .bind(step)
            .bind(json!({"order_id": format!("o{o}"), "step": step}))
            .execute(&stack.schema.pool)
            .await
            .unwrap();
        }
    }
    let expected = 2 * orders;
    let got = eventually("every declared event at the receiver", WAIT, || async {
        let got = received.lock().unwrap().clone();
        assert!(
            got.len() <= expected,
            "{} requests for {expected} events",
            got.len()
        );
        (got.len() == expected).then_some(got)
    })
    .await;
    let mut per_order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (ce_type, body) in &got {
        assert_eq!(
            body["step"].as_str(),
            Some(ce_type.as_str()),
            "the event type from the header is the row's type: {body}"
        );
        per_order
            .entry(body["order_id"].as_str().unwrap().to_string())
            .or_default()
            .push(ce_type.clone());
    }
    assert_eq!(per_order.len(), orders);
    for (order, types) in &per_order {
        assert_eq!(types, &["OrderCreated", "OrderPaid"], "order {order}");
    }
    // Each OrderArchived came before its order's OrderPaid (same key, in order), so it was
    // taken and skipped before that one arrived: the counter says so.
    let consumers: Api<EventConsumer> = stack.api();
    eventually("skipped = 10 in the status", WAIT, || async {
        let counters = consumers.get("by-header").await.ok()?.status?.counters?;
        (counters.skipped == orders as i64 && counters.processed == expected as i64).then_some(())
    })
    .await;
    stack.down().await;
}
