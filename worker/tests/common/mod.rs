//! Fixtures of the outbox integration tests: a schema with the migrated outbox table, a topic,
//! a background consumer that records what reached Kafka, and typed test events.
#![allow(dead_code)] // each test binary uses a different subset

pub mod consume;
pub mod pod;
pub mod receiver;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pipewright_testenv::{
    TestEnv, TestSchema, create_topic, eventually, kafka_config, unique_name,
};
use pipewright_worker::outbox::{self, OutboxEvent};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

/// A typed event as an application would define it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event_type")]
pub enum OrderEvent {
    OrderPlaced { order_id: String, n: u64 },
    OrderShipped { order_id: String, n: u64 },
}

impl OutboxEvent for OrderEvent {
    fn aggregate_type(&self) -> &str {
        "order"
    }
    fn aggregate_id(&self) -> String {
        match self {
            OrderEvent::OrderPlaced { order_id, .. }
            | OrderEvent::OrderShipped { order_id, .. } => order_id.clone(),
        }
    }
}

pub fn placed(order_id: &str, n: u64) -> OrderEvent {
    OrderEvent::OrderPlaced {
        order_id: order_id.to_string(),
        n,
    }
}

/// The test database's connection options (superuser; no search_path: tables are qualified).
pub fn connect_options() -> PgConnectOptions {
    TestEnv::get()
        .database_url
        .parse()
        .expect("DATABASE_URL is a PostgreSQL URL")
}

/// A schema of its own with the outbox migration applied, and a topic.
#[derive(Debug)]
pub struct OutboxFixture {
    pub schema: TestSchema,
    pub topic: String,
}

impl OutboxFixture {
    pub async fn new(prefix: &str, partitions: i32) -> OutboxFixture {
        let schema = TestSchema::create(prefix).await;
        outbox::MIGRATOR
            .run(&schema.pool)
            .await
            .expect("outbox migration");
        let topic = create_topic(&prefix.replace('_', "-"), partitions).await;
        OutboxFixture { schema, topic }
    }

    /// The outbox table, schema-qualified.
    pub fn table(&self) -> String {
        format!("{}.outbox", self.schema.name)
    }

    /// A pool of `size` connections with the schema as search_path (for writers).
    pub async fn writer_pool(&self, size: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(connect_options().options([("search_path", self.schema.name.as_str())]))
            .await
            .expect("writer pool")
    }

    /// Waits until the recorder has seen every row of `ids` and the table is empty (delete
    /// policy); `what` names the wait in the failure message.
    pub async fn published_and_drained(&self, recorder: &Recorder, ids: &[Uuid], what: &str) {
        eventually(what, Duration::from_secs(180), || async {
            let got = recorder.ids();
            ids.iter().all(|id| got.contains(id)).then_some(())
        })
        .await;
        eventually(
            "the outbox table is empty",
            Duration::from_secs(60),
            || async { (self.pending().await == 0).then_some(()) },
        )
        .await;
    }

    /// Rows still in the outbox table.
    pub async fn pending(&self) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {}",
            self.table()
        )))
        .fetch_one(&self.schema.pool)
        .await
        .unwrap()
    }

    /// Enqueues `count` events (aggregate `agg-<i % aggregates>`) in transactions of 100.
    pub async fn enqueue_many(&self, count: u64, aggregates: u64) -> Vec<Uuid> {
        let mut ids = Vec::new();
        let mut i = 0;
        while i < count {
            let mut tx = self.schema.pool.begin().await.unwrap();
            for _ in 0..100.min(count - i) {
                let event = placed(&format!("agg-{}", i % aggregates), i);
                ids.push(outbox::enqueue(&mut tx, &event).await.unwrap());
                i += 1;
            }
            tx.commit().await.unwrap();
        }
        ids
    }
}

/// One record as it reached Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub key: String,
    pub id: Uuid,
    pub seq: i64,
    pub event_type: String,
    pub partition: i32,
    pub offset: i64,
}

/// Consumes `topic` from the beginning in the background, recording every record.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub records: Arc<Mutex<Vec<Received>>>,
}

impl Recorder {
    pub fn start(topic: &str) -> Recorder {
        let consumer: StreamConsumer = kafka_config()
            .set("group.id", unique_name("obx-test"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = records.clone();
        tokio::spawn(async move {
            loop {
                let m = match consumer.recv().await {
                    Ok(m) => m,
                    Err(e) => panic!("consume: {e}"),
                };
                let header = |name: &str| {
                    m.headers()
                        .and_then(|h| {
                            h.iter()
                                .find(|x| x.key == name)
                                .and_then(|x| x.value)
                                .map(|v| String::from_utf8_lossy(v).into_owned())
                        })
                        .unwrap_or_else(|| panic!("record without a {name} header"))
                };
                let received = Received {
                    key: String::from_utf8_lossy(m.key().expect("record key")).into_owned(),
                    id: header("id").parse().expect("id header is a uuid"),
                    seq: header("seq").parse().expect("seq header is a number"),
                    event_type: header("type"),
                    partition: m.partition(),
                    offset: m.offset(),
                };
                sink.lock().unwrap().push(received);
            }
        });
        Recorder { records }
    }

    pub fn snapshot(&self) -> Vec<Received> {
        self.records.lock().unwrap().clone()
    }

    pub fn ids(&self) -> HashSet<Uuid> {
        self.snapshot().iter().map(|r| r.id).collect()
    }

    /// Records per key, in the order they arrived (offset order within a partition).
    pub fn by_key(&self) -> HashMap<String, Vec<Received>> {
        let mut by_key: HashMap<String, Vec<Received>> = HashMap::new();
        let mut all = self.snapshot();
        all.sort_by_key(|r| (r.partition, r.offset));
        for r in all {
            by_key.entry(r.key.clone()).or_default().push(r);
        }
        by_key
    }
}

/// Asserts that within every key the first deliveries come in strictly increasing seq order,
/// and returns the number of redeliveries (records whose id was seen before).
pub fn assert_per_key_order_allowing_redelivery(recorder: &Recorder) -> usize {
    let mut redelivered = 0;
    for (key, records) in recorder.by_key() {
        let mut seen = HashSet::new();
        let mut last = i64::MIN;
        for r in records {
            if !seen.insert(r.id) {
                redelivered += 1;
                continue;
            }
            assert!(
                r.seq > last,
                "key {key}: seq {} first delivered after seq {last}",
                r.seq
            );
            last = r.seq;
        }
    }
    redelivered
}

/// Scrapes `http://addr/metrics` and returns the value of `name` (without labels).
pub async fn scrape(addr: std::net::SocketAddr, name: &str) -> Option<f64> {
    let body = http_get(addr, "/metrics").await?.1;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A minimal HTTP/1.0 GET (status, body); None when nothing answers.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .ok()?
        .ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}
