//! The outbox poller against the real PostgreSQL and Kafka of the test environment, in-process
//! (the process-level fault tests are in `outbox_faults.rs`).

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    OutboxFixture, Recorder, assert_per_key_order_allowing_redelivery, connect_options, placed,
};
use pipewright_testenv::{TestEnv, eventually};
use pipewright_worker::Health;
use pipewright_worker::outbox::{self, Destination, OutboxMetrics, Poller, PollerConfig, Table};
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WRITERS: u64 = 16;
const TRANSACTIONS_PER_WRITER: u64 = 125;
const ROWS_PER_TRANSACTION: u64 = 5;
const AGGREGATES: u64 = 64;

struct RunningPoller {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), pipewright_worker::Error>>,
    metrics: OutboxMetrics,
}

impl RunningPoller {
    fn start(config: PollerConfig) -> RunningPoller {
        let mut registry = Registry::default();
        let metrics = OutboxMetrics::register(&mut registry);
        let poller = Poller::new(
            config,
            connect_options(),
            metrics.clone(),
            Health::default(),
        )
        .expect("valid poller config");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(poller.run(shutdown.clone()));
        RunningPoller {
            shutdown,
            task,
            metrics,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("poller task")
            .expect("poller ends cleanly");
    }
}

fn config(fixture: &OutboxFixture) -> PollerConfig {
    let mut config = PollerConfig::new(
        Table::parse(&fixture.table()).unwrap(),
        Destination::Topic(fixture.topic.clone()),
        &TestEnv::get().kafka_bootstrap_servers,
    );
    config.poll_interval = Duration::from_millis(200);
    config
}

/// A small deterministic generator (no shared RNG across tasks needed).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_publishes_every_committed_row_in_seq_order_despite_out_of_order_commits() {
    let fx = OutboxFixture::new("obx_order", 4).await;
    sqlx::query("CREATE TABLE business (id bigserial PRIMARY KEY, note text)")
        .execute(&fx.schema.pool)
        .await
        .unwrap();
    let recorder = Recorder::start(&fx.topic);
    let mut cfg = config(&fx);
    cfg.batch_size = 500;
    cfg.max_in_flight = 2000;
    let poller = RunningPoller::start(cfg);
    let pool = fx.writer_pool(20).await;

    // Phase 1, the interleaving a per-row "txid < xmin" test gets wrong: transaction EARLY
    // takes its xid first (a business write), HELD then takes a smaller seq and stays open,
    // EARLY takes a larger seq and commits. EARLY's row must wait for HELD's.
    // (A writing transaction open while the poller takes a fence delays the rows up to that
    // fence, so the first row is published before the scenario starts.)
    let mut before = pool.begin().await.unwrap();
    let before_id = outbox::enqueue(&mut before, &placed("held", 0))
        .await
        .unwrap();
    before.commit().await.unwrap();
    eventually(
        "a row committed with no other transaction open is published",
        Duration::from_secs(120),
        || async { recorder.ids().contains(&before_id).then_some(()) },
    )
    .await;
    let mut early = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO business (note) VALUES ('early')")
        .execute(&mut *early)
        .await
        .unwrap();
    let mut held = pool.begin().await.unwrap();
    let held_id = outbox::enqueue(&mut held, &placed("held", 1))
        .await
        .unwrap();
    let early_id = outbox::enqueue(&mut early, &placed("held", 2))
        .await
        .unwrap();
    let stamp = "SELECT seq, txid::text::int8 FROM outbox WHERE id = $1";
    let (held_seq, held_xid): (i64, i64) = sqlx::query_as(stamp)
        .bind(held_id)
        .fetch_one(&mut *held)
        .await
        .unwrap();
    let (early_seq, early_xid): (i64, i64) = sqlx::query_as(stamp)
        .bind(early_id)
        .fetch_one(&mut *early)
        .await
        .unwrap();
    assert!(
        early_xid < held_xid && early_seq > held_seq,
        "the scenario needs an older xid with a newer seq: early ({early_xid}, {early_seq}), held ({held_xid}, {held_seq})"
    );
    early.commit().await.unwrap();

