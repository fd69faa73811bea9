//! The bounded pipeline: records go in one at a time ([`Pipeline::submit`]), are processed
//! concurrently up to `concurrency` records, in order where the [`Ordering`] demands it, and are
//! marked finished in the [`OffsetTracker`] once delivered, skipped or dead-lettered.
//!
//! - Bound: a record takes a semaphore permit when it is taken into the pipeline and gives it
//!   back only once its offset is *committed* (not merely finished): records running,
//!   retrying, waiting behind an earlier record of their key, or finished but not yet
//!   committed all count. So at most `concurrency` records are ever taken and uncommitted,
//!   which bounds what a crash delivers again. When the bound is reached,
//!   [`Pipeline::submit`] commits what is finished (through the [`Committer`]) and otherwise
//!   waits for progress: the fetch loop stops polling, nothing is buffered past the bound.
//! - Order: every record of one lane (its key within its partition for [`Ordering::Key`],
//!   its partition for [`Ordering::Partition`]; no lane for [`Ordering::None`]) waits for the
//!   previous record of its lane to finish. Different lanes run concurrently, even within one
//!   partition. Records without a key share one lane per partition.
//! - Failure: a record that cannot be delivered or dead-lettered stops the pipeline
//!   ([`Pipeline::failed`]); it is not finished (so not committed), and the records queued
//!   behind it in its lane are not processed, so a restart delivers them in order.
//!
//! The pipeline needs no Kafka: a benchmark can drive it with records and a no-op handler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::dlq::{DeadLetters, Failure};
use super::events::{Handler, InvalidPolicy, Record, Rejection, RejectionKind};
use super::metrics::{ConsumerMetrics, KindLabels};
use super::offsets::{OffsetTracker, Tp};
use super::retry::RetryPolicy;
use crate::Error;

/// Which records are delivered in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Ordering {
    /// Records with the same key (within a partition) one at a time, in offset order.
    #[default]
    Key,
    /// One record at a time per partition.
    Partition,
    /// No order.
    None,
}

/// Settings of the pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Records in flight at most (taken and not finished).
    pub concurrency: usize,
    pub ordering: Ordering,
    pub retry: RetryPolicy,
    /// What happens to a record that is not a valid event.
    pub on_invalid: InvalidPolicy,
    /// Larger payloads are rejected as [`RejectionKind::Oversized`].
    pub max_record_bytes: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            concurrency: 16,
            ordering: Ordering::Key,
            retry: RetryPolicy::default(),
            on_invalid: InvalidPolicy::DeadLetter,
            max_record_bytes: 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Lane {
    Key(String, i32, Vec<u8>),
    Partition(String, i32),
}

type Lanes = HashMap<Lane, (u64, oneshot::Receiver<()>)>;

/// Commits offsets, synchronously (the consumer's group, a database, a transaction).
pub trait Committer: Sync {
    /// Commits `offsets` (the next offset to consume per partition).
    fn commit(&self, offsets: &[(Tp, i64)]) -> Result<(), Error>;

    /// Transactional: a commit must wait until no record is in flight (so that everything the
    /// transaction holds belongs to the committed offsets), and a failed commit stops the
    /// pipeline.
    fn transactional(&self) -> bool {
        false
    }
}

/// Commits nothing and reports success (benchmarks, tests, a pipeline without Kafka).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCommit;

impl Committer for NoCommit {
    fn commit(&self, _: &[(Tp, i64)]) -> Result<(), Error> {
        Ok(())
    }
}

/// The records taken and not committed: the offsets tracker and the bound on them. Shared by
/// the pipeline and the consumer's rebalance callbacks.
#[derive(Debug)]
pub struct Window {
    tracker: Mutex<OffsetTracker>,
    semaphore: Arc<Semaphore>,
    progress: Notify,
    error: Mutex<Option<Error>>,
    /// Cancelled when a record could not be handled at all, or a commit that must not fail
    /// failed.
    failed: CancellationToken,
}

impl Window {
    pub fn new(concurrency: usize) -> Window {
        Window {
            tracker: Mutex::new(OffsetTracker::new()),
            semaphore: Arc::new(Semaphore::new(concurrency.max(1))),
            progress: Notify::new(),
            error: Mutex::new(None),
            failed: CancellationToken::new(),
        }
    }

    /// Stops the pipeline with `e` (the first error wins).
    pub fn fail(&self, e: Error) {
        error!(error = %crate::Chain(&e), "stopping the consumer");
        self.error.lock().unwrap().get_or_insert(e);
        self.failed.cancel();
    }

