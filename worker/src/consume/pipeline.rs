//! The bounded pipeline: records go in one at a time ([`Pipeline::take`]), run concurrently up
//! to `concurrency` at once, in order where the [`Ordering`] demands it, and become committable
//! in their partition's [`PartitionOffsets`] once delivered, skipped or dead-lettered.
//!
//! - **Two bounds.** `concurrency` bounds the records *running* (the handler called, or a
//!   retry's backoff). Every other record taken is bounded per partition by its window
//!   (`max_uncommitted_per_partition` offsets from the last acknowledged commit, and
//!   `max_buffered_bytes_per_partition` bytes of records held): waiting for a free slot,
//!   waiting behind an earlier record of its key, or finished above an unfinished one. A
//!   partition whose window is full is paused ([`Flow::pause`]) until commits catch up; the
//!   other partitions and keys keep flowing. One record retrying for minutes holds back its
//!   own key and, once its window fills, its own partition: nothing else.
//! - **Order.** Every record of one lane (its key within its partition for [`Ordering::Key`],
//!   its partition for [`Ordering::Partition`]; no lane for [`Ordering::None`]) starts after
//!   the previous record of its lane ended. Different lanes run concurrently, even within one
//!   partition. Records without a key share one lane per partition. Keys are told apart by a
//!   64-bit hash: a collision only serialises two keys.
//! - **Revocation.** [`Pipeline::revoke_blocking`]: no record of a revoked partition starts
//!   any more (those waiting are dropped, unfinished); the running ones get a bounded time to
//!   finish, then are cancelled, and the call returns only once none of them runs: a revoked
//!   partition is never delivered by this pipeline afterwards.
//! - **Failure.** A record that cannot be delivered or dead-lettered stops the pipeline
//!   ([`Pipeline::failed`]); it is not finished (so not committed), and no record starts after
//!   it, so a restart delivers its key's records in order.
//!
//! Cost: a record whose sink delivers at once ([`Handler::handle_now`]: the log sink, the
//! Kafka sink's hand-off to its producer, the no-op sink) is decoded and delivered inline on
//! the caller's task: no future, no task, no wake-up. A record whose processing future
//! completes at its first poll (a rejected record that is skipped) runs inline too. Any other record's
//! processing continues as a task, which, when the record ended, books the end itself under
//! the pipeline's one lock and runs the next ready record (its lane's successor or another
//! waiting for a slot) in the same task: no spawn, no box and no wake-up of the fetch loop
//! per record. The fetch loop is woken only when it has something to do: a partition to
//! resume, a commit due, a failure, or someone waiting for the ends (drain, revoke, the
//! transactional quiesce).
//!
//! The pipeline needs no Kafka: a benchmark or test drives it with records and a handler.

use std::collections::VecDeque;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::FastMap;
use super::dlq::DeadLetters;
use super::events::{Handler, InvalidPolicy, Record};
use super::metrics::ConsumerMetrics;
use super::offsets::{PartitionOffsets, Tp};
use super::process::{Failed, Outcome, Processor};
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

/// Default of [`PipelineConfig::max_uncommitted_per_partition`].
pub const DEFAULT_MAX_UNCOMMITTED_PER_PARTITION: u64 =
    pipewright_crds::worker_config::DEFAULT_MAX_UNCOMMITTED_PER_PARTITION;
/// Default of [`PipelineConfig::max_buffered_bytes_per_partition`].
pub const DEFAULT_MAX_BUFFERED_BYTES_PER_PARTITION: usize =
    pipewright_crds::worker_config::DEFAULT_MAX_BUFFERED_BYTES_PER_PARTITION;

/// Settings of the pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Records running at most (handler called or waiting for a retry).
    pub concurrency: usize,
    pub ordering: Ordering,
    pub retry: RetryPolicy,
    /// What happens to a record that is not a valid event.
    pub on_invalid: InvalidPolicy,
    /// Larger payloads are rejected as [`super::RejectionKind::Oversized`].
    pub max_record_bytes: usize,
    /// Per partition: offsets taken and not covered by an acknowledged commit, at most (the
    /// partition is paused at this bound). A crash delivers at most this many records of a
    /// partition again.
    pub max_uncommitted_per_partition: u64,
    /// Per partition: bytes (key + value) of the records taken and not finished, at most (the
    /// partition is paused at this bound).
    pub max_buffered_bytes_per_partition: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            concurrency: 16,
            ordering: Ordering::Key,
            retry: RetryPolicy::default(),
            on_invalid: InvalidPolicy::DeadLetter,
            max_record_bytes: 1024 * 1024,
            max_uncommitted_per_partition: DEFAULT_MAX_UNCOMMITTED_PER_PARTITION,
            max_buffered_bytes_per_partition: DEFAULT_MAX_BUFFERED_BYTES_PER_PARTITION,
        }
    }
}

/// What the consumer must do with librdkafka after a pipeline step (never under the
/// pipeline's lock): partitions whose window filled, and partitions whose window has room
/// again.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub pause: Vec<Tp>,
    pub resume: Vec<Tp>,
}

impl Flow {
    pub fn is_empty(&self) -> bool {
        self.pause.is_empty() && self.resume.is_empty()
    }
}

/// What [`Pipeline::take`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Taken {
    Taken,
    /// Taken, and a partition must be paused before anything else is taken.
    Paused,
    /// Not taken: its partition is not assigned (or being revoked), or the pipeline closed.
    Dropped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct LaneKey {
    slot: usize,
    /// The key's hash; `None`: the partition's lane (no key, or partition ordering).
    key: Option<u64>,
}

