//! The Kafka side: a [`StreamConsumer`] in a consumer group (cooperative-sticky assignment,
//! static membership when an instance id is set, no auto-commit), the rebalance callbacks that
//! keep the [`Pipeline`] in step with the assignment, and the fetch loop that feeds it, pauses
//! and resumes partitions by their windows, and commits.
//!
//! - **The loop never waits for the pipeline.** It keeps polling (so a slow record never makes
//!   the consumer miss `max.poll.interval.ms` and leave the group). Each assigned partition
//!   has a queue of its own ([`super::queues`]); a partition whose window is full is not read
//!   until the window has room (what librdkafka prefetched of it waits in its queue, capped
//!   per partition) while the others keep flowing.
//! - **Commits.** Each waits first until every output sent by the records below its offsets
//!   is acknowledged ([`Handler::await_outputs`]; an output lost fails the worker
//!   uncommitted). In the background (the loop never waits for one; at most one in flight),
//!   every `commit_interval` and early when a quarter of a partition's window is finished and
//!   unsent; the window moves when the broker acknowledged. Synchronous in the loop only on
//!   revoke and shutdown. With a transactional sink, offsets go into its transaction instead
//!   (see [`super::sinks::kafka`]), on the same schedule: every interval and early when a
//!   window asks (else a partition whose window filled would wait paused for the next tick).
//! - **Revoke.** The callback runs [`Pipeline::revoke_blocking`] (nothing of the partition
//!   starts any more; running records get `revoke_timeout`, then are cancelled and stopped),
//!   waits until the handler's outputs are acknowledged ([`Handler::await_outputs`]: the
//!   Kafka sink's producer), then commits the finished prefix synchronously. Only then does librdkafka give
//!   the partition up, so its next owner never overlaps with this worker's deliveries of it.
//!   A *lost* assignment (session timeout: another member may own it already) is cancelled at
//!   once and not committed.
//!
//! `StreamConsumer` rather than `BaseConsumer`: the loop is async (it awaits the ends of
//! records, the commit tick and the shutdown token in one `select!`), and polling its message
//! stream serves the rebalance and commit callbacks on the same task, so the pipeline's state
//! never races with an assignment change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::task::Poll;

use futures::{FutureExt, StreamExt};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::stream_consumer::MessageStream;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::statistics::Statistics;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::OUTPUTS_SETTLE_MAX;
use super::events::{Handler, Record};
use super::metrics::{ConsumerMetrics, PartitionLabels};
use super::offsets::Tp;
use super::pipeline::{Flow, Pipeline, Taken};
use super::queues::{PartitionQueues, Queue};
use super::sinks::kafka::{TX_QUIESCE_MAX, Transaction};
use crate::kafka::KafkaSettings;
use crate::{Error, Health};

/// Where a new consumer group starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum InitialOffset {
    #[default]
    Earliest,
    Latest,
}

/// Default of [`ConsumerConfig::revoke_timeout`].
pub const DEFAULT_REVOKE_TIMEOUT: Duration = pipewright_crds::worker_config::DEFAULT_REVOKE_TIMEOUT;

/// The consumer's fetch settings (defaults the allow-listed `kafka.config` keys may
/// override); the benchmark's raw rust-rdkafka loop uses the same, so its ratio measures the
/// pipeline, not a fetch setting.
///
/// - `queued.max.messages.kbytes`: each partition has a queue of its own ([`super::queues`]),
///   so this caps the prefetch *per partition* (librdkafka's default, 64 MiB, applies to the
///   consumer's one queue). 4 MiB is about 14,000 records of 300 bytes, more than a window
///   takes at once by default: measured against 16 MiB (1 ms handler at concurrency 256 on
///   one partition; no-op sink on six), no slower (docs/benchmarks.md).
/// - `fetch.queue.backoff.ms`: a fetch that stopped at that cap starts again after this:
///   librdkafka's default (1 s) stalled every partition for a second whenever the pipeline
///   drained the queue faster than the broker filled it (measured: 3.4 s instead of 1.1 s for
///   300k records).
/// - `fetch.wait.max.ms`: a broker holds a fetch for partitions at their log end this long,
///   and librdkafka sends a broker's next fetch only when the previous one returned; so a
///   partition with a backlog whose queue ran dry waited behind a fetch held for caught-up
///   partitions of the same broker, up to librdkafka's 500 ms each time (measured: six
///   partitions ending at different times, no-op sink, 590–610k records/s with 500 ms against
///   770k–1.05M with 100 ms). The cost: an idle consumer sends a fetch to each broker 10 times
///   a second instead of twice.
pub const PREFETCH_DEFAULTS: &[(&str, &str)] = &[
    ("queued.max.messages.kbytes", "4096"),
    ("fetch.queue.backoff.ms", "10"),
    ("fetch.wait.max.ms", "100"),
];

