//! The sinks with their strongest guarantees, proven across SIGKILL of the real binary.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::consume::{
    ConsumeWorker, SteadyStream, TopicReader, committed, group_reaches, produce, produce_steps,
    step,
};
use pipewright_testenv::{
    TestEnv, TestSchema, create_topic, create_topic_named, eventually, unique_name,
};
use pipewright_worker::consume::sinks::kafka::H_SOURCE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_postgres_sink_writes_exactly_one_row_per_event_across_sigkill() {
    let topic = create_topic("ec-pg", 3).await;
    let group = unique_name("ec-pg");
    let schema = TestSchema::create("ec_pg").await;
    // No key: every event inserts, so only the offsets table stands between a redelivery and
    // a duplicate row.
    sqlx::query("CREATE TABLE events (key text NOT NULL, n bigint NOT NULL, event_type text)")
        .execute(&schema.pool)
        .await
        .unwrap();
    // A steady stream, not a backlog: however fast the sink, the kill lands mid-stream.
    let stream = SteadyStream::start(std::slice::from_ref(&topic), 3000, 100);
    let table = format!("{}.events", schema.name);
    let offsets = format!("{}.pipewright_offsets", schema.name);
    let sink = [
        "--sink",
        "postgres",
        "--sink-postgres-table",
        &table,
        "--sink-postgres-offsets-table",
        &offsets,
    ];
    let env = [(
        "PIPEWRIGHT_DATABASE_URL",
        TestEnv::get().database_url.as_str(),
    )];
    // Static membership: the restarted worker takes its partitions back at once.
    let args = [
        "--concurrency",
        "16",
        "--on-unknown-type",
        "fail",
        "--group-instance-id",
        "worker-0",
    ];
    let rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
            .fetch_one(&schema.pool)
            .await
            .unwrap()
    };

    let mut first = ConsumeWorker::start_with(&topic, &group, &sink, &args, &env);
    eventually(
        "some rows are written",
        Duration::from_secs(120),
        || async { (rows().await >= 1000).then_some(()) },
    )
    .await;
    first.sigkill();
    let total = stream.stop().await as i64;
    let at_kill = rows().await;
    let committed_at_kill: i64 = committed(&group, &topic, 3).values().sum();
    assert!(at_kill < total, "the kill came too late to be mid-stream");
    eprintln!(
        "rows at kill: {at_kill}, committed offsets: {committed_at_kill}: {} records to be \
         replayed as no-ops",
        at_kill - committed_at_kill
    );

    let second = ConsumeWorker::start_with(&topic, &group, &sink, &args, &env);
    eventually(
        "every event has a row",
        Duration::from_secs(180),
        || async { (rows().await >= total).then_some(()) },
    )
    .await;
    // Let the second worker commit and settle, then count again.
    eventually("everything committed", Duration::from_secs(60), || async {
        let c: i64 = committed(&group, &topic, 3).values().sum();
        (c == total).then_some(())
    })
    .await;
    let (count, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT n) FROM events")
            .fetch_one(&schema.pool)
            .await
            .unwrap();
    assert_eq!(
        (count, distinct),
        (total, total),
        "exactly one row per event"
    );
    drop(second);
    schema.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_transactional_kafka_sink_is_exactly_once_for_read_committed_readers_across_sigkill()
 {
    let topic = create_topic("ec-tx-in", 3).await;
    let out = create_topic("ec-tx-out", 3).await;
    let group = unique_name("ec-tx");
    let total = 6000usize;
    // Produced while the worker runs (12 batches, 150 ms apart), so the kill lands mid-stream
    // with a transaction open, however fast the worker is.
    let producing_topic = topic.clone();
    let producing = tokio::spawn(async move {
        for batch in 0..12u64 {
            let records = (batch * 500..(batch + 1) * 500)
                .map(|i| {
                    let key = format!("k{}", i % 100);
                    (Some(key.clone()), Some(step(&key, i).into_bytes()))
                })
                .collect();
            produce(&producing_topic, records).await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    let committed_reader = TopicReader::start(&out, "read_committed");
    let uncommitted_reader = TopicReader::start(&out, "read_uncommitted");
    let sink = [
        "--sink",
        "kafka",
        "--sink-kafka-topic",
        &out,
        "--sink-kafka-transactional",
        "true",
    ];
    // The same instance (pod) restarts: static membership and the same transactional.id, so
    // the restart fences the killed incarnation and aborts its open transaction.
    let args = [
        "--concurrency",
        "256",
        "--on-unknown-type",
        "fail",
        "--group-instance-id",
        "worker-0",
        "--commit-interval",
        "300ms",
    ];
    let mut first = ConsumeWorker::start_with(&topic, &group, &sink, &args, &[]);
    eventually(
        "some outputs are committed",
        Duration::from_secs(120),
        || {
            let n = committed_reader.snapshot().len();
            async move { (n >= 1000).then_some(()) }
        },
    )
    .await;
    first.sigkill();
    assert!(
        committed_reader.snapshot().len() < total,
        "the kill came too late to be mid-stream"
    );

    producing.await.unwrap();
    let mut second = ConsumeWorker::start_with(&topic, &group, &sink, &args, &[]);
    eventually(
        "every input reaches the output",
        Duration::from_secs(180),
        || {
            let distinct: std::collections::HashSet<u64> =
                committed_reader.ns().into_iter().collect();
            async move { (distinct.len() == total).then_some(()) }
        },
    )
    .await;
    group_reaches(&group, &topic, 3, total as i64).await;
    // A late duplicate (there must be none) would be in a transaction committed before the
    // worker's exit: once the reader has read every partition to its end, it has seen it.
    assert_eq!(second.sigterm_and_wait().await, 0, "a clean shutdown");
    committed_reader.caught_up().await;
    eprintln!(
        "outputs seen by read_uncommitted (aborted ones included): {}",
        uncommitted_reader.ns().len()
    );
    let seen = committed_reader.ns();
    let distinct: std::collections::HashSet<u64> = seen.iter().copied().collect();
    assert_eq!(
        (seen.len(), distinct.len()),
        (total, total),
        "read_committed sees each input exactly once; log:\n{}",
        second.log_text()
    );
}

/// A transactional sink's outputs are settled by the transaction's commit: an output that is
/// never acknowledged (here: its output topic does not exist yet) fails the commit within its
/// timeout, and the worker aborts the open transaction and exits non-zero rather than wait
/// until the broker's `transaction.timeout.ms` aborts it. Nothing was committed, to the group
/// or the output; once the topic exists, the restart replays and read_committed sees each
/// input exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_transactional_kafka_sink_aborts_and_exits_when_an_output_is_never_acknowledged_then_replays_exactly_once()
 {
    let topic = create_topic("ec-txq-in", 3).await;
    let out = unique_name("ec-txq-out");
    let group = unique_name("ec-txq");
    let total = 300u64;
    produce_steps(&topic, total, 30).await;
    let sink = [
        "--sink",
        "kafka",
        "--sink-kafka-topic",
        &out,
        "--sink-kafka-transactional",
        "true",
    ];
    let args = [
        "--on-unknown-type",
        "fail",
        "--group-instance-id",
        "worker-0",
        "--commit-interval",
        "300ms",
        "--drain-timeout",
        "3s",
        "--retry-max-attempts",
        "100",
        "--retry-backoff-max",
        "1s",
    ];

    let mut first = ConsumeWorker::start_with(&topic, &group, &sink, &args, &[]);
    let code = first.wait_exit(Duration::from_secs(90)).await;
    let log = first.log_text();
    assert_ne!(code, 0, "the worker stops with an error; log:\n{log}");
    assert!(
        log.contains("transaction commit failed; aborting it and stopping"),
        "it stopped at the transaction's commit (not another error); log:\n{log}"
    );
    assert!(
        committed(&group, &topic, 3).is_empty(),
        "no offset was committed outside a transaction"
    );

    create_topic_named(&out, 3).await;
    let reader = TopicReader::start(&out, "read_committed");
    let mut second = ConsumeWorker::start_with(&topic, &group, &sink, &args, &[]);
    group_reaches(&group, &topic, 3, total as i64).await;
    assert_eq!(second.sigterm_and_wait().await, 0, "a clean shutdown");
    reader.caught_up().await;
    let mut seen = reader.ns();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..total).collect::<Vec<_>>(),
        "read_committed sees each input exactly once; log:\n{}",
        second.log_text()
    );
}

/// The non-transactional Kafka sink hands each output to its producer and goes on; offsets
/// are committed only once every output below them is acknowledged. Killed mid-stream with
/// outputs in flight: every input below the committed offsets is in the output topic (its
/// `pipewright.source` header), and the restart brings every input there at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_kafka_sink_is_at_least_once_across_sigkill_commits_only_acknowledged_outputs() {
    let topic = create_topic("ec-ks-in", 3).await;
    let out = create_topic("ec-ks-out", 3).await;
    let group = unique_name("ec-ks");
    let stream = SteadyStream::start(std::slice::from_ref(&topic), 4000, 100);
    let reader = TopicReader::start(&out, "read_uncommitted");
    let sink = ["--sink", "kafka", "--sink-kafka-topic", &out];
    let args = [
        "--concurrency",
        "256",
        "--on-unknown-type",
        "fail",
        "--group-instance-id",
        "worker-0",
        "--commit-interval",
        "200ms",
        // Outputs wait 1 s in the producer before they are sent: every commit has outputs
        // of the records below it unacknowledged, and must wait for them.
        "--kafka-config",
        "linger.ms=1000",
    ];
    let sources = |reader: &TopicReader| -> HashSet<String> {
        reader
            .snapshot()
            .into_iter()
            .filter_map(|r| r.headers.get(H_SOURCE).cloned())
            .collect()
    };

    let mut first = ConsumeWorker::start_with(&topic, &group, &sink, &args, &[]);
    eventually(
        "some offsets are committed",
        Duration::from_secs(120),
        || async {
            let c: i64 = committed(&group, &topic, 3).values().sum();
            (c >= 2000).then_some(())
        },
    )
    .await;
    first.sigkill();
    let total = stream.stop().await;
    let at_kill = committed(&group, &topic, 3);
    reader.caught_up().await;
    let seen = sources(&reader);
    for (partition, end) in &at_kill {
        let missing: Vec<i64> = (0..*end)
            .filter(|o| !seen.contains(&format!("{topic}/{partition}/{o}")))
            .collect();
        assert!(
            missing.is_empty(),
            "partition {partition}: committed up to {end}, but {} of the records below are \
             not in the output (first: {:?})",
            missing.len(),
            missing.first()
        );
    }
    assert!(
        at_kill.values().sum::<i64>() < total as i64,
        "the kill came too late to be mid-stream"
    );
    // Per-key order: deliveries return at hand-off, 256 at a time, and the producer keeps a
    // key's outputs in order (one output partition per key). Before any redelivery, each
    // key's outputs are in increasing n.
    let mut last: HashMap<String, u64> = HashMap::new();
    for r in reader.snapshot() {
        let (Some(key), Some(value)) = (r.key, r.value) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_slice(&value).unwrap();
        let n = v["n"].as_u64().unwrap();
        if let Some(before) = last.insert(key.clone(), n) {
            assert!(before < n, "key {key}: {n} after {before} in the output");
        }
    }

    let mut second = ConsumeWorker::start_with(&topic, &group, &sink, &args, &[]);
    group_reaches(&group, &topic, 3, total as i64).await;
    assert_eq!(second.sigterm_and_wait().await, 0, "a clean shutdown");
    reader.caught_up().await;
    let ns: HashSet<u64> = reader.ns().into_iter().collect();
    assert_eq!(ns.len() as u64, total, "every input reached the output");
}