/// One assigned partition.
#[derive(Debug)]
struct Slot {
    tp: Tp,
    epoch: u64,
    offsets: PartitionOffsets,
    /// Cancels this assignment's running records (revocation, drain deadline). In an `Arc`:
    /// cloning a token takes a lock, cloning the `Arc` does not.
    cancel: Arc<CancellationToken>,
    /// `cancel` was cancelled: nothing of this assignment starts.
    cancelled: bool,
    /// Bytes of the records taken and not finished.
    bytes: usize,
    running: usize,
    paused: bool,
    revoking: bool,
}

#[derive(Debug)]
struct Job {
    slot: usize,
    epoch: u64,
    lane: Option<LaneKey>,
    bytes: usize,
    record: Record,
}

#[derive(Debug)]
struct Done {
    slot: usize,
    epoch: u64,
    offset: i64,
    lane: Option<LaneKey>,
    bytes: usize,
    outcome: Outcome,
}

/// Signals the ends of records that ran as tasks (each task books its own ends) to those who
/// wait for them: the fetch loop when the flow changed or a commit is due, and while anyone
/// watches ([`DoneQueue::watch`]: quiesce, drain, revoke) every end.
#[derive(Debug, Default)]
struct DoneQueue {
    /// Ends signalled to watchers so far: a blocking waiter sleeps until it moves.
    ends: Mutex<u64>,
    /// For callers that block (rebalance callbacks).
    cond: Condvar,
    /// For callers that await (the fetch loop).
    notify: Notify,
    /// Callers waiting for every end.
    watchers: AtomicUsize,
}

/// A caller that waits for every end, while it lives.
struct Watch<'a>(&'a DoneQueue);

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, AtomicOrdering::SeqCst);
    }
}

impl DoneQueue {
    /// A record ended and was booked (after the state's lock is released). Wakes the fetch
    /// loop when `wake` (the flow changed, a commit is due) or anyone watches.
    fn ended(&self, wake: bool) {
        if self.watchers.load(AtomicOrdering::SeqCst) > 0 {
            *self.ends.lock().unwrap() += 1;
            self.cond.notify_all();
            self.notify.notify_one();
        } else if wake {
            self.notify.notify_one();
        }
    }

    /// Every end is signalled until the guard drops. Take it before reading the state, and
    /// read [`DoneQueue::seen`] before the state too: an end booked after either is signalled.
    fn watch(&self) -> Watch<'_> {
        self.watchers.fetch_add(1, AtomicOrdering::SeqCst);
        Watch(self)
    }

    /// The ends signalled so far (for [`DoneQueue::wait_blocking`]).
    fn seen(&self) -> u64 {
        *self.ends.lock().unwrap()
    }

    /// Blocks until an end after `seen` is signalled or `until` passes (needs a [`Watch`]).
    fn wait_blocking(&self, seen: u64, until: Instant) {
        let mut ends = self.ends.lock().unwrap();
        while *ends == seen {
            let now = Instant::now();
            if until <= now {
                return;
            }
            ends = self.cond.wait_timeout(ends, until - now).unwrap().0;
        }
    }
}

#[derive(Debug, Default)]
struct State {
    slots: Vec<Option<Slot>>,
    /// topic -> partition -> slot.
    index: FastMap<String, Vec<Option<usize>>>,
    epochs: u64,
    /// Busy lanes (a record of the lane is ready, running, or waiting behind another) with the
    /// records waiting behind the one that holds the lane.
    lanes: FastMap<LaneKey, VecDeque<Job>>,
    /// Records that hold their lane and wait for a free slot of `concurrency`.
    ready: VecDeque<Job>,
    running: usize,
    flow: Flow,
    commit_soon: bool,
    closed: bool,
    /// The drain deadline passed: nothing starts.
    aborted: bool,
}

impl State {
    fn slot_of(&self, topic: &str, partition: i32) -> Option<usize> {
        let p = usize::try_from(partition).ok()?;
        *self.index.get(topic)?.get(p)?
    }

    fn slot(&mut self, slot: usize, epoch: u64) -> Option<&mut Slot> {
        self.slots
            .get_mut(slot)?
            .as_mut()
            .filter(|s| s.epoch == epoch)
    }

    fn unfinished(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .map(|s| s.offsets.unfinished())
            .sum()
    }
}

/// The bounded, ordered pipeline over a [`Handler`].
pub struct Pipeline<H: Handler> {
    core: Arc<Core<H>>,
    /// Cancels every running record (drain deadline).
    abort: CancellationToken,
}

/// What the pipeline shares with its tasks: a task whose record ended books the end itself
/// and runs the next ready record, without a trip through the fetch loop.
struct Core<H: Handler> {
    processor: Processor<H>,
    done: DoneQueue,
    tasks: TaskTracker,
    state: Mutex<State>,
}

/// A record holding one slot of `concurrency`, to run.
struct Started {
    slot: usize,
    epoch: u64,
    lane: Option<LaneKey>,
    bytes: usize,
    record: Record,
    cancel: Arc<CancellationToken>,
    /// Its assignment (or the pipeline) was cancelled: it ends as cancelled, unrun.
    cancelled: bool,
}

