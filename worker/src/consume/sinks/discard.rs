//! The no-op sink (`--sink discard`): accepts and drops each event. A benchmarking aid, not
//! offered by the EventConsumer API: with no delay it measures the pipeline alone; with
//! `--sink-discard-delay` (and `--sink-discard-jitter`) each delivery takes that long, as a
//! slow handler would (docs/benchmarks.md, section 2).
//!
//! **How the time is taken.** The delivery awaits a wake-up that a timer thread of its own
//! sends at `start + delay + jitter(record)`, the way a real slow handler (an HTTP call, a
//! database query) awaits a response that the runtime's reactor reports the moment it
//! arrives. The delivery holds its slot of `concurrency` all that time, like any sink call.
//! Not `tokio::time::sleep`: tokio's timer wheel fires on whole-millisecond ticks, so a
//! "1 ms" sleep takes 1–2 ms, an artifact of the emulation that no I/O-bound handler has. The
//! timer thread sleeps on a condition variable with a nanosecond deadline (the kernel's
//! high-resolution timer, with the thread's timer slack set to 1 ns: Linux otherwise lets a
//! thread's timed waits end up to 50 µs late to batch wake-ups, which a handler woken by a
//! response does not suffer). The worker's
//! `pipewright_consumer_handler_latency_seconds` measures what each delivery really took.
//!
//! **Which jitter.** A record's jitter is a function of the record alone ([`jitter_of`]:
//! splitmix64 of its partition and offset, uniform in `0..=jitter`), so every run, and the
//! benchmark's peer, which computes the same function (`bench/java/parallel-consumer`), gives
//! the same record the same time: contenders compared on one topic wait for the same
//! handler times, not for two samples of a random draw.

use std::collections::BinaryHeap;
use std::future::Future;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// `--sink discard`, with the time each delivery takes.
#[derive(Debug, Default)]
pub struct DiscardSink {
    /// Fixed time of every delivery.
    pub delay: Duration,
    /// Each delivery takes up to this much longer, uniformly distributed.
    pub jitter: Duration,
}

impl DiscardSink {
    /// A sink whose deliveries take `delay` plus a uniform `0..=jitter`.
    pub fn new(delay: Duration, jitter: Duration) -> DiscardSink {
        DiscardSink { delay, jitter }
    }

    /// Drops the event when this sink takes no time; `false`: [`DiscardSink::deliver`] must
    /// take it.
    pub fn deliver_now(&self) -> bool {
        self.delay.is_zero() && self.jitter.is_zero()
    }

    /// Drops the event of the record at `partition`, `offset` after its delivery's time.
    pub async fn deliver(&self, partition: i32, offset: i64) {
        let wait = self.delay + self.jitter_of(partition, offset);
        if !wait.is_zero() {
            Wake::at(Instant::now() + wait).await;
        }
    }

    /// The jitter of the record at `partition`, `offset` ([`jitter_of`]).
    fn jitter_of(&self, partition: i32, offset: i64) -> Duration {
        jitter_of(self.jitter, partition, offset)
    }
}

/// The jitter of the record at `partition`, `offset` when deliveries take up to `jitter`
/// longer: uniform in `0..=jitter`, the splitmix64 of `partition << 40 | offset` modulo the
/// jitter in nanoseconds plus one. The benchmark's Parallel Consumer peer computes the same
/// (`jitterOf` in `ParallelConsumerPeer.java`; the test below pins values both must give), and
/// the benchmark uses it for the mean handler time of a topic's records.
pub fn jitter_of(jitter: Duration, partition: i32, offset: i64) -> Duration {
    let nanos = jitter.as_nanos() as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    let mut z = (((partition as u64) << 40) | offset as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    Duration::from_nanos(z % (nanos + 1))
}

/// One pending wake-up: its deadline and what to wake.
struct Entry {
    at: Instant,
    shared: Arc<Shared>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// Reversed: the heap's top is the earliest deadline.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.at.cmp(&self.at)
    }
}

