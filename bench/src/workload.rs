//! The consumed workload: typed JSON events of exactly [`VALUE_BYTES`] bytes, keyed by one of
//! [`KEYS`] keys, in a topic of [`PARTITIONS`] partitions, written once per invocation and
//! read by every contender.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::{Deserialize, Serialize};

/// Partitions of the consumed topic.
pub const PARTITIONS: i32 = 6;
/// Distinct record keys.
pub const KEYS: u64 = 10_000;
/// Size of every record value, bytes.
pub const VALUE_BYTES: usize = 256;
/// Size of every record key (`k00042`), bytes.
pub const KEY_BYTES: usize = 6;
/// The declared event types, in the order records cycle through them.
pub const EVENT_TYPES: [&str; 4] = [
    "order.created",
    "order.paid",
    "order.shipped",
    "order.cancelled",
];

/// One event, as the raw Rust peer decodes it (and as the worker's declared types name it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type")]
pub enum Event {
    #[serde(rename = "order.created")]
    OrderCreated {
        id: u64,
        key: String,
        amount: i64,
        pad: String,
    },
    #[serde(rename = "order.paid")]
    OrderPaid {
        id: u64,
        key: String,
        amount: i64,
        pad: String,
    },
    #[serde(rename = "order.shipped")]
    OrderShipped {
        id: u64,
        key: String,
        amount: i64,
        pad: String,
    },
    #[serde(rename = "order.cancelled")]
    OrderCancelled {
        id: u64,
        key: String,
        amount: i64,
        pad: String,
    },
}

impl Event {
    /// Index of the event's type in [`EVENT_TYPES`].
    pub fn type_index(&self) -> usize {
        match self {
            Event::OrderCreated { .. } => 0,
            Event::OrderPaid { .. } => 1,
            Event::OrderShipped { .. } => 2,
            Event::OrderCancelled { .. } => 3,
        }
    }
}

/// The key of record `i`.
pub fn key(i: u64) -> String {
    key_of(i, KEYS)
}

/// The key of record `i` in a topic of `keys` keys (round robin).
pub fn key_of(i: u64, keys: u64) -> String {
    format!("k{:05}", i % keys)
}

/// The value of record `i`: its event as JSON, `pad` filled so that it is exactly
/// [`VALUE_BYTES`] long.
pub fn value(i: u64) -> Vec<u8> {
    let (id, key, amount, pad) = (i, key(i), (i % 100_000) as i64 * 7 - 3_000, String::new());
    let mut event = match i % EVENT_TYPES.len() as u64 {
        0 => Event::OrderCreated {
            id,
            key,
            amount,
            pad,
        },
        1 => Event::OrderPaid {
            id,
            key,
            amount,
            pad,
        },
        2 => Event::OrderShipped {
            id,
            key,
            amount,
            pad,
        },
        _ => Event::OrderCancelled {
            id,
            key,
            amount,
            pad,
        },
    };
    let unpadded = serde_json::to_vec(&event)
        .expect("an event serialises")
        .len();
    let fill = VALUE_BYTES
        .checked_sub(unpadded)
        .expect("the unpadded event fits in VALUE_BYTES");
    match &mut event {
        Event::OrderCreated { pad, .. }
        | Event::OrderPaid { pad, .. }
        | Event::OrderShipped { pad, .. }
        | Event::OrderCancelled { pad, .. } => *pad = "x".repeat(fill),
    }
    serde_json::to_vec(&event).expect("an event serialises")
}

/// librdkafka settings for `bootstrap`.
pub fn kafka_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

/// Creates `topic` with `partitions` partitions (replication 1, the test broker has one node).
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka_config(bootstrap)
        .create()
        .context("Kafka admin client")?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .with_context(|| format!("create topic {topic} (is the broker at {bootstrap} up?)"))?;
    for result in results {
        if let Err((name, code)) = result {
            bail!("create topic {name}: {code}");
        }
    }
    Ok(())
}

/// Deletes topics (best effort: they are the harness's own, and only disk space is at stake).
pub async fn delete_topics(bootstrap: &str, topics: &[&str]) {
    if topics.is_empty() {
        return;
    }
    if let Ok(admin) = kafka_config(bootstrap).create::<AdminClient<DefaultClientContext>>() {
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let _ = admin.delete_topics(topics, &options).await;
    }
}

/// Writes records `0..records` to `topic` (uncompressed, acks=all) and checks that the
/// partitions' high watermarks add up to `records`.
pub fn fill(bootstrap: &str, topic: &str, records: u64) -> Result<()> {
    fill_keyed(bootstrap, topic, records, KEYS)
}

/// As [`fill`], with `keys` distinct keys.
pub fn fill_keyed(bootstrap: &str, topic: &str, records: u64, keys: u64) -> Result<()> {
    let producer: BaseProducer = kafka_config(bootstrap)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "none")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .context("Kafka producer")?;
    for i in 0..records {
        let (k, v) = (key_of(i, keys), value(i));
        loop {
            match producer.send(BaseRecord::<String, Vec<u8>>::to(topic).key(&k).payload(&v)) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => bail!("produce to {topic}: {e}"),
            }
        }
        if i % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .with_context(|| format!("flush {records} records to {topic}"))?;
    let written = end_offsets(bootstrap, topic)?.iter().sum::<i64>();
    ensure!(
        written == records as i64,
        "{topic} holds {written} records after writing {records}"
    );
    Ok(())
}

/// The high watermark of each partition of `topic`, in partition order.
pub fn end_offsets(bootstrap: &str, topic: &str) -> Result<Vec<i64>> {
    let consumer: BaseConsumer = kafka_config(bootstrap).create().context("Kafka consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("metadata of {topic}"))?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    ensure!(partitions > 0, "{topic} has no partitions");
    (0..partitions as i32)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map(|(_, high)| high)
                .with_context(|| format!("watermarks of {topic}/{p}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_exactly_value_bytes_and_decodes_as_its_typed_event() {
        for i in [0, 1, 2, 3, 9_999, 10_000, 123_456, 499_999, 9_999_999] {
            let v = value(i);
            assert_eq!(v.len(), VALUE_BYTES, "record {i}");
            let event: Event = serde_json::from_slice(&v).unwrap();
            assert_eq!(event.type_index(), (i % 4) as usize);
            let json: serde_json::Value = serde_json::from_slice(&v).unwrap();
            assert_eq!(json["event_type"], EVENT_TYPES[(i % 4) as usize]);
            assert_eq!(json["key"], key(i));
        }
    }

    #[test]
    fn keys_are_key_bytes_long_and_repeat_every_keys_records() {
        assert_eq!(key(0).len(), KEY_BYTES);
        assert_eq!(key(KEYS - 1).len(), KEY_BYTES);
        assert_eq!(key(7), key(7 + KEYS));
        assert_ne!(key(7), key(8));
    }
}
