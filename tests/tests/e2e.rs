//! End to end on the test environment's node: the operator installed by the Helm chart runs as
//! a pod, and the workers it creates run as pods on the real kubelet (containerd + runc), in
//! a namespace that enforces the restricted Pod Security profile, against the real Kafka and
//! PostgreSQL. The images are the ones `tests/env/images` assembles from the built binaries.
//!
//! The tests take the node one at a time (a lock): each installs its own operator release
//! (watching only its namespace), and two cores do not run several worker fleets at once well.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{NODE, Stack, WAIT, bootstrap, event_consumer, produce_steadily, run, var};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::{Api, ResourceExt};
use pipewright_crds::{EventConsumer, Outbox};
use pipewright_testenv::{TestEnv, create_topic, eventually, kafka_config, unique_name};
use pipewright_worker::outbox::{self, OutboxEvent, Table};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::json;

fn condition(conditions: &[Condition], type_: &str) -> Option<String> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| format!("{}/{}", c.status, c.reason))
}

/// The demo-like events the outbox carries: typed, tagged by `event_type`, with a sequence
/// number per order so the sink can check order.
#[derive(Debug, Serialize)]
#[serde(tag = "event_type")]
enum OrderEvent {
    OrderPlaced { order_id: String, seq: i64 },
    OrderPaid { order_id: String, seq: i64 },
}

impl OutboxEvent for OrderEvent {
    fn aggregate_type(&self) -> &str {
        "order"
    }
    fn aggregate_id(&self) -> String {
        match self {
            OrderEvent::OrderPlaced { order_id, .. } | OrderEvent::OrderPaid { order_id, .. } => {
                order_id.clone()
            }
        }
    }
}

/// Collects the `id` of every record on `topic` (from the start), with repeats.
fn collect_ids(topic: &str) -> Arc<Mutex<Vec<u64>>> {
    common::collect_json(topic, |v, _| v["id"].as_u64().expect("an id"))
}

/// Records, for every pod of the namespace, the exit codes of its terminated `worker`
/// containers as the kubelet reports them (before the pod object goes away).
fn watch_exit_codes(pods: Api<Pod>) -> Arc<Mutex<HashMap<String, i32>>> {
    let codes = Arc::new(Mutex::new(HashMap::new()));
    let sink = codes.clone();
    tokio::spawn(async move {
        let mut stream = pods
            .watch(&WatchParams::default().timeout(290), "0")
            .await
            .expect("watch pods")
            .boxed();
        while let Ok(Some(event)) = stream.try_next().await {
            let (WatchEvent::Modified(pod) | WatchEvent::Deleted(pod)) = event else {
                continue;
            };
            let statuses = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.clone())
                .unwrap_or_default();
            for s in statuses.iter().filter(|s| s.name == "worker") {
                if let Some(t) = s.state.as_ref().and_then(|st| st.terminated.as_ref()) {
                    sink.lock().unwrap().insert(pod.name_any(), t.exit_code);
                }
            }
        }
    });
    codes
}

