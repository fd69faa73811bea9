//! The Kafka sink: each event is produced to a topic of the same cluster (key, value and
//! headers of the consumed record, plus `pipewright.source` = `<topic>/<partition>/<offset>`).
//!
//! - `transactional: false`: an idempotent producer (acks=all); a record is finished once the
//!   target topic acknowledged it. At least once (see the `consume` module).
//! - `transactional: true`: **exactly once for `read_committed` readers.** One transactional
//!   producer per worker (`transactional.id` = `pipewright-<group>-<instance>`, stable across
//!   restarts of the same pod, so a restart fences and aborts the previous incarnation's open
//!   transaction). Outputs are produced inside the open transaction; a commit waits until no
//!   record is in flight (the pipeline is quiesced, so every output in the transaction belongs
//!   to a record below the offsets being committed), then sends the consumer offsets into the
//!   transaction (`send_offsets_to_transaction`, with the consumer's group metadata, so a
//!   zombie of an older generation is fenced) and commits it. The group's offsets are never
//!   committed outside a transaction. A partition revocation commits the same way before the
//!   partition is given up. Any transaction error stops the worker without committing: the
//!   open transaction is aborted, and the restart replays from the last committed transaction.
//!   Dead-lettered records go through a separate idempotent producer (at least once).
//!
//! Proven by `consume_transactional_kafka_sink_is_exactly_once_for_read_committed_readers_across_sigkill`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{error, info};

use crate::Error;
use crate::consume::events::{GenericEvent, HandlerError, Record};
use crate::consume::offsets::Tp;
use crate::consume::{Compression, producer};
use crate::kafka::KafkaSettings;

/// Header naming the consumed record an output came from.
pub const H_SOURCE: &str = "pipewright.source";

const TX_TIMEOUT: Duration = Duration::from_secs(30);

/// The producer's `transaction.timeout.ms`: the broker aborts a transaction open longer.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a commit of the transaction waits for the records in flight at most (half the
/// transaction timeout, so the commit itself still fits). A record unfinished for longer (a
/// retry loop, a slow target) makes the worker abort the transaction and stop: its outputs are
/// discarded and the restart replays from the last committed transaction.
pub const TX_QUIESCE_MAX: Duration = Duration::from_secs(30);

/// Produces each event to `topic`.
#[derive(Clone)]
pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
    transaction: Option<Arc<Transaction>>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.topic)
            .field("transactional", &self.transaction.is_some())
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// An idempotent (at-least-once) sink.
    pub fn new(
        kafka: &KafkaSettings,
        topic: &str,
        compression: Compression,
    ) -> Result<KafkaSink, Error> {
        Ok(KafkaSink {
            producer: producer(kafka, compression)?,
            topic: topic.to_string(),
            transaction: None,
        })
    }

    /// A transactional (exactly-once) sink; `transactional_id` must be stable per worker
    /// instance and unique in the cluster. Initialises the producer (fencing an earlier
    /// incarnation) and opens the first transaction.
    pub async fn transactional(
        kafka: &KafkaSettings,
        topic: &str,
        compression: Compression,
        transactional_id: &str,
    ) -> Result<KafkaSink, Error> {
        let producer: FutureProducer = kafka
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", compression.as_str())
            .set("transactional.id", transactional_id)
            .set(
                "transaction.timeout.ms",
                TRANSACTION_TIMEOUT.as_millis().to_string(),
            )
            .set("message.timeout.ms", "30000")
            .create()
            .map_err(Error::Kafka)?;
        let p = producer.clone();
        tokio::task::spawn_blocking(move || {
            p.init_transactions(Duration::from_secs(60))?;
            p.begin_transaction()
        })
        .await
        .map_err(|e| Error::Sink {
            sink: "kafka",
            reason: format!("transaction set-up panicked: {e}"),
        })?
        .map_err(Error::Kafka)?;
        info!(transactional_id, "transactional producer ready");
        Ok(KafkaSink {
            transaction: Some(Arc::new(Transaction {
                producer: producer.clone(),
                broken: AtomicBool::new(false),
            })),
            producer,
            topic: topic.to_string(),
        })
    }

    /// Waits until every record produced so far is acknowledged or failed (bounded): called
    /// before a revoked partition is given up, so nothing this worker produced for it lands
    /// after its next owner's outputs. A transactional sink has nothing to flush: its outputs
    /// become visible with the transaction's commit.
    pub fn flush(&self) {
        if self.transaction.is_none()
            && let Err(e) = self.producer.flush(Duration::from_secs(30))
        {
            tracing::warn!(error = %e, "flushing the kafka sink's producer failed");
        }
    }

    /// The transaction state, for the consumer's committer (transactional sinks only).
    pub fn transaction(&self) -> Option<Arc<Transaction>> {
        self.transaction.clone()
    }

    pub async fn deliver(
        &self,
        _event: &GenericEvent,
        record: &Record,
    ) -> Result<(), HandlerError> {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &record.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let source = record.id().to_string();
        headers = headers.insert(Header {
            key: H_SOURCE,
            value: Some(&source),
        });
        let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = &record.key {
            out = out.key(key.as_slice());
        }
        if let Some(payload) = &record.payload {
            out = out.payload(payload.as_slice());
        }
        self.producer
            .send(out, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| HandlerError::retryable("kafka_produce", e.to_string()))
    }
}

/// The open transaction of a transactional sink; commits move the group's offsets with it.
pub struct Transaction {
    producer: FutureProducer,
    broken: AtomicBool,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("broken", &self.broken.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Transaction {
    /// Sends `offsets` into the open transaction, commits it and opens the next one. Blocking.
    /// After any failure the transaction is aborted and every later call fails: the worker
    /// must stop (its restart replays from the last committed transaction).
    pub fn commit(
        &self,
        group: Option<ConsumerGroupMetadata>,
        offsets: &[(Tp, i64)],
    ) -> Result<(), Error> {
        if self.broken.load(Ordering::Acquire) {
            return Err(Error::Sink {
                sink: "kafka",
                reason: "the transaction failed earlier; the worker must restart".into(),
            });
        }
        let result = (|| {
            let cgm = group.ok_or_else(|| Error::Sink {
                sink: "kafka",
                reason: "the consumer has no group metadata (not in a group)".into(),
            })?;
            let mut tpl = TopicPartitionList::new();
            for (tp, o) in offsets {
                tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*o))
                    .map_err(Error::Kafka)?;
            }
            self.producer
                .send_offsets_to_transaction(&tpl, &cgm, TX_TIMEOUT)
                .map_err(Error::Kafka)?;
            self.producer
                .commit_transaction(TX_TIMEOUT)
                .map_err(Error::Kafka)?;
            self.producer.begin_transaction().map_err(Error::Kafka)
        })();
        result.inspect_err(|e| {
            self.broken.store(true, Ordering::Release);
            error!(error = %crate::Chain(e), "transaction commit failed; aborting it and stopping");
            let _ = self.producer.abort_transaction(TX_TIMEOUT);
        })
    }

    /// Aborts the open transaction (a stop without commit).
    pub fn abort(&self) {
        self.broken.store(true, Ordering::Release);
        let _ = self.producer.abort_transaction(TX_TIMEOUT);
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }
}
