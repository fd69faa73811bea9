//! The whole pipeline under faults, with counts (issue 15's faults under load, reduced run):
//! an application writes business rows and outbox events in one transaction at a steady
//! rate → Outbox pod → Kafka → EventConsumer pod → PostgreSQL sink, and a second
//! EventConsumer on the same topic (lag-autoscaled, 1 to 2 replicas) → HTTP sink → a receiver
//! that deduplicates on the idempotency key, while, one after another: both consumers' worker
//! pods are killed (`kubectl delete --grace-period=0 --force`), the
//! Kafka broker is SIGKILLed and restarted, PostgreSQL is restarted (fast shutdown), the
//! operator pod is deleted, the PostgreSQL sink's consumer is scaled from 1 to 2 replicas (a
//! rebalance under load), the webhook's receiver slows down until the lag autoscaler adds a
//! replica (and removes it once the lag drained), the apiserver is SIGKILLed and restarted,
//! the node's containerd is SIGKILLed and restarted (its containers run on), and the outbox's
//! worker pod is killed. At the end: nothing lost,
//! no aggregate's events delivered out of order, duplicates (from at-least-once redelivery)
//! counted before each idempotent sink; for each fault the time until events flow again and the conditions the resources
//! showed meanwhile (printed: `-- --nocapture`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{NODE, Stack, bootstrap, event_consumer, outbox, repo, run, serve_on_node};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use pipewright_crds::{EventConsumer, Outbox};
use pipewright_testenv::{create_topic, eventually, unique_name};
use pipewright_worker::outbox::{self, OutboxEvent, Table};
use serde::Serialize;
use serde_json::json;

/// Orders written to round-robin, one event after another per order, until the last fault
/// recovered (and at least `MIN_EVENTS`).
const ORDERS: i64 = 40;
/// The reduced run's size; `make chaos` sets `PIPEWRIGHT_CHAOS_EVENTS=100000`.
const MIN_EVENTS: i64 = 10_000;
/// Rows written per second (open loop: a slow commit does not slow the schedule down much).
const RATE: u64 = 200;
/// How long each fault may take to recover before the test fails.
const RECOVERY: Duration = Duration::from_secs(180);
/// The webhook consumer's lag autoscaler: one replica per this many records of lag, 1 to 2.
const WEBHOOK_LAG_THRESHOLD: i64 = 1500;
/// How long the webhook's receiver takes per request while it is slowed down: 16 requests
/// in flight per replica take 16 events/s, far below `RATE`, so the lag grows.
const SLOW_RECEIVER: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize)]
#[serde(tag = "event_type")]
enum OrderEvent {
    OrderStep { order_id: String, seq: i64 },
}

impl OutboxEvent for OrderEvent {
    fn aggregate_type(&self) -> &str {
        "order"
    }
    fn aggregate_id(&self) -> String {
        let OrderEvent::OrderStep { order_id, .. } = self;
        order_id.clone()
    }
}

/// Rows in the sink table.
async fn delivered(pool: &sqlx::PgPool) -> Option<i64> {
    sqlx::query_scalar("SELECT count(*) FROM delivered")
        .fetch_one(pool)
        .await
        .ok()
}

/// Every worker pod's uid and its container's restart count.
async fn all_worker_containers(stack: &Stack) -> BTreeMap<String, i32> {
    let mut out = BTreeMap::new();
    for instance in ["orders", "read-model", "webhook"] {
        for pod in stack.worker_pods(instance).await {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let restarts = pod
                .status
                .iter()
                .flat_map(|s| &s.container_statuses)
                .flatten()
                .map(|c| c.restart_count)
                .sum();
            out.insert(pod.uid().unwrap_or_default(), restarts);
        }
    }
    out
}

/// One request the webhook's receiver took.
#[derive(Debug, Clone)]
struct Received {
    key: String,
    order_id: String,
    seq: i64,
}