/// Records taken per wake-up of the fetch loop, at most, before it looks at other work.
const FETCH_BATCH: usize = 1024;

/// Settings of the Kafka consumer.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub kafka: KafkaSettings,
    pub topics: Vec<String>,
    pub group_id: String,
    /// `group.instance.id` (static membership), for a worker run by hand whose instance comes
    /// back under the same name. The operator leaves it unset: a Deployment's pod never comes
    /// back under its name, and a static member that goes away holds its partitions until its
    /// session times out (docs/operator.md, "Consumer group membership").
    pub group_instance_id: Option<String>,
    pub initial_offset: InitialOffset,
    /// How often the committable offsets are committed.
    pub commit_interval: Duration,
    /// How long a shutdown waits for the records taken.
    pub drain_timeout: Duration,
    /// How long a revocation waits for the revoked partitions' running records before it
    /// cancels them.
    pub revoke_timeout: Duration,
}

impl ConsumerConfig {
    /// The librdkafka configuration of the consumer. The settings the guarantees rest on
    /// (group, cooperative-sticky assignment, no auto-commit) override the tuning keys.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut c = self.kafka.client_config();
        c.set("group.id", &self.group_id)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match self.initial_offset {
                    InitialOffset::Earliest => "earliest",
                    InitialOffset::Latest => "latest",
                },
            )
            .set_log_level(RDKafkaLogLevel::Warning);
        // Defaults the allow-listed tuning keys may override.
        for &(key, value) in PREFETCH_DEFAULTS
            .iter()
            .chain([("statistics.interval.ms", "5000")].iter())
        {
            if c.get(key).is_none() {
                c.set(key, value);
            }
        }
        if let Some(id) = &self.group_instance_id {
            c.set("group.instance.id", id);
        }
        c
    }
}

/// Runs `f`, which blocks, without starving the runtime's other tasks.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn tpl_of(offsets: &[(Tp, i64)]) -> Result<TopicPartitionList, Error> {
    let mut tpl = TopicPartitionList::new();
    for (tp, o) in offsets {
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*o))
            .map_err(Error::Kafka)?;
    }
    Ok(tpl)
}

fn tps_of(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| Tp::new(e.topic(), e.partition()))
        .collect()
}

/// Rebalance, commit and statistics callbacks.
#[derive(Debug)]
pub struct ConsumeContext<H: Handler> {
    pipeline: Arc<Pipeline<H>>,
    health: Health,
    metrics: ConsumerMetrics,
    transaction: Option<Arc<Transaction>>,
    revoke_timeout: Duration,
    drain_timeout: Duration,
    /// The assigned partitions' own queues.
    queues: PartitionQueues<H>,
}

impl<H: Handler> ClientContext for ConsumeContext<H> {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                let tp = Tp::new(topic, *partition);
                if *partition < 0 || !self.pipeline.is_assigned(&tp) {
                    continue;
                }
                // High watermark minus what this consumer would commit now.
                let lag = match self.pipeline.committable(&tp) {
                    Some(c) if p.hi_offset >= 0 => (p.hi_offset - c).max(0),
                    _ => p.consumer_lag.max(0),
                };
                self.metrics
                    .lag
                    .get_or_create(&PartitionLabels {
                        topic: topic.clone(),
                        partition: *partition,
                    })
                    .set(lag);
            }
        }
    }
}

