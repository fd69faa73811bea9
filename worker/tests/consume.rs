//! The consumer pipeline as a library (a custom `Handler`, as a custom worker image would have
//! it) against the test broker: per-key order under concurrency, poison records and retries,
//! bad input per policy.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::consume::{TopicReader, committed, produce, produce_steps, step};
use pipewright_testenv::{TestEnv, create_topic, eventually, unique_name};
use pipewright_worker::consume::metrics::KindLabels;
use pipewright_worker::consume::{
    self, Compression, ConsumeConfig, ConsumerConfig, ConsumerMetrics, Handler, HandlerError,
    InitialOffset, InvalidPolicy, Ordering, PipelineConfig, Record, RetryPolicy,
};
use pipewright_worker::kafka::KafkaSettings;
use pipewright_worker::{Error, Health};
use tokio_util::sync::CancellationToken;

#[derive(Debug, serde::Deserialize)]
#[serde(tag = "event_type")]
enum Event {
    #[serde(rename = "step")]
    Step { key: String, n: u64 },
}

/// A handler that records what it delivered, how many deliveries overlapped, and fails the
/// events it is told to.
#[derive(Debug, Default)]
struct Recording {
    running: AtomicUsize,
    peak: AtomicUsize,
    delivered: Mutex<Vec<(String, u64, Option<String>)>>,
    /// Events that fail with a retryable error, every time.
    fail_retryable: HashSet<u64>,
    /// Events that fail with a permanent error.
    fail_permanent: HashSet<u64>,
    work: Duration,
}

impl Handler for Recording {
    type Event = Event;

    async fn handle(&self, event: &Event, record: &Record) -> Result<(), HandlerError> {
        let Event::Step { key, n } = event;
        if self.fail_retryable.contains(n) {
            return Err(HandlerError::retryable(
                "test_unavailable",
                format!("event {n} is poison"),
            ));
        }
        if self.fail_permanent.contains(n) {
            return Err(HandlerError::permanent(
                "test_rejected",
                format!("event {n} is refused"),
            ));
        }
        let now = self.running.fetch_add(1, AtomicOrdering::SeqCst) + 1;
        self.peak.fetch_max(now, AtomicOrdering::SeqCst);
        tokio::time::sleep(self.work).await;
        self.running.fetch_sub(1, AtomicOrdering::SeqCst);
        self.delivered
            .lock()
            .unwrap()
            .push((key.clone(), *n, record.key_str()));
        Ok(())
    }
}

impl Recording {
    fn count(&self) -> usize {
        self.delivered.lock().unwrap().len()
    }
    fn ns(&self) -> Vec<u64> {
        self.delivered.lock().unwrap().iter().map(|d| d.1).collect()
    }
}

fn config(topic: &str, group: &str, dead_letter_topic: Option<&str>) -> ConsumeConfig {
    ConsumeConfig {
        consumer: ConsumerConfig {
            kafka: KafkaSettings::new(&TestEnv::get().kafka_bootstrap_servers),
            topics: vec![topic.to_string()],
            group_id: group.to_string(),
            group_instance_id: None,
            initial_offset: InitialOffset::Earliest,
            commit_interval: Duration::from_millis(200),
            drain_timeout: Duration::from_secs(30),
            revoke_timeout: Duration::from_secs(10),
        },
        pipeline: PipelineConfig {
            concurrency: 16,
            ordering: Ordering::Key,
            retry: RetryPolicy {
                max_attempts: 3,
                initial: Duration::from_millis(10),
                max: Duration::from_millis(50),
            },
            on_invalid: InvalidPolicy::DeadLetter,
            max_record_bytes: 1000,
            ..PipelineConfig::default()
        },
        dead_letter_topic: dead_letter_topic.map(str::to_string),
        dead_letter_http: None,
        compression: Compression::Zstd,
    }
}

/// A running consumer: stop it with [`Running::stop`].
struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), Error>>,
    metrics: ConsumerMetrics,
}

impl Running {
    fn start(config: ConsumeConfig, handler: Arc<Recording>) -> Running {
        let shutdown = CancellationToken::new();
        let metrics = ConsumerMetrics::unregistered();
        let task = tokio::spawn(consume::run(
            config,
            handler,
            metrics.clone(),
            Health::default(),
            shutdown.clone(),
        ));
        Running {
            shutdown,
            task,
            metrics,
        }
    }

