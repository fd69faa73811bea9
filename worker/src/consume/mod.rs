//! The `consume` mode: consume Kafka topics as typed events and deliver each to a sink through
//! a bounded, ordered pipeline with retries and a dead-letter topic.
//!
//! # Guarantees
//!
//! Each is proven by a test named after it (`worker/tests/consume*.rs`, and the unit tests of
//! [`offsets`] and [`pipeline`]).
//!
//! - **At least once.** A record's offset is committed only after the record is finished:
//!   delivered (the handler returned `Ok`), skipped by policy, or acknowledged by the
//!   dead-letter topic. The committed offset of a partition is the lowest offset not yet
//!   finished there ([`offsets::PartitionOffsets`]): records finish out of order, and a gap is
//!   never committed.
//! - **Redelivery bound.** Per partition, the offsets taken and not covered by a commit the
//!   broker acknowledged are at most `max_uncommitted_per_partition` (default 10,000; the
//!   partition is paused at the bound): a crash (SIGKILL) delivers at most that many records of
//!   a partition again (`consume_sigkill_redelivers_at_most_the_window_per_partition`). A
//!   revocation commits the finished prefix: the next owner delivers again at most the same
//!   bound (finished records above a record that had not finished).
//! - **Order.** With `ordering: key`, records of one key (within a partition) are delivered one
//!   at a time in offset order, while records of different keys run concurrently, even within
//!   one partition; `partition` serialises each partition; `none` gives no order.
//!   Redeliveries restart from the committed offset, so each key's sequence is replayed in
//!   order. Across workers: a revoked partition's records stop before it is given up (below),
//!   so no record of a key reaches the sink from its old owner after a later record of that
//!   key arrived from its new owner
//!   (`consume_rebalances_with_retries_in_flight_never_reorder_a_key_across_workers_and_lose_nothing`).
//! - **No global stall.** `concurrency` bounds the records *running* (handler called, or
//!   waiting to retry). A record that keeps failing holds back only its own key, and, once its
//!   partition's window is full, only its partition (its own queue is not read); every other key and
//!   partition flows (`consume_one_key_failing_for_20s_does_not_stall_other_keys_and_partitions_and_keeps_its_order`).
//!   The fetch loop never waits for the pipeline, so a slow record never makes the consumer
//!   miss `max.poll.interval.ms` and leave the group
//!   (`consume_a_record_slower_than_max_poll_interval_does_not_make_the_worker_leave_the_group`).
//! - **Bounded memory.** Per partition, at most `max_uncommitted_per_partition` records and
//!   `max_buffered_bytes_per_partition` bytes (default 16 MiB) of records not finished are
//!   held; librdkafka's own prefetch is capped per partition by `queued.max.messages.kbytes`
//!   (4 MiB: each partition has a queue of its own, [`consumer::PREFETCH_DEFAULTS`]).
//! - **Poison records.** A delivery that fails `maxAttempts` times (exponential backoff with
//!   jitter between attempts) or fails permanently, and a record that is not a valid event
//!   (malformed JSON, undeclared type, schema mismatch, oversized) under the `deadLetter`
//!   policy, is produced to the dead-letter topic with headers describing the failure
//!   ([`dlq`]) and committed only once that topic acknowledged it; the records after it flow
//!   on. Without a dead-letter topic (or with the `fail` policy) it stops the worker: it and
//!   the records of its key behind it are not committed (exit code 1).
//! - **Graceful shutdown.** On SIGTERM/SIGINT the worker stops fetching, lets every record it
//!   took finish (at most `drainTimeout`; records still unfinished then are cancelled and not
//!   committed), commits synchronously, and closes the consumer (leaving the group unless it
//!   is a static member). A restart after a completed drain delivers nothing twice.
//! - **Revocation.** Cooperative-sticky assignment. When partitions are revoked, no record of
//!   theirs starts any more (those waiting are dropped, uncommitted); their running records get
//!   `revokeTimeout` (default 10 s) to finish, then are cancelled, and the callback returns
//!   only once none runs; the handler's outputs are acknowledged ([`Handler::await_outputs`]:
//!   the Kafka sink's producer); the finished prefix is committed synchronously. A *lost* assignment
//!   (session timeout) is cancelled at once and not committed. Only then does librdkafka give
//!   the partitions up.
//! - **Commits.** Every `commitInterval`, and early when a quarter of a partition's window is
//!   finished and unsent, in the background (never blocking the fetch loop; one at a time);
//!   synchronously on revocation and shutdown.
//!
//! - **Sinks.** `postgres`: effectively once (the offset is stored with the row in one
//!   transaction; a replay is a no-op, [`sinks::postgres`]). `kafka` with `transactional`:
//!   exactly once for `read_committed` readers (outputs and offsets in one Kafka transaction,
//!   [`sinks::kafka`]); a transaction commit waits for the records in flight at most
//!   `min(drainTimeout, 30 s)`, after which the transaction is aborted and the worker stops;
//!   an output never acknowledged fails the commit the same way (its restart replays from the
//!   last committed transaction; proven by
//!   `consume_transactional_kafka_sink_aborts_and_exits_when_an_output_is_never_acknowledged_then_replays_exactly_once`).
//!   `kafka`: at least once; offsets are committed only once the outputs below them are
//!   acknowledged (`consume_kafka_sink_is_at_least_once_across_sigkill_commits_only_acknowledged_outputs`).
//!   `http` and `log`: at least once (the HTTP receiver deduplicates on the idempotency
//!   header, [`sinks::http`]).
//!
//! # Library use
//!
//! Implement [`Handler`] for a `#[serde(tag = "event_type")]` enum and call [`run`] with a
//! [`ConsumeConfig`]; [`Pipeline`] alone (no Kafka) runs records through a handler for tests
//! and benchmarks.

