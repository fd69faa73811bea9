//! `kubectl drain` of a node mid-stream, on the two-node local cluster (docs/local-node.md).
//!
//! A test binary of its own: a drain evicts every pod of the node, so no other test may run
//! beside it (cargo runs test binaries one after another).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Stack, WAIT, bootstrap, event_consumer, var};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::{Api, ResourceExt};
use pipewright_crds::EventConsumer;
use pipewright_testenv::{create_topic, eventually, kafka_config, nodes, unique_name};
use rdkafka::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

const PARTITIONS: i32 = 4;
const REPLICAS: usize = 4;
const KEYS: u64 = 64;
const RECORDS: u64 = 8_000;
const PER_SECOND: u64 = 400;

/// One record of the output topic, as the test's reader saw it.
#[derive(Debug, Clone)]
struct Delivered {
    id: u64,
    key: u64,
    seq: u64,
    /// The output record's timestamp (the worker's producer sets it when it sends).
    at_ms: i64,
}

/// Uncordons the node when dropped, also when the test panics: a cordoned node would take
/// the second node away from every later test.
struct Uncordon(String);

impl Drop for Uncordon {
    fn drop(&mut self) {
        let _ = Command::new(var("KUBECTL"))
            .args(["uncordon", &self.0])
            .output();
    }
}

