//! Rebalances while retries are in flight: workers join and leave one group (SIGTERM one,
//! start another) while a steady stream flows to an HTTP receiver that answers after 2-20 ms
//! and refuses every tenth record of each key twice (503), so records are running and retrying at every
//! revoke. From the receiver's single arrival log (each request names its worker):
//!
//! - nothing is lost;
//! - no key is reordered: the first delivery of each record of a key comes after those of the
//!   key's earlier records, whichever worker made them; a record that arrives from one
//!   worker after a later record of its key arrived from another is a redelivery (the new
//!   owner replaying from the committed offset), never a first delivery;
//! - no partition is delivered by two workers at once: in each partition's deliveries the
//!   worker changes at most once per change of owner (its assignments in the workers' logs);
//! - a record running at a revoke (retrying included) finishes at its worker: none refused by
//!   one worker is delivered by another;
//! - records delivered twice are at most the window (`--max-uncommitted-per-partition`) per
//!   change of a partition's owner.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use common::consume::{ConsumeWorker, SteadyStream, log_fields, require_consume_flags};
use common::receiver::{Answer, Arrival, Receiver, jitter};
use pipewright_testenv::{create_topic, eventually, unique_name};

const PARTITIONS: i32 = 6;
const KEYS: u64 = 60;
/// Records per second.
const RATE: u64 = 200;
const CONCURRENCY: usize = 8;
const WINDOW: usize = 100;
/// Deliveries between two changes of the group.
const STEP: usize = 800;

fn start_worker(topic: &str, group: &str, receiver: &Receiver, name: &str) -> ConsumeWorker {
    let sink = receiver.sink_args(name);
    let sink: Vec<&str> = sink.iter().map(String::as_str).collect();
    let concurrency = CONCURRENCY.to_string();
    let window = WINDOW.to_string();
    let args = [
        "--concurrency",
        &concurrency,
        "--max-uncommitted-per-partition",
        &window,
        "--revoke-timeout",
        "10s",
        "--on-unknown-type",
        "fail",
        "--retry-max-attempts",
        "10",
        // Retries of 0.3 to 1.5 s: records are retrying at every revoke.
        "--retry-backoff-initial",
        "200ms",
        "--retry-backoff-max",
        "1s",
    ];
    ConsumeWorker::start_with(topic, group, &sink, &args, &[])
}

/// Waits until `count` deliveries more than `from` have been answered.
async fn deliveries(receiver: &Receiver, from: usize, count: usize) -> usize {
    eventually(
        &format!("{count} more deliveries"),
        Duration::from_secs(60),
        || {
            let n = receiver.delivered_count();
            async move { (n >= from + count).then_some(n) }
        },
    )
    .await
}

