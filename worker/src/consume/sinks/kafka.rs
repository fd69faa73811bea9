//! The Kafka sink: each event is produced to a topic of the same cluster (key, value and
//! headers of the consumed record, plus `pipewright.source` = `<topic>/<partition>/<offset>`).
//!
//! - **A delivery returns once the output is handed to the producer**, not when the target
//!   acknowledges it: the idempotent producer keeps the order of what it is given per output
//!   partition (the output key is the input key, so one key's outputs share a partition), so
//!   the next record of the key starts at once instead of a round trip later (with an await
//!   per record, a key's throughput was one record per linger + acknowledgement, ~6 ms).
//!   Offsets are committed only once every output sent before them is acknowledged
//!   ([`KafkaSink::await_outputs`], called by the consumer before every commit, revoke and
//!   shutdown commit). An output that fails after librdkafka's own retries
//!   (`message.timeout.ms`, 30 s) cannot be retried in order any more: the worker stops
//!   without committing past it, and its restart delivers again from the last commit. A full
//!   producer queue makes deliveries wait (backpressure), never drops.
//! - `transactional: false`: an idempotent producer (acks=all). At least once (see the
//!   `consume` module), proven across SIGKILL by
//!   `consume_kafka_sink_is_at_least_once_across_sigkill_and_a_poison_record_is_dead_lettered`.
//! - `transactional: true`: **exactly once for `read_committed` readers.** One transactional
//!   producer per worker (`transactional.id` = `pipewright-<group>-<instance>`, stable across
//!   restarts of the same pod, so a restart fences and aborts the previous incarnation's open
//!   transaction). Outputs are produced inside the open transaction; a commit waits until no
//!   record is in flight (the pipeline is quiesced, so every output in the transaction belongs
//!   to a record below the offsets being committed; librdkafka's commit waits for every output
//!   to be acknowledged, and fails the transaction if one failed), then sends the consumer offsets into the
//!   transaction (`send_offsets_to_transaction`, with the consumer's group metadata, so a
//!   zombie of an older generation is fenced) and commits it. The group's offsets are never
//!   committed outside a transaction. A partition revocation commits the same way before the
//!   partition is given up. Any transaction error stops the worker without committing: the
//!   open transaction is aborted, and the restart replays from the last committed transaction.
//!   Dead-lettered records go through a separate idempotent producer (at least once).
//!
//! Proven by `consume_transactional_kafka_sink_is_exactly_once_for_read_committed_readers_across_sigkill`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{error, info};

use crate::consume::events::{GenericEvent, HandlerError, Record};
use crate::consume::offsets::Tp;
use crate::consume::{Compression, producer_config};
use crate::kafka::KafkaSettings;
use crate::{Error, traces};

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

/// How often a transaction's commit looks whether the producer settled.
const SETTLE_POLL: Duration = Duration::from_millis(1);

/// How long a delivery waits before it offers an output again to a full producer queue.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(1);

/// The sink's producer: its delivery reports settle [`Acks`].
type SinkProducer = ThreadedProducer<AckContext>;

/// Outputs sent and not acknowledged yet, by send number, and the first that failed.
#[derive(Debug, Default)]
struct Acks {
    state: Mutex<AckState>,
    settled: Condvar,
}

#[derive(Debug, Default)]
struct AckState {
    /// The send number of the next output.
    next: u64,
    pending: BTreeSet<u64>,
    failure: Option<String>,
}

impl Acks {
    fn lock(&self) -> std::sync::MutexGuard<'_, AckState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The producer's context: each delivery report settles its output's send number.
struct AckContext(Arc<Acks>);

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: usize) {
        let mut st = self.0.lock();
        st.pending.remove(&(sent as u64));
        if let Err((e, _)) = result
            && st.failure.is_none()
        {
            st.failure = Some(e.to_string());
        }
        drop(st);
        self.0.settled.notify_all();
    }
}