    async fn stop(self) -> Result<(), Error> {
        self.shutdown.cancel();
        self.task.await.expect("consumer task")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_keeps_per_key_order_with_concurrency_64_on_one_partition_and_runs_keys_concurrently()
 {
    let topic = create_topic("ec-order", 1).await;
    let total = 4000u64;
    produce_steps(&topic, total, 400).await;
    let handler = Arc::new(Recording {
        work: Duration::from_millis(3),
        ..Recording::default()
    });
    let mut cfg = config(&topic, &unique_name("ec-order"), None);
    cfg.pipeline.concurrency = 64;
    cfg.pipeline.on_invalid = InvalidPolicy::Fail;
    let running = Running::start(cfg, handler.clone());
    eventually("every event is delivered", Duration::from_secs(180), || {
        let n = handler.count();
        async move { (n as u64 >= total).then_some(()) }
    })
    .await;
    running.stop().await.unwrap();

    let delivered = handler.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len() as u64, total, "each event once");
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut violations = 0;
    for (key, n, _) in &delivered {
        if let Some(prev) = last.insert(key.clone(), *n)
            && prev > *n
        {
            violations += 1;
        }
    }
    assert_eq!(violations, 0, "per-key order violations");
    let peak = handler.peak.load(AtomicOrdering::SeqCst);
    assert!(peak > 4, "deliveries were not concurrent (peak {peak})");
    assert!(peak <= 64, "peak {peak} above the concurrency bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_dead_letters_a_poison_record_with_all_headers_and_the_records_after_it_still_flow()
{
    let topic = create_topic("ec-poison", 1).await;
    let dlq = create_topic("ec-poison-dlq", 1).await;
    // One key: the records behind the poison one wait for it, then flow.
    let records = (0..100)
        .map(|n| (Some("same".to_string()), Some(step("same", n).into_bytes())))
        .collect();
    produce(&topic, records).await;
    let reader = TopicReader::start(&dlq, "read_committed");
    let handler = Arc::new(Recording {
        fail_retryable: [10].into(),
        fail_permanent: [20].into(),
        ..Recording::default()
    });
    let group = unique_name("ec-poison");
    let running = Running::start(config(&topic, &group, Some(&dlq)), handler.clone());
    eventually(
        "the other 98 events are delivered",
        Duration::from_secs(120),
        || {
            let n = handler.count();
            async move { (n >= 98).then_some(()) }
        },
    )
    .await;
    let letters = eventually("two dead letters", Duration::from_secs(60), || {
        let s = reader.snapshot();
        async move { (s.len() >= 2).then_some(s) }
    })
    .await;
    let metrics = running.metrics.clone();
    running.stop().await.unwrap();

    let expected: Vec<u64> = (0..100).filter(|n| *n != 10 && *n != 20).collect();
    assert_eq!(handler.ns(), expected, "in order, poison ones left out");
    assert_eq!(letters.len(), 2);
    let by_offset: HashMap<String, &common::consume::DeadLetter> = letters
        .iter()
        .map(|l| (l.headers["pipewright.original.offset"].clone(), l))
        .collect();
    let retried = by_offset["10"];
    assert_eq!(retried.headers["pipewright.original.topic"], topic);
    assert_eq!(retried.headers["pipewright.original.partition"], "0");
    assert_eq!(retried.headers["pipewright.error.kind"], "test_unavailable");
    assert!(retried.headers["pipewright.error.message"].contains("poison"));
    assert_eq!(
        retried.headers["pipewright.attempts"], "3",
        "max attempts made"
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(&retried.headers["pipewright.first.failure.time"])
            .is_ok()
    );
    assert_eq!(retried.key.as_deref(), Some("same"));
    assert_eq!(retried.value.as_deref(), Some(step("same", 10).as_bytes()));
    let refused = by_offset["20"];
    assert_eq!(refused.headers["pipewright.error.kind"], "test_rejected");
    assert_eq!(
        refused.headers["pipewright.attempts"], "1",
        "permanent: no retry"
    );

    assert_eq!(metrics.dead_lettered.get(), 2);
    assert_eq!(metrics.retried.get(), 2);
    assert_eq!(metrics.processed.get(), 98);
    assert_eq!(committed(&group, &topic, 1).get(&0), Some(&100));
}

/// The bad inputs, in this order: valid, malformed JSON, unknown type, oversized, a valid
/// event with a null key, wrong fields for its type, no value, valid.
async fn produce_bad_inputs(topic: &str) {
    let big = format!(
        r#"{{"event_type":"step","key":"a","n":3,"pad":"{}"}}"#,
        "x".repeat(2000)
    );
    let records = vec![
        (Some("a".into()), Some(step("a", 0).into_bytes())),
        (Some("a".into()), Some(b"{not json".to_vec())),
        (Some("a".into()), Some(br#"{"event_type":"nope"}"#.to_vec())),
        (Some("a".into()), Some(big.into_bytes())),
        (None, Some(step("nokey", 4).into_bytes())),
        (
            Some("a".into()),
            Some(br#"{"event_type":"step","key":1}"#.to_vec()),
        ),
        (Some("a".into()), None),
        (Some("a".into()), Some(step("a", 7).into_bytes())),
    ];
    produce(topic, records).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_handles_bad_input_per_policy_dead_letter_skip_and_fail() {
    let topic = create_topic("ec-bad", 1).await;
    produce_bad_inputs(&topic).await;

    // deadLetter: each bad record parked with its kind, the good ones delivered.
    let dlq = create_topic("ec-bad-dlq", 1).await;
    let reader = TopicReader::start(&dlq, "read_committed");
    let handler = Arc::new(Recording::default());
    let group = unique_name("ec-bad-dl");
    let running = Running::start(config(&topic, &group, Some(&dlq)), handler.clone());
    let letters = eventually("five dead letters", Duration::from_secs(120), || {
        let s = reader.snapshot();
        async move { (s.len() >= 5).then_some(s) }
    })
    .await;
    eventually("three events delivered", Duration::from_secs(60), || {
        let n = handler.count();
        async move { (n >= 3).then_some(()) }
    })
    .await;
    let metrics = running.metrics.clone();
    running.stop().await.unwrap();
    let mut kinds: Vec<(String, String)> = letters
        .iter()
        .map(|l| {
            (
                l.headers["pipewright.original.offset"].clone(),
                l.headers["pipewright.error.kind"].clone(),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("1", "malformed"),
            ("2", "unknown_type"),
            ("3", "oversized"),
            ("5", "schema_invalid"),
            ("6", "malformed"),
        ]
        .map(|(o, k)| (o.to_string(), k.to_string()))
    );
    let mut ns = handler.ns();
    ns.sort();
    assert_eq!(
        ns,
        [0, 4, 7],
        "valid events delivered, the null-key one included"
    );
    let unknown = KindLabels {
        kind: "unknown_type".into(),
    };
    assert_eq!(metrics.rejected.get_or_create(&unknown).get(), 1);
    assert_eq!(metrics.dead_lettered.get(), 5);
    assert_eq!(committed(&group, &topic, 1).get(&0), Some(&8));

    // skip: nothing parked, everything committed.
    let handler = Arc::new(Recording::default());
    let group = unique_name("ec-bad-skip");
    let mut cfg = config(&topic, &group, None);
    cfg.pipeline.on_invalid = InvalidPolicy::Skip;
    let running = Running::start(cfg, handler.clone());
    eventually("everything committed", Duration::from_secs(120), || {
        let c = committed(&group, &topic, 1).get(&0).copied();
        async move { (c == Some(8)).then_some(()) }
    })
    .await;
    let metrics = running.metrics.clone();
    running.stop().await.unwrap();
    assert_eq!(metrics.skipped.get(), 5);
    assert_eq!(handler.count(), 3);

    // fail: the consumer stops at the first bad record and does not commit it.
    let handler = Arc::new(Recording::default());
    let group = unique_name("ec-bad-fail");
    let mut cfg = config(&topic, &group, None);
    cfg.pipeline.on_invalid = InvalidPolicy::Fail;
    let running = Running::start(cfg, handler.clone());
    let result = tokio::time::timeout(Duration::from_secs(120), running.task)
        .await
        .expect("the consumer stops by itself")
        .unwrap();
    assert!(
        matches!(&result, Err(Error::PoisonMessage { kind, .. }) if kind == "malformed"),
        "{result:?}"
    );
    assert_eq!(committed(&group, &topic, 1).get(&0), Some(&1));
}