/// Waits until `worker` has delivered a record (it got partitions).
async fn delivering(receiver: &Receiver, worker: &str) {
    eventually(
        &format!("{worker} delivers"),
        Duration::from_secs(60),
        || {
            let yes = receiver.delivered().iter().any(|a| a.worker == worker);
            async move { yes.then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_rebalances_with_retries_in_flight_never_reorder_a_key_across_workers_and_lose_nothing()
 {
    require_consume_flags(&["--max-uncommitted-per-partition", "--revoke-timeout"]);
    let topic = create_topic("ec-rebalance-order", PARTITIONS).await;
    let group = unique_name("ec-rebalance-order");
    let receiver = Receiver::start(|r| {
        let delay = jitter(r, 2, 20);
        // Every tenth record of each key (not ten keys' every record: those could not keep up).
        if (r.n / KEYS) % 10 == 3 && r.attempt <= 2 {
            Answer::unavailable_after(delay)
        } else {
            Answer::ok_after(delay)
        }
    })
    .await;

    let mut w1 = start_worker(&topic, &group, &receiver, "w1");
    let mut w2 = start_worker(&topic, &group, &receiver, "w2");
    w1.ready().await;
    w2.ready().await;
    let stream = SteadyStream::start(std::slice::from_ref(&topic), RATE, KEYS);
    let mut seen = deliveries(&receiver, 0, STEP).await;
    // Joins, leaves, joins, leaves: four changes of the group, each moving partitions.
    let w3 = start_worker(&topic, &group, &receiver, "w3");
    delivering(&receiver, "w3").await;
    seen = deliveries(&receiver, seen, STEP).await;
    assert_eq!(w1.sigterm_and_wait().await, 0, "{}", w1.log_text());
    seen = deliveries(&receiver, seen, STEP).await;
    let w4 = start_worker(&topic, &group, &receiver, "w4");
    delivering(&receiver, "w4").await;
    seen = deliveries(&receiver, seen, STEP).await;
    assert_eq!(w2.sigterm_and_wait().await, 0, "{}", w2.log_text());
    deliveries(&receiver, seen, STEP).await;
    let total = stream.stop().await;
    eventually("every record is delivered", Duration::from_secs(90), || {
        let n = receiver.distinct_delivered() as u64;
        async move { (n == total).then_some(()) }
    })
    .await;
    let mut workers = [w1, w2, w3, w4];
    for w in &mut workers[2..] {
        assert_eq!(w.sigterm_and_wait().await, 0, "{}", w.log_text());
    }

    let log = receiver.arrivals();
    let delivered: Vec<&Arrival> = log.iter().filter(|a| a.delivered()).collect();
    let distinct: BTreeSet<u64> = delivered.iter().map(|a| a.n).collect();
    assert_eq!(
        distinct,
        (0..total).collect::<BTreeSet<u64>>(),
        "nothing lost"
    );

    // Keys: first deliveries in order; a record after a later one of its key from another
    // worker is a redelivery.
    let mut first_seen = BTreeSet::new();
    let mut last_first: HashMap<&str, u64> = HashMap::new();
    let mut highest_by_worker: HashMap<&str, HashMap<&str, u64>> = HashMap::new();
    let mut after_later_elsewhere = 0;
    for a in &delivered {
        let first = first_seen.insert(a.n);
        let by_worker = highest_by_worker.entry(&a.key).or_default();
        let later_elsewhere = by_worker
            .iter()
            .any(|(w, high)| *w != a.worker && *high > a.n);
        if later_elsewhere {
            after_later_elsewhere += 1;
            assert!(
                !first,
                "key {}: record {} first delivered by {} after a later record of the key \
                 was delivered by another worker ({by_worker:?})",
                a.key, a.n, a.worker
            );
        }
        let high = by_worker.entry(&a.worker).or_default();
        *high = (*high).max(a.n);
        if first && let Some(prev) = last_first.insert(&a.key, a.n) {
            assert!(
                prev < a.n,
                "key {}: record {} first delivered after record {prev}",
                a.key,
                a.n
            );
        }
    }

    // Partitions: the worker delivering a partition changes at most once per new owner.
    let mut assignments: BTreeMap<i64, usize> = BTreeMap::new();
    for w in &workers {
        for f in log_fields(&w.log_text(), "partition assigned") {
            *assignments
                .entry(f["partition"].as_i64().unwrap())
                .or_default() += 1;
        }
    }
    let mut switches: BTreeMap<i64, usize> = BTreeMap::new();
    let mut current: HashMap<i32, &str> = HashMap::new();
    for a in &delivered {
        let previous = current.insert(a.partition, &a.worker);
        let entry = switches.entry(i64::from(a.partition)).or_default();
        if previous.is_some_and(|w| w != a.worker) {
            *entry += 1;
        }
    }
    for (p, s) in &switches {
        let owners = assignments.get(p).copied().unwrap_or(0);
        assert!(
            *s < owners.max(1),
            "partition {p}: the delivering worker changed {s} times with {owners} \
             assignments (two workers delivered it at once)"
        );
    }

    // Duplicates: at most the window per change of owner.
    let moves: usize = assignments.values().map(|a| a.saturating_sub(1)).sum();
    let twice = delivered.len() - distinct.len();
    let refused = log.iter().filter(|a| !a.delivered()).count();
    // Each refused answer of a record that another worker delivered and the refusing worker
    // never delivered itself (a record it gave up while retrying): (n, partition, offset,
    // refused by, at, delivered by, at, attempt). A record the refusing worker delivered on a
    // later attempt and its partition's next owner delivered again is a replay (a lower
    // record of the partition was unfinished at the revoke), counted in `twice`.
    let moved: Vec<_> = log
        .iter()
        .filter(|a| !a.delivered())
        .filter(|r| !delivered.iter().any(|a| a.n == r.n && a.worker == r.worker))
        .filter_map(|r| {
            let d = delivered
                .iter()
                .find(|a| a.n == r.n && a.worker != r.worker)?;
            Some((
                r.n,
                r.partition,
                r.offset,
                &r.worker,
                r.at,
                &d.worker,
                d.at,
                d.attempt,
            ))
        })
        .collect();
    let moved_while_retrying = moved.len();
    let per_worker: BTreeMap<&str, usize> = delivered.iter().fold(BTreeMap::new(), |mut m, a| {
        *m.entry(a.worker.as_str()).or_default() += 1;
        m
    });
    eprintln!(
        "produced {total}; delivered {} ({per_worker:?}), twice {twice}; refused (503) {refused}, \
         of which {moved_while_retrying} delivered by another worker; assignments per partition \
         {assignments:?} ({moves} moves), worker changes per partition {switches:?}; \
         redeliveries after a later record from another worker {after_later_elsewhere}; \
         bound {WINDOW} x {moves} moves = {}; concurrency x changes of the group = {}",
        delivered.len(),
        WINDOW * moves,
        CONCURRENCY * 4,
    );
    assert_eq!(
        moved_while_retrying, 0,
        "a record refused (503) by one worker was delivered by another: a revoke gave up a \
         retrying record instead of letting it finish (the revoke timeout is 10 s, a record \
         retries for at most 1.5 s): {moved:?}"
    );
    assert!(
        twice <= WINDOW * moves,
        "{twice} records delivered twice, more than the window {WINDOW} per move ({moves})"
    );
}