/// Outbox → Kafka → EventConsumer → PostgreSQL, all as pods: every event arrives once, in
/// order per aggregate; both resources report Ready=True with lag 0 and backlog 0; deleting them
/// removes every child and every container.
#[tokio::test]
async fn e2e_outbox_and_consumer_pods_deliver_every_event_in_order_then_report_ready_lag_0_pending_0()
 {
    let _node = NODE.lock().await;
    let stack = Stack::up("e2e-flow").await;
    let schema = stack.schema.name.clone();
    let topic = create_topic("e2e-orders", 3).await;
    outbox::MIGRATOR
        .run(&stack.schema.pool)
        .await
        .expect("outbox migration");
    sqlx::raw_sql(
        "CREATE TABLE orders (id text PRIMARY KEY, status text NOT NULL);
         CREATE TABLE delivered (n bigserial PRIMARY KEY, event_type text NOT NULL,
                                 order_id text NOT NULL, seq bigint NOT NULL)",
    )
    .execute(&stack.schema.pool)
    .await
    .unwrap();

    let _: Outbox = stack
        .apply(json!({
            "apiVersion": "pipewright.io/v1alpha1", "kind": "Outbox",
            "metadata": {"name": "orders"},
            "spec": {
                "database": {"dsnSecretRef": {"name": "db", "key": "dsn"}},
                "table": format!("{schema}.outbox"),
                "kafka": {"bootstrapServers": bootstrap()},
                "topic": topic,
                "poll": {"interval": "200ms"},
            },
        }))
        .await;
    let _: EventConsumer = stack
        .apply(event_consumer(
            "orders-read-model",
            json!({
                "kafka": {"bootstrapServers": bootstrap()},
                "topics": [topic],
                "groupId": unique_name("e2e-flow"),
                "events": {"types": [{"name": "OrderPlaced"}, {"name": "OrderPaid"}],
                           "onUnknownType": "fail"},
                "processing": {"ordering": "key", "concurrency": 16},
                "sink": {"postgres": {
                    "dsnSecretRef": {"name": "db", "key": "dsn"},
                    "table": format!("{schema}.delivered"),
                    "offsetsTable": format!("{schema}.offsets"),
                }},
            }),
        ))
        .await;
    let workers = [
        stack.wait_workers_ready("orders", 1).await,
        stack.wait_workers_ready("orders-read-model", 1).await,
    ];
    let worker_pods: Vec<String> = workers.iter().flatten().map(|p| p.name_any()).collect();

    // The application: a business row and its event in one transaction, 40 orders x 10 events.
    let (orders, per_order) = (40_i64, 10_i64);
    let table = Table::parse(&format!("{schema}.outbox")).unwrap();
    for seq in 0..per_order {
        for o in 0..orders {
            let order_id = format!("o{o}");
            let mut tx = stack.schema.pool.begin().await.unwrap();
            sqlx::query(
                "INSERT INTO orders VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET status = $2",
            )
            .bind(&order_id)
            .bind(if seq == 0 { "placed" } else { "paid" })
            .execute(&mut *tx)
            .await
            .unwrap();
            let event = if seq == 0 {
                OrderEvent::OrderPlaced { order_id, seq }
            } else {
                OrderEvent::OrderPaid { order_id, seq }
            };
            outbox::enqueue_into(&mut tx, &table, &event).await.unwrap();
            tx.commit().await.unwrap();
        }
    }
    let total = orders * per_order;
    eventually("every event in the read model", WAIT, || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM delivered")
            .fetch_one(&stack.schema.pool)
            .await
            .unwrap();
        assert!(n <= total, "{n} rows for {total} events: duplicates");
        (n == total).then_some(())
    })
    .await;
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT order_id, seq FROM delivered ORDER BY n")
        .fetch_all(&stack.schema.pool)
        .await
        .unwrap();
    let mut next: BTreeMap<String, i64> = BTreeMap::new();
    for (order_id, seq) in rows {
        let expected = next.entry(order_id.clone()).or_insert(0);
        assert_eq!(
            seq, *expected,
            "order {order_id}: event {seq} arrived when {expected} was due"
        );
        *expected += 1;
    }
    assert_eq!(next.len(), usize::try_from(orders).unwrap());

    // The operator (a pod) measured the broker and the table.
    let consumers: Api<EventConsumer> = stack.api();
    let outboxes: Api<Outbox> = stack.api();
    eventually("EventConsumer Ready=True, lag 0", WAIT, || async {
        let status = consumers.get("orders-read-model").await.ok()?.status?;
        let ready = condition(&status.conditions, "Ready");
        (ready.as_deref().is_some_and(|r| r.starts_with("True/"))
            && status.total_lag == Some(0)
            && status.ready_replicas == 1)
            .then_some(())
    })
    .await;
    eventually("Outbox Ready=True, pending 0", WAIT, || async {
        let status = outboxes.get("orders").await.ok()?.status?;
        let ready = condition(&status.conditions, "Ready");
        (ready.as_deref().is_some_and(|r| r.starts_with("True/"))
            && status.pending == Some(0)
            && status.ready_replicas == 1)
            .then_some(())
    })
    .await;
    // Admitted under restricted: the pods that run are the ones the operator asked for.
    for pod in workers.iter().flatten() {
        let sc = pod.spec.as_ref().unwrap().security_context.clone().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true), "{}", pod.name_any());
    }

    // Deleting the resources removes every child, every pod and every container.
    consumers
        .delete("orders-read-model", &DeleteParams::foreground())
        .await
        .unwrap();
    outboxes
        .delete("orders", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually("every child garbage-collected", WAIT, || async {
        let left = stack.count_workers::<Deployment>().await
            + stack.count_workers::<ConfigMap>().await
            + stack.count_workers::<Service>().await
            + stack.count_workers::<PodDisruptionBudget>().await
            + stack.count_workers::<ServiceAccount>().await
            + stack.count_workers::<Pod>().await;
        (left == 0).then_some(())
    })
    .await;
    eventually(
        "no container of the worker pods running on the node",
        WAIT,
        || async { running_containers_of(&worker_pods).is_empty().then_some(()) },
    )
    .await;
    stack.down().await;
}

