//! Process-level faults of `pipewright-worker consume`: the real binary with the log sink,
//! SIGKILLed or SIGTERMed mid-stream and restarted, against the test broker.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::consume::{
    ConsumeWorker, SteadyStream, TopicReader, committed, parse_events, produce, step,
};
use common::http_get;
use pipewright_testenv::{create_topic, eventually, unique_name};

const CONCURRENCY: usize = 8;
/// `--max-uncommitted-per-partition` of the SIGKILL test: what a crash may deliver again, per
/// partition (the worst case is proven in consume_sigkill_window.rs).
const WINDOW: usize = 300;

fn n_set(events: &[common::consume::Logged]) -> HashSet<u64> {
    events.iter().filter_map(|e| e.n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_at_least_once_survives_sigkill_with_duplicates_bounded_by_the_window() {
    let topic = create_topic("ec-kill", 3).await;
    let group = unique_name("ec-kill");
    // A steady stream, not a backlog: however fast the worker, the kill lands mid-stream.
    let stream = SteadyStream::start(std::slice::from_ref(&topic), 4000, 200);
    let concurrency = CONCURRENCY.to_string();
    let window = WINDOW.to_string();
    let args = [
        "--concurrency",
        concurrency.as_str(),
        "--max-uncommitted-per-partition",
        window.as_str(),
        "--on-unknown-type",
        "fail",
    ];

    let mut first = ConsumeWorker::start(&topic, &group, &args);
    eventually(
        "the first worker delivers some events",
        Duration::from_secs(120),
        || {
            let n = first.delivered().len();
            async move { (n >= 2000).then_some(()) }
        },
    )
    .await;
    first.sigkill();
    let before = first.delivered();
    let total = stream.stop().await;
    assert!(
        (before.len() as u64) < total,
        "the kill came too late to be mid-stream"
    );

    let second = ConsumeWorker::start(&topic, &group, &args);
    eventually("every event is delivered", Duration::from_secs(180), || {
        let mut all = n_set(&before);
        all.extend(n_set(&second.delivered()));
        async move { (all.len() as u64 == total).then_some(()) }
    })
    .await;
    // The first worker's deliveries that the second one delivered again.
    let after = second.delivered();
    let first_set = n_set(&before);
    let redelivered = n_set(&after).intersection(&first_set).count();
    eprintln!("{redelivered} events delivered twice (bound: {WINDOW} per partition, 3 partitions)");
    assert!(
        redelivered <= 3 * WINDOW,
        "{redelivered} events delivered twice, more than the window of {WINDOW} per partition"
    );
    // Within one process nothing is delivered twice.
    assert_eq!(
        n_set(&after).len(),
        after.len(),
        "duplicates within one run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_graceful_sigterm_commits_everything_processed_and_a_restart_redelivers_nothing() {
    let topic = create_topic("ec-term", 2).await;
    let group = unique_name("ec-term");
    // A steady stream, not a backlog: however fast the worker, SIGTERM lands mid-stream.
    let stream = SteadyStream::start(std::slice::from_ref(&topic), 4000, 50);
    let args = ["--concurrency", "16", "--on-unknown-type", "fail"];

    let mut first = ConsumeWorker::start(&topic, &group, &args);
    eventually(
        "/readyz once the group is joined",
        Duration::from_secs(60),
        || async {
            (http_get(first.addr, "/readyz").await.map(|r| r.0) == Some(200)).then_some(())
        },
    )
    .await;
    eventually(
        "some events are delivered",
        Duration::from_secs(120),
        || {
            let n = first.delivered().len();
            async move { (n >= 1000).then_some(()) }
        },
    )
    .await;
    let code = first.sigterm_and_wait().await;
    assert_eq!(code, 0, "graceful exit; log:\n{}", first.log_text());
    let before = first.delivered();
    let total = stream.stop().await;
    assert!((before.len() as u64) < total, "SIGTERM came too late");
    assert_eq!(
        n_set(&before).len(),
        before.len(),
        "duplicates within one run"
    );

    // Everything delivered is committed: per partition, the committed offset is one past the
    // highest delivered offset (delivery is contiguous after a drain).
    let offsets = committed(&group, &topic, 2);
    let mut highest: HashMap<i64, i64> = HashMap::new();
    for e in &before {
        let h = highest.entry(e.partition).or_insert(-1);
        *h = (*h).max(e.offset);
    }
    for (partition, high) in &highest {
        assert_eq!(
            offsets.get(&(*partition as i32)).copied(),
            Some(high + 1),
            "partition {partition}: committed offset is not one past the last delivered"
        );
    }

    let second = ConsumeWorker::start(&topic, &group, &args);
    eventually("the rest is delivered", Duration::from_secs(180), || {
        let mut all = n_set(&before);
        all.extend(n_set(&second.delivered()));
        async move { (all.len() as u64 == total).then_some(()) }
    })
    .await;
    let again = n_set(&second.delivered())
        .intersection(&n_set(&before))
        .count();
    assert_eq!(again, 0, "events delivered again after a graceful shutdown");
}

#[tokio::test]
async fn consume_refuses_invalid_configuration_with_exit_code_2() {
    // Each run reports to a termination log of its own (the operator reads it from the pod).
    let run_reporting = |args: &[&str]| {
        let report = std::env::temp_dir().join(unique_name("pw-config-rejected"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipewright-worker"))
            .args([
                "--listen",
                &common::consume::free_addr().to_string(),
                "consume",
            ])
            .args(["--kafka-bootstrap-servers", "127.0.0.1:1", "--sink", "log"])
            .args(args)
            .env("PIPEWRIGHT_TERMINATION_LOG", &report)
            .output()
            .unwrap();
        let message = std::fs::read_to_string(&report).unwrap_or_default();
        let _ = std::fs::remove_file(&report);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            message,
        )
    };
    let run = |args: &[&str]| {
        let (code, err, _) = run_reporting(args);
        (code, err)
    };
    // Dead-letter policy (the default) without a dead-letter topic ...
    let (code, err, message) = run_reporting(&["--topics", "a", "--group-id", "g"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("deadLetterTopic"), "{err}");
    // ... reported to Kubernetes as well (the operator sets Degraded/WorkerConfigRejected).
    assert!(
        message.starts_with("WorkerConfigRejected: ") && message.contains("deadLetterTopic"),
        "{message}"
    );
    let (code, err) = run(&[
        "--topics",
        "a",
        "--group-id",
        "g",
        "--on-unknown-type",
        "skip",
        "--concurrency",
        "0",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("concurrency"), "{err}");
    let (code, err) = run(&[
        "--topics",
        "a",
        "--group-id",
        "g",
        "--dead-letter-topic",
        "a",
    ]);
    assert_eq!(code, Some(2), "{err}");
    // A flag clap rejects also exits 2.
    let (code, _) = run(&["--topics", "a", "--group-id", "g", "--ordering", "random"]);
    assert_eq!(code, Some(2));
    let _ = parse_events("");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_generic_binary_dead_letters_undeclared_types_and_schema_failures() {
    let topic = create_topic("ec-schema", 1).await;
    let dlq = create_topic("ec-schema-dlq", 1).await;
    let group = unique_name("ec-schema");
    // As the operator renders them: one schema inline, one from a (mounted ConfigMap) file.
    let schema_file = std::env::temp_dir().join(format!("{}.json", unique_name("pw-schema")));
    std::fs::write(
        &schema_file,
        r#"{"type": "object", "required": ["n"],
            "properties": {"n": {"type": "integer", "minimum": 0}}}"#,
    )
    .unwrap();
    let schemas = serde_json::json!({
        "step": {"file": schema_file.display().to_string()},
        "noop": {"inline": {"type": "object"}},
    })
    .to_string();
    let records = vec![
        (Some("a".to_string()), Some(step("a", 0).into_bytes())),
        (
            Some("a".to_string()),
            Some(br#"{"event_type":"step","key":"a","n":-1}"#.to_vec()),
        ),
        (
            Some("a".to_string()),
            Some(br#"{"event_type":"other","n":2}"#.to_vec()),
        ),
        (Some("a".to_string()), Some(step("a", 3).into_bytes())),
    ];
    produce(&topic, records).await;
    let dead = TopicReader::start(&dlq, "read_committed");
    let worker = ConsumeWorker::start(
        &topic,
        &group,
        &["--dead-letter-topic", &dlq, "--event-schemas", &schemas],
    );
    let letters = eventually("two dead letters", Duration::from_secs(120), || {
        let s = dead.snapshot();
        async move { (s.len() >= 2).then_some(s) }
    })
    .await;
    eventually(
        "the valid events are delivered",
        Duration::from_secs(60),
        || {
            let n = worker.delivered().len();
            async move { (n >= 2).then_some(()) }
        },
    )
    .await;
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
        vec![
            ("1".to_string(), "schema_invalid".to_string()),
            ("2".to_string(), "unknown_type".to_string())
        ]
    );
    let ns: Vec<Option<u64>> = worker.delivered().iter().map(|e| e.n).collect();
    assert_eq!(ns, vec![Some(0), Some(3)]);
    std::fs::remove_file(&schema_file).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_a_poison_record_without_a_dead_letter_topic_stops_uncommitted_and_is_reported_to_kubernetes()
 {
    let topic = create_topic("ec-poison-exit", 1).await;
    let group = unique_name("ec-poison-exit");
    produce(
        &topic,
        vec![
            (Some("a".into()), Some(step("a", 0).into_bytes())),
            (Some("a".into()), Some(b"{not json".to_vec())),
            (Some("a".into()), Some(step("a", 2).into_bytes())),
        ],
    )
    .await;
    let report = std::env::temp_dir().join(unique_name("pw-termination-log"));
    let report_path = report.display().to_string();
    let mut worker = ConsumeWorker::start_with(
        &topic,
        &group,
        &["--sink", "log"],
        &["--on-unknown-type", "fail", "--commit-interval", "100ms"],
        &[("PIPEWRIGHT_TERMINATION_LOG", report_path.as_str())],
    );
    let code = worker.wait_exit(Duration::from_secs(90)).await;
    assert_eq!(code, 1, "{}", worker.log_text());

    let message = std::fs::read_to_string(&report).expect("a termination message");
    assert!(
        message.starts_with(&format!("PoisonMessage: {topic}/0/1 ")),
        "{message}"
    );
    assert!(
        !message.contains("{not json"),
        "no payload in the report: {message}"
    );
    // The record before it is delivered and committed; the poison record is not.
    let delivered: Vec<u64> = worker.delivered().iter().filter_map(|e| e.n).collect();
    assert_eq!(delivered, vec![0]);
    assert_eq!(committed(&group, &topic, 1).get(&0).copied(), Some(1));
    std::fs::remove_file(report).unwrap();
}