/// Four workers of a key-ordered consumer spread over both nodes; the node holding half of
/// them is drained while records flow. `kubectl drain` evicts through the Eviction API, so the
/// operator's PodDisruptionBudget (maxUnavailable 1) holds it back: the second eviction is
/// refused until the first worker's replacement is Ready, and never fewer than three workers
/// are available. The evicted workers drain, commit and exit 0; the replacements run on the
/// other node. The output topic then holds every record exactly once, each key's records in
/// production order. Prints the longest gap between deliveries of each input partition.
#[tokio::test]
async fn e2e_draining_a_node_mid_stream_keeps_the_disruption_budget_loses_nothing_redelivers_nothing_and_keeps_per_key_order()
 {
    let env_nodes = nodes();
    assert!(
        env_nodes.len() >= 2,
        "a drain needs two nodes: {env_nodes:?}"
    );
    let stack = Stack::up("e2e-node-drain").await;
    let input = create_topic("e2e-node-drain-in", PARTITIONS).await;
    let output = create_topic("e2e-node-drain-out", PARTITIONS).await;
    let dlq = create_topic("e2e-node-drain-dlq", 1).await;
    let _: EventConsumer = stack
        .apply(event_consumer(
            "relay",
            json!({
                "kafka": {"bootstrapServers": bootstrap()},
                "topics": [input],
                "groupId": unique_name("e2e-node-drain"),
                "replicas": REPLICAS,
                "processing": {"ordering": "key", "concurrency": 8, "drainTimeout": "20s",
                               "deadLetterTopic": dlq},
                "sink": {"kafka": {"topic": output}},
                // Half on each node; a cordoned node is no place to balance towards.
                "pod": {"topologySpreadConstraints": [{
                    "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "DoNotSchedule", "nodeTaintsPolicy": "Honor",
                    "labelSelector": {"matchLabels": {
                        "app.kubernetes.io/name": "pipewright-worker",
                        "app.kubernetes.io/instance": "relay"}},
                }]},
            }),
        ))
        .await;
    let before = stack.wait_workers_ready("relay", REPLICAS).await;
    let on_node = |pods: &[Pod], node: &str| -> Vec<String> {
        pods.iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            .map(ResourceExt::name_any)
            .collect()
    };
    let drained = env_nodes[1].name.clone();
    let victims = on_node(&before, &drained);
    assert_eq!(
        victims.len(),
        REPLICAS / 2,
        "the workers are not spread half and half: {:?}",
        before
            .iter()
            .map(|p| (
                p.name_any(),
                p.spec.as_ref().and_then(|s| s.node_name.clone())
            ))
            .collect::<Vec<_>>()
    );

    // The nodes are shared with the tests before this one: a pod another test left running
    // on the node (its disruption budget exhausted) would hold the drain back for nothing.
    let leftovers = Arc::new(Mutex::new(Vec::new()));
    eventually(
        &format!("no pod of another test on {drained} (see the list printed above)"),
        WAIT,
        || async {
            let on = ListParams::default().fields(&format!("spec.nodeName={drained}"));
            let pods = Api::<Pod>::all(stack.client.clone()).list(&on).await.ok()?;
            let others: Vec<String> = pods
                .iter()
                .filter(|p| p.namespace().as_deref() != Some(stack.ns.name.as_str()))
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| !p.owner_references().iter().any(|o| o.kind == "DaemonSet"))
                .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
                .collect();
            let empty = others.is_empty();
            let mut seen = leftovers.lock().unwrap();
            if !empty && *seen != others {
                println!("pods of other tests on {drained}: {others:?}");
            }
            *seen = others;
            empty.then_some(())
        },
    )
    .await;

    let availability = watch_availability(stack.api::<Pod>());
    let delivered = read_output(&output);
    let producer = tokio::spawn({
        let input = input.clone();
        async move { produce(&input).await }
    });
    eventually("the workers to be mid-stream", WAIT, || async {
        (delivered.lock().unwrap().len() > 1_000).then_some(())
    })
    .await;

    let _uncordon = Uncordon(drained.clone());
    let drain_started = availability.lock().unwrap().events;
    let drain = tokio::task::spawn_blocking({
        let node = drained.clone();
        move || {
            Command::new(var("KUBECTL"))
                .args([
                    "drain",
                    &node,
                    "--ignore-daemonsets",
                    "--delete-emptydir-data",
                    "--timeout=180s",
                ])
                .output()
                .expect("run kubectl drain")
        }
    });
    let drain = drain.await.unwrap();
    let drain_log = format!(
        "{}{}",
        String::from_utf8_lossy(&drain.stdout),
        String::from_utf8_lossy(&drain.stderr)
    );
    assert!(drain.status.success(), "kubectl drain failed:\n{drain_log}");
    println!("kubectl drain {drained}:\n{drain_log}");
    // The budget held the drain back: an eviction was refused while a worker was away.
    assert!(
        drain_log.contains("disruption budget"),
        "no eviction was refused by the PodDisruptionBudget:\n{drain_log}"
    );

    let after = eventually(
        "four workers Ready again, none on the drained node",
        WAIT,
        || async {
            let pods = stack.wait_workers_ready("relay", REPLICAS).await;
            on_node(&pods, &drained).is_empty().then_some(pods)
        },
    )
    .await;
    assert!(
        after.iter().all(|p| !victims.contains(&p.name_any())),
        "an evicted worker still runs"
    );
    producer.await.unwrap();

    eventually("every record on the output topic", WAIT, || async {
        (distinct_ids(&delivered.lock().unwrap()) == RECORDS as usize).then_some(())
    })
    .await;
    // A redelivery would come after the original: a sentinel behind every record of every
    // input partition proves the workers have nothing older left to deliver.
    send_sentinels(&input).await;
    eventually("a sentinel from every input partition", WAIT, || async {
        let got = delivered.lock().unwrap();
        let sentinels = got.iter().filter(|d| d.id >= RECORDS).count();
        (sentinels == PARTITIONS as usize).then_some(())
    })
    .await;

    let got: Vec<Delivered> = delivered
        .lock()
        .unwrap()
        .iter()
        .filter(|d| d.id < RECORDS)
        .cloned()
        .collect();
    assert_eq!(
        got.len(),
        distinct_ids(&got),
        "{} records delivered twice: a worker did not drain and commit",
        got.len() - distinct_ids(&got)
    );
    // Per key, in the order the output partition holds them: 0, 1, 2, ...
    let mut next: HashMap<u64, u64> = HashMap::new();
    for d in &got {
        let want = next.entry(d.key).or_default();
        assert_eq!(
            d.seq, *want,
            "key k{} out of order: seq {} where {} was next",
            d.key, d.seq, want
        );
        *want += 1;
    }

    let codes = availability.lock().unwrap().exit_codes.clone();
    for victim in &victims {
        assert_eq!(
            codes.get(victim),
            Some(&0),
            "evicted worker {victim} did not exit 0 after draining (exit codes seen: {codes:?})"
        );
    }
    let seen = availability.lock().unwrap().clone();
    println!(
        "workers available during the drain: at least {} of {REPLICAS} ({} pod events)",
        seen.min_available_since(drain_started),
        seen.events - drain_started
    );
    assert!(
        seen.min_available_since(drain_started) >= REPLICAS - 1,
        "the disruption budget allows one worker away; seen {} available",
        seen.min_available_since(drain_started)
    );

    // The longest gap between deliveries of each input partition (key k -> partition k % 4).
    let mut last: BTreeMap<u64, i64> = BTreeMap::new();
    let mut gap: BTreeMap<u64, i64> = BTreeMap::new();
    let mut by_time = got.clone();
    by_time.sort_by_key(|d| d.at_ms);
    for d in &by_time {
        let partition = d.key % PARTITIONS as u64;
        if let Some(prev) = last.insert(partition, d.at_ms) {
            let g = gap.entry(partition).or_default();
            *g = (*g).max(d.at_ms - prev);
        }
    }
    for (partition, ms) in &gap {
        println!("input partition {partition}: longest gap between deliveries {ms} ms");
    }
    stack.down().await;
}