impl Started {
    fn end(&self, outcome: Outcome) -> Done {
        // Here, not when the record drops: a task drops its last record only after running
        // the ones that follow it.
        if let Some(cx) = &self.record.trace {
            if outcome == Outcome::Cancelled {
                crate::traces::delivery_ended(cx, "cancelled");
            }
            opentelemetry::trace::TraceContextExt::span(&**cx).end();
        }
        Done {
            slot: self.slot,
            epoch: self.epoch,
            offset: self.record.offset,
            lane: self.lane,
            bytes: self.bytes,
            outcome,
        }
    }
}

impl<H: Handler> std::fmt::Debug for Pipeline<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("config", &self.core.processor.config)
            .field("state", &self.core.state)
            .finish_non_exhaustive()
    }
}

/// The hash a key's lane is found by (two keys with the same hash share a lane: ordered
/// together, never reordered).
fn key_hash(key: &[u8]) -> u64 {
    static SEED: std::sync::LazyLock<foldhash::quality::RandomState> =
        std::sync::LazyLock::new(Default::default);
    SEED.hash_one(key)
}

fn record_bytes(record: &Record) -> usize {
    record.payload.as_ref().map_or(0, Vec::len) + record.key.as_ref().map_or(0, Vec::len)
}

type Processing = Pin<Box<dyn Future<Output = (Started, Outcome)> + Send>>;

impl<H: Handler> Core<H> {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    fn config(&self) -> &PipelineConfig {
        &self.processor.config
    }

    fn has_failed(&self) -> bool {
        self.processor.failed.is_failed()
    }

    /// Starts ready records while there is a free slot.
    fn pump(self: &Arc<Self>, st: &mut State) {
        while let Some(started) = self.next_ready(st) {
            if let Some(done) = self.start(started) {
                self.complete(st, done);
            }
        }
    }

    /// The next ready record that may start now (a free slot, nothing failed), booked as
    /// running.
    fn next_ready(&self, st: &mut State) -> Option<Started> {
        while st.running < self.config().concurrency && !self.has_failed() {
            let job = st.ready.pop_front()?;
            if let Some(started) = self.begin(st, job) {
                return Some(started);
            }
        }
        None
    }

    /// Books a record as running. `None` when its assignment is gone (the partition's next
    /// owner delivers it).
    fn begin(&self, st: &mut State, job: Job) -> Option<Started> {
        let Job {
            slot: index,
            epoch,
            lane,
            bytes,
            record,
        } = job;
        let aborted = st.aborted;
        let Some(slot) = st.slot(index, epoch) else {
            self.processor.metrics.in_flight.dec();
            return None;
        };
        slot.running += 1;
        let cancel = slot.cancel.clone();
        let cancelled = slot.cancelled || aborted;
        st.running += 1;
        Some(Started {
            slot: index,
            epoch,
            lane,
            bytes,
            record,
            cancel,
            cancelled,
        })
    }

