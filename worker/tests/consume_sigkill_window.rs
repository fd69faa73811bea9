//! The window of uncommitted records bounds what a crash delivers again: the real binary with
//! the http sink (a receiver in the test answering after 1-5 ms) and
//! `--max-uncommitted-per-partition 200`, SIGKILLed mid-stream and restarted in the same
//! group. The receiver holds a few early records without answering, so that in their
//! partitions everything above them is delivered and cannot be committed until the window
//! is full: the worst case. Per partition, the records both runs delivered are at most the
//! window.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::consume::{ConsumeWorker, produce_steps, require_consume_flags};
use common::receiver::{Answer, Arrival, Receiver, jitter};
use pipewright_testenv::{create_topic, eventually, unique_name};

const PARTITIONS: i32 = 3;
const WINDOW: usize = 200;
const TOTAL: u64 = 15_000;
const KEYS: u64 = 200;
/// Held (first attempt unanswered until the kill): six records of six keys, early in their
/// partitions.
const HELD: std::ops::Range<u64> = 600..606;
/// How long the window has to fill behind the held records before the kill.
const FILL: Duration = Duration::from_secs(3);

fn start_worker(topic: &str, group: &str, receiver: &Receiver, name: &str) -> ConsumeWorker {
    let sink = receiver.sink_args(name);
    let sink: Vec<&str> = sink.iter().map(String::as_str).collect();
    let window = WINDOW.to_string();
    let args = [
        "--concurrency",
        "16",
        "--max-uncommitted-per-partition",
        &window,
        "--on-unknown-type",
        "fail",
        // The killed member leaves the group after 6 s instead of 45.
        "--kafka-config",
        "session.timeout.ms=6000",
        "--kafka-config",
        "heartbeat.interval.ms=2000",
    ];
    ConsumeWorker::start_with(topic, group, &sink, &args, &[])
}

/// The n values `worker` delivered, per partition.
fn by_partition(delivered: &[Arrival], worker: &str) -> BTreeMap<i32, BTreeSet<u64>> {
    let mut map: BTreeMap<i32, BTreeSet<u64>> = BTreeMap::new();
    for a in delivered.iter().filter(|a| a.worker == worker) {
        map.entry(a.partition).or_default().insert(a.n);
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_sigkill_redelivers_at_most_the_window_per_partition() {
    require_consume_flags(&["--max-uncommitted-per-partition"]);
    let topic = create_topic("ec-kill-window", PARTITIONS).await;
    let group = unique_name("ec-kill-window");
    produce_steps(&topic, TOTAL, KEYS).await;
    let held: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let holding = held.clone();
    let receiver = Receiver::start(move |r| {
        if HELD.contains(&r.n) && r.attempt == 1 {
            holding.lock().unwrap().push(r.at);
            // Longer than the test: the kill closes the connection first.
            Answer::ok_after(Duration::from_secs(600))
        } else {
            Answer::ok_after(jitter(r, 1, 5))
        }
    })
    .await;

    let mut first = start_worker(&topic, &group, &receiver, "first");
    let first_held = eventually(
        "a held record reaches the receiver",
        Duration::from_secs(120),
        || {
            let at = held.lock().unwrap().first().copied();
            async move { at }
        },
    )
    .await;
    eventually("the windows fill behind the held records", FILL * 2, || {
        let filled = receiver.now() >= first_held + FILL;
        async move { filled.then_some(()) }
    })
    .await;
    first.sigkill();
    let killed_at = receiver.delivered_count();
    assert!(
        (killed_at as u64) < TOTAL,
        "the kill came too late to be mid-stream"
    );

    let mut second = start_worker(&topic, &group, &receiver, "second");
    eventually("every event is delivered", Duration::from_secs(180), || {
        let n = receiver.distinct_delivered() as u64;
        async move { (n == TOTAL).then_some(()) }
    })
    .await;
    assert_eq!(second.sigterm_and_wait().await, 0, "{}", second.log_text());

    let delivered = receiver.delivered();
    let before = by_partition(&delivered, "first");
    let after = by_partition(&delivered, "second");
    let twice: BTreeMap<i32, usize> = (0..PARTITIONS)
        .map(|p| {
            let a = before.get(&p).cloned().unwrap_or_default();
            let b = after.get(&p).cloned().unwrap_or_default();
            (p, a.intersection(&b).count())
        })
        .collect();
    let count = |w: &str| delivered.iter().filter(|a| a.worker == w).count();
    let held_partitions: BTreeSet<i32> = delivered
        .iter()
        .filter(|a| HELD.contains(&a.n))
        .map(|a| a.partition)
        .collect();
    eprintln!(
        "held records {HELD:?} ({} held) in partitions {held_partitions:?}; delivered before \
         the kill {} {:?}, after {}; delivered twice per partition {twice:?} (window {WINDOW})",
        held.lock().unwrap().len(),
        count("first"),
        before
            .iter()
            .map(|(p, s)| (*p, s.len()))
            .collect::<BTreeMap<_, _>>(),
        count("second"),
    );
    for (p, n) in &twice {
        assert!(
            *n <= WINDOW,
            "partition {p}: {n} records delivered twice, more than the window {WINDOW}"
        );
    }
    // Within one run nothing is delivered twice, and the restart replays each key in order.
    assert_eq!(
        after.values().map(BTreeSet::len).sum::<usize>(),
        count("second"),
        "duplicates within one run"
    );
    let mut last: HashMap<&str, u64> = HashMap::new();
    for a in delivered.iter().filter(|a| a.worker == "second") {
        if let Some(prev) = last.insert(&a.key, a.n) {
            assert!(prev < a.n, "key {}: {} delivered after {prev}", a.key, a.n);
        }
    }
}
