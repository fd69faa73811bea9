//! Process-level faults: the real `pipewright-worker` binary, SIGKILLed, run twice at once,
//! started while Kafka is unreachable, and given hostile or missing tables.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    OutboxFixture, Recorder, assert_per_key_order_allowing_redelivery, http_get, placed, scrape,
};
use pipewright_testenv::{TestEnv, eventually, unique_name};
use pipewright_worker::outbox;
use uuid::Uuid;

const MAX_IN_FLIGHT: usize = 20;

/// A running `pipewright-worker outbox`, its HTTP address and its log file.
struct Worker {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Worker {
    fn start(table: &str, topic: &str, bootstrap: &str, extra: &[&str]) -> Worker {
        let addr = free_addr();
        let log = std::env::temp_dir().join(format!("{}.log", unique_name("pw-worker")));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pipewright-worker"))
            .args(["--listen", &addr.to_string(), "outbox", "--table", table])
            .args(["--topic", topic, "--kafka-bootstrap-servers", bootstrap])
            .args(["--poll-interval", "200ms", "--lock-retry-interval", "200ms"])
            .args(extra)
            .env("PIPEWRIGHT_DATABASE_URL", &TestEnv::get().database_url)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start pipewright-worker");
        Worker { child, addr, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn active(&self) -> bool {
        scrape(self.addr, "pipewright_outbox_active").await == Some(1.0)
    }

    fn sigkill(&mut self) {
        // std's Child::kill is SIGKILL on Unix: no shutdown code runs.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    async fn sigterm_and_wait(mut self) -> i32 {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let code = eventually(
            "the worker exits after SIGTERM",
            Duration::from_secs(60),
            || {
                let exited = self.child.try_wait().unwrap();
                async move { exited.map(|s| s.code().unwrap_or(-1)) }
            },
        )
        .await;
        let _ = std::fs::remove_file(&self.log);
        code
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn bootstrap() -> String {
    TestEnv::get().kafka_bootstrap_servers.clone()
}

/// Runs the binary to completion (for configurations it must refuse).
fn run_to_exit(args: &[&str], database_url: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pipewright-worker"))
        .args(["--listen", &free_addr().to_string(), "outbox"])
        .args(args)
        .env("PIPEWRIGHT_DATABASE_URL", database_url)
        .stdin(Stdio::null())
        .output()
        .expect("run pipewright-worker");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_at_least_once_survives_sigkill_mid_batch() {
    let fx = OutboxFixture::new("obx_kill", 3).await;
    let ids = fx.enqueue_many(3000, 30).await;
    let recorder = Recorder::start(&fx.topic);
    let max_in_flight = MAX_IN_FLIGHT.to_string();
    // Slow on purpose (linger) so that the kill lands mid-way.
    let slow = [
        "--batch-size",
        "10",
        "--max-in-flight",
        &max_in_flight,
        "--kafka-config",
        "linger.ms=100",
    ];
    let mut first = Worker::start(&fx.table(), &fx.topic, &bootstrap(), &slow);
    eventually(
        "some rows are published",
        Duration::from_secs(120),
        || async { (recorder.snapshot().len() >= 200).then_some(()) },
    )
    .await;
    first.sigkill();
    let pending_at_kill = fx.pending().await;
    assert!(pending_at_kill > 0, "the kill came too late to be mid-way");

    let second = Worker::start(
        &fx.table(),
        &fx.topic,
        &bootstrap(),
        &["--max-in-flight", &max_in_flight, "--batch-size", "10"],
    );
    fx.published_and_drained(&recorder, &ids, "every row is published after the restart")
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let redelivered = assert_per_key_order_allowing_redelivery(&recorder);
    assert!(
        redelivered <= MAX_IN_FLIGHT,
        "{redelivered} rows published twice; only the unacknowledged batch (at most {MAX_IN_FLIGHT}) may be"
    );
    // The duplicates are one window of consecutive rows: the ones in flight at the kill.
    let mut seen = std::collections::HashSet::new();
    let dup_seqs: Vec<i64> = recorder
        .snapshot()
        .into_iter()
        .filter(|r| !seen.insert(r.id))
        .map(|r| r.seq)
        .collect();
    if let (Some(lo), Some(hi)) = (dup_seqs.iter().min(), dup_seqs.iter().max()) {
        assert!(
            (hi - lo) < MAX_IN_FLIGHT as i64,
            "duplicates {lo}..{hi} span more than one in-flight window"
        );
    }
    println!(
        "sigkill: {} rows, {pending_at_kill} pending at the kill, {redelivered} redelivered",
        ids.len()
    );
    assert_eq!(second.sigterm_and_wait().await, 0);
    fx.schema.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_one_replica_publishes_at_a_time_and_a_standby_takes_over_when_it_is_killed() {
    let fx = OutboxFixture::new("obx_failover", 3).await;
    let recorder = Recorder::start(&fx.topic);
    let max_in_flight = MAX_IN_FLIGHT.to_string();
    let args = [
        "--batch-size",
        "10",
        "--max-in-flight",
        &max_in_flight,
        "--kafka-config",
        "linger.ms=20",
    ];
    let mut a = Some(Worker::start(&fx.table(), &fx.topic, &bootstrap(), &args));
    let mut b = Some(Worker::start(&fx.table(), &fx.topic, &bootstrap(), &args));

    // Writers keep enqueueing while the replicas run and one of them dies.
    let writing = tokio_util::sync::CancellationToken::new();
    let pool = fx.writer_pool(2).await;
    let writer = {
        let writing = writing.clone();
        tokio::spawn(async move {
            let mut ids: Vec<Uuid> = Vec::new();
            let mut n = 0u64;
            while !writing.is_cancelled() {
                let mut tx = pool.begin().await.unwrap();
                for _ in 0..20 {
                    let event = placed(&format!("agg-{}", n % 25), n);
                    ids.push(outbox::enqueue(&mut tx, &event).await.unwrap());
                    n += 1;
                }
                tx.commit().await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ids
        })
    };

    let (active, standby) = eventually(
        "exactly one replica holds the publisher lock",
        Duration::from_secs(60),
        || async {
            let wa = a.as_ref().unwrap();
            let wb = b.as_ref().unwrap();
            match (wa.active().await, wb.active().await) {
                (true, false) => Some(("a", "b")),
                (false, true) => Some(("b", "a")),
                _ => None,
            }
        },
    )
    .await;
    eventually(
        "rows are being published",
        Duration::from_secs(60),
        || async { (recorder.snapshot().len() >= 200).then_some(()) },
    )
    .await;
    // Still exactly one active, after publishing for a while.
    let (wa, wb) = (a.as_ref().unwrap(), b.as_ref().unwrap());
    assert_ne!(
        wa.active().await,
        wb.active().await,
        "exactly one replica is active"
    );

    let (mut victim, survivor) = if active == "a" {
        (a.take().unwrap(), b.take().unwrap())
    } else {
        (b.take().unwrap(), a.take().unwrap())
    };
    victim.sigkill();
    let killed_at = Instant::now();
    // Stated bound for a killed process: lockRetryInterval (200 ms here) + one connect; the
    // generous timeout only absorbs a loaded machine.
    eventually(
        "the standby takes over",
        Duration::from_secs(30),
        || async { survivor.active().await.then_some(()) },
    )
    .await;
    println!(
        "failover: replica {standby} took over {:?} after replica {active} was SIGKILLed",
        killed_at.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    writing.cancel();
    let ids = writer.await.unwrap();
    fx.published_and_drained(&recorder, &ids, "every row is published")
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let redelivered = assert_per_key_order_allowing_redelivery(&recorder);
    assert!(redelivered <= MAX_IN_FLIGHT, "{redelivered} redelivered");
    println!("failover: {} rows, {redelivered} redelivered", ids.len());
    assert_eq!(
        survivor.sigterm_and_wait().await,
        0,
        "graceful shutdown exits 0"
    );
    fx.schema.drop().await;
}

/// A TCP proxy on `listen` to `target`, one task per connection (test scaffolding).
async fn proxy(listen: SocketAddr, target: String) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

/// What this proves: the poller started while its Kafka bootstrap address refuses connections
/// keeps running (no crash, no session restarts), keeps every row pending, and publishes them
/// all once the address answers. The broker advertises its own address, so after bootstrap
/// the client talks to it directly: this is an outage at start-up, not a mid-run broker loss
/// (where librdkafka's own retries, with message.timeout.ms=0, hold the in-flight rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_stay_pending_while_kafka_is_unreachable_then_drain() {
    let fx = OutboxFixture::new("obx_nokafka", 2).await;
    let recorder = Recorder::start(&fx.topic);
    let unreachable = free_addr();
    let worker = Worker::start(&fx.table(), &fx.topic, &unreachable.to_string(), &[]);
    let ids = fx.enqueue_many(300, 10).await;

    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut worker = worker;
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker exited while Kafka was unreachable:\n{}",
        worker.log()
    );
    assert_eq!(
        http_get(worker.addr, "/healthz").await.map(|r| r.0),
        Some(200)
    );
    assert_eq!(fx.pending().await, 300, "rows stay pending");
    assert!(recorder.snapshot().is_empty());

    let relay = proxy(unreachable, bootstrap()).await;
    fx.published_and_drained(&recorder, &ids, "every row drains once Kafka is reachable")
        .await;
    assert_eq!(assert_per_key_order_allowing_redelivery(&recorder), 0);
    assert_eq!(
        scrape(worker.addr, "pipewright_outbox_errors_total").await,
        Some(0.0),
        "no publishing session failed (no crash loop)"
    );
    assert!(scrape(worker.addr, "pipewright_outbox_published_total").await >= Some(300.0));
    assert_eq!(worker.sigterm_and_wait().await, 0);
    relay.abort();
    fx.schema.drop().await;
}

#[tokio::test]
async fn outbox_refuses_hostile_table_names_with_exit_code_2_and_never_prints_the_dsn() {
    let secret_url = "postgres://app:hunter2-secret@127.0.0.1:1/app";
    for hostile in [
        "outbox; DROP TABLE users",
        "outbox\"; DROP SCHEMA public CASCADE; --",
        "Outbox",
        "a.b.c",
        "",
    ] {
        let (code, output) = run_to_exit(
            &[
                "--table",
                hostile,
                "--topic",
                "t",
                "--kafka-bootstrap-servers",
                "127.0.0.1:1",
            ],
            secret_url,
        );
        assert_eq!(code, 2, "{hostile:?}: {output}");
        assert!(
            output.contains("invalid table name"),
            "{hostile:?}: {output}"
        );
        assert!(!output.contains("hunter2"), "the DSN leaked: {output}");
    }
    // Another invalid setting: the same exit code, still no DSN in the output.
    let (code, output) = run_to_exit(
        &[
            "--table",
            "outbox",
            "--topic",
            "t",
            "--kafka-bootstrap-servers",
            "127.0.0.1:1",
            "--batch-size",
            "0",
        ],
        secret_url,
    );
    assert_eq!(code, 2, "{output}");
    assert!(output.contains("batchSize"), "{output}");
    assert!(!output.contains("hunter2"), "the DSN leaked: {output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_stops_with_a_clear_error_on_a_missing_or_unstamped_table_and_publishes_nothing() {
    let fx = OutboxFixture::new("obx_missing", 1).await;
    let recorder = Recorder::start(&fx.topic);
    let url = TestEnv::get().database_url.clone();

    let missing = format!("{}.no_such_outbox", fx.schema.name);
    let (code, output) = run_to_exit(
        &[
            "--table",
            &missing,
            "--topic",
            &fx.topic,
            "--kafka-bootstrap-servers",
            &bootstrap(),
        ],
        &url,
    );
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains(&format!("outbox table {missing} does not exist")),
        "{output}"
    );

    // A Debezium-shaped table without the stamping trigger: refused, rows left untouched.
    sqlx::query(
        "CREATE TABLE plain (id uuid PRIMARY KEY, aggregatetype text, aggregateid text, \
         type text, payload jsonb, created_at timestamptz DEFAULT now(), seq bigint, txid xid8)",
    )
    .execute(&fx.schema.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO plain (id, aggregatetype, aggregateid, type, payload, seq, txid) \
         VALUES (gen_random_uuid(), 'order', 'o1', 'OrderPlaced', '{}', 1, pg_current_xact_id())",
    )
    .execute(&fx.schema.pool)
    .await
    .unwrap();
    let plain = format!("{}.plain", fx.schema.name);
    let (code, output) = run_to_exit(
        &[
            "--table",
            &plain,
            "--topic",
            &fx.topic,
            "--kafka-bootstrap-servers",
            &bootstrap(),
        ],
        &url,
    );
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("no enabled pipewright_outbox_stamp trigger"),
        "{output}"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM plain")
        .fetch_one(&fx.schema.pool)
        .await
        .unwrap();
    assert_eq!(left, 1);

    // Every column there and the trigger too, but a bytea payload (it would go out as its
    // hex text) and a bigint txid (the fence compares xid8s): refused, naming both.
    sqlx::raw_sql(
        "CREATE SEQUENCE mistyped_seq; \
         CREATE TABLE mistyped (id uuid PRIMARY KEY, aggregatetype varchar(64), \
         aggregateid text, type text, payload bytea, created_at timestamptz DEFAULT now(), \
         seq bigint, txid bigint); \
         CREATE TRIGGER mistyped_stamp BEFORE INSERT ON mistyped \
         FOR EACH ROW EXECUTE FUNCTION pipewright_outbox_stamp('mistyped_seq')",
    )
    .execute(&fx.schema.pool)
    .await
    .unwrap();
    let mistyped = format!("{}.mistyped", fx.schema.name);
    let (code, output) = run_to_exit(
        &[
            "--table",
            &mistyped,
            "--topic",
            &fx.topic,
            "--kafka-bootstrap-servers",
            &bootstrap(),
        ],
        &url,
    );
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("payload is bytea (expected jsonb or json or text or varchar)")
            && output.contains("txid is int8 (expected xid8)"),
        "{output}"
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(recorder.snapshot().is_empty(), "nothing is published");
    fx.schema.drop().await;
}