#[derive(Default)]
struct Shared {
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// The timer thread's queue (started on first use, lives as long as the process).
#[derive(Default)]
struct Timer {
    heap: Mutex<BinaryHeap<Entry>>,
    cond: Condvar,
}

impl Timer {
    fn get() -> &'static Timer {
        static TIMER: OnceLock<&'static Timer> = OnceLock::new();
        TIMER.get_or_init(|| {
            let timer: &'static Timer = Box::leak(Box::default());
            std::thread::Builder::new()
                .name("discard-delay".into())
                .spawn(move || {
                    // Best effort: without it the deadlines are met ~50 µs late.
                    if let Err(error) = rustix::thread::set_current_timer_slack(NonZeroU64::new(1))
                    {
                        tracing::warn!(%error, "could not set the discard sink's timer slack");
                    }
                    timer.run()
                })
                .expect("spawn the discard sink's timer thread");
            timer
        })
    }

    fn add(&self, entry: Entry) {
        let mut heap = self.heap.lock().unwrap();
        let earliest = heap.peek().is_none_or(|top| entry.at < top.at);
        heap.push(entry);
        if earliest {
            self.cond.notify_one();
        }
    }

    fn run(&self) {
        let mut heap = self.heap.lock().unwrap();
        loop {
            let now = Instant::now();
            let mut due = Vec::new();
            while heap.peek().is_some_and(|top| top.at <= now) {
                due.extend(heap.pop());
            }
            if !due.is_empty() {
                drop(heap);
                for entry in due {
                    entry.shared.fired.store(true, Ordering::Release);
                    if let Some(waker) = entry.shared.waker.lock().unwrap().take() {
                        waker.wake();
                    }
                }
                heap = self.heap.lock().unwrap();
                continue;
            }
            heap = match heap.peek().map(|top| top.at) {
                Some(at) => self.cond.wait_timeout(heap, at - now).unwrap().0,
                None => self.cond.wait(heap).unwrap(),
            };
        }
    }
}

/// Resolves once the timer thread has passed `at`.
struct Wake {
    at: Instant,
    shared: Option<Arc<Shared>>,
}

impl Wake {
    fn at(at: Instant) -> Wake {
        Wake { at, shared: None }
    }
}

impl Future for Wake {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let at = self.at;
        let shared = self.shared.get_or_insert_with(|| {
            let shared = Arc::new(Shared::default());
            Timer::get().add(Entry {
                at,
                shared: shared.clone(),
            });
            shared
        });
        if shared.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        *shared.waker.lock().unwrap() = Some(cx.waker().clone());
        // Fired between the check and storing the waker: the timer found no waker to wake.
        if shared.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_delivery_takes_at_least_its_delay_and_the_jitter_stays_in_its_range() {
        let sink = DiscardSink::new(Duration::from_millis(2), Duration::from_millis(3));
        let started = Instant::now();
        sink.deliver(0, 0).await;
        assert!(started.elapsed() >= Duration::from_millis(2));
        let jitters: Vec<Duration> = (0..10_000).map(|n| sink.jitter_of(0, n)).collect();
        assert!(jitters.iter().all(|j| *j <= Duration::from_millis(3)));
        let mean = jitters.iter().sum::<Duration>() / jitters.len() as u32;
        assert!(
            (Duration::from_micros(1400)..Duration::from_micros(1600)).contains(&mean),
            "mean jitter {mean:?} is not about half the range"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_deliveries_each_end_after_their_own_deadline() {
        let sink = Arc::new(DiscardSink::new(
            Duration::from_millis(1),
            Duration::from_millis(5),
        ));
        let tasks: Vec<_> = (0..200)
            .map(|offset| {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    sink.deliver(0, offset).await;
                    started.elapsed()
                })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap() >= Duration::from_millis(1));
        }
        assert_eq!(DiscardSink::default().jitter_of(0, 7), Duration::ZERO);
    }

    /// The values `ParallelConsumerPeer.jitterOf` must give too (the benchmark's peer waits
    /// for the same time on the same record).
    #[test]
    fn a_records_jitter_is_a_function_of_its_partition_and_offset() {
        let sink = DiscardSink::new(Duration::from_millis(1), Duration::from_millis(19));
        let nanos = |p, o| sink.jitter_of(p, o).as_nanos();
        assert_eq!(
            [nanos(0, 0), nanos(0, 1), nanos(0, 999), nanos(3, 12_345)],
            [17_736_006, 3_831_458, 1_716_637, 13_677_222]
        );
    }
}
