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
//!
//! Lag in seconds (kafka-lag-exporter's figure): the age of the oldest record the group has not
//! processed, read from the record where each lagging partition's lag starts (its timestamp to
//! now). One fetch per lagging partition per measurement, through a reader client of the
//! cluster that the measurements take turns on. A record that cannot be read in time (no Read
//! permission, a slow broker) leaves that partition's figure unset rather than guessed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pipewright_crds::event_consumer::{InitialOffset, PartitionStatus};
use pipewright_crds::termination::RecordRef;
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use pipewright_kafka_admin as group_offsets;

use super::Pool;
use crate::error::{Error, Result};

/// A measurement client's context: keeps the last error librdkafka reported (its text says
/// what failed: "Failed to resolve 'kafka:9092'", "Connect to ipv4#10.0.0.1:9092 failed:
/// Connection refused", an SSL handshake or SASL failure), which a failed call's own error
/// (`BrokerTransportFailure`) does not, for the `KafkaUnreachable` condition's message.
#[derive(Debug, Default)]
pub struct LastError(Mutex<Option<String>>);

impl LastError {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ClientContext for LastError {
    /// librdkafka reports a broker connection's failure as a log line at error level (a
    /// consumer's error events carry only the code): kept, then logged as by default.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let error = matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
        );
        if error && !log_message.contains("brokers are down") {
            // "[thrd:kafka:9092/bootstrap]: kafka:9092/bootstrap: Failed to resolve ..."
            let text = match log_message.strip_prefix("[thrd:") {
                Some(rest) => rest.split_once("]: ").map_or(log_message, |(_, t)| t),
                None => log_message,
            };
            *self.slot() = Some(stable(text).to_string());
        }
        DefaultClientContext.log(level, fac, log_message);
    }
}

impl ConsumerContext for LastError {}

/// `reason` without what changes from one attempt to the next (`" (after 3ms in state
/// CONNECT, 2 identical error(s) suppressed)"`), so that a condition's message stays
/// the same while the cause does.
fn stable(reason: &str) -> &str {
    // librdkafka appends "(after Nms in state S[, N identical error(s) suppressed])".
    reason.find(" (after ").map_or(reason, |i| &reason[..i])
}

/// A measurement client of a cluster.
pub type Client = BaseConsumer<LastError>;

/// Serves what the client's queue holds (errors, logs): nobody else polls the shared client.
fn serve(client: &Client) {
    for _ in 0..1000 {
        if client.poll(Duration::ZERO).is_none() {
            break;
        }
    }
}

/// The error of a failed call on `client`, with the last error librdkafka reported for it
/// since its last successful measurement.
fn unreachable(client: &Client, source: KafkaError) -> Error {
    serve(client);
    Error::KafkaUnreachable {
        source,
        broker: client.context().slot().clone(),
    }
}

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
    /// The largest of the partitions' lag in seconds (`None`: none could be read).
    pub max_lag_seconds: Option<i64>,
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
    clients: &Pool<Client>,
    readers: &Pool<Mutex<BaseConsumer>>,
    target: Target,
    timeout: Duration,
) -> Result<Lag> {
    let key = (&target.bootstrap_servers, &target.settings);
    let consumer = clients.get(&key, || client(&target))?;
    let reader = readers.get(&key, || reader(&target).map(Mutex::new))?;
    tokio::task::spawn_blocking(move || {
        let mut lag = measure_blocking(&consumer, &target, timeout)?;
        add_lag_seconds(&reader, &mut lag, timeout);
        Ok(lag)
    })
    .await
    .map_err(Error::Join)?
}

/// The group id of the operator's Kafka clients (the measurement client and the reader). Never
/// joined, never committed to: librdkafka needs one to assign partitions and to ask a group's
/// coordinator for committed offsets (with ACLs, the credentials need Describe on it).
const GROUP_ID: &str = "pipewright-operator";

/// The reader client of a cluster: assigns partitions at offsets and reads one record of each;
/// small fetches (only the first record matters).
fn reader(target: &Target) -> Result<BaseConsumer> {
    let mut config = ClientConfig::new();
    for (k, v) in &target.settings {
        config.set(k, v);
    }
    config
        .set("bootstrap.servers", &target.bootstrap_servers)
        .set("enable.auto.commit", "false")
        .set("client.id", "pipewright-operator-lag-reader")
        // librdkafka assigns only with a group id; with assign (no subscribe) it never joins
        // the group, and nothing is committed.
        .set("group.id", GROUP_ID)
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "50")
        .set("max.partition.fetch.bytes", "4096")
        .set("queued.max.messages.kbytes", "1024")
        .set("log_level", "3");
    config.create().map_err(|source| Error::KafkaUnreachable {
        source,
        broker: None,
    })
}

