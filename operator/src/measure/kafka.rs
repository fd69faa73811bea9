//! Consumer lag, measured on the broker: the group's committed offsets (OffsetFetch, without
//! joining the group) against each partition's watermarks.
//!
//! Edge cases (those KEDA's Kafka scaler handles, and one it does not):
//! - **Nothing committed yet**: the group will start at `initialOffset`: `earliest` → lag is
//!   every retained record (`high - low`), `latest` → lag 0.
//! - **Retention moved the start** past the committed offset: the consumer resets by
//!   `initialOffset` (librdkafka's `auto.offset.reset`), so the lag counts from the low
//!   watermark (`earliest`) or is 0 (`latest`), never the records that no longer exist.
//! - A committed offset beyond the high watermark (a truncated partition) counts as lag 0.

use std::time::Duration;

use pipewright_crds::event_consumer::{InitialOffset, PartitionStatus};
use pipewright_crds::termination::RecordRef;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, TopicPartitionList};

use pipewright_kafka_admin as group_offsets;

use super::Pool;
use crate::error::{Error, Result};

/// What to measure. `Debug` omits the settings (they may hold credentials).
#[derive(Clone)]
pub struct Target {
    pub bootstrap_servers: String,
    /// librdkafka settings from the Kafka Secret.
    pub settings: Vec<(String, String)>,
    pub group_id: String,
    pub topics: Vec<String>,
    pub initial_offset: InitialOffset,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("group_id", &self.group_id)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

/// The measured lag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lag {
    pub partitions: Vec<PartitionStatus>,
    pub total: i64,
}

impl Lag {
    /// The group's committed offset of a partition, as measured.
    pub fn committed(&self, topic: &str, partition: i32) -> Option<i64> {
        self.partitions
            .iter()
            .find(|p| p.topic == topic && p.partition == partition)?
            .committed
    }

    /// The lag more replicas could drain: the total without the partitions whose worker is
    /// stuck on one of `stuck` (a poison record holds the whole partition).
    pub fn drainable(&self, stuck: &[RecordRef]) -> i64 {
        let held: i64 = self
            .partitions
            .iter()
            .filter(|p| {
                stuck
                    .iter()
                    .any(|r| r.topic == p.topic && r.partition == p.partition)
            })
            .map(|p| p.lag)
            .sum();
        (self.total - held).max(0)
    }

    /// Partitions of all consumed topics: the most replicas that get work.
    pub fn partition_count(&self) -> i32 {
        i32::try_from(self.partitions.len()).unwrap_or(i32::MAX)
    }
}

/// The lag of one partition (see the module doc for the edge cases).
pub fn partition_lag(committed: Option<i64>, low: i64, high: i64, initial: InitialOffset) -> i64 {
    let start = match committed {
        Some(c) if c >= low => c,
        // Nothing committed, or retention deleted the committed position: the consumer
        // starts where initialOffset says.
        _ => match initial {
            InitialOffset::Earliest => low,
            InitialOffset::Latest => high,
        },
    };
    (high - start).max(0)
}

/// Measures the lag of `target` (blocking librdkafka calls on the blocking pool) with the
/// cluster's pooled client.
pub async fn measure(
    clients: &Pool<BaseConsumer>,
    target: Target,
    timeout: Duration,
) -> Result<Lag> {
    let key = (&target.bootstrap_servers, &target.settings);
    let consumer = clients.get(&key, || client(&target))?;
    tokio::task::spawn_blocking(move || measure_blocking(&consumer, &target, timeout))
        .await
        .map_err(Error::Join)?
}

/// The measurement client of a cluster: no `group.id` (it never joins a group; committed
/// offsets are read for any group with [`group_offsets::committed`]).
fn client(target: &Target) -> Result<BaseConsumer> {
    let mut config = ClientConfig::new();
    for (k, v) in &target.settings {
        config.set(k, v);
    }
    config
        .set("bootstrap.servers", &target.bootstrap_servers)
        .set("enable.auto.commit", "false")
        .set("client.id", "pipewright-operator")
        .set("log_level", "3");
    config.create().map_err(Error::KafkaUnreachable)
}

fn measure_blocking(consumer: &BaseConsumer, target: &Target, timeout: Duration) -> Result<Lag> {
    // Nobody else polls the shared client: drain its event queue (errors, logs) here.
    for _ in 0..1000 {
        if consumer.poll(Duration::ZERO).is_none() {
            break;
        }
    }
    let mut tpl = TopicPartitionList::new();
    for topic in &target.topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(Error::KafkaUnreachable)?;
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(Error::TopicNotFound(topic.clone()));
        };
        if let Some(err) = t.error() {
            let code = RDKafkaErrorCode::from(err);
            if code == RDKafkaErrorCode::UnknownTopicOrPartition
                || code == RDKafkaErrorCode::UnknownTopic
            {
                return Err(Error::TopicNotFound(topic.clone()));
            }
            return Err(Error::KafkaUnreachable(
                rdkafka::error::KafkaError::MetadataFetch(code),
            ));
        }
        if t.partitions().is_empty() {
            return Err(Error::TopicNotFound(topic.clone()));
        }
        for p in t.partitions() {
            tpl.add_partition(topic, p.id());
        }
    }
    let committed = group_offsets::committed(consumer, &target.group_id, &tpl, timeout)
        .map_err(Error::KafkaUnreachable)?;

    let mut partitions = Vec::new();
    for elem in tpl.elements() {
        let (low, high) = consumer
            .fetch_watermarks(elem.topic(), elem.partition(), timeout)
            .map_err(Error::KafkaUnreachable)?;
        let committed = committed
            .get(&(elem.topic().to_string(), elem.partition()))
            .copied()
            .flatten();
        partitions.push(PartitionStatus {
            topic: elem.topic().to_string(),
            partition: elem.partition(),
            committed,
            end: high,
            lag: partition_lag(committed, low, high, target.initial_offset),
        });
    }
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let total = partitions.iter().map(|p| p.lag).sum();
    Ok(Lag { partitions, total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_committed_offset() {
        assert_eq!(partition_lag(Some(40), 0, 100, InitialOffset::Earliest), 60);
        assert_eq!(partition_lag(Some(100), 0, 100, InitialOffset::Latest), 0);
    }

    #[test]
    fn without_a_committed_offset_the_initial_offset_policy_decides() {
        assert_eq!(partition_lag(None, 10, 100, InitialOffset::Earliest), 90);
        assert_eq!(partition_lag(None, 10, 100, InitialOffset::Latest), 0);
    }

    #[test]
    fn records_deleted_by_retention_are_not_lag() {
        assert_eq!(partition_lag(Some(5), 50, 100, InitialOffset::Earliest), 50);
        assert_eq!(partition_lag(Some(5), 50, 100, InitialOffset::Latest), 0);
    }

    #[test]
    fn a_committed_offset_past_the_end_is_no_lag() {
        assert_eq!(partition_lag(Some(120), 0, 100, InitialOffset::Earliest), 0);
    }
}