impl<H: Handler> ConsumeContext<H> {
    fn forget_lag(&self, tps: &[Tp]) {
        for tp in tps {
            self.metrics.lag.remove(&PartitionLabels {
                topic: tp.topic.clone(),
                partition: tp.partition,
            });
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let lost = consumer.assignment_lost();
        let tps = tps_of(tpl);
        let (offsets, settled) = blocking(|| {
            let offsets = self
                .pipeline
                .revoke_blocking(&tps, lost, self.revoke_timeout);
            let handler = self.pipeline.handler();
            let settled = handler.await_outputs(handler.outputs_sent(), OUTPUTS_SETTLE_MAX);
            (offsets, settled)
        });
        self.forget_lag(&tps);
        if let Err(e) = settled {
            self.pipeline.fail(e);
            return;
        }
        if offsets.is_empty() {
            return;
        }
        let result = tpl_of(&offsets).and_then(|tpl| {
            blocking(|| consumer.commit(&tpl, CommitMode::Sync)).map_err(Error::Kafka)
        });
        if let Err(e) = result {
            self.metrics.commit_errors.inc();
            warn!(error = %crate::Chain(&e), "commit on revoke failed; the next owner delivers those records again");
        }
    }

    /// Transactional sink: wait until nothing is in flight, commit the transaction with every
    /// partition's offsets, then give the revoked partitions up. On failure the worker stops
    /// without committing (the new owners replay from the last committed transaction).
    fn revoke_transactional(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
        tx: &Transaction,
    ) {
        let lost = consumer.assignment_lost();
        let tps = tps_of(tpl);
        if !lost && !tx.is_broken() {
            let deadline = Instant::now() + self.drain_timeout.min(TX_QUIESCE_MAX);
            let result = blocking(|| {
                if !self.pipeline.quiesce_blocking(deadline) {
                    tx.abort();
                    return Err(Error::Sink {
                        sink: "kafka",
                        reason: "records still in flight at the drain timeout during a \
                                 partition revocation; transaction aborted"
                            .into(),
                    });
                }
                let offsets = self.pipeline.to_commit();
                if offsets.is_empty() {
                    return Ok(());
                }
                tx.commit(consumer.group_metadata(), &offsets)?;
                self.pipeline.acked(&offsets);
                Ok(())
            });
            if let Err(e) = result {
                self.pipeline.fail(e);
            }
        } else if lost && !tx.is_broken() {
            // Another member owns these partitions now: what this transaction holds for them
            // must not be committed.
            tx.abort();
            self.pipeline.fail(Error::Sink {
                sink: "kafka",
                reason: "partitions lost (session timeout); transaction aborted".into(),
            });
        }
        // Nothing of them is committed outside the transaction.
        blocking(|| {
            self.pipeline
                .revoke_blocking(&tps, true, self.revoke_timeout)
        });
        self.forget_lag(&tps);
    }
}

impl<H: Handler> ConsumerContext for ConsumeContext<H> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let tps = tps_of(tpl);
                for tp in &tps {
                    info!(topic = %tp.topic, partition = tp.partition, "partition assigned");
                    self.pipeline.assign(tp.clone());
                }
                // Before librdkafka starts fetching them.
                self.queues.split(&tps);
            }
            Rebalance::Revoke(tpl) => {
                match &self.transaction {
                    Some(tx) => self.revoke_transactional(consumer, tpl, tx),
                    None => self.revoke(consumer, tpl),
                }
                self.queues.remove(&tps_of(tpl));
            }
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // A partition this member paused under an earlier assignment starts unpaused.
            if tpl.count() > 0
                && let Err(e) = consumer.resume(tpl)
            {
                warn!(error = %e, "resuming newly assigned partitions failed");
            }
            self.health.set_ready(true);
        }
    }
}

/// Makes the owned [`Record`]s of fetched messages: the topic names shared (one allocation
/// per topic, not per record), and each record's delivery span started when traces are on.
#[derive(Debug)]
struct Records {
    topics: Vec<Arc<str>>,
    group: String,
    tracer: Option<&'static opentelemetry::global::BoxedTracer>,
}

impl Records {
    fn new(group: &str) -> Records {
        Records {
            topics: Vec::new(),
            group: group.to_string(),
            tracer: crate::traces::tracer(),
        }
    }

    fn topic(&mut self, name: &str) -> Arc<str> {
        match self.topics.iter().find(|t| &***t == name) {
            Some(t) => t.clone(),
            None => {
                let t: Arc<str> = name.into();
                self.topics.push(t.clone());
                t
            }
        }
    }

