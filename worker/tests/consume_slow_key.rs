//! One key whose deliveries fail for 20 s (its HTTP receiver answers 503 from the key's first
//! arrival on, then accepts) while a steady stream flows through six partitions. The other
//! keys, in the failing key's partition and in the others, keep flowing at the rate of a run
//! without the failure; the failing key's records all arrive, in order, once the receiver
//! accepts them; nothing is lost.
//!
//! The run without the failure (same topic shape, group, worker flags and stream) runs at the
//! same time as the failing one, fed by the same producer, so both see the same load.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::consume::{ConsumeWorker, SteadyStream};
use common::receiver::{Answer, Arrival, Receiver, jitter};
use pipewright_testenv::{create_topic, eventually, unique_name};

const PARTITIONS: i32 = 6;
const KEYS: u64 = 60;
/// Records per second, per topic.
const RATE: u64 = 200;
const FAILING_KEY: &str = "k7";
const FAILURE: Duration = Duration::from_secs(20);

/// The worker's flags: retries that outlast the failure (15 to 25 attempts in 20 s).
const ARGS: &[&str] = &[
    "--concurrency",
    "16",
    "--on-unknown-type",
    "fail",
    "--retry-max-attempts",
    "100",
    "--retry-backoff-initial",
    "100ms",
    "--retry-backoff-max",
    "1s",
];

fn start_worker(topic: &str, receiver: &Receiver, name: &str) -> ConsumeWorker {
    let sink = receiver.sink_args(name);
    let sink: Vec<&str> = sink.iter().map(String::as_str).collect();
    ConsumeWorker::start_with(topic, &unique_name("ec-slow-key"), &sink, ARGS, &[])
}

/// Deliveries (2xx) per second of the records matching `which`, answered in
/// `[from, from + FAILURE]`.
fn rate(delivered: &[Arrival], from: Duration, which: impl Fn(&Arrival) -> bool) -> f64 {
    let count = delivered
        .iter()
        .filter(|a| a.at >= from && a.at <= from + FAILURE && which(a))
        .count();
    count as f64 / FAILURE.as_secs_f64()
}