    /// Cancelled once the pipeline failed.
    pub fn failed(&self) -> CancellationToken {
        self.failed.clone()
    }

    /// Waits until no record is in flight (or the pipeline failed). Returns whether it is
    /// quiet.
    pub async fn quiesce(&self) -> bool {
        loop {
            if self.tracker().in_flight() == 0 {
                return true;
            }
            if self.failed.is_cancelled() {
                return false;
            }
            tokio::select! {
                _ = self.progress.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = self.failed.cancelled() => return false,
            }
        }
    }

    /// The offsets tracker.
    pub fn tracker(&self) -> std::sync::MutexGuard<'_, OffsetTracker> {
        self.tracker.lock().unwrap()
    }

    /// A partition was assigned.
    pub fn assign(&self, tp: Tp) {
        self.tracker().assign(tp);
    }

    /// A partition was revoked: its finished records leave the window; returns the offset to
    /// commit for it, if it moved.
    pub fn revoke(&self, tp: &Tp) -> Option<i64> {
        let (offset, released) = self.tracker().revoke(tp);
        self.semaphore.add_permits(released);
        self.progress.notify_one();
        offset
    }

    /// Commits every offset that moved through `committer` and returns them; on success the
    /// committed records leave the window. A failed commit is retried by the next call.
    pub fn commit(&self, committer: &dyn Committer) -> Result<Vec<(Tp, i64)>, Error> {
        let offsets = self.tracker().to_commit();
        if offsets.is_empty() {
            return Ok(offsets);
        }
        match committer.commit(&offsets) {
            Ok(()) => {
                self.committed(&offsets);
                Ok(offsets)
            }
            Err(e) => {
                self.tracker().uncommit(&offsets);
                Err(e)
            }
        }
    }

    /// These offsets were committed (by whatever means): their records leave the window.
    pub fn committed(&self, offsets: &[(Tp, i64)]) {
        let released: usize = {
            let mut tracker = self.tracker();
            offsets
                .iter()
                .map(|(tp, o)| tracker.committed(tp, *o))
                .sum()
        };
        self.semaphore.add_permits(released);
    }
}

struct Inner<H> {
    handler: H,
    config: PipelineConfig,
    window: Arc<Window>,
    dead_letters: Option<DeadLetters>,
    metrics: ConsumerMetrics,
    /// Cancelled when the drain deadline passed: unfinished records stay unfinished.
    abort: CancellationToken,
    /// A [`Handler::committed`] call is running.
    notifying: std::sync::atomic::AtomicBool,
}

/// Why processing a record ended without finishing it.
#[derive(Debug)]
enum Unfinished {
    Aborted,
    Failed,
}

/// The bounded, ordered pipeline over a [`Handler`].
pub struct Pipeline<H: Handler> {
    inner: Arc<Inner<H>>,
    lanes: Arc<Mutex<Lanes>>,
    next_id: std::sync::atomic::AtomicU64,
    tasks: TaskTracker,
}