fn distinct_ids(delivered: &[Delivered]) -> usize {
    delivered
        .iter()
        .map(|d| d.id)
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// `RECORDS` records `{"event_type":"Tick","id","key","seq"}` at `PER_SECOND`, key `k<n>` to
/// partition n % PARTITIONS (so a key's input partition is known), seq counting per key.
async fn produce(topic: &str) {
    let producer: FutureProducer = kafka_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let start = tokio::time::Instant::now();
    let mut pending = Vec::new();
    for id in 0..RECORDS {
        let key = id % KEYS;
        pending.push(send(&producer, topic, id, key, id / KEYS));
        tokio::time::sleep_until(start + Duration::from_millis(id * 1000 / PER_SECOND)).await;
        if pending.len() >= 100 {
            futures::future::join_all(pending.drain(..)).await;
        }
    }
    futures::future::join_all(pending).await;
}

/// One record after all others on every input partition (ids from `RECORDS` on).
async fn send_sentinels(topic: &str) {
    let producer: FutureProducer = kafka_config().create().expect("producer");
    let sends = (0..PARTITIONS as u64).map(|p| send(&producer, topic, RECORDS + p, p, u64::MAX));
    futures::future::join_all(sends).await;
}

async fn send(producer: &FutureProducer, topic: &str, id: u64, key: u64, seq: u64) {
    let value =
        json!({"event_type": "Tick", "id": id, "key": format!("k{key}"), "seq": seq}).to_string();
    let key_text = format!("k{key}");
    let record = FutureRecord::to(topic)
        .key(&key_text)
        .payload(&value)
        .partition((key % PARTITIONS as u64) as i32);
    producer
        .send(record, Duration::from_secs(30))
        .await
        .unwrap_or_else(|(e, _)| panic!("producing {id}: {e}"));
}

/// Every record of the output topic, in each partition's order.
fn read_output(topic: &str) -> Arc<Mutex<Vec<Delivered>>> {
    common::collect_json(topic, |v, m| {
        let key = v["key"].as_str().expect("a key");
        Delivered {
            id: v["id"].as_u64().expect("an id"),
            key: key[1..].parse().expect("k<n>"),
            seq: v["seq"].as_u64().expect("a seq"),
            at_ms: m.timestamp().to_millis().expect("a timestamp"),
        }
    })
}

/// The namespace's worker pods as the watch sees them: available = Ready and not being
/// deleted; the lowest count after each event; the worker containers' exit codes.
#[derive(Debug, Clone, Default)]
struct Availability {
    pods: BTreeMap<String, bool>,
    /// `(events seen so far, available after it)` for each event.
    history: Vec<(usize, usize)>,
    events: usize,
    exit_codes: HashMap<String, i32>,
}

impl Availability {
    fn min_available_since(&self, event: usize) -> usize {
        self.history
            .iter()
            .filter(|(n, _)| *n > event)
            .map(|(_, available)| *available)
            .min()
            .unwrap_or(REPLICAS)
    }
}

fn watch_availability(pods: Api<Pod>) -> Arc<Mutex<Availability>> {
    let seen = Arc::new(Mutex::new(Availability::default()));
    let sink = seen.clone();
    tokio::spawn(async move {
        let params = WatchParams::default()
            .labels("app.kubernetes.io/name=pipewright-worker,app.kubernetes.io/instance=relay")
            .timeout(290);
        let mut stream = pods.watch(&params, "0").await.expect("watch pods").boxed();
        while let Ok(Some(event)) = stream.try_next().await {
            let (gone, pod) = match event {
                WatchEvent::Added(pod) | WatchEvent::Modified(pod) => (false, pod),
                WatchEvent::Deleted(pod) => (true, pod),
                _ => continue,
            };
            let mut seen = sink.lock().unwrap();
            for s in pod
                .status
                .iter()
                .flat_map(|s| &s.container_statuses)
                .flatten()
                .filter(|s| s.name == "worker")
            {
                if let Some(t) = s.state.as_ref().and_then(|st| st.terminated.as_ref()) {
                    seen.exit_codes.insert(pod.name_any(), t.exit_code);
                }
            }
            let available = !gone
                && pod.metadata.deletion_timestamp.is_none()
                && common::running_and_ready(&pod);
            seen.pods.insert(pod.name_any(), available);
            seen.events += 1;
            let now = seen.pods.values().filter(|a| **a).count();
            let n = seen.events;
            seen.history.push((n, now));
        }
    });
    seen
}
