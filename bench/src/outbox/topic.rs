//! The relays' topic: created with `message.timestamp.type=LogAppendTime`, so that every record
//! carries the broker's wall-clock time of its append (the moment Kafka acknowledges it, see
//! [`super`]), and read back by an independent consumer (`read_committed`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Timestamp};
use rdkafka::{Offset, TopicPartitionList};

use crate::workload::kafka_config;

/// Partitions of a relay's topic (keys spread by aggregateid).
pub const PARTITIONS: i32 = 6;

/// One record as read back.
#[derive(Debug, Clone)]
pub struct Received {
    pub key: Option<String>,
    pub payload: Option<String>,
    pub headers: HashMap<String, String>,
    /// The broker's append time, milliseconds since the epoch.
    pub append_ms: i64,
}

/// Creates `topic` (LogAppendTime, [`PARTITIONS`] partitions, replication 1).
pub async fn create(bootstrap: &str, topic: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka_config(bootstrap)
        .create()
        .context("Kafka admin client")?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let new = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))
        .set("message.timestamp.type", "LogAppendTime");
    for result in admin.create_topics(&[new], &options).await? {
        if let Err((name, code)) = result {
            bail!("create topic {name}: {code}");
        }
    }
    Ok(())
}

/// Reads a topic's size cheaply and repeatedly (one consumer, high watermarks).
pub struct Watermarks {
    consumer: BaseConsumer,
    topic: String,
}

impl std::fmt::Debug for Watermarks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watermarks")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Watermarks {
    pub fn new(bootstrap: &str, topic: &str) -> Result<Watermarks> {
        Ok(Watermarks {
            // A group id (never joined, nothing committed): librdkafka's assign() needs one.
            consumer: kafka_config(bootstrap)
                .set("group.id", format!("{topic}-marks"))
                .set("enable.auto.commit", "false")
                .create()
                .context("Kafka consumer")?,
            topic: topic.to_string(),
        })
    }

    /// Records in the topic (the sum of the partitions' high watermarks).
    pub fn records(&self) -> Result<i64> {
        (0..PARTITIONS)
            .map(|p| {
                self.consumer
                    .fetch_watermarks(&self.topic, p, Duration::from_secs(10))
                    .map(|(_, high)| high)
                    .with_context(|| format!("watermarks of {}/{p}", self.topic))
            })
            .sum()
    }

    /// The append times of the first and the last record of the topic (ms since the epoch).
    pub fn append_span(&self) -> Result<(i64, i64)> {
        let (mut first, mut last) = (i64::MAX, i64::MIN);
        for p in 0..PARTITIONS {
            let (_, high) =
                self.consumer
                    .fetch_watermarks(&self.topic, p, Duration::from_secs(10))?;
            if high == 0 {
                continue;
            }
            for offset in [0, high - 1] {
                let ts = self.append_ms_at(p, offset)?;
                first = first.min(ts);
                last = last.max(ts);
            }
        }
        ensure!(first <= last, "{} is empty", self.topic);
        Ok((first, last))
    }

    fn append_ms_at(&self, partition: i32, offset: i64) -> Result<i64> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset))?;
        self.consumer.assign(&tpl)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => return append_ms(&m),
                Some(Err(e)) => bail!("read {}/{partition}@{offset}: {e}", self.topic),
                None => {}
            }
        }
        bail!("no record at {}/{partition}@{offset}", self.topic)
    }
}

fn append_ms(m: &impl Message) -> Result<i64> {
    match m.timestamp() {
        Timestamp::LogAppendTime(ms) => Ok(ms),
        other => bail!("record without a LogAppendTime timestamp: {other:?}"),
    }
}

/// Reads all `expected` records of `topic` from the beginning (read_committed).
pub fn read_all(bootstrap: &str, topic: &str, expected: usize) -> Result<Vec<Received>> {
    let consumer: BaseConsumer = kafka_config(bootstrap)
        .set("group.id", format!("{topic}-check"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .context("Kafka consumer")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut out = Vec::with_capacity(expected);
    let mut idle = Instant::now();
    while out.len() < expected {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                idle = Instant::now();
                let mut headers = HashMap::new();
                if let Some(hs) = m.headers() {
                    for h in hs.iter() {
                        let value = h.value.map(|v| String::from_utf8_lossy(v).to_string());
                        headers.insert(h.key.to_string(), value.unwrap_or_default());
                    }
                }
                out.push(Received {
                    key: m.key().map(|k| String::from_utf8_lossy(k).to_string()),
                    payload: m.payload().map(|v| String::from_utf8_lossy(v).to_string()),
                    headers,
                    append_ms: append_ms(&m)?,
                });
            }
            Some(Err(e)) => bail!("read {topic}: {e}"),
            None if idle.elapsed() > Duration::from_secs(30) => {
                bail!("read {} of {expected} records of {topic}", out.len())
            }
            None => {}
        }
    }
    Ok(out)
}