impl<H: Handler> std::fmt::Debug for Pipeline<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("config", &self.inner.config)
            .field("window", &self.inner.window)
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Pipeline<H> {
    /// A pipeline delivering to `handler`; `dead_letters` is required by the dead-letter
    /// policy (without it a record that fails every attempt stops the pipeline).
    pub fn new(
        handler: H,
        config: PipelineConfig,
        dead_letters: Option<DeadLetters>,
        metrics: ConsumerMetrics,
    ) -> Pipeline<H> {
        let window = Arc::new(Window::new(config.concurrency));
        Pipeline {
            inner: Arc::new(Inner {
                handler,
                config,
                window,
                dead_letters,
                metrics,
                abort: CancellationToken::new(),
                notifying: std::sync::atomic::AtomicBool::new(false),
            }),
            lanes: Arc::new(Mutex::new(HashMap::new())),
            next_id: std::sync::atomic::AtomicU64::new(0),
            tasks: TaskTracker::new(),
        }
    }

    /// The records taken and not committed.
    pub fn window(&self) -> &Arc<Window> {
        &self.inner.window
    }

    /// Cancelled when a record could neither be delivered nor dead-lettered (or the policy is
    /// `fail`); [`Pipeline::take_error`] says why.
    pub fn failed(&self) -> CancellationToken {
        self.inner.window.failed()
    }

    /// The error that stopped the pipeline.
    pub fn take_error(&self) -> Option<Error> {
        self.inner.window.error.lock().unwrap().take()
    }

    /// Whether the pipeline failed.
    pub fn has_failed(&self) -> bool {
        self.inner.window.failed.is_cancelled()
    }

    /// Takes `record` into the pipeline, waiting while the window is full: then it commits
    /// what is finished through `committer` and waits for progress. Returns false without
    /// taking it when `stop` is cancelled or the pipeline failed meanwhile.
    pub async fn submit(
        &self,
        mut record: Record,
        stop: &CancellationToken,
        committer: &dyn Committer,
    ) -> bool {
        loop {
            match self.try_submit(record) {
                Ok(()) => return true,
                Err(r) => record = *r,
            }
            if let Err(e) = self.commit(committer).await {
                warn!(error = %crate::Chain(&e), "offset commit failed; retrying");
            }
            match self.try_submit(record) {
                Ok(()) => return true,
                Err(r) => record = *r,
            }
            tokio::select! {
                _ = self.inner.window.progress.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = self.inner.window.failed.cancelled() => return false,
                _ = stop.cancelled() => return false,
            }
        }
    }

    /// Commits what is finished through `committer`, then tells the handler
    /// ([`Handler::committed`], in the background, one call at a time).
    /// A transactional committer first waits until no record is in flight (call this only
    /// from the task that submits, so nothing new starts meanwhile), and its failure stops the
    /// pipeline.
    pub async fn commit(&self, committer: &dyn Committer) -> Result<(), Error> {
        let window = &self.inner.window;
        if committer.transactional() && !window.quiesce().await {
            return Ok(());
        }
        let offsets = match window.commit(committer) {
            Ok(offsets) => offsets,
            Err(e) if committer.transactional() => {
                window.fail(e);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if !offsets.is_empty()
            && !self
                .inner
                .notifying
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let inner = self.inner.clone();
            tokio::spawn(async move {
                inner.handler.committed(&offsets).await;
                inner
                    .notifying
                    .store(false, std::sync::atomic::Ordering::Release);
            });
        }
        Ok(())
    }

    /// Takes `record` into the pipeline when the window has room (`Err(record)` when it is
    /// full). A record of a partition that is not assigned is dropped.
    pub fn try_submit(&self, record: Record) -> Result<(), Box<Record>> {
        let Ok(permit) = self.inner.window.semaphore.clone().try_acquire_owned() else {
            return Err(Box::new(record));
        };
        let tp = Tp::new(&record.topic, record.partition);
        let Some(ticket) = self.inner.window.tracker().begin(&tp, record.offset) else {
            return Ok(());
        };
        self.inner.metrics.in_flight.inc();
        let lane = match self.inner.config.ordering {
            Ordering::None => None,
            Ordering::Partition => Some(Lane::Partition(record.topic.clone(), record.partition)),
            Ordering::Key => Some(match &record.key {
                Some(key) => Lane::Key(record.topic.clone(), record.partition, key.clone()),
                None => Lane::Partition(record.topic.clone(), record.partition),
            }),
        };
        let (previous, this) = match lane {
            None => (None, None),
            Some(lane) => {
                let id = self
                    .next_id
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (done, waiter) = oneshot::channel();
                let previous = self
                    .lanes
                    .lock()
                    .unwrap()
                    .insert(lane.clone(), (id, waiter))
                    .map(|(_, w)| w);
                (previous, Some((lane, id, done)))
            }
        };
        let inner = self.inner.clone();
        let lanes = self.lanes.clone();
        self.tasks.spawn(async move {
            if let Some(previous) = previous {
                // Resolves when the previous record of the lane is done (sent or dropped).
                let _ = previous.await;
            }
            let outcome = if inner.window.failed.is_cancelled() {
                Err(Unfinished::Failed)
            } else if inner.abort.is_cancelled() {
                Err(Unfinished::Aborted)
            } else {
                inner.process(&record).await
            };
            if outcome.is_ok() && inner.window.tracker().finish(&ticket) {
                // The permit now belongs to the window until the offset is committed.
                permit.forget();
            } else {
                drop(permit);
            }
            inner.window.progress.notify_one();
            inner.metrics.in_flight.dec();
            if let Some((lane, id, done)) = this {
                let mut lanes = lanes.lock().unwrap();
                if lanes.get(&lane).is_some_and(|(tail, _)| *tail == id) {
                    lanes.remove(&lane);
                }
                drop(lanes);
                let _ = done.send(());
            }
        });
        Ok(())
    }

    /// Stops taking records and waits for those in flight, at most `timeout`; then abandons
    /// the rest unfinished. Returns whether everything finished in time.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.tasks.close();
        let in_time = tokio::time::timeout(timeout, self.tasks.wait())
            .await
            .is_ok();
        if !in_time {
            warn!(
                timeout = ?timeout,
                "drain deadline passed: the records still in flight are not committed"
            );
            self.inner.abort.cancel();
            self.tasks.wait().await;
        }
        in_time
    }
}

