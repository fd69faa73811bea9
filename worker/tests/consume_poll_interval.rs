//! A record whose delivery takes longer than librdkafka's `max.poll.interval.ms` (10 s here;
//! the HTTP receiver holds it for 25 s) while the other keys flow: the fetch loop keeps
//! polling, so the worker stays the group's one member all along (the group, sampled twice a
//! second, never shows another member id or none; the worker's log shows each partition
//! assigned once, none revoked, no poll-interval error), and every record is delivered, each
//! key in order.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::consume::{ConsumeWorker, SteadyStream, log_fields};
use common::receiver::{Answer, Receiver, jitter};
use pipewright_testenv::{create_topic, eventually, kafka_config, unique_name};
use rdkafka::consumer::{BaseConsumer, Consumer};

const PARTITIONS: i32 = 3;
const KEYS: u64 = 30;
/// Records per second.
const RATE: u64 = 100;
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(10);
const HOLD: Duration = Duration::from_secs(25);
/// The held record: the first of key k5.
const HELD: u64 = 5;

/// The group's members as the coordinator reports them, sampled every 500 ms in a thread.
struct Membership {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(String, Vec<String>)>>,
}

impl Membership {
    fn sample(group: &str) -> Membership {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let group = group.to_string();
        let thread = std::thread::spawn(move || {
            let admin: BaseConsumer = kafka_config()
                .set("group.id", unique_name("pw-group-reader"))
                .create()
                .expect("consumer");
            let mut samples = Vec::new();
            while !stopping.load(Ordering::SeqCst) {
                if let Ok(list) = admin.fetch_group_list(Some(&group), Duration::from_secs(5))
                    && let Some(g) = list.groups().first()
                {
                    let members = g.members().iter().map(|m| m.id().to_string()).collect();
                    samples.push((g.state().to_string(), members));
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            samples
        });
        Membership { stop, thread }
    }

    fn finish(self) -> Vec<(String, Vec<String>)> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_a_record_slower_than_max_poll_interval_does_not_make_the_worker_leave_the_group() {
    let topic = create_topic("ec-poll-interval", PARTITIONS).await;
    let group = unique_name("ec-poll-interval");
    let receiver = Receiver::start(|r| {
        if r.n == HELD && r.attempt == 1 {
            Answer::ok_after(HOLD)
        } else {
            Answer::ok_after(jitter(r, 2, 20))
        }
    })
    .await;
    let max_poll = format!("max.poll.interval.ms={}", MAX_POLL_INTERVAL.as_millis());
    let sink = [
        "--sink",
        "http",
        "--sink-http-url",
        &receiver.url,
        "--sink-http-timeout",
        "60s",
    ];
    let args = [
        "--concurrency",
        "16",
        "--on-unknown-type",
        "fail",
        // librdkafka wants max.poll.interval.ms >= session.timeout.ms (default 45 s).
        "--kafka-config",
        "session.timeout.ms=6000",
        "--kafka-config",
        "heartbeat.interval.ms=2000",
        "--kafka-config",
        &max_poll,
    ];
    let mut worker = ConsumeWorker::start_with(&topic, &group, &sink, &args, &[]);
    worker.ready().await;
    let membership = Membership::sample(&group);
    let stream = SteadyStream::start(std::slice::from_ref(&topic), RATE, KEYS);
    let released = eventually(
        "the held record is delivered",
        Duration::from_secs(90),
        || {
            let at = receiver
                .delivered()
                .iter()
                .find(|a| a.n == HELD)
                .map(|a| a.at);
            async move { at }
        },
    )
    .await;
    // Records produced after the release are delivered too (the stream goes on a while).
    let after = stream.produced() + RATE * 2;
    eventually(
        "two more seconds of the stream",
        Duration::from_secs(30),
        || {
            let n = stream.produced();
            async move { (n >= after).then_some(()) }
        },
    )
    .await;
    let total = stream.stop().await;
    // Waits for the rest, but reports the membership first if it does not come.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while (receiver.distinct_delivered() as u64) < total && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let samples = membership.finish();
    let log = worker.log_text();

    let arrivals = receiver.arrivals();
    let held_at = released - HOLD;
    let others_during_hold = arrivals
        .iter()
        .filter(|a| a.delivered() && a.n != HELD && a.at >= held_at && a.at <= released)
        .count();
    let others_rate = others_during_hold as f64 / HOLD.as_secs_f64();
    let member_ids: BTreeSet<&String> = samples.iter().flat_map(|(_, m)| m).collect();
    let states: BTreeMap<&str, usize> = samples.iter().fold(BTreeMap::new(), |mut m, (s, _)| {
        *m.entry(s.as_str()).or_default() += 1;
        m
    });
    let assigned = log_fields(&log, "partition assigned");
    let revoked = log_fields(&log, "partition revoked");
    // Nothing goes wrong here but the slow record: any warning is a symptom (librdkafka's
    // MAXPOLL "leaving group", the consumer error it causes, commits refused with
    // UnknownMemberId after the worker left).
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(r#""level":"WARN""#) || l.contains(r#""level":"ERROR""#))
        .collect();
    eprintln!(
        "held record {HELD} for {:?} (max.poll.interval.ms {:?}); other keys during the hold: \
         {others_rate:.1}/s (produced {RATE}/s); {} group samples, states {states:?}, member \
         ids {member_ids:?}; partitions assigned {}, revoked {}; warnings {}",
        HOLD,
        MAX_POLL_INTERVAL,
        samples.len(),
        assigned.len(),
        revoked.len(),
        warnings.len(),
    );

    assert_eq!(member_ids.len(), 1, "one member id all along: {samples:?}");
    assert!(
        samples.iter().all(|(_, m)| m.len() == 1),
        "the group always had its one member: {samples:?}"
    );
    assert!(
        samples.len() as f64 >= (released - held_at).as_secs_f64(),
        "the group was sampled through the hold"
    );
    assert_eq!(
        assigned.len(),
        PARTITIONS as usize,
        "each partition assigned once"
    );
    assert!(revoked.is_empty(), "no partition revoked: {revoked:?}");
    assert!(
        warnings.is_empty(),
        "{} warnings, the first: {:#?}",
        warnings.len(),
        &warnings[..warnings.len().min(5)]
    );
    assert!(
        others_rate >= 0.5 * RATE as f64,
        "the other keys slowed to {others_rate:.1}/s during the hold"
    );

    // Every record delivered, each key in order (first deliveries).
    let mut first = BTreeSet::new();
    let mut last: HashMap<&str, u64> = HashMap::new();
    for a in arrivals.iter().filter(|a| a.delivered()) {
        if first.insert(a.n)
            && let Some(prev) = last.insert(&a.key, a.n)
        {
            assert!(prev < a.n, "key {}: {} after {prev}", a.key, a.n);
        }
    }
    assert_eq!(
        first.len() as u64,
        total,
        "every record delivered (n = 0..{total})"
    );
    assert_eq!(worker.sigterm_and_wait().await, 0, "{}", worker.log_text());
}