/// The containerd containers of these pods that still have a running task, on any node.
fn running_containers_of(pods: &[String]) -> Vec<String> {
    let ctr = var("CTR");
    let mut running = Vec::new();
    for node in pipewright_testenv::nodes() {
        let address = ["--address", node.containerd.as_str()];
        let tasks = run(&ctr, &[&address[..], &["tasks", "ls"]].concat());
        for pod in pods {
            let filter = format!("labels.\"io.kubernetes.pod.name\"=={pod}");
            let ls = [&address[..], &["containers", "ls", "-q", &filter]].concat();
            for id in run(&ctr, &ls).lines() {
                if tasks
                    .lines()
                    .any(|l| l.starts_with(id) && l.contains("RUNNING"))
                {
                    running.push(format!("{}: {pod}/{id}", node.name));
                }
            }
        }
    }
    running
}

/// Deleting a worker pod mid-stream: the kubelet sends SIGTERM, the worker drains and commits
/// and exits 0, its replacement takes over, and the output topic holds every record exactly
/// once (a non-transactional Kafka sink: any redelivery would show as a duplicate).
#[tokio::test]
async fn e2e_deleting_a_worker_pod_mid_stream_drains_gracefully_nothing_lost_nothing_redelivered() {
    let _node = NODE.lock().await;
    let stack = Stack::up("e2e-drain").await;
    let input = create_topic("e2e-drain-in", 2).await;
    let output = create_topic("e2e-drain-out", 1).await;
    let dlq = create_topic("e2e-drain-dlq", 1).await;
    let _: EventConsumer = stack
        .apply(event_consumer(
            "relay",
            json!({
                "kafka": {"bootstrapServers": bootstrap()},
                "topics": [input],
                "groupId": unique_name("e2e-drain"),
                "processing": {"ordering": "key", "concurrency": 8, "drainTimeout": "20s",
                               "deadLetterTopic": dlq},
                "sink": {"kafka": {"topic": output}},
            }),
        ))
        .await;
    let before = stack.wait_workers_ready("relay", 1).await;
    let victim = before[0].name_any();
    let exit_codes = watch_exit_codes(stack.api());
    let delivered = collect_ids(&output);

    let count = 3000;
    let producer = tokio::spawn({
        let input = input.clone();
        async move { produce_steadily(&input, count, 50, 200).await }
    });
    eventually("the worker to be mid-stream", WAIT, || async {
        (delivered.lock().unwrap().len() > 300).then_some(())
    })
    .await;
    stack
        .api::<Pod>()
        .delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    producer.await.unwrap();

    eventually("every record on the output topic", WAIT, || async {
        let ids: HashSet<u64> = delivered.lock().unwrap().iter().copied().collect();
        (ids.len() == usize::try_from(count).unwrap()).then_some(())
    })
    .await;
    // A little longer: a redelivery would arrive after the originals.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ids = delivered.lock().unwrap().clone();
    let distinct: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(
        ids.len(),
        distinct.len(),
        "{} duplicates: the deleted pod did not drain and commit",
        ids.len() - distinct.len()
    );
    let code = eventually("the deleted pod's exit code", WAIT, || async {
        exit_codes.lock().unwrap().get(&victim).copied()
    })
    .await;
    assert_eq!(code, 0, "the worker did not exit cleanly on SIGTERM");
    let after = stack.wait_workers_ready("relay", 1).await;
    assert_ne!(after[0].name_any(), victim, "a replacement pod runs");
    stack.down().await;
}

