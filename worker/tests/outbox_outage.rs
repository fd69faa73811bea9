//! Kafka unreachable in the middle of a run: the broker process is frozen (SIGSTOP) for 10 s
//! while the poller is publishing, so connections stay open and nothing answers, as in a
//! network partition. In a test binary of its own because it stops the shared broker: cargo
//! runs test binaries one at a time.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{OutboxFixture, Recorder, assert_per_key_order_allowing_redelivery, http_get, scrape};
use pipewright_testenv::{Frozen, TestEnv, eventually, unique_name};

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Worker {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Worker {
    fn start(table: &str, topic: &str) -> Worker {
        let addr = free_addr();
        let log = std::env::temp_dir().join(format!("{}.log", unique_name("pw-outage")));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pipewright-worker"))
            .args(["--listen", &addr.to_string(), "outbox", "--table", table])
            .args(["--topic", topic])
            .args([
                "--kafka-bootstrap-servers",
                &TestEnv::get().kafka_bootstrap_servers,
            ])
            .args([
                "--poll-interval",
                "200ms",
                "--max-in-flight",
                "100",
                "--batch-size",
                "50",
            ])
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
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn outbox_rows_stay_pending_while_the_broker_is_frozen_mid_run_then_drain_in_order() {
    let fx = OutboxFixture::new("obx_outage", 2).await;
    let recorder = Recorder::start(&fx.topic);
    let mut worker = Worker::start(&fx.table(), &fx.topic);

    // Running normally: the first rows are published and the table empties.
    let before = fx.enqueue_many(200, 10).await;
    fx.published_and_drained(&recorder, &before, "the first rows are published")
        .await;
    assert_eq!(
        http_get(worker.addr, "/readyz").await.map(|r| r.0),
        Some(200)
    );

    // Kafka stops answering mid-run.
    let frozen = Frozen::service("kafka");
    let during = fx.enqueue_many(300, 10).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker exited while Kafka was frozen:\n{}",
        worker.log()
    );
    assert_eq!(
        http_get(worker.addr, "/healthz").await.map(|r| r.0),
        Some(200)
    );
    assert_eq!(
        fx.pending().await,
        300,
        "no row is deleted without Kafka's acknowledgement"
    );

    // Kafka is back: everything drains, in order per aggregate.
    drop(frozen);
    fx.published_and_drained(
        &recorder,
        &during,
        "the rows written during the outage drain",
    )
    .await;
    assert_eq!(assert_per_key_order_allowing_redelivery(&recorder), 0);
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker is still the same process (no crash loop):\n{}",
        worker.log()
    );
    // The gauges follow the table.
    eventually(
        "pending gauges at zero",
        Duration::from_secs(30),
        || async {
            let pending = scrape(worker.addr, "pipewright_outbox_pending").await?;
            let age = scrape(worker.addr, "pipewright_outbox_oldest_pending_age_seconds").await?;
            (pending == 0.0 && age == 0.0).then_some(())
        },
    )
    .await;
    assert!(scrape(worker.addr, "pipewright_outbox_published_total").await >= Some(500.0));
    drop(worker);
    fx.schema.drop().await;
}
