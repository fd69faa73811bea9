//! Fixtures of the consumer tests: producing test events, running the real binary with the log
//! sink and reading back what it delivered (its JSON log), the group's committed offsets, and
//! a reader of the dead-letter topic.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pipewright_testenv::{TestEnv, eventually, kafka_config, unique_name};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

/// A step event: `{"event_type":"step","key":..,"n":..}`.
pub fn step(key: &str, n: u64) -> String {
    format!(r#"{{"event_type":"step","key":"{key}","n":{n}}}"#)
}

/// A record to produce: key, value, headers.
pub type Produced = (Option<String>, Option<Vec<u8>>, Vec<(String, String)>);

/// Produces records (key, value) in order, waiting for every acknowledgement.
pub async fn produce(topic: &str, records: Vec<(Option<String>, Option<Vec<u8>>)>) {
    let records = records
        .into_iter()
        .map(|(k, v)| (k, v, Vec::new()))
        .collect();
    produce_with_headers(topic, records).await
}

/// As [`produce`], each record with its headers.
pub async fn produce_with_headers(topic: &str, records: Vec<Produced>) {
    let producer: FutureProducer = kafka_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut pending = Vec::new();
    for (key, value, headers) in &records {
        let mut r: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic);
        if let Some(k) = key {
            r = r.key(k.as_str());
        }
        if let Some(v) = value {
            r = r.payload(v.as_slice());
        }
        if !headers.is_empty() {
            let mut owned = rdkafka::message::OwnedHeaders::new();
            for (k, v) in headers {
                owned = owned.insert(rdkafka::message::Header {
                    key: k,
                    value: Some(v.as_str()),
                });
            }
            r = r.headers(owned);
        }
        loop {
            match producer.send_result(r) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err((_, back)) => {
                    r = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    for f in pending {
        f.await.expect("delivery").expect("acknowledged");
    }
}

/// Produces `count` step events over `keys` keys (`k<i % keys>`, n = i).
pub async fn produce_steps(topic: &str, count: u64, keys: u64) {
    let records = (0..count)
        .map(|i| {
            let key = format!("k{}", i % keys);
            let value = step(&key, i).into_bytes();
            (Some(key), Some(value))
        })
        .collect();
    produce(topic, records).await;
}

/// A stream of step events produced at a steady rate in the background (`k<i % keys>`,
/// n = i, each record to every topic), until [`SteadyStream::stop`].
#[derive(Debug)]
pub struct SteadyStream {
    stop: Arc<AtomicBool>,
    produced: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<u64>,
}

impl SteadyStream {
    /// Produces `per_second` records per second to each of `topics`, in ticks of 50 ms.
    pub fn start(topics: &[String], per_second: u64, keys: u64) -> SteadyStream {
        let producer: FutureProducer = kafka_config()
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        let stop = Arc::new(AtomicBool::new(false));
        let produced = Arc::new(AtomicU64::new(0));
        let topics = topics.to_vec();
        let per_tick = (per_second / 20).max(1);
        let (stopping, counter) = (stop.clone(), produced.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut next = 0u64;
            while !stopping.load(Ordering::SeqCst) {
                tick.tick().await;
                let mut pending = Vec::new();
                for i in next..next + per_tick {
                    let key = format!("k{}", i % keys);
                    let value = step(&key, i);
                    for topic in &topics {
                        let mut record = FutureRecord::to(topic).key(&key).payload(&value);
                        loop {
                            match producer.send_result(record) {
                                Ok(f) => break pending.push(f),
                                Err((_, back)) => {
                                    record = back;
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                }
                            }
                        }
                    }
                }
                for f in pending {
                    f.await.expect("delivery").expect("acknowledged");
                }
                next += per_tick;
                counter.store(next, Ordering::SeqCst);
            }
            next
        });
        SteadyStream {
            stop,
            produced,
            task,
        }
    }

    /// Records produced to each topic so far.
    pub fn produced(&self) -> u64 {
        self.produced.load(Ordering::SeqCst)
    }

    /// Stops producing; returns how many records each topic got (n = 0..that).
    pub async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the producing task")
    }
}

/// The group's committed offsets per partition (partitions without a commit are absent).
pub fn committed(group: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = kafka_config()
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    // Retried: on a broker that has just started, the first lookups can time out or answer
    // NotCoordinator (at once) while the offsets topic and its coordinator come up.
    let mut attempt = 1;
    let tpl = loop {
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(tpl) => break tpl,
            Err(e) if attempt < 20 => {
                eprintln!("committed offsets of {group} (attempt {attempt}): {e}; again");
                attempt += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => panic!("committed offsets of {group}: {e}"),
        }
    };
    tpl.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Waits until the group's committed offsets over `partitions` partitions of `topic` sum to
/// `total`.
pub async fn group_reaches(group: &str, topic: &str, partitions: i32, total: i64) {
    eventually(
        "the group's offsets reach the end",
        Duration::from_secs(120),
        || async {
            let c: i64 = committed(group, topic, partitions).values().sum();
            (c == total).then_some(())
        },
    )
    .await;
}

/// One record of the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub key: Option<String>,
    /// The key as it is (`key` is its lossy UTF-8).
    pub key_bytes: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

/// Reads a topic from the beginning in the background, keeping what it read and how far it
/// got in each partition.
#[derive(Debug, Clone)]
pub struct TopicReader {
    pub records: Arc<Mutex<Vec<DeadLetter>>>,
    topic: String,
    /// The next offset to read per partition (past skipped transaction markers and aborted
    /// records too).
    positions: Arc<Mutex<HashMap<i32, i64>>>,
}

impl TopicReader {
    pub fn start(topic: &str, isolation: &str) -> TopicReader {
        let consumer: StreamConsumer = kafka_config()
            .set("group.id", unique_name("reader"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("isolation.level", isolation)
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let records = Arc::new(Mutex::new(Vec::new()));
        let positions = Arc::new(Mutex::new(HashMap::new()));
        let (sink, seen) = (records.clone(), positions.clone());
        tokio::spawn(async move {
            loop {
                // Bounded, so the positions move on while nothing new arrives (a transaction
                // marker at a partition's end is skipped without a message).
                if let Ok(m) =
                    tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await
                {
                    let m = m.expect("consume");
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|x| {
                                    (
                                        x.key.to_string(),
                                        String::from_utf8_lossy(x.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    sink.lock().unwrap().push(DeadLetter {
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        key_bytes: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                        headers,
                    });
                }
                if let Ok(tpl) = consumer.position() {
                    let mut seen = seen.lock().unwrap();
                    for e in tpl.elements() {
                        if let Offset::Offset(o) = e.offset() {
                            seen.insert(e.partition(), o);
                        }
                    }
                }
            }
        });
        TopicReader {
            records,
            topic: topic.to_string(),
            positions,
        }
    }

    pub fn snapshot(&self) -> Vec<DeadLetter> {
        self.records.lock().unwrap().clone()
    }

    /// The `n` of every step event read so far (see [`step`]), in the order read.
    pub fn ns(&self) -> Vec<u64> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| {
                let v: serde_json::Value = serde_json::from_slice(r.value.as_deref()?).ok()?;
                v["n"].as_u64()
            })
            .collect()
    }

    /// Waits until this reader has read every partition up to the end the topic has now (its
    /// high watermarks; with no transaction open, `read_committed`'s last stable offset is the
    /// same): nothing written before this call can arrive later. The proof that a duplicate
    /// did not come, instead of a sleep.
    pub async fn caught_up(&self) {
        let consumer: BaseConsumer = kafka_config().create().expect("consumer");
        let metadata = consumer
            .fetch_metadata(Some(&self.topic), Duration::from_secs(10))
            .expect("topic metadata");
        let ends: Vec<(i32, i64)> = metadata.topics()[0]
            .partitions()
            .iter()
            .map(|p| {
                let (_, high) = consumer
                    .fetch_watermarks(&self.topic, p.id(), Duration::from_secs(10))
                    .expect("watermarks");
                (p.id(), high)
            })
            .collect();
        eventually(
            &format!(
                "the reader of {} at the end of every partition {ends:?}",
                self.topic
            ),
            Duration::from_secs(60),
            || {
                let seen = self.positions.lock().unwrap().clone();
                let done = ends
                    .iter()
                    .all(|(p, high)| *high == 0 || seen.get(p).is_some_and(|o| o >= high));
                async move { done.then_some(()) }
            },
        )
        .await;
    }
}

/// One event line of the log sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub partition: i64,
    pub offset: i64,
    pub key: Option<String>,
    pub n: Option<u64>,
}

/// A running `pipewright-worker consume` with the log sink (JSON logs into a file).
#[derive(Debug)]
pub struct ConsumeWorker {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl ConsumeWorker {
    /// With the log sink.
    pub fn start(topic: &str, group: &str, extra: &[&str]) -> ConsumeWorker {
        ConsumeWorker::start_with(topic, group, &["--sink", "log"], extra, &[])
    }

    /// With the given sink flags and extra environment.
    pub fn start_with(
        topic: &str,
        group: &str,
        sink: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> ConsumeWorker {
        let addr = free_addr();
        let log = std::env::temp_dir().join(format!("{}.log", unique_name("pw-consume")));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pipewright-worker"))
            .args([
                "--listen",
                &addr.to_string(),
                "--log-format",
                "json",
                "consume",
            ])
            .args(["--topics", topic, "--group-id", group])
            .args(sink)
            .args([
                "--kafka-bootstrap-servers",
                &TestEnv::get().kafka_bootstrap_servers,
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start pipewright-worker");
        ConsumeWorker { child, addr, log }
    }

    /// Waits until /readyz answers 200 (the worker joined its group and got an assignment).
    pub async fn ready(&self) {
        eventually(
            "/readyz once the group is joined",
            Duration::from_secs(90),
            || async {
                (super::http_get(self.addr, "/readyz").await.map(|r| r.0) == Some(200))
                    .then_some(())
            },
        )
        .await;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The events this worker delivered, in log order.
    pub fn delivered(&self) -> Vec<Logged> {
        parse_events(&self.log_text())
    }

    pub fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the exit code.
    pub async fn sigterm_and_wait(&mut self) -> i32 {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait_exit(Duration::from_secs(90)).await
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let child = &mut self.child;
        eventually("the worker exits", timeout, || {
            let exited = child.try_wait().unwrap();
            async move { exited.map(|s| s.code().unwrap_or(-1)) }
        })
        .await
    }
}

impl Drop for ConsumeWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// The `pipewright::event` lines of a JSON log.
pub fn parse_events(text: &str) -> Vec<Logged> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "pipewright::event")
        .map(|v| {
            let f = &v["fields"];
            let payload: Option<serde_json::Value> = f["payload"]
                .as_str()
                .and_then(|p| serde_json::from_str(p).ok());
            Logged {
                partition: f["partition"].as_i64().unwrap_or(-1),
                offset: f["offset"].as_i64().unwrap_or(-1),
                key: f["key"].as_str().map(str::to_string),
                n: payload.as_ref().and_then(|p| p["n"].as_u64()),
            }
        })
        .collect()
}

/// The `fields` of the JSON log lines whose message is `message` (e.g. "partition assigned").
pub fn log_fields(text: &str, message: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message)
        .map(|v| v["fields"].clone())
        .collect()
}

/// Panics, naming them, when `pipewright-worker consume` lacks any of `flags` (a test of a
/// newer worker run against an older one fails at once instead of timing out).
pub fn require_consume_flags(flags: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_pipewright-worker"))
        .args(["consume", "--help"])
        .output()
        .expect("run pipewright-worker consume --help");
    let help = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = flags
        .iter()
        .copied()
        .filter(|f| !help.contains(&format!("{f} ")) && !help.contains(&format!("{f}=")))
        .collect();
    assert!(
        missing.is_empty(),
        "pipewright-worker consume has no {missing:?} flag"
    );
}

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