/// Rotating the Secret an EventConsumer references rolls its pods (the operator hashes the
/// referenced Secrets into the pod template); the new pods use the new value, and no event is
/// lost or written twice meanwhile (PostgreSQL sink: offsets commit with the rows).
#[tokio::test]
async fn e2e_rotating_the_referenced_secret_rolls_the_pods_and_loses_no_event() {
    let _node = NODE.lock().await;
    let stack = Stack::up("e2e-rotate").await;
    let schema = stack.schema.name.clone();
    let topic = create_topic("e2e-rotate", 2).await;
    let dlq = create_topic("e2e-rotate-dlq", 1).await;
    sqlx::query("CREATE TABLE ticks (id bigint NOT NULL, key text NOT NULL, seq bigint NOT NULL)")
        .execute(&stack.schema.pool)
        .await
        .unwrap();
    let _: EventConsumer = stack
        .apply(event_consumer(
            "ticks",
            json!({
                "kafka": {"bootstrapServers": bootstrap()},
                "topics": [topic],
                "groupId": unique_name("e2e-rotate"),
                "processing": {"ordering": "key", "concurrency": 8, "deadLetterTopic": dlq},
                "sink": {"postgres": {
                    "dsnSecretRef": {"name": "db", "key": "dsn"},
                    "table": format!("{schema}.ticks"),
                    "offsetsTable": format!("{schema}.offsets"),
                }},
            }),
        ))
        .await;
    let before = stack.wait_workers_ready("ticks", 1).await;
    let old: HashSet<String> = before.iter().map(ResourceExt::name_any).collect();

    let count = 3000_i64;
    let producer = tokio::spawn({
        let topic = topic.clone();
        async move { produce_steadily(&topic, 3000, 40, 200).await }
    });
    let pool = stack.schema.pool.clone();
    let rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM ticks")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    eventually("events flowing", WAIT, || async {
        (rows().await > 200).then_some(())
    })
    .await;

    // Rotate: the same database under a new application name, visible in pg_stat_activity.
    let app = unique_name("rotated").replace('-', "_");
    let rotated = format!("{}?application_name={app}", TestEnv::get().database_url);
    stack
        .api::<Secret>()
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"dsn": rotated}})),
        )
        .await
        .unwrap();
    let after = eventually("the pods rolled", WAIT, || async {
        let pods = stack.wait_workers_ready("ticks", 1).await;
        pods.iter()
            .all(|p| !old.contains(&p.name_any()))
            .then_some(pods)
    })
    .await;
    eventually(
        "the new pods connected with the rotated DSN",
        WAIT,
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            )
            .bind(&app)
            .fetch_one(&stack.schema.pool)
            .await
            .unwrap();
            (n > 0).then_some(())
        },
    )
    .await;
    producer.await.unwrap();
    eventually("every event written", WAIT, || async {
        (rows().await >= count).then_some(())
    })
    .await;
    let (n, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT id) FROM ticks")
            .fetch_one(&stack.schema.pool)
            .await
            .unwrap();
    assert_eq!((n, distinct), (count, count), "rows, distinct ids");
    assert!(!after.is_empty());
    stack.down().await;
}