pub mod cloudevents;
pub mod consumer;
pub mod dlq;
pub mod events;
pub mod metrics;
pub mod offsets;
pub mod pipeline;
pub mod process;
mod queues;
pub mod retry;
pub mod sinks;

use std::sync::Arc;

use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

pub use consumer::{ConsumerConfig, DEFAULT_REVOKE_TIMEOUT, InitialOffset};
pub use dlq::DeadLetters;
pub use events::{
    DeclaredTypes, GenericEvent, Handler, HandlerError, InvalidPolicy, Record, Rejection,
    RejectionKind, TypeSource,
};
pub use metrics::ConsumerMetrics;
pub use offsets::{PartitionOffsets, Tp};
pub use pipeline::{
    DEFAULT_MAX_BUFFERED_BYTES_PER_PARTITION, DEFAULT_MAX_UNCOMMITTED_PER_PARTITION, Flow,
    Ordering, Pipeline, PipelineConfig, Taken,
};
pub use retry::RetryPolicy;
use sinks::kafka::Transaction;

use crate::kafka::KafkaSettings;
use crate::{Error, Health};

/// Producer compression codec (dead-letter topic and kafka sink).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    #[default]
    Zstd,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Everything the `consume` mode needs, whatever the handler.
#[derive(Debug, Clone)]
pub struct ConsumeConfig {
    pub consumer: ConsumerConfig,
    pub pipeline: PipelineConfig,
    /// Where poison records go; `None` (and no `dead_letter_http`): they stop the worker.
    pub dead_letter_topic: Option<String>,
    /// An HTTP destination for them instead of a topic (at most one of the two).
    pub dead_letter_http: Option<sinks::http::HttpSinkConfig>,
    pub compression: Compression,
}

