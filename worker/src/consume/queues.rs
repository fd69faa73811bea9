//! Each assigned partition's own librdkafka queue, so that a partition whose window is full is
//! simply not read while the others are.
//!
//! The alternative, pausing the partition in librdkafka, purges what it prefetched of it and
//! fetches it again on resume, and the resume's fetch waits behind any fetch the partition's
//! broker thread has outstanding: one sent at the log end is held by the broker for
//! `fetch.wait.max.ms` (500 ms). A consumer draining a backlog within its prefetch of the log
//! end paused at every window and stalled up to half a second each time (measured: a 1 ms
//! handler at concurrency 256 on one partition, 95k records/s with pause and resume, docs/
//! benchmarks.md part 2). Not read, a partition keeps its prefetched records in its queue
//! (librdkafka stops fetching it at `queued.max.messages.kbytes`) and nothing is fetched
//! twice.
//!
//! Split in the rebalance callback before librdkafka starts fetching the partition, so that
//! none of its records reaches the consumer's queue (a split queue survives the assignment:
//! `rd_kafka_queue_forward` marks it as the application's). Dropped on revocation. The
//! consumer's own queue is still polled: it serves the callbacks, counts as the application's
//! poll for `max.poll.interval.ms`, and carries the records of a partition that could not be
//! split (those are paused and resumed as before).

use std::sync::{Arc, Mutex, OnceLock, Weak};

use rdkafka::consumer::StreamConsumer;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use tracing::warn;

use super::consumer::ConsumeContext;
use super::events::Handler;
use super::offsets::Tp;

/// One partition's queue.
pub type Queue<H> = StreamPartitionQueue<ConsumeContext<H>>;

/// The split queues of the assigned partitions, shared by the rebalance callbacks (which
/// split and drop them) and the fetch loop (which reads them).
pub struct PartitionQueues<H: Handler> {
    /// The consumer the queues are split from (set once it exists; weak: it owns this).
    consumer: OnceLock<Weak<StreamConsumer<ConsumeContext<H>>>>,
    state: Mutex<State<H>>,
}

struct State<H: Handler> {
    /// Bumped by every change, so the fetch loop copies the list only when it changed.
    generation: u64,
    queues: Vec<(Tp, Arc<Queue<H>>)>,
}

impl<H: Handler> std::fmt::Debug for PartitionQueues<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.lock().unwrap();
        f.debug_struct("PartitionQueues")
            .field("generation", &st.generation)
            .field(
                "partitions",
                &st.queues.iter().map(|(tp, _)| tp).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<H: Handler> Default for PartitionQueues<H> {
    fn default() -> Self {
        PartitionQueues {
            consumer: OnceLock::new(),
            state: Mutex::new(State {
                generation: 0,
                queues: Vec::new(),
            }),
        }
    }
}

impl<H: Handler> PartitionQueues<H> {
    /// The consumer to split from; before it is set, nothing is split.
    pub fn set_consumer(&self, consumer: &Arc<StreamConsumer<ConsumeContext<H>>>) {
        let _ = self.consumer.set(Arc::downgrade(consumer));
    }

    /// Splits the queues of newly assigned partitions (call before the assignment takes
    /// effect). A partition that cannot be split stays on the consumer's queue.
    pub fn split(&self, tps: &[Tp]) {
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            return;
        };
        let mut st = self.state.lock().unwrap();
        for tp in tps {
            st.queues.retain(|(t, _)| t != tp);
            match consumer.split_partition_queue(&tp.topic, tp.partition) {
                Some(q) => st.queues.push((tp.clone(), Arc::new(q))),
                None => warn!(
                    topic = %tp.topic,
                    partition = tp.partition,
                    "the partition's queue could not be split: it is read from the consumer's \
                     queue and paused in librdkafka when its window is full"
                ),
            }
        }
        st.generation += 1;
    }

    /// Drops the queues of revoked partitions.
    pub fn remove(&self, tps: &[Tp]) {
        let mut st = self.state.lock().unwrap();
        st.queues.retain(|(t, _)| !tps.contains(t));
        st.generation += 1;
    }

    /// Drops every queue: each holds the consumer, which must be dropped to be closed.
    pub fn clear(&self) {
        let mut st = self.state.lock().unwrap();
        st.queues.clear();
        st.generation += 1;
    }

    /// Whether `tp` is read from a queue of its own (never paused in librdkafka).
    pub fn is_split(&self, tp: &Tp) -> bool {
        self.state
            .lock()
            .unwrap()
            .queues
            .iter()
            .any(|(t, _)| t == tp)
    }

    /// The queues, when they changed since `seen` (which moves to now).
    pub fn changed(&self, seen: &mut u64) -> Option<Vec<(Tp, Arc<Queue<H>>)>> {
        let st = self.state.lock().unwrap();
        if st.generation == *seen {
            return None;
        }
        *seen = st.generation;
        Some(st.queues.clone())
    }
}