/// Produces each event to `topic`.
#[derive(Clone)]
pub struct KafkaSink {
    producer: SinkProducer,
    acks: Arc<Acks>,
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
        let acks = Arc::new(Acks::default());
        let producer = producer_config(kafka, compression)
            .create_with_context(AckContext(acks.clone()))
            .map_err(Error::Kafka)?;
        Ok(KafkaSink {
            producer,
            acks,
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
        let acks = Arc::new(Acks::default());
        let producer: SinkProducer = producer_config(kafka, compression)
            .set("transactional.id", transactional_id)
            .set(
                "transaction.timeout.ms",
                TRANSACTION_TIMEOUT.as_millis().to_string(),
            )
            .create_with_context(AckContext(acks.clone()))
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
            acks,
            topic: topic.to_string(),
        })
    }

    /// The send number of the next output: every output sent so far is below it.
    pub fn outputs_sent(&self) -> u64 {
        self.acks.lock().next
    }

    /// Blocks until every output sent below `mark` is acknowledged (at most `timeout`), or
    /// fails if any output failed. A transactional sink's outputs are settled by its commit
    /// (librdkafka's commit waits for them and fails on any failed output) and only become
    /// visible then: it returns at once.
    pub fn await_outputs(&self, mark: u64, timeout: Duration) -> Result<(), Error> {
        if self.transaction.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        let mut st = self.acks.lock();
        loop {
            if let Some(failure) = &st.failure {
                return Err(Error::Sink {
                    sink: "kafka",
                    reason: format!(
                        "an output was not acknowledged ({failure}): nothing past it is \
                         committed, the restart delivers again from the last commit"
                    ),
                });
            }
            if st.pending.first().is_none_or(|&oldest| oldest >= mark) {
                return Ok(());
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Err(Error::Sink {
                    sink: "kafka",
                    reason: format!(
                        "{} outputs still unacknowledged after {timeout:?}: nothing past \
                         them is committed",
                        st.pending.range(..mark).count()
                    ),
                });
            };
            st = self
                .acks
                .settled
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The transaction state, for the consumer's committer (transactional sinks only).
    pub fn transaction(&self) -> Option<Arc<Transaction>> {
        self.transaction.clone()
    }

    /// Hands the record's output to the producer (waiting while its queue is full).
    pub async fn deliver(
        &self,
        _event: &GenericEvent,
        record: &Record,
    ) -> Result<(), HandlerError> {
        loop {
            match self.deliver_now(record) {
                Some(result) => return result,
                None => tokio::time::sleep(QUEUE_FULL_WAIT).await,
            }
        }
    }

    /// Hands the record's output to the producer; `None` when its queue is full (nothing was
    /// sent: try again after a wait).
    pub fn deliver_now(&self, record: &Record) -> Option<Result<(), HandlerError>> {
        let mut headers = OwnedHeaders::new();
        // Traces on: the output carries the delivery span's context in place of the input's.
        let hop = record.trace.as_deref().map(traces::headers_of);
        for (k, v) in &record.headers {
            if hop.is_some()
                && (k.eq_ignore_ascii_case(traces::TRACEPARENT)
                    || k.eq_ignore_ascii_case(traces::TRACESTATE))
            {
                continue;
            }
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        for (k, v) in hop.iter().flatten() {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_str()),
            });
        }
        let source = record.id().to_string();
        headers = headers.insert(Header {
            key: H_SOURCE,
            value: Some(&source),
        });
        let sent = {
            let mut st = self.acks.lock();
            if let Some(failure) = &st.failure {
                return Some(Err(HandlerError::retryable(
                    "kafka_produce",
                    format!("an earlier output failed ({failure}); the worker is stopping"),
                )));
            }
            let sent = st.next;
            st.next += 1;
            st.pending.insert(sent);
            sent
        };
        let mut out: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(&self.topic, sent as usize).headers(headers);
        if let Some(key) = &record.key {
            out = out.key(key.as_slice());
        }
        if let Some(payload) = &record.payload {
            out = out.payload(payload.as_slice());
        }
        let result = match self.producer.send(out) {
            Ok(()) => return Some(Ok(())),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => None,
            Err((e, _)) => Some(Err(HandlerError::retryable("kafka_produce", e.to_string()))),
        };
        // Not sent: no acknowledgement will come for this number.
        self.acks.lock().pending.remove(&sent);
        self.acks.settled.notify_all();
        result
    }
}

/// The open transaction of a transactional sink; commits move the group's offsets with it.
pub struct Transaction {
    producer: SinkProducer,
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
            self.settle(TX_TIMEOUT)?;
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

    /// Waits until the producer holds no output and no delivery report (at most `timeout`).
    /// rust-rdkafka's `commit_transaction` flushes first, and its flush, finding anything in
    /// flight, polls for a fixed 100 ms: every commit took ≥ 100 ms (measured: 100.0–102 ms
    /// of flush per commit, 1–4 ms for the rest), and the pipeline takes nothing meanwhile.
    /// Outputs settle in a few milliseconds here (the producer's own thread serves the
    /// reports), so the flush inside the commit finds nothing to wait for.
    fn settle(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        while self.producer.in_flight_count() > 0 {
            if Instant::now() >= deadline {
                return Err(Error::Sink {
                    sink: "kafka",
                    reason: format!("outputs still unacknowledged after {timeout:?}"),
                });
            }
            std::thread::sleep(SETTLE_POLL);
        }
        Ok(())
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