impl ConsumeConfig {
    /// Checks the settings that depend on each other.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |field, reason: &str| {
            Err(Error::InvalidConfig {
                field,
                reason: reason.into(),
            })
        };
        if self.consumer.topics.is_empty() {
            return invalid("topics", "at least one topic is required");
        }
        if self.consumer.group_id.is_empty() {
            return invalid("groupId", "must not be empty");
        }
        if !(1..=1024).contains(&self.pipeline.concurrency) {
            return invalid("processing.concurrency", "must be between 1 and 1024");
        }
        if !(1..=1_000_000).contains(&self.pipeline.max_uncommitted_per_partition) {
            return invalid(
                "processing.maxUncommittedPerPartition",
                "must be between 1 and 1000000",
            );
        }
        if self.pipeline.max_buffered_bytes_per_partition < self.pipeline.max_record_bytes {
            return invalid(
                "processing.maxBufferedBytesPerPartition",
                "must be at least the largest record accepted (maxRecordBytes)",
            );
        }
        if !(1..=100).contains(&self.pipeline.retry.max_attempts) {
            return invalid("processing.retry.maxAttempts", "must be between 1 and 100");
        }
        if self.pipeline.retry.initial > self.pipeline.retry.max {
            return invalid(
                "processing.retry.backoff.initial",
                "must not be longer than processing.retry.backoff.max",
            );
        }
        if let Some(dlq) = &self.dead_letter_topic
            && self.consumer.topics.contains(dlq)
        {
            return invalid(
                "processing.deadLetterTopic",
                "must not be one of the consumed topics",
            );
        }
        if self.dead_letter_topic.is_some() && self.dead_letter_http.is_some() {
            return invalid(
                "processing.deadLetterHttp",
                "set at most one of deadLetterTopic, deadLetterHttp",
            );
        }
        if self.pipeline.on_invalid == InvalidPolicy::DeadLetter
            && self.dead_letter_topic.is_none()
            && self.dead_letter_http.is_none()
        {
            return invalid(
                "processing.deadLetterTopic",
                "required (or deadLetterHttp) when events.onUnknownType is deadLetter (the \
                 default): set one, or set events.onUnknownType to skip or fail",
            );
        }
        if self.consumer.commit_interval.is_zero() {
            return invalid("commitInterval", "must be positive");
        }
        Ok(())
    }
}

/// An idempotent producer (acks=all) with the configured compression.
pub fn producer(kafka: &KafkaSettings, compression: Compression) -> Result<FutureProducer, Error> {
    producer_config(kafka, compression)
        .create()
        .map_err(Error::Kafka)
}

/// How long a commit waits at most for the outputs sent before it to be acknowledged: past
/// `message.timeout.ms` (30 s, [`producer_config`]), by which librdkafka settles every output,
/// acknowledged or failed.
/// The maps looked up for every record (lanes, partitions, declared event types): foldhash,
/// seeded once per process (the keys come from producers, so not a fixed seed). Their SipHash
/// lookups took ~5 % of the fetch loop (perf, docs/benchmarks.md part 1).
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;

pub const OUTPUTS_SETTLE_MAX: std::time::Duration = std::time::Duration::from_secs(45);

/// The settings of every producer of the consumer (sinks, dead letters): idempotent, acks=all,
/// each output settled (acknowledged or failed) within 30 s.
pub fn producer_config(kafka: &KafkaSettings, compression: Compression) -> rdkafka::ClientConfig {
    let mut config = kafka.client_config();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", compression.as_str())
        .set("message.timeout.ms", "30000");
    config
}

/// Runs the consumer with `handler` until `shutdown` is cancelled (then drains and commits)
/// or a poison record stops it.
pub async fn run<H: Handler>(
    config: ConsumeConfig,
    handler: H,
    metrics: ConsumerMetrics,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    run_with_transaction(config, handler, None, metrics, health, shutdown).await
}

/// As [`run`]; with `transaction` (from a transactional [`sinks::kafka::KafkaSink`]) the
/// offsets are committed inside its transactions.
pub async fn run_with_transaction<H: Handler>(
    config: ConsumeConfig,
    handler: H,
    transaction: Option<Arc<Transaction>>,
    metrics: ConsumerMetrics,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    config.validate()?;
    let dead_letters = match (&config.dead_letter_topic, &config.dead_letter_http) {
        (Some(topic), _) => Some(DeadLetters::new(
            producer(&config.consumer.kafka, config.compression)?,
            topic.clone(),
        )),
        (None, Some(http)) => Some(DeadLetters::http(sinks::http::HttpSink::new(http.clone())?)),
        (None, None) => None,
    };
    let pipeline = Pipeline::new(
        handler,
        config.pipeline.clone(),
        dead_letters,
        metrics.clone(),
    );
    consumer::run(
        config.consumer,
        pipeline,
        transaction,
        metrics,
        health,
        shutdown,
    )
    .await
}