    /// Copies a message into an owned [`Record`].
    fn record(&mut self, m: &BorrowedMessage<'_>) -> Record {
        let headers: Vec<(String, Option<Vec<u8>>)> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| (x.key.to_string(), x.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        let trace = self.tracer.map(|tracer| {
            Box::new(crate::traces::start_delivery(
                tracer,
                &self.group,
                m.topic(),
                m.partition(),
                m.offset(),
                &headers,
            ))
        });
        Record {
            topic: self.topic(m.topic()),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
            trace,
        }
    }
}

/// The fetch loop's side of the consumer.
struct Fetcher<'a, H: Handler> {
    consumer: &'a Arc<StreamConsumer<ConsumeContext<H>>>,
    pipeline: &'a Arc<Pipeline<H>>,
    /// The commit in flight (at most one).
    committing: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    metrics: &'a ConsumerMetrics,
    transaction: Option<&'a Transaction>,
    drain_timeout: Duration,
}

impl<H: Handler> Fetcher<'_, H> {
    /// Pauses and resumes the partitions read from the consumer's queue as their windows ask
    /// (a partition with a queue of its own is paused by not reading it).
    fn apply(&self, mut flow: Flow) {
        if flow.is_empty() {
            return;
        }
        let queues = &self.consumer.context().queues;
        flow.pause.retain(|tp| !queues.is_split(tp));
        flow.resume.retain(|tp| !queues.is_split(tp));
        let list = |tps: &[Tp]| {
            let mut tpl = TopicPartitionList::new();
            for tp in tps {
                tpl.add_partition(&tp.topic, tp.partition);
            }
            tpl
        };
        if !flow.pause.is_empty() {
            debug!(partitions = ?flow.pause, "window full: pausing");
            if let Err(e) = self.consumer.pause(&list(&flow.pause)) {
                warn!(error = %e, "pausing partitions failed");
            }
        }
        if !flow.resume.is_empty() {
            debug!(partitions = ?flow.resume, "window has room: resuming");
            match self.consumer.resume(&list(&flow.resume)) {
                Ok(()) => self.wake_fetchers(flow.resume),
                Err(e) => warn!(error = %e, "resuming partitions failed"),
            }
        }
    }

    /// Wakes the fetcher of resumed partitions. librdkafka serves a resume on its main thread
    /// and does not wake the broker thread that fetches the partition: a broker thread with no
    /// fetchable partition sleeps up to a second (`rd_kafka_max_block_ms`), so every resume
    /// of a paused partition stalled it for up to a second (measured: ~0.9 s per pause with a
    /// 1 ms handler at concurrency 256, 6 % of the ideal rate; docs/benchmarks.md part 2). A
    /// watermark query is a request that the partition's leader's broker thread sends itself:
    /// it wakes that thread, which then sees the partition fetchable. In the background (one
    /// short request per resume; a partition resumes at most once per pause).
    fn wake_fetchers(&self, resumed: Vec<Tp>) {
        let consumer = self.consumer.clone();
        drop(tokio::task::spawn_blocking(move || {
            for tp in resumed {
                if let Err(e) =
                    consumer.fetch_watermarks(&tp.topic, tp.partition, Duration::from_secs(5))
                {
                    debug!(error = %e, topic = %tp.topic, partition = tp.partition, "waking the fetcher failed");
                }
            }
        }));
    }

    /// Sends the committable offsets: asynchronously to the group, or (transactional) in the
    /// transaction once nothing is in flight.
    async fn commit(&self) {
        match self.transaction {
            None => self.commit_in_background(),
            Some(tx) => {
                // Everything the transaction holds must belong to the committed offsets: no
                // record may be unfinished. Nothing new is taken while waiting.
                let bound = self.drain_timeout.min(TX_QUIESCE_MAX);
                if !self
                    .pipeline
                    .quiesce(tokio::time::Instant::now() + bound)
                    .await
                {
                    if self.pipeline.has_failed() {
                        return;
                    }
                    blocking(|| tx.abort());
                    self.pipeline.fail(Error::Sink {
                        sink: "kafka",
                        reason: format!(
                            "a record stayed unfinished for {bound:?} while the transaction \
                             waited to commit; transaction aborted (its outputs are discarded), \
                             the restart replays from the last committed transaction"
                        ),
                    });
                    return;
                }
                self.commit_transaction(tx);
            }
        }
    }

    /// Sends the committable offsets to the group without waiting: a synchronous commit on a
    /// blocking thread, whose result moves the windows (acknowledged) or sends them again with
    /// the next commit (failed). At most one is in flight. (Not librdkafka's asynchronous
    /// commit: rust-rdkafka 0.39 never reports its result, fede1024/rust-rdkafka#856, so a
    /// window could not tell an acknowledged commit from a lost one.)
    fn commit_in_background(&self) {
        let mut committing = self.committing.lock().unwrap();
        if committing.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let offsets = self.pipeline.to_commit();
        if offsets.is_empty() {
            return;
        }
        // Read after the offsets were chosen: it covers every output of the records below them.
        let sent = self.pipeline.handler().outputs_sent();
        debug!(?offsets, "committing");
        let consumer = self.consumer.clone();
        let pipeline = self.pipeline.clone();
        let metrics = self.metrics.clone();
        *committing = Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = pipeline.handler().await_outputs(sent, OUTPUTS_SETTLE_MAX) {
                pipeline.fail(e);
                return;
            }
            let result = tpl_of(&offsets).and_then(|tpl| {
                consumer
                    .commit(&tpl, CommitMode::Sync)
                    .map_err(Error::Kafka)
            });
            match result {
                Ok(()) => pipeline.acked(&offsets),
                Err(e) => {
                    metrics.commit_errors.inc();
                    warn!(error = %crate::Chain(&e), "offset commit failed; retried with the next one");
                    pipeline.commit_failed(&offsets);
                }
            }
            // The loop applies what the acknowledgement changed (resumed partitions).
            pipeline.wake();
        }));
    }

    /// Waits for the commit in flight.
    async fn commit_finished(&self) {
        let handle = self.committing.lock().unwrap().take();
        if let Some(h) = handle {
            let _ = h.await;
        }
    }

    fn commit_transaction(&self, tx: &Transaction) {
        let offsets = self.pipeline.to_commit();
        if offsets.is_empty() {
            return;
        }
        match blocking(|| tx.commit(self.consumer.group_metadata(), &offsets)) {
            Ok(()) => self.pipeline.acked(&offsets),
            Err(e) => {
                self.metrics.commit_errors.inc();
                self.pipeline.fail(e);
            }
        }
    }

    /// The last commit of a shutdown, synchronous.
    fn commit_sync(&self) {
        let offsets = self.pipeline.to_commit();
        if offsets.is_empty() {
            info!("nothing left to commit; leaving the group");
            return;
        }
        let handler = self.pipeline.handler();
        let sent = handler.outputs_sent();
        if let Err(e) = blocking(|| handler.await_outputs(sent, OUTPUTS_SETTLE_MAX)) {
            warn!(error = %crate::Chain(&e), "not committing: outputs unacknowledged");
            self.pipeline.fail(e);
            return;
        }
        let result = tpl_of(&offsets).and_then(|tpl| {
            blocking(|| self.consumer.commit(&tpl, CommitMode::Sync)).map_err(Error::Kafka)
        });
        match result {
            Ok(()) => {
                self.pipeline.acked(&offsets);
                info!(?offsets, "offsets committed; leaving the group");
            }
            Err(e) => {
                self.metrics.commit_errors.inc();
                warn!(error = %crate::Chain(&e), "final offset commit failed");
            }
        }
    }
}

