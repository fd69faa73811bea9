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
//!   finished there ([`offsets::OffsetTracker`]): records finish out of order, and a gap is
//!   never committed. After a crash (SIGKILL) the records from the committed offset on are
//!   delivered again. A record holds its slot of the `concurrency` bound until its offset is
//!   committed, so at most `concurrency` records are taken and uncommitted at any time: at
//!   most that many are delivered twice per crash.
//! - **Order.** With `ordering: key`, records of one key (within a partition) are delivered one
//!   at a time in offset order, while records of different keys run concurrently, even within
//!   one partition; `partition` serialises each partition; `none` gives no order.
//!   Redeliveries after a crash restart from the committed offset, so each key's sequence is
//!   replayed in order.
//! - **Bounded.** `concurrency` bounds the records in flight (running, retrying, or waiting
//!   behind an earlier record of their key); when it is reached, the fetch loop stops polling
//!   (librdkafka's own prefetch queue is capped by `queued.max.messages.kbytes`).
//! - **Poison records.** A delivery that fails `maxAttempts` times (exponential backoff with
//!   jitter between attempts) or fails permanently, and a record that is not a valid event
//!   (malformed JSON, undeclared type, schema mismatch, oversized) under the `deadLetter`
//!   policy, is produced to the dead-letter topic with headers describing the failure
//!   ([`dlq`]) and committed only once that topic acknowledged it; the records after it flow
//!   on. Without a dead-letter topic (or with the `fail` policy) it stops the worker: it and
//!   the records of its key behind it are not committed (exit code 1).
//! - **Graceful shutdown.** On SIGTERM/SIGINT the worker stops fetching, waits for the records
//!   in flight (at most `drainTimeout`; records still unfinished then are not committed),
//!   commits synchronously, and closes the consumer (leaving the group unless it is a static
//!   member). A restart after a completed drain delivers nothing twice.
//! - **Rebalance.** Cooperative-sticky assignment: a revoked partition's finished offsets are
//!   committed synchronously in the revoke callback; its records still in flight are delivered
//!   again by its next owner (bounded by `concurrency`):
//!   `consume_rebalance_to_a_second_worker_loses_nothing_and_redelivers_at_most_the_in_flight_records`.
//!
//! - **Sinks.** `postgres`: effectively once (the offset is stored with the row in one
//!   transaction; a replay is a no-op, [`sinks::postgres`]). `kafka` with `transactional`:
//!   exactly once for `read_committed` readers (outputs and offsets in one Kafka transaction,
//!   [`sinks::kafka`]). `http` and `log`: at least once (the HTTP receiver deduplicates on the
//!   idempotency header, [`sinks::http`]).
//!
//! The fetch loop waits, without polling, while the window is full; a handler that keeps a
//! record longer than librdkafka's `max.poll.interval.ms` (default 5 min; retries included)
//! makes the consumer leave the group (its partitions are then delivered again elsewhere).
//!
//! # Library use
//!
//! Implement [`Handler`] for a `#[serde(tag = "event_type")]` enum and call [`run`] with a
//! [`ConsumeConfig`]; [`Pipeline`] alone (no Kafka) serves benchmarks.

pub mod consumer;
pub mod dlq;
pub mod events;
pub mod metrics;
pub mod offsets;
pub mod pipeline;
pub mod process;
pub mod retry;
pub mod sinks;

use std::sync::Arc;

use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

pub use consumer::{ConsumerConfig, DEFAULT_REVOKE_TIMEOUT, InitialOffset};
pub use dlq::DeadLetters;
pub use events::{
    DeclaredTypes, GenericEvent, Handler, HandlerError, InvalidPolicy, Record, Rejection,
    RejectionKind,
};
pub use metrics::ConsumerMetrics;
pub use offsets::{PartitionOffsets, Tp};
pub use pipeline::{
    DEFAULT_MAX_BUFFERED_BYTES_PER_PARTITION, DEFAULT_MAX_UNCOMMITTED_PER_PARTITION, Flow,
    Ordering, Pipeline, PipelineConfig,
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
    /// Where poison records go; `None`: they stop the worker.
    pub dead_letter_topic: Option<String>,
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
        if self.pipeline.on_invalid == InvalidPolicy::DeadLetter && self.dead_letter_topic.is_none()
        {
            return invalid(
                "processing.deadLetterTopic",
                "required when events.onUnknownType is deadLetter (the default): set it, or \
                 set events.onUnknownType to skip or fail",
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
    kafka
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", compression.as_str())
        .set("message.timeout.ms", "30000")
        .create()
        .map_err(Error::Kafka)
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
    let dead_letters = match &config.dead_letter_topic {
        Some(topic) => Some(DeadLetters::new(
            producer(&config.consumer.kafka, config.compression)?,
            topic.clone(),
        )),
        None => None,
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
