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
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::error::{Error, Result};

/// Security settings that the operator takes from the `kafka.secretRef` Secret for its own
/// measurement client (the worker gets the whole Secret mounted).
pub const SECRET_KEYS: &[&str] = &[
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.pem",
    "ssl.certificate.pem",
    "ssl.key.pem",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
];

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

/// Measures the lag of `target` (blocking librdkafka calls on the blocking pool).
pub async fn measure(target: Target, timeout: Duration) -> Result<Lag> {
    tokio::task::spawn_blocking(move || measure_blocking(&target, timeout))
        .await
        .map_err(Error::Join)?
}

fn measure_blocking(target: &Target, timeout: Duration) -> Result<Lag> {
    let mut config = ClientConfig::new();
    for (k, v) in &target.settings {
        config.set(k, v);
    }
    config
        .set("bootstrap.servers", &target.bootstrap_servers)
        .set("group.id", &target.group_id)
        .set("enable.auto.commit", "false")
        .set("client.id", "pipewright-operator")
        .set("log_level", "3");
    let consumer: BaseConsumer = config.create().map_err(Error::KafkaUnreachable)?;

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
    let committed = consumer
        .committed_offsets(tpl, timeout)
        .map_err(Error::KafkaUnreachable)?;

    let mut partitions = Vec::new();
    for elem in committed.elements() {
        let (low, high) = consumer
            .fetch_watermarks(elem.topic(), elem.partition(), timeout)
            .map_err(Error::KafkaUnreachable)?;
        let committed = match elem.offset() {
            Offset::Offset(o) if o >= 0 => Some(o),
            _ => None,
        };
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