/// The next record of any of `queues` (polled in order) with the index of its queue.
async fn next_of<'a, C: ConsumerContext>(
    queues: &mut [MessageStream<'a, C>],
) -> (usize, KafkaResult<BorrowedMessage<'a>>) {
    std::future::poll_fn(|cx| {
        for (i, q) in queues.iter_mut().enumerate() {
            // A Kafka message stream never ends.
            if let Poll::Ready(Some(m)) = q.poll_next_unpin(cx) {
                return Poll::Ready((i, m));
            }
        }
        Poll::Pending
    })
    .await
}

/// After a record of `queues[first]` was taken: takes what else the queues hold already, in
/// turn, without another trip through the select (bounded, so ends of records and ticks are
/// not starved). Stops as soon as a window is full: the next round of the loop pauses the
/// partitions of the consumer's own queue whose window is full, and reads only the partition
/// queues whose window has room (the window is a hard bound).
fn take_fetched<H: Handler, C: ConsumerContext>(
    pipeline: &Pipeline<H>,
    queues: &mut [MessageStream<'_, C>],
    first: usize,
    mut taken: Taken,
    records: &mut Records,
) {
    let mut empty = vec![false; queues.len()];
    let mut i = first;
    let mut count = 1;
    while taken != Taken::Paused && count < FETCH_BATCH {
        match queues[i].next().now_or_never() {
            Some(Some(Ok(m))) => {
                taken = pipeline.take(records.record(&m));
                count += 1;
                continue;
            }
            Some(Some(Err(e))) => {
                warn!(error = %e, "consumer error");
                return;
            }
            _ => empty[i] = true,
        }
        match (1..=queues.len())
            .map(|d| (i + d) % queues.len())
            .find(|&j| !empty[j])
        {
            Some(j) => i = j,
            None => return,
        }
    }
}

/// Consumes until `shutdown` is cancelled or the pipeline fails, then drains and commits.
///
/// With `transaction` (a transactional Kafka sink), offsets are committed only inside its
/// transactions, never to the group directly.
pub async fn run<H: Handler>(
    config: ConsumerConfig,
    pipeline: Pipeline<H>,
    transaction: Option<Arc<Transaction>>,
    metrics: ConsumerMetrics,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let pipeline = Arc::new(pipeline);
    let context = ConsumeContext {
        pipeline: pipeline.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
        transaction: transaction.clone(),
        revoke_timeout: config.revoke_timeout,
        drain_timeout: config.drain_timeout,
        queues: PartitionQueues::default(),
    };
    let consumer: Arc<StreamConsumer<ConsumeContext<H>>> = Arc::new(
        config
            .client_config()
            .create_with_context(context)
            .map_err(Error::Kafka)?,
    );
    consumer.context().queues.set_consumer(&consumer);
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(Error::Kafka)?;
    info!(group = %config.group_id, topics = ?config.topics, "consuming");
    let fetcher = Fetcher {
        consumer: &consumer,
        pipeline: &pipeline,
        committing: std::sync::Mutex::new(None),
        metrics: &metrics,
        transaction: transaction.as_deref(),
        drain_timeout: config.drain_timeout,
    };

    let failed = pipeline.failed();
    let mut tick = tokio::time::interval(config.commit_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut records = Records::new(&config.group_id);
    // The partitions read from queues of their own, and which of them comes first next time.
    let mut parts: Vec<(Tp, Arc<Queue<H>>)> = Vec::new();
    let mut parts_seen = 0;
    let mut turn = 0usize;
    loop {
        fetcher.apply(pipeline.take_flow());
        // Also with a transaction: its offsets move only with a commit, so a partition whose
        // window filled between two ticks would stay paused until the next one.
        if pipeline.commit_soon() {
            fetcher.commit().await;
        }
        if let Some(now) = consumer.context().queues.changed(&mut parts_seen) {
            parts = now;
        }
        // The consumer's own queue first: it serves the rebalance callbacks and counts as the
        // poll for `max.poll.interval.ms` (a busy partition queue, always ready, would
        // otherwise keep it from being polled); then the queues of the partitions whose window
        // has room, the first one in turn.
        let readable = pipeline.readable(parts.iter().map(|(tp, _)| tp));
        let mut queues = vec![consumer.stream()];
        queues.extend(
            parts
                .iter()
                .zip(readable)
                .filter(|(_, r)| *r)
                .map(|((_, q), _)| q.stream()),
        );
        let n = queues.len() - 1;
        if n > 0 {
            queues[1..].rotate_left(turn % n);
            turn = turn.wrapping_add(1);
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = failed.cancelled() => break,
            _ = pipeline.done_notified() => fetcher.apply(pipeline.drain_done()),
            _ = tick.tick() => fetcher.commit().await,
            (first, message) = next_of(&mut queues) => match message {
                Ok(m) => {
                    let taken = pipeline.take(records.record(&m));
                    drop(m);
                    take_fetched(&pipeline, &mut queues, first, taken, &mut records);
                }
                Err(e) => {
                    warn!(error = %e, "consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(parts);
    health.set_ready(false);
    info!(in_flight = pipeline.in_flight(), "draining");
    let drained = pipeline.drain(config.drain_timeout).await;
    fetcher.commit_finished().await;
    match &transaction {
        // A transaction holds the outputs of every finished record: commit it only when
        // nothing is left unfinished (no gap below a finished record).
        Some(tx) if !drained || pipeline.has_failed() => {
            warn!("not committing the open transaction (records left unfinished): aborting it");
            blocking(|| tx.abort());
        }
        Some(tx) => fetcher.commit_transaction(tx),
        None => fetcher.commit_sync(),
    }
    // Dropping the consumer closes it: its remaining partitions are revoked (nothing left to
    // commit) and, without static membership, it leaves the group. The partition queues hold
    // it: dropped first.
    drop(fetcher);
    consumer.context().queues.clear();
    blocking(move || drop(consumer));
    match pipeline.take_error() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