    // Give the poller many poll intervals: EARLY's committed row must still wait, because
    // HELD (open, smaller seq) may still commit.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !recorder.ids().contains(&early_id),
        "a row was published while an open transaction held a smaller seq"
    );
    held.commit().await.unwrap();
    eventually(
        "both rows are published once HELD commits",
        Duration::from_secs(60),
        || async {
            let ids = recorder.ids();
            (ids.contains(&held_id) && ids.contains(&early_id)).then_some(())
        },
    )
    .await;
    let held_order: Vec<Uuid> = recorder.by_key()["held"].iter().map(|r| r.id).collect();
    assert_eq!(held_order, vec![before_id, held_id, early_id]);

    // Phase 2: 10k rows from concurrent transactions; some roll back, some write business
    // rows first (xid early), all commit after random short delays, so commit order differs
    // from seq order throughout.
    let committed = Arc::new(Mutex::new(HashSet::new()));
    let rolled_back = Arc::new(Mutex::new(HashSet::new()));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let pool = pool.clone();
        let committed = committed.clone();
        let rolled_back = rolled_back.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = Lcg(w + 1);
            for t in 0..TRANSACTIONS_PER_WRITER {
                let mut tx = pool.begin().await.unwrap();
                if rng.next(2) == 0 {
                    sqlx::query("INSERT INTO business (note) VALUES ('w')")
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
                let mut ids = Vec::new();
                for r in 0..ROWS_PER_TRANSACTION {
                    let agg = format!("agg-{}", rng.next(AGGREGATES));
                    let n = (w * TRANSACTIONS_PER_WRITER + t) * ROWS_PER_TRANSACTION + r;
                    ids.push(outbox::enqueue(&mut tx, &placed(&agg, n)).await.unwrap());
                }
                tokio::time::sleep(Duration::from_millis(rng.next(4))).await;
                if rng.next(10) == 0 {
                    tx.rollback().await.unwrap();
                    rolled_back.lock().unwrap().extend(ids);
                } else {
                    tx.commit().await.unwrap();
                    committed.lock().unwrap().extend(ids);
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let committed = committed.lock().unwrap().clone();
    let rolled_back = rolled_back.lock().unwrap().clone();
    assert_eq!(
        committed.len() + rolled_back.len(),
        (WRITERS * TRANSACTIONS_PER_WRITER * ROWS_PER_TRANSACTION) as usize
    );
    assert!(!rolled_back.is_empty());

    eventually(
        "every committed row reaches Kafka",
        Duration::from_secs(300),
        || async { recorder.ids().is_superset(&committed).then_some(()) },
    )
    .await;
    eventually(
        "the outbox table is empty",
        Duration::from_secs(60),
        || async { (fx.pending().await == 0).then_some(()) },
    )
    .await;
    // Anything wrongly published would arrive with the rest; give stragglers a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let received = recorder.snapshot();
    let ids = recorder.ids();
    assert_eq!(
        received.len(),
        ids.len(),
        "no duplicates inside one producer session"
    );
    assert!(
        ids.is_disjoint(&rolled_back),
        "rows of rolled-back transactions were published"
    );
    let mut expected = committed.clone();
    expected.extend([before_id, held_id, early_id]);
    assert_eq!(ids, expected, "exactly the committed rows are published");
    assert_eq!(assert_per_key_order_allowing_redelivery(&recorder), 0);
    assert_eq!(poller.metrics.published.get(), expected.len() as u64);
    poller.stop().await;
    fx.schema.drop().await;
}

/// An event whose aggregate type is chosen at run time (it selects the topic of a template).
#[derive(Debug, serde::Serialize)]
#[serde(tag = "event_type")]
enum Routed {
    Routed {
        #[serde(skip)]
        aggregate_type: String,
        id: String,
    },
}

impl outbox::OutboxEvent for Routed {
    fn aggregate_type(&self) -> &str {
        let Routed::Routed { aggregate_type, .. } = self;
        aggregate_type
    }
    fn aggregate_id(&self) -> String {
        let Routed::Routed { id, .. } = self;
        id.clone()
    }
}

fn routed(aggregate_type: &str, id: &str) -> Routed {
    Routed::Routed {
        aggregate_type: aggregate_type.to_string(),
        id: id.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_with_a_reserved_word_table_holds_back_rows_behind_an_unpublishable_one() {
    let fx = OutboxFixture::new("obx_select", 1).await;
    // A table named like a reserved word only works if every statement quotes it.
    let table = Table::parse(&format!("{}.select", fx.schema.name)).unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(outbox::schema_sql(&table).unwrap()))
        .execute(&fx.schema.pool)
        .await
        .unwrap();
    let recorder = Recorder::start(&fx.topic);
    let mut cfg = config(&fx);
    cfg.table = table.clone();
    cfg.destination = Destination::Template("{aggregatetype}".into());
    cfg.cleanup = outbox::Cleanup::MarkPublished {
        retention: Some(Duration::from_secs(1)),
    };
    let poller = RunningPoller::start(cfg);

    let mut tx = fx.schema.pool.begin().await.unwrap();
    let good = outbox::enqueue_into(&mut tx, &table, &routed(&fx.topic, "a1"))
        .await
        .unwrap();
    let bad = outbox::enqueue_into(&mut tx, &table, &routed("not/a topic", "a1"))
        .await
        .unwrap();
    let after = outbox::enqueue_into(&mut tx, &table, &routed(&fx.topic, "a1"))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    eventually(
        "the row before the bad one is published",
        Duration::from_secs(60),
        || async { recorder.ids().contains(&good).then_some(()) },
    )
    .await;
    eventually(
        "the bad row is reported",
        Duration::from_secs(60),
        || async { (poller.metrics.errors.get() > 0).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !recorder.ids().contains(&after),
        "a row behind an unpublishable one of its aggregate was published"
    );

    // The operator removes the bad row: publishing resumes where it stopped.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {} WHERE id = $1",
        table.quoted()
    )))
    .bind(bad)
    .execute(&fx.schema.pool)
    .await
    .unwrap();
    eventually(
        "the row behind it is published",
        Duration::from_secs(90),
        || async { recorder.ids().contains(&after).then_some(()) },
    )
    .await;
    // markPublished keeps rows for the retention (1 s here), then deletes them.
    eventually(
        "published rows are deleted after the retention",
        Duration::from_secs(60),
        || async {
            let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {}",
                table.quoted()
            )))
            .fetch_one(&fx.schema.pool)
            .await
            .unwrap();
            (left == 0).then_some(())
        },
    )
    .await;
    assert_eq!(
        assert_per_key_order_allowing_redelivery(&recorder),
        recorder.snapshot().len() - 2
    );
    poller.stop().await;
    fx.schema.drop().await;
}