impl<H: Handler> Inner<H> {
    async fn process(&self, record: &Record) -> Result<(), Unfinished> {
        let size = record.payload.as_ref().map_or(0, Vec::len);
        let decoded = if size > self.config.max_record_bytes {
            Err(Rejection {
                kind: RejectionKind::Oversized,
                message: format!(
                    "the value has {size} bytes, more than the maximum of {}",
                    self.config.max_record_bytes
                ),
                event_type: None,
            })
        } else {
            self.handler.decode(record)
        };
        let event = match decoded {
            Ok(event) => event,
            Err(rejection) => return self.reject(record, rejection).await,
        };
        let mut delays = self.config.retry.delays();
        let mut attempts = 0u32;
        let mut first_failure = None;
        loop {
            attempts += 1;
            let started = Instant::now();
            let result = tokio::select! {
                result = self.handler.handle(&event, record) => result,
                _ = self.abort.cancelled() => return Err(Unfinished::Aborted),
            };
            self.metrics
                .handler_latency_seconds
                .observe(started.elapsed().as_secs_f64());
            let err = match result {
                Ok(()) => {
                    self.metrics.processed.inc();
                    return Ok(());
                }
                Err(err) => err,
            };
            let first_failure = *first_failure.get_or_insert_with(Utc::now);
            match err.retryable.then(|| delays.next()).flatten() {
                Some(delay) => {
                    self.metrics.retried.inc();
                    warn!(
                        topic = %record.topic, partition = record.partition, offset = record.offset,
                        attempt = attempts, error.kind = %err.kind, error = %err.message,
                        retry_in = ?delay, "delivery failed; retrying"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.abort.cancelled() => return Err(Unfinished::Aborted),
                    }
                }
                None => {
                    let failure = Failure {
                        kind: err.kind,
                        message: err.message,
                        attempts,
                        first_failure,
                    };
                    return self.dead_letter(record, failure).await;
                }
            }
        }
    }

    async fn reject(&self, record: &Record, rejection: Rejection) -> Result<(), Unfinished> {
        self.metrics
            .rejected
            .get_or_create(&KindLabels {
                kind: rejection.kind.as_str().to_string(),
            })
            .inc();
        if rejection.kind == RejectionKind::UnknownType {
            self.metrics.unknown_type.inc();
        }
        match self.config.on_invalid {
            InvalidPolicy::Skip => {
                info!(
                    topic = %record.topic, partition = record.partition, offset = record.offset,
                    kind = rejection.kind.as_str(), reason = %rejection.message,
                    "skipping a record that is not a valid event"
                );
                self.metrics.skipped.inc();
                Ok(())
            }
            InvalidPolicy::DeadLetter => {
                let failure = Failure {
                    kind: rejection.kind.as_str().to_string(),
                    message: rejection.message,
                    attempts: 0,
                    first_failure: Utc::now(),
                };
                self.dead_letter(record, failure).await
            }
            InvalidPolicy::Fail => self.fail(
                record,
                rejection.kind.as_str().to_string(),
                rejection.message,
            ),
        }
    }

    async fn dead_letter(&self, record: &Record, failure: Failure) -> Result<(), Unfinished> {
        let Some(dead_letters) = &self.dead_letters else {
            return self.fail(record, failure.kind, failure.message);
        };
        match dead_letters.send(record, &failure).await {
            Ok(()) => {
                warn!(
                    topic = %record.topic, partition = record.partition, offset = record.offset,
                    dead_letter_topic = dead_letters.topic(), error.kind = %failure.kind,
                    error = %failure.message, attempts = failure.attempts,
                    "record dead-lettered"
                );
                self.metrics.dead_lettered.inc();
                Ok(())
            }
            Err(e) => {
                self.stop(e);
                Err(Unfinished::Failed)
            }
        }
    }

    fn fail(&self, record: &Record, kind: String, message: String) -> Result<(), Unfinished> {
        self.stop(Error::PoisonMessage {
            record: record.id(),
            kind,
            message,
        });
        Err(Unfinished::Failed)
    }

    fn stop(&self, e: Error) {
        self.window.fail(e);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

    use super::super::events::HandlerError;
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(tag = "event_type")]
    enum Ev {
        Step { n: u64 },
    }