/// Sets each partition's `lag_seconds` and the largest: 0 without lag, else the age of the
/// record where the lag starts (`end - lag`), read with `reader`.
fn add_lag_seconds(reader: &Mutex<BaseConsumer>, lag: &mut Lag, timeout: Duration) {
    let starts: Vec<(String, i32, i64)> = lag
        .partitions
        .iter()
        .filter(|p| p.lag > 0)
        .map(|p| (p.topic.clone(), p.partition, p.end - p.lag))
        .collect();
    let stamps = record_timestamps(reader, &starts, timeout);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    for p in &mut lag.partitions {
        p.lag_seconds = if p.lag == 0 {
            Some(0)
        } else {
            stamps
                .get(&(p.topic.clone(), p.partition))
                .map(|ts| (now_ms - ts).max(0) / 1000)
        };
    }
    lag.max_lag_seconds = lag.partitions.iter().filter_map(|p| p.lag_seconds).max();
}

/// The longest a measurement waits for the records of its lagging partitions.
const READ_DEADLINE: Duration = Duration::from_secs(2);

/// The timestamp (ms) of the first record at or after each (topic, partition, offset), as far
/// as they arrive within `timeout`.
fn record_timestamps(
    reader: &Mutex<BaseConsumer>,
    starts: &[(String, i32, i64)],
    timeout: Duration,
) -> HashMap<(String, i32), i64> {
    let mut found = HashMap::new();
    if starts.is_empty() {
        return found;
    }
    let reader = reader.lock().unwrap_or_else(|e| e.into_inner());
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in starts {
        if tpl
            .add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .is_err()
        {
            return found;
        }
    }
    if let Err(e) = reader.assign(&tpl) {
        tracing::warn!(error = %e, "lag seconds: cannot assign the partitions to read");
        return found;
    }
    // At most READ_DEADLINE: measurements of the cluster wait for the reader in turn, and a
    // record that cannot be read (no Read permission) must not hold them up for long.
    let deadline = Instant::now() + timeout.min(READ_DEADLINE);
    while found.len() < starts.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match reader.poll(left.min(Duration::from_millis(100))) {
            Some(Ok(m)) => {
                if let Some(ts) = m.timestamp().to_millis() {
                    found
                        .entry((m.topic().to_string(), m.partition()))
                        .or_insert(ts);
                }
            }
            Some(Err(e)) => tracing::debug!(error = %e, "lag seconds: reading a record"),
            None => {}
        }
    }
    // Nothing stays assigned between measurements (no fetching in the background).
    let _ = reader.unassign();
    found
}

/// The measurement client of a cluster; committed offsets are read for any group with
/// [`group_offsets::committed`]. Its `group.id` is never joined (no subscribe, no assign, nothing
/// committed); without one, librdkafka crashes the process when a broker answers that the
/// group's coordinator moved (kafka-admin's documentation).
fn client(target: &Target) -> Result<Client> {
    let mut config = ClientConfig::new();
    for (k, v) in &target.settings {
        config.set(k, v);
    }
    config
        .set("bootstrap.servers", &target.bootstrap_servers)
        .set("enable.auto.commit", "false")
        .set("client.id", "pipewright-operator")
        .set("group.id", GROUP_ID)
        .set("log_level", "3");
    config
        .create_with_context(LastError::default())
        .map_err(|source| Error::KafkaUnreachable {
            source,
            broker: None,
        })
}

fn measure_blocking(consumer: &Client, target: &Target, timeout: Duration) -> Result<Lag> {
    serve(consumer);
    let mut tpl = TopicPartitionList::new();
    for topic in &target.topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| unreachable(consumer, e))?;
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
            return Err(unreachable(consumer, KafkaError::MetadataFetch(code)));
        }
        if t.partitions().is_empty() {
            return Err(Error::TopicNotFound(topic.clone()));
        }
        for p in t.partitions() {
            tpl.add_partition(topic, p.id());
        }
    }
    let committed = group_offsets::committed(consumer, &target.group_id, &tpl, timeout)
        .map_err(|e| unreachable(consumer, e))?;

    let mut partitions = Vec::new();
    for elem in tpl.elements() {
        let (low, high) = consumer
            .fetch_watermarks(elem.topic(), elem.partition(), timeout)
            .map_err(|e| unreachable(consumer, e))?;
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
            lag_seconds: None,
        });
    }
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    // Measured: earlier broker errors no longer explain anything.
    *consumer.context().slot() = None;
    let total = partitions.iter().map(|p| p.lag).sum();
    Ok(Lag {
        partitions,
        total,
        max_lag_seconds: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_error_is_kept_without_what_changes_between_attempts() {
        assert_eq!(
            stable(
                "10.0.0.1:1/bootstrap: Connect to ipv4#10.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)"
            ),
            "10.0.0.1:1/bootstrap: Connect to ipv4#10.0.0.1:1 failed: Connection refused"
        );
        assert_eq!(
            stable(
                "kafka.invalid:9092/bootstrap: Failed to resolve 'kafka.invalid:9092': Name or service not known (after 2ms in state CONNECT, 4 identical error(s) suppressed)"
            ),
            "kafka.invalid:9092/bootstrap: Failed to resolve 'kafka.invalid:9092': Name or service not known"
        );
        assert_eq!(
            stable("SASL authentication error: failed"),
            "SASL authentication error: failed"
        );
    }

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