/// An output the target never acknowledges (its topic does not exist, so librdkafka fails it
/// once `message.timeout.ms` passes) stops the worker with an error and nothing committed:
/// the sink returned before the acknowledgement, so the commit is what waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_kafka_sink_stops_uncommitted_when_an_output_is_never_acknowledged() {
    let topic = create_topic("ec-ksf-in", 1).await;
    let out = unique_name("ec-ksf-missing");
    let group = unique_name("ec-ksf");
    produce_steps(&topic, 50, 5).await;
    let sink = ["--sink", "kafka", "--sink-kafka-topic", &out];
    let args = ["--on-unknown-type", "fail", "--commit-interval", "200ms"];
    let mut worker = ConsumeWorker::start_with(&topic, &group, &sink, &args, &[]);
    let code = worker.wait_exit(Duration::from_secs(120)).await;
    let log = worker.log_text();
    assert_ne!(code, 0, "the worker stops with an error; log:\n{log}");
    assert!(
        log.contains("an output was not acknowledged"),
        "it stopped on the unacknowledged output; log:\n{log}"
    );
    assert!(
        committed(&group, &topic, 1).is_empty(),
        "nothing was committed past an output that never arrived"
    );
}

/// The PostgreSQL sink writes what is queued in one transaction. Upserts of one key (the
/// Kafka key is the upsert key) land in the key's order: every row ends at its key's last
/// event. A row the table refuses (a CHECK violation) fails its batch's transaction; the batch
/// is written again record by record, so only that record is dead-lettered, with the
/// SQLSTATE in its headers, and every other event is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_postgres_sink_batches_keep_upserts_in_key_order_and_dead_letter_only_the_bad_row()
{
    const BAD: u64 = 777;
    let topic = create_topic("ec-pgb", 3).await;
    let dlq = create_topic("ec-pgb-dlq", 1).await;
    let group = unique_name("ec-pgb");
    let schema = TestSchema::create("ec_pgb").await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE accounts (key text PRIMARY KEY, n bigint NOT NULL CHECK (n <> {BAD}), \
         event_type text)"
    )))
    .execute(&schema.pool)
    .await
    .unwrap();
    let (total, keys) = (5000u64, 40u64);
    produce_steps(&topic, total, keys).await;
    let dead = TopicReader::start(&dlq, "read_committed");
    let table = format!("{}.accounts", schema.name);
    let offsets = format!("{}.pipewright_offsets", schema.name);
    let sink = [
        "--sink",
        "postgres",
        "--sink-postgres-table",
        &table,
        "--sink-postgres-offsets-table",
        &offsets,
        "--sink-postgres-upsert-key",
        "key",
    ];
    let env = [(
        "PIPEWRIGHT_DATABASE_URL",
        TestEnv::get().database_url.as_str(),
    )];
    let args = [
        "--concurrency",
        "256",
        "--on-unknown-type",
        "fail",
        "--dead-letter-topic",
        &dlq,
    ];
    let mut worker = ConsumeWorker::start_with(&topic, &group, &sink, &args, &env);
    eventually("everything committed", Duration::from_secs(120), || async {
        let c: i64 = committed(&group, &topic, 3).values().sum();
        (c == total as i64).then_some(())
    })
    .await;
    assert_eq!(worker.sigterm_and_wait().await, 0, "a clean shutdown");

    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT key, n FROM accounts ORDER BY key")
        .fetch_all(&schema.pool)
        .await
        .unwrap();
    let expected: Vec<(String, i64)> = {
        let mut last: Vec<(String, i64)> = (0..keys)
            .map(|k| {
                let n = (0..total).rev().find(|n| n % keys == k).unwrap();
                (format!("k{k}"), n as i64)
            })
            .collect();
        last.sort();
        last
    };
    assert_eq!(rows, expected, "each key's row holds its last event");
    dead.caught_up().await;
    let dead = dead.snapshot();
    assert_eq!(dead.len(), 1, "only the refused record is dead-lettered");
    let v: serde_json::Value = serde_json::from_slice(dead[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(v["n"], BAD, "the dead letter is the refused event");
    assert_eq!(
        dead[0]
            .headers
            .get("pipewright.error.kind")
            .map(String::as_str),
        Some("postgres_23514"),
        "headers: {:?}",
        dead[0].headers
    );
    schema.drop().await;
}