    /// Records the order of deliveries per key and the peak concurrency.
    #[derive(Default)]
    struct Probe {
        running: AtomicUsize,
        peak: AtomicUsize,
        seen: Mutex<HashMap<Vec<u8>, Vec<u64>>>,
        fail_n: Option<u64>,
    }

    impl Handler for Probe {
        type Event = Ev;
        async fn handle(&self, event: &Ev, record: &Record) -> Result<(), HandlerError> {
            let Ev::Step { n } = event;
            if Some(*n) == self.fail_n {
                return Err(HandlerError::permanent("test", "poison"));
            }
            let now = self.running.fetch_add(1, AtomicOrdering::SeqCst) + 1;
            self.peak.fetch_max(now, AtomicOrdering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
            self.seen
                .lock()
                .unwrap()
                .entry(record.key.clone().unwrap_or_default())
                .or_default()
                .push(*n);
            self.running.fetch_sub(1, AtomicOrdering::SeqCst);
            Ok(())
        }
    }

    fn record(offset: i64, key: &str) -> Record {
        Record {
            topic: "t".into(),
            partition: 0,
            offset,
            key: Some(key.as_bytes().to_vec()),
            payload: Some(format!(r#"{{"event_type":"Step","n":{offset}}}"#).into_bytes()),
            headers: vec![],
            timestamp_ms: None,
        }
    }

    fn pipeline(
        probe: &Arc<Probe>,
        concurrency: usize,
        ordering: Ordering,
    ) -> Pipeline<Arc<Probe>> {
        let p = Pipeline::new(
            probe.clone(),
            PipelineConfig {
                concurrency,
                ordering,
                on_invalid: InvalidPolicy::Skip,
                retry: RetryPolicy {
                    max_attempts: 1,
                    ..RetryPolicy::default()
                },
                ..PipelineConfig::default()
            },
            None,
            ConsumerMetrics::unregistered(),
        );
        p.window().assign(Tp::new("t", 0));
        p
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn same_key_records_run_in_order_while_different_keys_run_concurrently_in_one_partition()
    {
        let probe = Arc::new(Probe::default());
        let p = pipeline(&probe, 32, Ordering::Key);
        let stop = CancellationToken::new();
        for offset in 0..2000 {
            p.submit(
                record(offset, &format!("k{}", offset % 50)),
                &stop,
                &NoCommit,
            )
            .await;
        }
        assert!(p.drain(Duration::from_secs(60)).await);
        let seen = probe.seen.lock().unwrap();
        assert_eq!(seen.values().map(Vec::len).sum::<usize>(), 2000);
        for (key, ns) in seen.iter() {
            assert!(
                ns.windows(2).all(|w| w[0] < w[1]),
                "key {key:?} out of order"
            );
        }
        let peak = probe.peak.load(AtomicOrdering::SeqCst);
        assert!(peak > 1, "never more than one delivery at a time");
        assert!(peak <= 32, "peak {peak} above the bound");
        assert_eq!(
            p.window().tracker().committable(&Tp::new("t", 0)),
            Some(2000)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partition_ordering_delivers_one_record_at_a_time() {
        let probe = Arc::new(Probe::default());
        let p = pipeline(&probe, 16, Ordering::Partition);
        let stop = CancellationToken::new();
        for offset in 0..200 {
            p.submit(
                record(offset, &format!("k{}", offset % 7)),
                &stop,
                &NoCommit,
            )
            .await;
        }
        assert!(p.drain(Duration::from_secs(60)).await);
        assert_eq!(probe.peak.load(AtomicOrdering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_that_cannot_be_dead_lettered_stops_the_pipeline_and_is_never_committed() {
        let probe = Arc::new(Probe {
            fail_n: Some(10),
            ..Probe::default()
        });
        let p = pipeline(&probe, 4, Ordering::Key);
        let stop = CancellationToken::new();
        for offset in 0..100 {
            if p.failed().is_cancelled() {
                break;
            }
            p.submit(record(offset, "same"), &stop, &NoCommit).await;
        }
        p.drain(Duration::from_secs(10)).await;
        assert!(p.failed().is_cancelled());
        assert!(matches!(p.take_error(), Some(Error::PoisonMessage { .. })));
        assert_eq!(p.window().tracker().committable(&Tp::new("t", 0)), Some(10));
        let seen = probe.seen.lock().unwrap();
        assert_eq!(seen[b"same".as_slice()], (0..10).collect::<Vec<u64>>());
    }
}