#[tokio::test]
async fn e2e_chaos_under_load_loses_nothing_and_keeps_each_aggregates_order_through_pod_broker_database_and_operator_faults()
 {
    let _node = NODE.lock().await;
    let stack = Stack::up("chaos").await;
    let schema = stack.schema.name.clone();
    let topic = create_topic("chaos-orders", 3).await;
    outbox::MIGRATOR
        .run(&stack.schema.pool)
        .await
        .expect("outbox migration");
    sqlx::raw_sql(
        "CREATE TABLE orders (id text PRIMARY KEY, step bigint NOT NULL);
         CREATE TABLE delivered (n bigserial PRIMARY KEY, event_type text NOT NULL,
                                 order_id text NOT NULL, seq bigint NOT NULL)",
    )
    .execute(&stack.schema.pool)
    .await
    .unwrap();
    let _: Outbox = stack
        .apply(outbox("orders", &format!("{schema}.outbox"), &topic))
        .await;
    let _: EventConsumer = stack
        .apply(event_consumer(
            "read-model",
            json!({
                "kafka": {"bootstrapServers": bootstrap()},
                "topics": [topic],
                "groupId": unique_name("chaos"),
                "events": {"types": [{"name": "OrderStep"}], "onUnknownType": "fail"},
                "processing": {"ordering": "key", "concurrency": 16,
                    "retry": {"maxAttempts": 100, "backoff": {"initial": "100ms", "max": "5s"}}},
                "sink": {"postgres": {
                    "dsnSecretRef": {"name": "db", "key": "dsn"},
                    "table": format!("{schema}.delivered"),
                    "offsetsTable": format!("{schema}.offsets"),
                }},
            }),
        ))
        .await;
    // The second consumer: every event to an HTTP receiver that deduplicates on the
    // idempotency key (the record's coordinates), as the HTTP sink's receivers are asked to.
    // While `delay_ms` is not 0 it answers that much later (the autoscaling step).
    let received: Arc<Mutex<Vec<Received>>> = Arc::default();
    let delay_ms = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post({
            let received = received.clone();
            let delay_ms = delay_ms.clone();
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let received = received.clone();
                let delay = Duration::from_millis(delay_ms.load(Ordering::SeqCst));
                async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let event: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or_default();
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    received.lock().unwrap().push(Received {
                        key,
                        order_id: event["order_id"].as_str().unwrap_or_default().to_string(),
                        seq: event["seq"].as_i64().unwrap_or(-1),
                    });
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let url = format!("http://{}/events", serve_on_node(app).await);
    let _: EventConsumer = stack
        .apply(event_consumer(
            "webhook",
            json!({
                "kafka": {"bootstrapServers": bootstrap()},
                "topics": [topic],
                "groupId": unique_name("chaos-webhook"),
                "events": {"types": [{"name": "OrderStep"}], "onUnknownType": "fail"},
                "processing": {"ordering": "key", "concurrency": 16,
                    "retry": {"maxAttempts": 100, "backoff": {"initial": "100ms", "max": "5s"}}},
                "autoscaling": {"minReplicas": 1, "maxReplicas": 2,
                    "lagThreshold": WEBHOOK_LAG_THRESHOLD},
                "sink": {"http": {"url": url}},
            }),
        ))
        .await;
    stack.wait_workers_ready("orders", 1).await;
    stack.wait_workers_ready("read-model", 1).await;
    stack.wait_workers_ready("webhook", 1).await;

    // The conditions both resources show, every transition, with the time it was seen.
    let started = Instant::now();
    let seen: Arc<Mutex<Vec<(f64, String)>>> = Arc::default();
    let watcher = tokio::spawn({
        let (consumers, outboxes, seen) = (
            stack.api::<EventConsumer>(),
            stack.api::<Outbox>(),
            seen.clone(),
        );
        async move {
            let mut last: BTreeMap<String, String> = BTreeMap::new();
            loop {
                let mut now: Vec<(String, String)> = Vec::new();
                if let Ok(c) = consumers.get("read-model").await {
                    for k in c.status.iter().flat_map(|s| &s.conditions) {
                        now.push((
                            format!("EventConsumer {}", k.type_),
                            format!("{}/{}", k.status, k.reason),
                        ));
                    }
                }
                if let Ok(c) = consumers.get("webhook").await
                    && let Some(status) = &c.status
                {
                    now.push((
                        "EventConsumer webhook replicas".into(),
                        status.replicas.to_string(),
                    ));
                }
                if let Ok(o) = outboxes.get("orders").await {
                    for k in o.status.iter().flat_map(|s| &s.conditions) {
                        now.push((
                            format!("Outbox {}", k.type_),
                            format!("{}/{}", k.status, k.reason),
                        ));
                    }
                }
                for (what, value) in now {
                    if last.get(&what) != Some(&value) {
                        seen.lock()
                            .unwrap()
                            .push((started.elapsed().as_secs_f64(), format!("{what}={value}")));
                        last.insert(what, value);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });

    // The application, on its own task: a business row and its event in one transaction,
    // retried until the database takes it (it restarts in the middle).
    let min_events: i64 = std::env::var("PIPEWRIGHT_CHAOS_EVENTS")
        .ok()
        .map(|v| v.parse().expect("PIPEWRIGHT_CHAOS_EVENTS: a number"))
        .unwrap_or(MIN_EVENTS);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let pool = stack.schema.pool.clone();
        let table = Table::parse(&format!("{schema}.outbox")).unwrap();
        let stop = stop.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
            let mut retries = 0u64;
            let mut seq = 0;
            while seq * ORDERS < min_events || !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for o in 0..ORDERS {
                    tick.tick().await;
                    let order_id = format!("o{o}");
                    loop {
                        let attempt = async {
                            let mut tx = pool.begin().await?;
                            sqlx::query(
                                "INSERT INTO orders VALUES ($1, $2) \
                                 ON CONFLICT (id) DO UPDATE SET step = $2",
                            )
                            .bind(&order_id)
                            .bind(seq)
                            .execute(&mut *tx)
                            .await?;
                            let event = OrderEvent::OrderStep {
                                order_id: order_id.clone(),
                                seq,
                            };
                            outbox::enqueue_into(&mut tx, &table, &event)
                                .await
                                .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
                            tx.commit().await
                        };
                        match attempt.await {
                            Ok(()) => break,
                            Err(_) => {
                                retries += 1;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                }
                seq += 1;
            }
            (seq * ORDERS, retries)
        }
    });

    let pool = stack.schema.pool.clone();
    eventually("the first 500 events delivered", RECOVERY, || async {
        (delivered(&pool).await? >= 500).then_some(())
    })
    .await;

    let operator_pods = || async {
        stack
            .api::<Pod>()
            .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
            .await
            .unwrap()
            .items
    };
    let force = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    let restart = repo().join("tests/env/restart");
    let restart = restart.to_str().unwrap();
    let faults = [
        "consumers' worker pods force-deleted",
        "Kafka broker SIGKILLed and restarted",
        "PostgreSQL restarted (fast shutdown)",
        "operator pod deleted",
        "consumer scaled from 1 to 2 replicas (a rebalance under load)",
        "webhook's receiver slowed: the autoscaler adds a replica, then removes it",
        "apiserver SIGKILLed and restarted",
        "node's containerd SIGKILLed and restarted (containers run on)",
        "outbox worker pod force-deleted",
    ];
    let mut report = Vec::new();
    for fault in faults {
        // Between faults: events flow.
        let before = eventually("the sink's count", RECOVERY, || delivered(&pool)).await;
        let at = started.elapsed().as_secs_f64();
        let injected = Instant::now();
        // A pod fault recovers when its replacement is Ready (the old container may run on
        // for a moment after a forced delete) and then events flow.
        let kill_pods = |instance: &'static str| {
            let stack = &stack;
            let force = &force;
            async move {
                let old: BTreeSet<String> = stack
                    .worker_pods(instance)
                    .await
                    .iter()
                    .map(|p| p.name_any())
                    .collect();
                for name in &old {
                    stack.api::<Pod>().delete(name, force).await.unwrap();
                }
                eventually(
                    &format!("a new {instance} worker pod Ready"),
                    RECOVERY,
                    || async {
                        let live = stack.wait_workers_ready(instance, 1).await;
                        live.iter()
                            .all(|p| !old.contains(&p.name_any()))
                            .then_some(())
                    },
                )
                .await;
            }
        };
        match fault {
            "consumers' worker pods force-deleted" => {
                tokio::join!(kill_pods("read-model"), kill_pods("webhook"));
            }
            "outbox worker pod force-deleted" => kill_pods("orders").await,
            "Kafka broker SIGKILLed and restarted" => {
                run(restart, &["kafka", "kill"]);
            }
            "PostgreSQL restarted (fast shutdown)" => {
                run(restart, &["postgres", "stop"]);
            }
            "operator pod deleted" => {
                let old: BTreeSet<String> =
                    operator_pods().await.iter().map(|p| p.name_any()).collect();
                for name in &old {
                    stack
                        .api::<Pod>()
                        .delete(name, &DeleteParams::default())
                        .await
                        .unwrap();
                }
                // The data path does not need the operator: recovered when a new one runs.
                eventually("a new operator pod Ready", RECOVERY, || async {
                    operator_pods()
                        .await
                        .iter()
                        .any(|p| !old.contains(&p.name_any()) && common::running_and_ready(p))
                        .then_some(())
                })
                .await;
            }
            "consumer scaled from 1 to 2 replicas (a rebalance under load)" => {
                stack
                    .api::<EventConsumer>()
                    .patch(
                        "read-model",
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"replicas": 2}})),
                    )
                    .await
                    .unwrap();
                stack.wait_workers_ready("read-model", 2).await;
            }
            "webhook's receiver slowed: the autoscaler adds a replica, then removes it" => {
                // A slow downstream: the webhook's lag grows past its threshold and the
                // operator's autoscaler (not the test) scales it to 2; once the receiver is
                // fast again the lag drains and, after the cooldown, it scales back to 1.
                delay_ms.store(SLOW_RECEIVER.as_millis() as u64, Ordering::SeqCst);
                stack.wait_workers_ready("webhook", 2).await;
                delay_ms.store(0, Ordering::SeqCst);
                stack.wait_workers_ready("webhook", 1).await;
            }
            "node's containerd SIGKILLed and restarted (containers run on)" => {
                // As systemd restarts containerd.service (KillMode=process): the shims and
                // the containers live on; the kubelet reconnects to the new containerd.
                let before = all_worker_containers(&stack).await;
                run(restart, &["containerd", "kill"]);
                eventually("the node's runtime answering again", RECOVERY, || async {
                    let out = std::process::Command::new(common::var("CTR"))
                        .args(["version"])
                        .output()
                        .ok()?;
                    out.status.success().then_some(())
                })
                .await;
                // The same containers, not restarted, in the same pods.
                assert_eq!(
                    all_worker_containers(&stack).await,
                    before,
                    "worker containers (pod uid, restart count) after containerd's restart"
                );
            }
            "apiserver SIGKILLed and restarted" => {
                // A crash (SIGKILL; its graceful shutdown waits a minute for the watch
                // streams), then the same command line again. The data path does not use it;
                // the operator's watches and leader lease do.
                run(restart, &["kube-apiserver", "kill"]);
                eventually("the apiserver answering again", RECOVERY, || async {
                    stack.api::<EventConsumer>().get("read-model").await.ok()
                })
                .await;
            }
            _ => unreachable!(),
        }
        // Flowing again: 100 more events in the sink than when the fault was injected.
        eventually(
            &format!("events flowing again after: {fault}"),
            RECOVERY,
            || async { (delivered(&pool).await? >= before + 100).then_some(()) },
        )
        .await;
        let flowing = injected.elapsed().as_secs_f64();
        report.push((fault, at, flowing));
    }

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (total, retries) = writer.await.unwrap();
    eventually("every event delivered", RECOVERY, || async {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT DISTINCT order_id, seq FROM delivered")
                .fetch_all(&pool)
                .await
                .ok()?;
        (rows.len() as i64 == total).then_some(())
    })
    .await;
    // The outbox drained too: every row published and deleted.
    eventually("the outbox table empty", RECOVERY, || async {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {schema}.outbox"
        )))
        .fetch_one(&pool)
        .await
        .ok()?;
        (n == 0).then_some(())
    })
    .await;
    // The webhook received every event too.
    eventually("every event received by the webhook", RECOVERY, || async {
        let distinct: BTreeSet<(String, i64)> = received
            .lock()
            .unwrap()
            .iter()
            .map(|r| (r.order_id.clone(), r.seq))
            .collect();
        (distinct.len() as i64 == total).then_some(())
    })
    .await;
    watcher.abort();

    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT order_id, seq FROM delivered ORDER BY n")
        .fetch_all(&pool)
        .await
        .unwrap();
    // Lost: an event never delivered. Order: the first delivery of each event of an order
    // comes after the first delivery of every earlier one (a redelivery replays a suffix).
    let mut first_seen: BTreeMap<String, i64> = BTreeMap::new();
    let mut distinct = BTreeSet::new();
    let mut violations = Vec::new();
    for (order_id, seq) in &rows {
        if !distinct.insert((order_id.clone(), *seq)) {
            continue;
        }
        let next = first_seen.entry(order_id.clone()).or_insert(0);
        if *seq != *next {
            violations.push(format!(
                "{order_id}: {seq} first delivered when {next} was due"
            ));
        }
        *next = (*next).max(*seq + 1);
    }
    let lost = total - distinct.len() as i64;
    let duplicates = rows.len() as i64 - distinct.len() as i64;
    // The webhook: its receiver keeps the first request of each idempotency key; a record
    // delivered again (the consumer's redelivery) repeats a key, a row the relay published
    // twice is a second record (another key) of the same event.
    let requests = received.lock().unwrap().clone();
    let mut keys = BTreeSet::new();
    let mut web_first: BTreeMap<String, i64> = BTreeMap::new();
    let mut web_events = BTreeSet::new();
    let mut web_violations = Vec::new();
    for r in &requests {
        if !keys.insert(r.key.clone()) || !web_events.insert((r.order_id.clone(), r.seq)) {
            continue;
        }
        let next = web_first.entry(r.order_id.clone()).or_insert(0);
        if r.seq != *next {
            web_violations.push(format!(
                "webhook {}: {} first received when {next} was due",
                r.order_id, r.seq
            ));
        }
        *next = (*next).max(r.seq + 1);
    }
    let web_lost = total - web_events.len() as i64;
    let redelivered = requests.len() as i64 - keys.len() as i64;
    let republished = keys.len() as i64 - web_events.len() as i64;
    violations.extend(web_violations);

    let mut out = format!(
        "{total} events from {ORDERS} orders at {RATE} rows/s; {} rows in the sink: **lost \
         {lost}**, duplicates {duplicates} (at least once; bound 3,000), **order violations \
         {}**; the application's transactions retried {retries} times (the database \
         restart). The webhook (HTTP sink): {} requests, **lost {web_lost}**; before its \
         receiver's deduplication {redelivered} redelivered records (the same idempotency \
         key) and {republished} events published twice by the relay (another key).\n\n\
         | at | fault | events flowing again after |\n|---:|---|---:|\n",
        rows.len(),
        violations.len(),
        requests.len()
    );
    for (fault, at, flowing) in &report {
        out.push_str(&format!("| {at:.1} s | {fault} | {flowing:.1} s |\n"));
    }
    out.push_str(
        "\nConditions seen (polled every 0.5 s; those at 0.0 s are the state before the \
         faults):\n\n| at | condition |\n|---:|---|\n",
    );
    for (t, c) in seen.lock().unwrap().iter() {
        out.push_str(&format!("| {t:.1} s | {c} |\n"));
    }
    println!("{out}");
    // `make chaos` writes the figures of its run into docs/reliability.md.
    pipewright_testenv::write_report(
        "PIPEWRIGHT_CHAOS_REPORT",
        "chaos",
        &format!("Events: `PIPEWRIGHT_CHAOS_EVENTS={min_events}`.\n\n{out}"),
    );
    assert_eq!(lost, 0, "events lost");
    assert_eq!(web_lost, 0, "events lost on the way to the webhook");
    assert!(
        violations.is_empty(),
        "order violations:\n{}",
        violations.join("\n")
    );
    // At least once, not exactly once: the outbox relay publishes a row again when it dies
    // between the broker's acknowledgement and the row's delete, and the sink stores the
    // record of each offset once. Bound: what one relay has in flight (1,000 by default) per
    // relay fault (the outbox pod's kill, the broker's, the database's).
    assert!(duplicates <= 3 * 1000, "{duplicates} duplicates");
    // The webhook's receiver sees a record again when its consumer dies with it delivered
    // and not committed: per consumer fault (its pod's kill, the broker's) at most the
    // records below the next commit, `maxUncommittedPerPartition` per partition (3).
    let window = pipewright_crds::worker_config::DEFAULT_MAX_UNCOMMITTED_PER_PARTITION as i64;
    assert!(
        redelivered <= 2 * 3 * window,
        "{redelivered} redelivered records"
    );
    assert!(republished <= 3 * 1000, "{republished} republished events");
    stack.down().await;
}
