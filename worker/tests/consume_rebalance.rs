//! A live rebalance: a second worker joins the group while the first is consuming a stream
//! that is still being produced. Cooperative-sticky assignment moves some partitions; the
//! first worker commits what it finished in the revoke callback. Nothing is lost, the
//! records delivered twice are at most the window (`--max-uncommitted-per-partition`) of each
//! moved partition, and each worker delivers every key in order.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::consume::{ConsumeWorker, Logged, produce, step};
use common::http_get;
use pipewright_testenv::{create_topic, eventually, unique_name};

const WINDOW: usize = 200;
const PARTITIONS: usize = 4;
const KEYS: u64 = 40;
const BATCHES: u64 = 40;
const PER_BATCH: u64 = 400;

async fn ready(worker: &ConsumeWorker) {
    eventually(
        "/readyz once the group is joined",
        Duration::from_secs(90),
        || async {
            (http_get(worker.addr, "/readyz").await.map(|r| r.0) == Some(200)).then_some(())
        },
    )
    .await;
}

/// Every key's `n` values in delivery order strictly increase (each worker on its own).
fn assert_in_order_per_key(events: &[Logged], who: &str) {
    let mut last: HashMap<&str, u64> = HashMap::new();
    for e in events {
        let (Some(key), Some(n)) = (e.key.as_deref(), e.n) else {
            continue;
        };
        if let Some(prev) = last.insert(key, n) {
            assert!(prev < n, "{who}: key {key} delivered {n} after {prev}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_rebalance_to_a_second_worker_loses_nothing_and_redelivers_at_most_the_window_per_moved_partition()
 {
    let topic = create_topic("ec-rebalance", PARTITIONS as i32).await;
    let group = unique_name("ec-rebalance");
    let window = WINDOW.to_string();
    let args = [
        "--concurrency",
        "16",
        "--max-uncommitted-per-partition",
        &window,
        "--on-unknown-type",
        "fail",
    ];
    let mut first = ConsumeWorker::start(&topic, &group, &args);
    ready(&first).await;

    // A stream still being produced while the group changes.
    let producer_topic = topic.clone();
    let producing = tokio::spawn(async move {
        for batch in 0..BATCHES {
            let records = (batch * PER_BATCH..(batch + 1) * PER_BATCH)
                .map(|i| {
                    let key = format!("k{}", i % KEYS);
                    (Some(key.clone()), Some(step(&key, i).into_bytes()))
                })
                .collect();
            produce(&producer_topic, records).await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    eventually(
        "the first worker is consuming",
        Duration::from_secs(60),
        || {
            let n = first.delivered().len();
            async move { (n >= 1000).then_some(()) }
        },
    )
    .await;

    let mut second = ConsumeWorker::start(&topic, &group, &args);
    ready(&second).await;
    producing.await.unwrap();

    let total = BATCHES * PER_BATCH;
    eventually(
        "every record is delivered",
        Duration::from_secs(180),
        || {
            let mut all: HashSet<u64> = first.delivered().iter().filter_map(|e| e.n).collect();
            all.extend(second.delivered().iter().filter_map(|e| e.n));
            async move { (all.len() as u64 == total).then_some(()) }
        },
    )
    .await;
    assert_eq!(first.sigterm_and_wait().await, 0, "{}", first.log_text());
    assert_eq!(second.sigterm_and_wait().await, 0, "{}", second.log_text());

    let a = first.delivered();
    let b = second.delivered();
    assert!(
        !b.is_empty(),
        "the second worker got partitions (a rebalance happened)"
    );
    assert_in_order_per_key(&a, "first");
    assert_in_order_per_key(&b, "second");
    let twice = (a.len() + b.len()) as u64 - total;
    eprintln!(
        "first delivered {}, second {}, twice {twice}; second's partitions {:?}",
        a.len(),
        b.len(),
        b.iter().map(|e| e.partition).collect::<HashSet<_>>()
    );
    assert!(
        twice <= (WINDOW * PARTITIONS) as u64,
        "{twice} records delivered twice; at most the window of {WINDOW} per moved partition"
    );
}