    /// Starts a record: polls its processing once inline; returns its end when that already
    /// finished it, else hands it to a task, which books its end and goes on with the next
    /// ready record ([`Core::run_on`]).
    fn start(self: &Arc<Self>, started: Started) -> Option<Done> {
        if started.cancelled {
            return Some(started.end(Outcome::Cancelled));
        }
        // Most records end here (a sink that delivers at once): no future built for them.
        let rest = match self.processor.start_now(&started.record) {
            Ok(outcome) => return Some(started.end(outcome)),
            Err(rest) => rest,
        };
        let core = self.clone();
        let mut processing: Processing = Box::pin(async move {
            let outcome = core
                .processor
                .finish(&started.record, rest, &started.cancel)
                .await;
            (started, outcome)
        });
        // A noop waker: when the processing is not finished, the task polls it again with its
        // own waker, which every well-behaved future registers anew on each poll.
        match processing
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready((started, outcome)) => Some(started.end(outcome)),
            Poll::Pending => {
                let core = self.clone();
                self.tasks.spawn(async move {
                    let (started, outcome) = processing.await;
                    core.run_on(started.end(outcome)).await;
                });
                None
            }
        }
    }

    /// A task's loop: books the end of its record and runs the next ready one, until none
    /// may start. Per record: no task spawned, no box, no wake-up of the fetch loop (only
    /// when the flow changed, a commit is due, or someone watches the ends).
    async fn run_on(self: Arc<Self>, mut end: Done) {
        loop {
            let (next, wake) = {
                let mut st = self.state();
                self.complete(&mut st, end);
                let next = self.next_ready(&mut st);
                // Slots left free (an end without a successor): start the others as tasks.
                self.pump(&mut st);
                let wake = !st.flow.is_empty() || st.commit_soon || self.has_failed();
                (next, wake)
            };
            self.done.ended(wake);
            let Some(started) = next else {
                return;
            };
            let outcome = if started.cancelled {
                Outcome::Cancelled
            } else {
                self.processor
                    .process(&started.record, &started.cancel)
                    .await
            };
            end = started.end(outcome);
        }
    }

    /// Books the end of a record: its offset, its slot of `concurrency`, its lane's next
    /// record (to the ready queue).
    fn complete(&self, st: &mut State, d: Done) {
        st.running -= 1;
        self.processor.metrics.in_flight.dec();
        let Some(slot) = st.slot(d.slot, d.epoch) else {
            // Its assignment is gone: the partition's next owner delivers it.
            return;
        };
        slot.running -= 1;
        slot.bytes -= d.bytes;
        if d.outcome == Outcome::Finished {
            slot.offsets.finish(d.offset);
        }
        let revoking = slot.revoking;
        if let Some(lane) = d.lane
            && !revoking
            && d.outcome != Outcome::Failed
        {
            match st.lanes.get_mut(&lane).and_then(VecDeque::pop_front) {
                Some(next) => st.ready.push_back(next),
                None => {
                    st.lanes.remove(&lane);
                }
            }
        }
        if !revoking {
            self.check_window(st, d.slot);
        }
    }

    /// Pauses or resumes a partition by its window; asks for an early commit when a quarter
    /// of the window is finished and not yet sent.
    fn check_window(&self, st: &mut State, index: usize) {
        let config = self.config();
        let Some(slot) = st.slots[index].as_mut() else {
            return;
        };
        let full = slot.offsets.uncommitted() >= config.max_uncommitted_per_partition
            || slot.bytes >= config.max_buffered_bytes_per_partition;
        let early = slot.offsets.unsent() >= (config.max_uncommitted_per_partition / 4).max(1);
        if full != slot.paused {
            slot.paused = full;
            let tp = slot.tp.clone();
            if full {
                st.flow.pause.push(tp);
            } else {
                st.flow.resume.push(tp);
            }
        }
        st.commit_soon |= early;
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
        Pipeline {
            core: Arc::new(Core {
                processor: Processor {
                    handler,
                    config,
                    dead_letters,
                    metrics,
                    failed: Failed::default(),
                },
                done: DoneQueue::default(),
                tasks: TaskTracker::new(),
                state: Mutex::new(State::default()),
            }),
            abort: CancellationToken::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.core.state()
    }

    fn config(&self) -> &PipelineConfig {
        self.core.config()
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.core.processor.handler
    }

    /// Cancelled when a record could neither be delivered nor dead-lettered (or the policy is
    /// `fail`), or a commit that must not fail failed; [`Pipeline::take_error`] says why.
    pub fn failed(&self) -> CancellationToken {
        self.core.processor.failed.token()
    }

    /// Stops the pipeline with `e` (the first error wins).
    pub fn fail(&self, e: Error) {
        self.core.processor.failed.fail(e);
    }

    /// The error that stopped the pipeline.
    pub fn take_error(&self) -> Option<Error> {
        self.core.processor.failed.take_error()
    }

    /// Whether the pipeline failed.
    pub fn has_failed(&self) -> bool {
        self.core.processor.failed.is_failed()
    }

    /// A partition was assigned (again): a fresh window.
    pub fn assign(&self, tp: Tp) {
        let mut st = self.state();
        st.epochs += 1;
        let epoch = st.epochs;
        let slot = Slot {
            tp: tp.clone(),
            epoch,
            offsets: PartitionOffsets::new(),
            cancel: Arc::new(self.abort.child_token()),
            cancelled: false,
            bytes: 0,
            running: 0,
            paused: false,
            revoking: false,
        };
        let index = match st.slot_of(&tp.topic, tp.partition) {
            Some(i) => i,
            None => match st.slots.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    st.slots.push(None);
                    st.slots.len() - 1
                }
            },
        };
        st.slots[index] = Some(slot);
        let Ok(p) = usize::try_from(tp.partition) else {
            return;
        };
        let parts = st.index.entry(tp.topic).or_default();
        if parts.len() <= p {
            parts.resize(p + 1, None);
        }
        parts[p] = Some(index);
    }

    /// Whether `tp` is assigned (and not being revoked).
    pub fn is_assigned(&self, tp: &Tp) -> bool {
        let st = self.state();
        st.slot_of(&tp.topic, tp.partition)
            .and_then(|i| st.slots[i].as_ref())
            .is_some_and(|s| !s.revoking)
    }

    /// For each of `tps`, whether its records may be taken now: assigned, not being revoked,
    /// its window not full (the fetch loop reads only those partitions' queues).
    pub fn readable<'a>(&self, tps: impl Iterator<Item = &'a Tp>) -> Vec<bool> {
        let st = self.state();
        tps.map(|tp| {
            st.slot_of(&tp.topic, tp.partition)
                .and_then(|i| st.slots[i].as_ref())
                .is_some_and(|s| !s.revoking && !s.paused)
        })
        .collect()
    }

    /// Takes `record` into the pipeline. Returns [`Taken::Dropped`] when its partition is not
    /// assigned, is being revoked, or the pipeline is closed; [`Taken::Paused`] when this
    /// record filled its partition's window: the caller must apply [`Pipeline::take_flow`]
    /// (pause the partition) before it takes another record.
    pub fn take(&self, record: Record) -> Taken {
        let mut st = self.state();
        if st.closed {
            return Taken::Dropped;
        }
        let Some(index) = st.slot_of(&record.topic, record.partition) else {
            return Taken::Dropped;
        };
        let bytes = record_bytes(&record);
        let Some(slot) = st.slots[index].as_mut().filter(|s| !s.revoking) else {
            return Taken::Dropped;
        };
        slot.offsets.take(record.offset);
        slot.bytes += bytes;
        let epoch = slot.epoch;
        self.core.processor.metrics.in_flight.inc();
        let lane = match self.config().ordering {
            Ordering::None => None,
            Ordering::Partition => Some(LaneKey {
                slot: index,
                key: None,
            }),
            Ordering::Key => Some(LaneKey {
                slot: index,
                key: record.key.as_deref().map(key_hash),
            }),
        };
        let job = Job {
            slot: index,
            epoch,
            lane,
            bytes,
            record,
        };
        match lane {
            Some(lane) => match st.lanes.get_mut(&lane) {
                Some(waiting) => waiting.push_back(job),
                None => {
                    st.lanes.insert(lane, VecDeque::new());
                    st.ready.push_back(job);
                }
            },
            None => st.ready.push_back(job),
        }
        self.core.check_window(&mut st, index);
        self.core.pump(&mut st);
        if st.flow.pause.is_empty() {
            Taken::Taken
        } else {
            Taken::Paused
        }
    }

    /// Starts what may start now, and returns what the consumer must pause or resume.
    pub fn drain_done(&self) -> Flow {
        let mut st = self.pumped();
        std::mem::take(&mut st.flow)
    }

    /// Starts what may start now (the tasks book their own ends); the flow stays for
    /// [`Pipeline::take_flow`]. Returns the state, locked.
    fn pumped(&self) -> MutexGuard<'_, State> {
        let mut st = self.state();
        self.core.pump(&mut st);
        st
    }

    /// What the consumer must pause or resume since the last call.
    pub fn take_flow(&self) -> Flow {
        std::mem::take(&mut self.state().flow)
    }

    /// Waits (async) until a record that ran as a task ended (signalled: see
    /// [`DoneQueue::ended`]), or `until` passes.
    async fn done_or(&self, until: tokio::time::Instant) {
        tokio::select! {
            _ = self.core.done.notify.notified() => {}
            _ = tokio::time::sleep_until(until) => {}
        }
    }

    /// Wakes the caller waiting in [`Pipeline::done_notified`] (something changed the flow).
    pub fn wake(&self) {
        self.core.done.notify.notify_one();
    }

    /// Resolves when the flow changed, a commit is due, or the pipeline failed (cancel-safe).
    pub async fn done_notified(&self) {
        self.core.done.notify.notified().await
    }

    /// Whether a partition's window asks for a commit before the next interval.
    pub fn commit_soon(&self) -> bool {
        self.state().commit_soon
    }

    /// Every partition whose committable offset moved since the last commit sent, with that
    /// offset; remembered as sent.
    pub fn to_commit(&self) -> Vec<(Tp, i64)> {
        let mut st = self.state();
        st.commit_soon = false;
        let mut out: Vec<(Tp, i64)> = st
            .slots
            .iter_mut()
            .flatten()
            .filter(|s| !s.revoking)
            .filter_map(|s| s.offsets.to_commit().map(|o| (s.tp.clone(), o)))
            .collect();
        out.sort();
        out
    }

    /// The broker acknowledged these commits: the windows move.
    pub fn acked(&self, offsets: &[(Tp, i64)]) {
        let mut st = self.state();
        for (tp, o) in offsets {
            if let Some(i) = st.slot_of(&tp.topic, tp.partition)
                && let Some(slot) = st.slots[i].as_mut()
            {
                slot.offsets.acked(*o);
                if !slot.revoking {
                    self.core.check_window(&mut st, i);
                }
            }
        }
    }

    /// These commits failed: the next [`Pipeline::to_commit`] sends them again.
    pub fn commit_failed(&self, offsets: &[(Tp, i64)]) {
        let mut st = self.state();
        for (tp, o) in offsets {
            if let Some(i) = st.slot_of(&tp.topic, tp.partition)
                && let Some(slot) = st.slots[i].as_mut()
            {
                slot.offsets.commit_failed(*o);
            }
        }
    }

    /// The committable offset of `tp` (the next record to consume after a restart).
    pub fn committable(&self, tp: &Tp) -> Option<i64> {
        let st = self.state();
        let i = st.slot_of(&tp.topic, tp.partition)?;
        st.slots[i].as_ref()?.offsets.committable()
    }

    /// Records taken and not finished, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.state().unfinished()
    }

    /// Records running now.
    pub fn running(&self) -> usize {
        self.state().running
    }

    /// Revokes `tps` (a rebalance; blocking, for the rebalance callback): drops their records
    /// that did not start; waits up to `timeout` for their running records (all of them are
    /// cancelled at once when `lost`, the assignment already belonging to another member);
    /// cancels those still running then and waits until they stopped. Returns the offsets to
    /// commit for them (their committable offsets, when not `lost` and they moved) and forgets
    /// them: nothing of theirs is delivered afterwards.
    pub fn revoke_blocking(&self, tps: &[Tp], lost: bool, timeout: Duration) -> Vec<(Tp, i64)> {
        let deadline = Instant::now() + timeout;
        let revoked: Vec<usize> = {
            let mut st = self.state();
            let revoked: Vec<usize> = tps
                .iter()
                .filter_map(|tp| st.slot_of(&tp.topic, tp.partition))
                .collect();
            for &i in &revoked {
                if let Some(slot) = st.slots[i].as_mut() {
                    slot.revoking = true;
                    if lost {
                        slot.cancel.cancel();
                        slot.cancelled = true;
                    }
                }
            }
            self.drop_waiting(&mut st, &revoked);
            revoked
        };
        let running = |st: &State| -> usize {
            revoked
                .iter()
                .filter_map(|&i| st.slots[i].as_ref())
                .map(|s| s.running)
                .sum()
        };
        let mut cancelled = lost;
        let mut stop_deadline = deadline;
        let watch = self.core.done.watch();
        loop {
            let seen = self.core.done.seen();
            {
                let mut st = self.pumped();
                if running(&st) == 0 {
                    break;
                }
                if Instant::now() >= stop_deadline {
                    if cancelled {
                        error!(
                            running = running(&st),
                            "records of revoked partitions did not stop when cancelled"
                        );
                        break;
                    }
                    warn!(
                        running = running(&st),
                        timeout = ?timeout,
                        "revoked partitions' records still running at the revoke timeout: cancelling them (uncommitted; their next owner delivers them)"
                    );
                    for &i in &revoked {
                        if let Some(slot) = st.slots[i].as_mut() {
                            slot.cancel.cancel();
                            slot.cancelled = true;
                        }
                    }
                    cancelled = true;
                    stop_deadline = Instant::now() + Duration::from_secs(5);
                }
            }
            self.core.done.wait_blocking(seen, stop_deadline);
        }
        drop(watch);
        let mut st = self.state();
        let mut offsets = Vec::new();
        for &i in &revoked {
            let Some(slot) = st.slots[i].take() else {
                continue;
            };
            if let Some(parts) = st.index.get_mut(&slot.tp.topic)
                && let Some(entry) = usize::try_from(slot.tp.partition)
                    .ok()
                    .and_then(|p| parts.get_mut(p))
            {
                *entry = None;
            }
            let committable = slot.offsets.committable();
            info!(
                topic = %slot.tp.topic, partition = slot.tp.partition, lost,
                commit = ?committable, unfinished = slot.offsets.unfinished(),
                "partition revoked"
            );
            if !lost
                && let Some(c) = committable
                && slot.offsets.uncommitted() > 0
            {
                offsets.push((slot.tp.clone(), c));
            }
            st.flow.pause.retain(|tp| tp != &slot.tp);
            st.flow.resume.retain(|tp| tp != &slot.tp);
        }
        st.lanes.retain(|lane, _| !revoked.contains(&lane.slot));
        offsets
    }

    /// Drops the records of `slots` that did not start (ready or waiting behind their key).
    fn drop_waiting(&self, st: &mut State, slots: &[usize]) {
        let mut dropped: Vec<Job> = Vec::new();
        let mut i = 0;
        while i < st.ready.len() {
            if slots.contains(&st.ready[i].slot) {
                dropped.extend(st.ready.remove(i));
            } else {
                i += 1;
            }
        }
        for (lane, waiting) in st.lanes.iter_mut() {
            if slots.contains(&lane.slot) {
                dropped.extend(waiting.drain(..));
            }
        }
        for job in dropped {
            self.core.processor.metrics.in_flight.dec();
            if let Some(slot) = st.slot(job.slot, job.epoch) {
                slot.bytes -= job.bytes;
            }
        }
    }

    /// Waits (blocking) until no record taken is unfinished, at most until `deadline`;
    /// returns whether it is quiet. Nothing new is taken meanwhile (the caller does not take).
    pub fn quiesce_blocking(&self, deadline: Instant) -> bool {
        let _watch = self.core.done.watch();
        loop {
            let seen = self.core.done.seen();
            let st = self.pumped();
            if st.unfinished() == 0 {
                return true;
            }
            if self.has_failed() || Instant::now() >= deadline {
                return false;
            }
            drop(st);
            self.core.done.wait_blocking(seen, deadline);
        }
    }

    /// As [`Pipeline::quiesce_blocking`], awaiting.
    pub async fn quiesce(&self, deadline: tokio::time::Instant) -> bool {
        let _watch = self.core.done.watch();
        loop {
            let waiting = {
                let st = self.pumped();
                // A failed pipeline starts nothing more: only the running records can end.
                if self.has_failed() {
                    st.running
                } else {
                    st.unfinished()
                }
            };
            if waiting == 0 {
                return !self.has_failed();
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            self.done_or(deadline).await;
        }
    }

    /// Stops taking records and waits until every record taken ended, at most `timeout`;
    /// then cancels those still running (unfinished, so uncommitted) and waits for them to
    /// stop. Returns whether everything finished in time.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.state().closed = true;
        let deadline = tokio::time::Instant::now() + timeout;
        let in_time = self.quiesce(deadline).await;
        if !in_time {
            let (running, unfinished) = {
                let st = self.state();
                (st.running, st.unfinished())
            };
            if running > 0 || !self.has_failed() {
                warn!(
                    timeout = ?timeout, running, unfinished,
                    "drain deadline passed: the records still unfinished are not committed"
                );
            }
            self.abort.cancel();
            {
                let mut st = self.state();
                st.aborted = true;
                let all: Vec<usize> = (0..st.slots.len()).collect();
                self.drop_waiting(&mut st, &all);
            }
            let _watch = self.core.done.watch();
            loop {
                self.drain_done();
                if self.state().running == 0 {
                    break;
                }
                self.done_or(tokio::time::Instant::now() + Duration::from_millis(100))
                    .await;
            }
        }
        self.core.tasks.close();
        self.core.tasks.wait().await;
        in_time
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
        /// Keys whose deliveries fail (retryably) until the flag is cleared.
        stuck: Mutex<Option<Vec<u8>>>,
        delay: Duration,
        /// What `handle_now` does.
        now: Now,
        now_calls: AtomicUsize,
        handle_calls: AtomicUsize,
    }

    #[derive(Default)]
    enum Now {
        /// Returns `None`: every delivery goes through `handle`.
        #[default]
        Wait,
        /// Delivers at once.
        Deliver,
        /// The attempt at once fails (retryably): `handle` delivers on the retry.
        Fail,
    }

    impl Probe {
        fn deliver(&self, event: &Ev, record: &Record) {
            let Ev::Step { n } = event;
            self.seen
                .lock()
                .unwrap()
                .entry(record.key.clone().unwrap_or_default())
                .or_default()
                .push(*n);
        }
    }

    impl Handler for Probe {
        type Event = Ev;
        fn handle_now(&self, event: &Ev, record: &Record) -> Option<Result<(), HandlerError>> {
            match self.now {
                Now::Wait => None,
                Now::Deliver => {
                    self.now_calls.fetch_add(1, AtomicOrdering::SeqCst);
                    self.deliver(event, record);
                    Some(Ok(()))
                }
                Now::Fail => {
                    self.now_calls.fetch_add(1, AtomicOrdering::SeqCst);
                    Some(Err(HandlerError::retryable("test", "first attempt")))
                }
            }
        }

        async fn handle(&self, event: &Ev, record: &Record) -> Result<(), HandlerError> {
            self.handle_calls.fetch_add(1, AtomicOrdering::SeqCst);
            let Ev::Step { n } = event;
            if Some(*n) == self.fail_n {
                return Err(HandlerError::permanent("test", "poison"));
            }
            if self.stuck.lock().unwrap().as_deref() == record.key.as_deref() {
                return Err(HandlerError::retryable("test", "stuck"));
            }
            let now = self.running.fetch_add(1, AtomicOrdering::SeqCst) + 1;
            self.peak.fetch_max(now, AtomicOrdering::SeqCst);
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            self.deliver(event, record);
            self.running.fetch_sub(1, AtomicOrdering::SeqCst);
            Ok(())
        }
    }

    fn record(partition: i32, offset: i64, key: &str) -> Record {
        Record {
            topic: "t".into(),
            partition,
            offset,
            key: Some(key.as_bytes().to_vec()),
            payload: Some(format!(r#"{{"event_type":"Step","n":{offset}}}"#).into_bytes()),
            headers: vec![],
            timestamp_ms: None,
            trace: None,
        }
    }

    fn pipeline(probe: &Arc<Probe>, config: PipelineConfig) -> Pipeline<Arc<Probe>> {
        let p = Pipeline::new(
            probe.clone(),
            PipelineConfig {
                on_invalid: InvalidPolicy::Skip,
                retry: RetryPolicy {
                    max_attempts: 1,
                    ..RetryPolicy::default()
                },
                ..config
            },
            None,
            ConsumerMetrics::unregistered(),
        );
        p.assign(Tp::new("t", 0));
        p.assign(Tp::new("t", 1));
        p
    }

    fn config(concurrency: usize, ordering: Ordering) -> PipelineConfig {
        PipelineConfig {
            concurrency,
            ordering,
            ..PipelineConfig::default()
        }
    }

    /// A pipeline over partitions 0 and 1 of "t" whose handler fails the key "stuck"
    /// (retryably, with short backoffs) until the probe's `stuck` is cleared.
    fn stuck_pipeline(concurrency: usize, window: u64) -> (Arc<Probe>, Pipeline<Arc<Probe>>) {
        let probe = Arc::new(Probe {
            stuck: Mutex::new(Some(b"stuck".to_vec())),
            ..Probe::default()
        });
        let p = Pipeline::new(
            probe.clone(),
            PipelineConfig {
                concurrency,
                max_uncommitted_per_partition: window,
                retry: RetryPolicy {
                    max_attempts: 100,
                    initial: Duration::from_millis(5),
                    max: Duration::from_millis(20),
                },
                on_invalid: InvalidPolicy::Skip,
                ..PipelineConfig::default()
            },
            None,
            ConsumerMetrics::unregistered(),
        );
        p.assign(Tp::new("t", 0));
        p.assign(Tp::new("t", 1));
        (probe, p)
    }

    /// Takes records as a fetch loop would: draining ends in between.
    async fn feed(p: &Pipeline<Arc<Probe>>, records: impl IntoIterator<Item = Record>) {
        for r in records {
            p.drain_done();
            assert_ne!(p.take(r), Taken::Dropped);
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn same_key_records_run_in_order_while_different_keys_run_concurrently_in_one_partition()
    {
        let probe = Arc::new(Probe {
            delay: Duration::from_millis(2),
            ..Probe::default()
        });
        let p = pipeline(&probe, config(32, Ordering::Key));
        feed(&p, (0..2000).map(|o| record(0, o, &format!("k{}", o % 50)))).await;
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
        assert_eq!(p.committable(&Tp::new("t", 0)), Some(2000));
    }

    /// The path without a future (`Handler::handle_now`): a delivery made at once is not made
    /// again; an attempt at once that fails is retried through `handle` (one retry counted),
    /// and either way each key's records are delivered once each, in order, and committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deliveries_made_at_once_are_made_once_and_a_failed_one_is_retried_in_key_order() {
        for (now, handle_calls, retried) in [(Now::Deliver, 0, 0), (Now::Fail, 600, 600)] {
            let probe = Arc::new(Probe {
                now,
                ..Probe::default()
            });
            let metrics = ConsumerMetrics::unregistered();
            let p = Pipeline::new(
                probe.clone(),
                PipelineConfig {
                    concurrency: 16,
                    on_invalid: InvalidPolicy::Skip,
                    retry: RetryPolicy {
                        max_attempts: 2,
                        initial: Duration::from_millis(1),
                        max: Duration::from_millis(1),
                    },
                    ..PipelineConfig::default()
                },
                None,
                metrics.clone(),
            );
            p.assign(Tp::new("t", 0));
            feed(&p, (0..600).map(|o| record(0, o, &format!("k{}", o % 7)))).await;
            assert!(p.drain(Duration::from_secs(60)).await);
            assert_eq!(probe.now_calls.load(AtomicOrdering::SeqCst), 600);
            assert_eq!(
                probe.handle_calls.load(AtomicOrdering::SeqCst),
                handle_calls
            );
            assert_eq!(metrics.retried.get(), retried);
            assert_eq!(metrics.processed.get(), 600);
            let seen = probe.seen.lock().unwrap();
            assert_eq!(seen.values().map(Vec::len).sum::<usize>(), 600);
            for (key, ns) in seen.iter() {
                assert!(
                    ns.windows(2).all(|w| w[0] < w[1]),
                    "key {key:?} out of order"
                );
            }
            assert_eq!(p.committable(&Tp::new("t", 0)), Some(600));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partition_ordering_delivers_one_record_at_a_time() {
        let probe = Arc::new(Probe {
            delay: Duration::from_millis(1),
            ..Probe::default()
        });
        let p = pipeline(&probe, config(16, Ordering::Partition));
        feed(&p, (0..200).map(|o| record(0, o, &format!("k{}", o % 7)))).await;
        assert!(p.drain(Duration::from_secs(60)).await);
        assert_eq!(probe.peak.load(AtomicOrdering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_that_cannot_be_dead_lettered_stops_the_pipeline_and_is_never_committed() {
        let probe = Arc::new(Probe {
            fail_n: Some(10),
            ..Probe::default()
        });
        let p = pipeline(&probe, config(4, Ordering::Key));
        for offset in 0..100 {
            if p.has_failed() {
                break;
            }
            feed(&p, [record(0, offset, "same")]).await;
        }
        p.drain(Duration::from_secs(10)).await;
        assert!(p.has_failed());
        assert!(matches!(p.take_error(), Some(Error::PoisonMessage { .. })));
        assert_eq!(p.committable(&Tp::new("t", 0)), Some(10));
        let seen = probe.seen.lock().unwrap();
        assert_eq!(seen[b"same".as_slice()], (0..10).collect::<Vec<u64>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retrying_key_holds_back_its_own_key_and_pauses_only_its_partition_at_the_window() {
        let (probe, p) = stuck_pipeline(4, 100);
        // Partition 0 starts with the stuck key, then other keys; partition 1 has other keys.
        assert_ne!(Taken::Dropped, p.take(record(0, 0, "stuck")));
        let mut flow = Flow::default();
        for o in 1..100 {
            assert_ne!(
                Taken::Dropped,
                p.take(record(0, o, &format!("a{}", o % 10)))
            );
            assert_ne!(
                Taken::Dropped,
                p.take(record(1, o, &format!("b{}", o % 10)))
            );
            let f = p.take_flow();
            flow.pause.extend(f.pause);
        }
        assert_eq!(
            flow.pause,
            vec![Tp::new("t", 0)],
            "only partition 0 is paused"
        );
        // Everything but the stuck record is delivered while it keeps retrying.
        let delivered = || {
            probe
                .seen
                .lock()
                .unwrap()
                .values()
                .map(Vec::len)
                .sum::<usize>()
        };
        let start = Instant::now();
        while delivered() < 198 {
            assert!(start.elapsed() < Duration::from_secs(30), "stalled");
            p.drain_done();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            p.committable(&Tp::new("t", 0)),
            Some(0),
            "a gap is not committed"
        );
        assert_eq!(p.committable(&Tp::new("t", 1)), Some(100));
        assert_eq!(p.running(), 1, "only the stuck record runs");
        *probe.stuck.lock().unwrap() = None;
        assert!(p.drain(Duration::from_secs(10)).await);
        assert_eq!(p.committable(&Tp::new("t", 0)), Some(100));
        assert_eq!(probe.seen.lock().unwrap()[b"stuck".as_slice()], vec![0]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoked_partition_starts_nothing_more_and_its_running_records_stop_before_revoke_returns()
     {
        let (probe, p) = stuck_pipeline(8, DEFAULT_MAX_UNCOMMITTED_PER_PARTITION);
        assert_ne!(Taken::Dropped, p.take(record(0, 0, "a")));
        assert_ne!(Taken::Dropped, p.take(record(0, 1, "stuck")));
        for o in 2..20 {
            assert_ne!(Taken::Dropped, p.take(record(0, o, "stuck")));
        }
        let p = Arc::new(p);
        let revoking = p.clone();
        let offsets = tokio::task::spawn_blocking(move || {
            revoking.revoke_blocking(&[Tp::new("t", 0)], false, Duration::from_millis(200))
        })
        .await
        .unwrap();
        assert_eq!(offsets, vec![(Tp::new("t", 0), 1)], "the finished prefix");
        assert_eq!(p.running(), 0, "the retrying record was cancelled");
        assert_eq!(
            p.take(record(0, 20, "a")),
            Taken::Dropped,
            "not assigned any more"
        );
        // Unstick: nothing of the revoked partition may be delivered now.
        *probe.stuck.lock().unwrap() = None;
        assert!(p.drain(Duration::from_secs(5)).await);
        let seen = probe.seen.lock().unwrap();
        assert_eq!(seen.get(b"stuck".as_slice()), None);
        assert_eq!(seen[b"a".as_slice()], vec![0]);
    }
}