/// A burst raises the lag; the autoscaler adds workers (up to the partition count), the lag
/// drains, and after the cooldown the workers scale back to the minimum. The sink is an HTTP
/// endpoint in this test that takes 20 ms per event, so one worker cannot keep up.
#[tokio::test]
async fn e2e_a_burst_raises_lag_autoscaling_adds_workers_lag_drains_then_scales_back() {
    let _node = NODE.lock().await;
    let stack = Stack::up("e2e-scale").await;
    let topic = create_topic("e2e-scale", 3).await;
    let dlq = create_topic("e2e-scale-dlq", 1).await;
    let received = Arc::new(Mutex::new(HashSet::new()));
    let node_ip = var("PIPEWRIGHT_NODE_IP");
    let listener = tokio::net::TcpListener::bind((node_ip.as_str(), 0))
        .await
        .unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post({
            let received = received.clone();
            move |body: axum::body::Bytes| {
                let received = received.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    if let Some(id) = v["id"].as_u64() {
                        received.lock().unwrap().insert(id);
                    }
                    axum::http::StatusCode::NO_CONTENT
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let _: EventConsumer = stack
        .apply(event_consumer(
            "burst",
            json!({
                "kafka": {"bootstrapServers": bootstrap()},
                "topics": [topic],
                "groupId": unique_name("e2e-scale"),
                "processing": {"ordering": "key", "concurrency": 2, "deadLetterTopic": dlq},
                "autoscaling": {"minReplicas": 1, "maxReplicas": 5, "lagThreshold": 200},
                "sink": {"http": {"url": url}},
            }),
        ))
        .await;
    stack.wait_workers_ready("burst", 1).await;
    let count = 4000_u64;
    produce_steadily(&topic, count, 60, 0).await;

    let consumers: Api<EventConsumer> = stack.api();
    let peak_lag = eventually("the lag to show the burst", WAIT, || async {
        let lag = consumers.get("burst").await.ok()?.status?.total_lag?;
        (lag > 200).then_some(lag)
    })
    .await;
    // Capped at the partition count (3), not maxReplicas (5).
    stack.wait_workers_ready("burst", 3).await;
    eventually("every event delivered", WAIT, || async {
        (received.lock().unwrap().len() == usize::try_from(count).unwrap()).then_some(())
    })
    .await;
    eventually("lag 0", WAIT, || async {
        (consumers.get("burst").await.ok()?.status?.total_lag? == 0).then_some(())
    })
    .await;
    eventually("scaled back to 1 after the cooldown", WAIT, || async {
        let status = consumers.get("burst").await.ok()?.status?;
        let pods = stack.worker_pods("burst").await;
        (status.replicas == 1 && pods.len() == 1).then_some(())
    })
    .await;
    assert!(peak_lag > 200, "peak lag {peak_lag}");
    stack.down().await;
}

/// A record the worker may neither process nor dead-letter (`onUnknownType: fail`, no DLQ):
/// the worker pod stops with exit 1 and a termination message, the kubelet reports it, and
/// the operator (a pod) marks the resource Degraded with reason PoisonMessage naming the
/// record's topic/partition/offset. The record is not committed: nothing is lost. Then a
/// person moves the group past it (as `kafka-consumer-groups --reset-offsets` does): the
/// same pod's restarted worker delivers the next record, and Degraded clears although the
/// container's last state still holds the poison report.
#[tokio::test]
async fn e2e_a_poison_record_stops_the_worker_pod_reports_degraded_poison_message_and_clears_once_the_group_moved_past()
 {
    let _node = NODE.lock().await;
    let stack = Stack::up("e2e-poison").await;
    let topic = create_topic("e2e-poison", 1).await;
    let group = unique_name("e2e-poison");
    let _: EventConsumer = stack
        .apply(event_consumer(
            "strict",
            json!({
                "kafka": {"bootstrapServers": bootstrap()},
                "topics": [topic],
                "groupId": group,
                "events": {"types": [{"name": "Tick"}], "onUnknownType": "fail"},
                "sink": {"log": {}},
            }),
        ))
        .await;
    stack.wait_workers_ready("strict", 1).await;
    let producer: FutureProducer = kafka_config().create().expect("producer");
    for value in [
        r#"{"event_type":"Tick","id":0}"#,
        r#"{"event_type":"Bogus","id":1}"#,
    ] {
        producer
            .send(
                FutureRecord::<str, str>::to(&topic).key("k").payload(value),
                Duration::from_secs(30),
            )
            .await
            .expect("acknowledged");
    }
    let degraded = stack.wait_degraded("strict", "PoisonMessage").await;
    assert!(
        degraded.message.contains(&format!("{topic}/0/1")),
        "the condition names the record: {}",
        degraded.message
    );
    // The worker's own exit, as the kubelet saw it.
    assert_eq!(stack.worker_exit_code("strict").await, Some(1));
    // Not committed: a fixed worker would read it again. The good record before it is.
    let committed = eventually("the group's committed offset", WAIT, || async {
        let consumer: StreamConsumer = kafka_config()
            .set("group.id", group.as_str())
            .create()
            .ok()?;
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition(&topic, 0);
        let offsets = consumer
            .committed_offsets(list, Duration::from_secs(10))
            .ok()?;
        match offsets.find_partition(&topic, 0)?.offset() {
            rdkafka::Offset::Offset(n) => Some(n),
            _ => None,
        }
    })
    .await;
    assert_eq!(
        committed, 1,
        "committed up to the poison record, not past it"
    );

    // Move the group past the record. The broker takes an offset commit from outside the
    // group only while the group has no member: retried until the crash-looping worker is
    // between runs.
    eventually("the group moved past the poison record", WAIT, || async {
        let consumer: BaseConsumer = kafka_config()
            .set("group.id", group.as_str())
            .create()
            .ok()?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&topic, 0, Offset::Offset(2))
            .ok()?;
        consumer.commit(&list, CommitMode::Sync).ok()
    })
    .await;
    // A sentinel after the record: committed past it proves the restarted worker runs.
    producer
        .send(
            FutureRecord::<str, str>::to(&topic)
                .key("k")
                .payload(r#"{"event_type":"Tick","id":2}"#),
            Duration::from_secs(30),
        )
        .await
        .expect("acknowledged");
    let consumers: Api<EventConsumer> = stack.api();
    let conditions = eventually("Degraded=False and Ready=True", WAIT, || async {
        let status = consumers.get("strict").await.ok()?.status?;
        let get = |t: &str| status.conditions.iter().find(|c| c.type_ == t).cloned();
        let (degraded, ready) = (get("Degraded")?, get("Ready")?);
        let past = status
            .partitions
            .iter()
            .any(|p| p.partition == 0 && p.committed >= Some(3));
        (past && degraded.status == "False" && ready.status == "True").then_some((degraded, ready))
    })
    .await;
    let pods = stack.worker_pods("strict").await;
    let last_report = pods.iter().flat_map(|p| {
        p.status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
    });
    assert!(
        last_report.into_iter().any(|c| c
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref()?.message.as_deref())
            .is_some_and(|m| m.starts_with("PoisonMessage: "))),
        "the same pod restarted: its last state still holds the report ({conditions:?})"
    );
    stack.down().await;
}

/// A resource the schema accepts but the worker refuses (here an inline event schema that is
/// no JSON Schema, which only the worker compiles): the worker pod exits 2 with its reason,
/// and the operator pod marks the resource Degraded/WorkerConfigRejected with that reason
/// instead of leaving a bare crash loop. Then a backlog of nine times the lag threshold
/// arrives on its 3 partitions: more workers would crash-loop too, so that lag adds no replica
/// (KEDA issue 3904): twice more records and a status showing the larger lag (a decision taken
/// on it), and the Deployment still asks for one replica.
#[tokio::test]
async fn e2e_a_config_only_the_worker_can_refuse_is_reported_degraded_and_its_lag_adds_no_replica()
{
    let _node = NODE.lock().await;
    let stack = Stack::up("e2e-refused").await;
    let topic = create_topic("e2e-refused", 3).await;
    let dlq = create_topic("e2e-refused-dlq", 1).await;
    let _: EventConsumer = stack
        .apply(event_consumer(
            "bad-schema",
            json!({
                "kafka": {"bootstrapServers": bootstrap()},
                "topics": [topic],
                "events": {"types": [{"name": "Tick", "schema": {"inline": {"type": 12}}}]},
                "processing": {"deadLetterTopic": dlq},
                "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "lagThreshold": 10},
                "sink": {"log": {}},
            }),
        ))
        .await;
    let degraded = stack
        .wait_degraded("bad-schema", "WorkerConfigRejected")
        .await;
    assert!(
        degraded.message.contains("\"Tick\" is invalid"),
        "the condition says what was refused: {}",
        degraded.message
    );
    let exit = stack.worker_exit_code("bad-schema").await;
    assert_eq!(
        exit,
        Some(2),
        "the worker exits 2 on a refused configuration"
    );

    // The backlog arrives once the workers are known to be refused (a backlog there at
    // creation is scaled for before any worker ran: the workers' health is not known yet).
    // Each round adds 45 records and waits until the status shows the larger lag: a reconcile
    // measures, then decides the replicas, then writes the status, so seeing that lag means a
    // decision was taken on it, with the workers refused.
    let consumers: Api<EventConsumer> = stack.api();
    let mut lag: u64 = 0;
    for round in 1..=2 {
        produce_steadily(&topic, 45, 9, 0).await;
        lag += 45;
        let expected = i64::try_from(lag).unwrap();
        eventually(
            &format!("round {round}: the status shows lag {expected}"),
            WAIT,
            || async {
                let status = consumers.get("bad-schema").await.ok()?.status?;
                (status.total_lag? >= expected).then_some(())
            },
        )
        .await;
    }
    let deployments: Vec<Deployment> = stack
        .api::<Deployment>()
        .list(&kube::api::ListParams::default().labels("app.kubernetes.io/instance=bad-schema"))
        .await
        .unwrap()
        .items;
    let replicas: Vec<Option<i32>> = deployments.iter().map(|d| d.spec.replicas).collect();
    assert_eq!(
        replicas,
        vec![Some(1)],
        "a lag of {lag} (threshold 10, 3 partitions) added no replica to refused workers"
    );
    stack.down().await;
}

/// An HTTP sink that answers 503 to everything: the workers keep retrying, the operator pod
/// reads their reports and sets Delivering=False/DeliveryFailing once they have failed for
/// longer than a minute, with the error class in the message (no payload, no header value, no
/// URL) while Ready stays True (the workers run). Once the receiver answers again,
/// Delivering=True and the status counts the delivered records.
#[tokio::test]
async fn e2e_a_sink_answering_503_sets_delivering_false_with_the_error_class_then_true_and_counts_deliveries_once_it_recovers()
 {
    use std::sync::atomic::{AtomicBool, Ordering};

    let _node = NODE.lock().await;
    let stack = Stack::up("e2e-delivering").await;
    let topic = create_topic("e2e-delivering", 2).await;
    let dlq = create_topic("e2e-delivering-dlq", 1).await;
    let up = Arc::new(AtomicBool::new(false));
    let node_ip = var("PIPEWRIGHT_NODE_IP");
    let listener = tokio::net::TcpListener::bind((node_ip.as_str(), 0))
        .await
        .unwrap();
    let url = format!(
        "http://{}/hook/url-path-marker",
        listener.local_addr().unwrap()
    );
    let app = axum::Router::new().route(
        "/hook/url-path-marker",
        axum::routing::post({
            let up = up.clone();
            move || {
                let up = up.clone();
                async move {
                    if up.load(Ordering::Relaxed) {
                        axum::http::StatusCode::NO_CONTENT
                    } else {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    }
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let headers: Secret = serde_json::from_value(json!({
        "metadata": {"name": "hook-auth"},
        "stringData": {"authorization": "Bearer header-secret-marker"},
    }))
    .unwrap();
    stack
        .api::<Secret>()
        .create(&Default::default(), &headers)
        .await
        .unwrap();

    let _: EventConsumer = stack
        .apply(event_consumer(
            "hook",
            json!({
                "kafka": {"bootstrapServers": bootstrap()},
                "topics": [topic],
                "groupId": unique_name("e2e-delivering"),
                // Enough attempts that nothing is dead-lettered while the receiver is down.
                "processing": {"deadLetterTopic": dlq, "retry": {"maxAttempts": 100,
                    "backoff": {"initial": "100ms", "max": "1s"}}},
                "sink": {"http": {"url": url, "headersSecretRef": {"name": "hook-auth"}}},
            }),
        ))
        .await;
    stack.wait_workers_ready("hook", 1).await;
    let count = 40_u64;
    let producer: FutureProducer = kafka_config().create().expect("producer");
    for id in 0..count {
        let value =
            json!({"event_type": "Tick", "id": id, "note": "payload-secret-marker"}).to_string();
        producer
            .send(
                FutureRecord::<str, str>::to(&topic)
                    .key(&format!("k{id}"))
                    .payload(&value),
                Duration::from_secs(30),
            )
            .await
            .expect("acknowledged");
    }

    let consumers: Api<EventConsumer> = stack.api();
    let failing = eventually("Delivering=False/DeliveryFailing", WAIT, || async {
        let status = consumers.get("hook").await.ok()?.status?;
        let c = status.conditions.iter().find(|c| c.type_ == "Delivering")?;
        (c.status == "False" && c.reason == "DeliveryFailing").then(|| status.clone())
    })
    .await;
    let delivering = failing
        .conditions
        .iter()
        .find(|c| c.type_ == "Delivering")
        .unwrap();
    assert!(
        delivering.message.contains("http_status_503"),
        "the condition names the error class: {}",
        delivering.message
    );
    // status.sinkUri is the spec's own URL, where it belongs; the rest of the status (the
    // failure the workers report above all) must not carry the request.
    assert_eq!(failing.sink_uri.as_deref(), Some(url.as_str()));
    let mut rest = failing.clone();
    rest.sink_uri = None;
    let whole = serde_json::to_string(&rest).unwrap();
    for secret in [
        "payload-secret-marker",
        "header-secret-marker",
        "url-path-marker",
        node_ip.as_str(),
    ] {
        assert!(
            !whole.contains(secret),
            "{secret} reached the status: {whole}"
        );
    }
    // The workers run: Ready says so; Delivering says the sink does not take the events.
    assert_eq!(
        condition(&failing.conditions, "Ready").as_deref(),
        Some("True/DeploymentAvailable")
    );
    let counters = failing.counters.as_ref().expect("counters from the report");
    assert_eq!(
        counters.processed, 0,
        "nothing delivered while the sink is down"
    );
    assert!(counters.retried > 0, "{counters:?}");
    assert_eq!(failing.reported_replicas, Some(1));

    up.store(true, Ordering::Relaxed);
    let recovered = eventually(
        "Delivering=True and every record counted as processed",
        WAIT,
        || async {
            let status = consumers.get("hook").await.ok()?.status?;
            let c = status.conditions.iter().find(|c| c.type_ == "Delivering")?;
            (c.status == "True" && status.counters.as_ref()?.processed == count as i64)
                .then_some(status)
        },
    )
    .await;
    assert_eq!(
        condition(&recovered.conditions, "Delivering").as_deref(),
        Some("True/DeliverySucceeding")
    );
    assert_eq!(recovered.counters.as_ref().unwrap().dead_lettered, 0);
    let events: Api<k8s_openapi::api::core::v1::Event> = stack.api();
    let notes: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.message)
        .collect();
    assert!(
        notes.iter().any(|n| n.starts_with("Delivering is False")),
        "the transition is an Event: {notes:?}"
    );
    assert!(
        notes.iter().all(|n| !n.contains("payload-secret-marker")
            && !n.contains("header-secret-marker")
            && !n.contains("url-path-marker")),
        "{notes:?}"
    );
    stack.down().await;
}