/// Every key's first deliveries come in increasing n; returns the redeliveries.
fn assert_first_deliveries_in_order(delivered: &[Arrival], run: &str) -> usize {
    let mut last: HashMap<&str, u64> = HashMap::new();
    let mut seen = BTreeSet::new();
    let mut again = 0;
    for a in delivered {
        if !seen.insert(a.n) {
            again += 1;
            continue;
        }
        if let Some(prev) = last.insert(&a.key, a.n) {
            assert!(
                prev < a.n,
                "{run}: key {} delivered {} after {prev}",
                a.key,
                a.n
            );
        }
    }
    again
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_one_key_failing_for_20s_does_not_stall_other_keys_and_partitions_and_keeps_its_order()
 {
    let base_topic = create_topic("ec-slow-key-base", PARTITIONS).await;
    let fail_topic = create_topic("ec-slow-key-fail", PARTITIONS).await;

    let base = Receiver::start(|r| Answer::ok_after(jitter(r, 2, 20))).await;
    let first_failure: Arc<Mutex<Option<Duration>>> = Arc::default();
    let failing = Receiver::start(move |r| {
        let delay = jitter(r, 2, 20);
        if r.key == FAILING_KEY {
            let since = *first_failure.lock().unwrap().get_or_insert(r.at);
            if r.at < since + FAILURE {
                return Answer::unavailable_after(delay);
            }
        }
        Answer::ok_after(delay)
    })
    .await;
    let mut base_worker = start_worker(&base_topic, &base, "base");
    let mut fail_worker = start_worker(&fail_topic, &failing, "failing");
    base_worker.ready().await;
    fail_worker.ready().await;

    let stream = SteadyStream::start(&[base_topic, fail_topic], RATE, KEYS);
    eventually(
        "the failing key's first record is accepted (20 s after its first arrival)",
        Duration::from_secs(90),
        || {
            let accepted = failing.delivered().iter().any(|a| a.key == FAILING_KEY);
            async move { accepted.then_some(()) }
        },
    )
    .await;
    // The stream goes on for a while after the failure: the records behind it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let total = stream.stop().await;
    for (receiver, run) in [(&base, "without failure"), (&failing, "with failure")] {
        eventually(
            &format!("every record is delivered ({run})"),
            Duration::from_secs(90),
            || {
                let n = receiver.distinct_delivered() as u64;
                async move { (n == total).then_some(()) }
            },
        )
        .await;
    }
    assert_eq!(base_worker.sigterm_and_wait().await, 0);
    assert_eq!(fail_worker.sigterm_and_wait().await, 0);

    let first_arrival = |arrivals: &[Arrival]| {
        arrivals
            .iter()
            .filter(|a| a.key == FAILING_KEY)
            .map(|a| a.at)
            .min()
            .expect("the failing key arrived")
    };
    let fail_log = failing.arrivals();
    let fail_delivered = failing.delivered();
    let base_delivered = base.delivered();
    let t0 = first_arrival(&fail_log);
    let b0 = first_arrival(&base.arrivals());
    let accepted_at = first_arrival(&fail_delivered);
    let rejected = fail_log
        .iter()
        .filter(|a| a.key == FAILING_KEY && !a.delivered())
        .count();
    let partition = fail_log
        .iter()
        .find(|a| a.key == FAILING_KEY)
        .unwrap()
        .partition;

    // The other keys while the failing key is refused: all of them, and those of its
    // partition, against the same window (from the key's first arrival) of the run without.
    let others = |a: &Arrival| a.key != FAILING_KEY;
    let neighbours = |a: &Arrival| a.key != FAILING_KEY && a.partition == partition;
    let (base_rate, fail_rate) = (
        rate(&base_delivered, b0, others),
        rate(&fail_delivered, t0, others),
    );
    let (base_neighbours, fail_neighbours) = (
        rate(&base_delivered, b0, neighbours),
        rate(&fail_delivered, t0, neighbours),
    );
    eprintln!(
        "produced {total} per topic at {RATE}/s; key {FAILING_KEY} (partition {partition}) \
         refused {rejected} times for {:.1} s; other keys during those 20 s: {fail_rate:.1}/s \
         with the failure vs {base_rate:.1}/s without ({:.2}x); other keys of partition \
         {partition}: {fail_neighbours:.1}/s vs {base_neighbours:.1}/s ({:.2}x)",
        (accepted_at - t0).as_secs_f64(),
        fail_rate / base_rate,
        fail_neighbours / base_neighbours,
    );
    assert!(
        accepted_at - t0 >= FAILURE,
        "the failure was injected for 20 s"
    );
    assert!(
        fail_rate >= 0.5 * base_rate,
        "other keys slowed to {fail_rate:.1}/s while one key failed (without: {base_rate:.1}/s)"
    );
    assert!(
        fail_neighbours >= 0.5 * base_neighbours,
        "the failing key's partition slowed to {fail_neighbours:.1}/s (without: \
         {base_neighbours:.1}/s)"
    );

    // The failing key: every record, in order.
    let expected: Vec<u64> = (0..total)
        .filter(|i| format!("k{}", i % KEYS) == FAILING_KEY)
        .collect();
    let got: Vec<u64> = fail_delivered
        .iter()
        .filter(|a| a.key == FAILING_KEY)
        .map(|a| a.n)
        .collect();
    assert_eq!(
        got, expected,
        "key {FAILING_KEY}: every record once, in order"
    );

    // Nothing lost, every key in order, in both runs.
    let twice_failing = assert_first_deliveries_in_order(&fail_delivered, "with failure");
    let twice_base = assert_first_deliveries_in_order(&base_delivered, "without failure");
    for (delivered, run) in [
        (&fail_delivered, "with failure"),
        (&base_delivered, "without failure"),
    ] {
        let ns: BTreeSet<u64> = delivered.iter().map(|a| a.n).collect();
        assert_eq!(
            ns,
            (0..total).collect::<BTreeSet<u64>>(),
            "{run}: nothing lost"
        );
    }
    eprintln!("delivered twice: {twice_failing} with the failure, {twice_base} without");
}
