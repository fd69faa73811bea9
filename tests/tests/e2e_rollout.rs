//! End to end on the test environment's node, like `e2e.rs`: what a group's partitions go
//! through while the operator replaces and removes worker pods under a steady stream.
//!
//! Every record's arrival at the HTTP sink (a receiver in this test) is timed per partition,
//! so a partition that nobody consumes shows as a gap between two arrivals, wherever in the
//! sequence of pod changes it happens.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{NODE, Stack, WAIT, bootstrap, event_consumer, var};
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use pipewright_crds::EventConsumer;
use pipewright_testenv::{create_topic, eventually, kafka_config, unique_name};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tokio::time::Instant;

/// The longest a partition may go without a delivery while pods are rolled and removed.
const MAX_GAP: Duration = Duration::from_secs(10);
const PARTITIONS: i32 = 6;
/// Records per second over all partitions (about 33 per partition: a gap of 10 s is 330
/// records that wait).
const RATE: u64 = 200;

/// One record as the HTTP sink delivered it, and when.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    partition: i32,
    id: u64,
    at: Instant,
}

/// An HTTP endpoint on the node's bridge address (reachable from the pods) that answers 204 at
/// once and records every delivery: the partition from the CloudEvents id
/// (`<topic>/<partition>/<offset>`), the record's `id` from the body.
async fn receiver() -> (String, Arc<Mutex<Vec<Arrival>>>) {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind((var("PIPEWRIGHT_NODE_IP").as_str(), 0))
        .await
        .unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post({
            let arrivals = arrivals.clone();
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let arrivals = arrivals.clone();
                async move {
                    let at = Instant::now();
                    let partition = headers
                        .get("ce-id")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|id| id.split('/').rev().nth(1)?.parse().ok())
                        .expect("a ce-id header <topic>/<partition>/<offset>");
                    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
                    let id = v["id"].as_u64().expect("an id");
                    arrivals.lock().unwrap().push(Arrival { partition, id, at });
                    axum::http::StatusCode::NO_CONTENT
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, arrivals)
}

/// Produces `{"event_type":"Tick","id":i}` to partition `i % PARTITIONS` at [`RATE`] until
/// `stop`; `sent` counts the records handed to the producer. Returns how many were produced
/// (ids `0..n`), each acknowledged by the broker.
async fn produce_until(topic: String, sent: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> u64 {
    let producer: FutureProducer = kafka_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut pending = Vec::new();
    let start = Instant::now();
    let mut i = 0_u64;
    while !stop.load(Ordering::Relaxed) {
        let value = json!({"event_type": "Tick", "id": i}).to_string();
        let key = format!("k{}", i % 60);
        let partition = i32::try_from(i % PARTITIONS as u64).unwrap();
        let mut record: FutureRecord<'_, str, str> = FutureRecord::to(&topic)
            .partition(partition)
            .key(key.as_str())
            .payload(value.as_str());
        loop {
            match producer.send_result(record) {
                Ok(delivery) => break pending.push(delivery),
                Err((_, back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        i += 1;
        sent.store(i, Ordering::Relaxed);
        tokio::time::sleep_until(start + Duration::from_millis(i * 1000 / RATE)).await;
    }
    for delivery in futures::future::join_all(pending).await {
        delivery
            .expect("delivery")
            .expect("acknowledged by the broker");
    }
    i
}

/// The longest stretch without a delivery in one partition, within `[from, to]`.
#[derive(Debug, Clone, Copy)]
struct Gap {
    partition: i32,
    length: Duration,
    /// Where it began.
    start: Instant,
}

/// Per partition, the longest time between consecutive deliveries in `[from, to]` (also from
/// `from` to the first and from the last to `to`).
fn largest_gaps(arrivals: &[Arrival], from: Instant, to: Instant) -> Vec<Gap> {
    let mut times: BTreeMap<i32, Vec<Instant>> =
        (0..PARTITIONS).map(|p| (p, vec![from, to])).collect();
    for a in arrivals.iter().filter(|a| a.at >= from && a.at <= to) {
        times
            .get_mut(&a.partition)
            .expect("a known partition")
            .push(a.at);
    }
    times
        .into_iter()
        .map(|(partition, mut at)| {
            at.sort();
            let (start, length) = at
                .windows(2)
                .map(|w| (w[0], w[1] - w[0]))
                .max_by_key(|(_, length)| *length)
                .expect("two instants at least");
            Gap {
                partition,
                length,
                start,
            }
        })
        .collect()
}

/// What happened when, for the printout.
struct Timeline {
    t0: Instant,
    marks: Vec<(Instant, &'static str)>,
}

impl Timeline {
    fn mark(&mut self, what: &'static str) -> Instant {
        let now = Instant::now();
        println!("{:>7.2}s  {what}", (now - self.t0).as_secs_f64());
        self.marks.push((now, what));
        now
    }

    /// The last mark at or before `at`.
    fn during(&self, at: Instant) -> &'static str {
        self.marks
            .iter()
            .rev()
            .find(|(t, _)| *t <= at)
            .map_or("start", |(_, what)| what)
    }
}

/// Under a steady stream into 6 partitions, a spec change rolls the 3 worker pods one by one
/// (the Deployment surges a new pod, then stops an old one), then the resource is scaled to 1
/// through the scale subresource (two pods stop for good). No partition may go more than 10 s
/// without a delivery at any point, and every record is delivered: a departing pod's
/// partitions go to the remaining members at once, they are not held for a member that never
/// comes back until its session times out.
#[tokio::test]
async fn e2e_rolling_the_pods_and_scaling_3_to_1_never_leaves_a_partition_unconsumed_for_more_than_10s()
 {
    let _node = NODE.lock().await;
    let stack = Stack::up("e2e-rollout").await;
    let topic = create_topic("e2e-rollout", PARTITIONS).await;
    let dlq = create_topic("e2e-rollout-dlq", 1).await;
    let (url, arrivals) = receiver().await;
    let name = "ticks";
    let _: EventConsumer = stack
        .apply(event_consumer(
            name,
            json!({
                "kafka": {"bootstrapServers": bootstrap()},
                "topics": [topic],
                "groupId": unique_name("e2e-rollout"),
                "replicas": 3,
                "processing": {"ordering": "key", "concurrency": 16, "drainTimeout": "10s",
                               "deadLetterTopic": dlq},
                "sink": {"http": {"url": url}},
            }),
        ))
        .await;
    let first = stack.wait_workers_ready(name, 3).await;
    let old: HashSet<String> = first.iter().map(ResourceExt::name_any).collect();

    let mut timeline = Timeline {
        t0: Instant::now(),
        marks: Vec::new(),
    };
    timeline.mark("producing");
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn(produce_until(topic.clone(), sent.clone(), stop.clone()));
    let delivered_since = |id: u64, partitions: &mut HashSet<i32>| {
        partitions.extend(
            arrivals
                .lock()
                .unwrap()
                .iter()
                .filter(|a| a.id >= id)
                .map(|a| a.partition),
        );
        partitions.len() == PARTITIONS as usize
    };
    let mut seen = HashSet::new();
    eventually("every partition delivering", WAIT, || {
        let done = delivered_since(0, &mut seen);
        async move { done.then_some(()) }
    })
    .await;
    let from = timeline.mark("every partition delivering: gaps measured from here");

    // A processing setting: a new pod template, so the Deployment replaces every pod.
    stack
        .api::<EventConsumer>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"processing": {"concurrency": 8}}})),
        )
        .await
        .unwrap();
    timeline.mark("spec changed (concurrency 16 -> 8): rolling");
    eventually("the 3 pods replaced, the old ones gone", WAIT, || async {
        let pods = stack.worker_pods(name).await;
        (pods.len() == 3
            && pods.iter().all(|p| {
                !old.contains(&p.name_any())
                    && p.metadata.deletion_timestamp.is_none()
                    && common::running_and_ready(p)
            }))
        .then_some(())
    })
    .await;
    timeline.mark("rolled: 3 new pods ready, the old ones gone");

    stack
        .api::<EventConsumer>()
        .patch_scale(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    timeline.mark("scaled to 1 (scale subresource)");
    eventually("one pod left, the others gone", WAIT, || async {
        let deployment = stack
            .api::<Deployment>()
            .get(&format!("{name}-consumer"))
            .await
            .ok()?;
        let pods = stack.worker_pods(name).await;
        (deployment.spec.replicas == Some(1)
            && pods.len() == 1
            && common::running_and_ready(&pods[0]))
        .then_some(())
    })
    .await;
    timeline.mark("scaled down: one pod left");

    // Every partition moves on past the last change: a record produced after it is delivered.
    let after = sent.load(Ordering::Relaxed);
    let mut seen = HashSet::new();
    eventually(
        "every partition delivering records produced after the scale-down",
        WAIT,
        || {
            let done = delivered_since(after, &mut seen);
            async move { done.then_some(()) }
        },
    )
    .await;
    let to =
        timeline.mark("every partition delivering after the scale-down: gaps measured to here");
    stop.store(true, Ordering::Relaxed);
    let produced = producer.await.unwrap();
    eventually("every record delivered", WAIT, || async {
        let ids: HashSet<u64> = arrivals.lock().unwrap().iter().map(|a| a.id).collect();
        (ids.len() == usize::try_from(produced).unwrap()).then_some(())
    })
    .await;
    timeline.mark("every record delivered");

    let arrivals = arrivals.lock().unwrap().clone();
    let distinct: HashSet<u64> = arrivals.iter().map(|a| a.id).collect();
    let mut redelivered: BTreeMap<i32, usize> = BTreeMap::new();
    let mut once = HashSet::new();
    for a in &arrivals {
        if !once.insert(a.id) {
            *redelivered.entry(a.partition).or_default() += 1;
        }
    }
    println!("redelivered per partition (at least once: allowed): {redelivered:?}");
    println!(
        "{produced} records produced, {} deliveries ({} redelivered); largest gap per \
         partition between {:.2}s and {:.2}s:",
        arrivals.len(),
        arrivals.len() - distinct.len(),
        (from - timeline.t0).as_secs_f64(),
        (to - timeline.t0).as_secs_f64()
    );
    let gaps = largest_gaps(&arrivals, from, to);
    for g in &gaps {
        println!(
            "  partition {}: {:>6.2}s from {:.2}s (during: {})",
            g.partition,
            g.length.as_secs_f64(),
            (g.start - timeline.t0).as_secs_f64(),
            timeline.during(g.start)
        );
    }
    let lost = (0..produced).filter(|id| !distinct.contains(id)).count();
    assert_eq!(lost, 0, "records lost");
    let too_long: Vec<String> = gaps
        .iter()
        .filter(|g| g.length > MAX_GAP)
        .map(|g| {
            format!(
                "partition {} for {:.2}s from {:.2}s ({})",
                g.partition,
                g.length.as_secs_f64(),
                (g.start - timeline.t0).as_secs_f64(),
                timeline.during(g.start)
            )
        })
        .collect();
    assert!(
        too_long.is_empty(),
        "unconsumed for more than {MAX_GAP:?}: {}",
        too_long.join("; ")
    );
    stack.down().await;
}
