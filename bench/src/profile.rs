//! How big a run is: `full` (`make bench`), `quick` (`make bench QUICK=1`) and `smoke` (the
//! test in `make test` that keeps the harness from rotting).

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::contenders::{Contender, Ordering, Sink};

/// librdkafka's default `queued.max.messages.kbytes`.
pub const LIBRDKAFKA_DEFAULT_QUEUE_KBYTES: u32 = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// 500k records, 5 runs of every contender in part 1, 3 in the others.
    Full,
    /// 100k records, 3 runs of the contenders the targets and the sinks need.
    Quick,
    /// 3k records, 1 run of every contender, no plot: proves the harness works, measures
    /// nothing.
    Smoke,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Full => "full",
            Profile::Quick => "quick",
            Profile::Smoke => "smoke",
        }
    }

    /// Records in the topic.
    pub fn records(self) -> u64 {
        match self {
            Profile::Full => 500_000,
            Profile::Quick => 100_000,
            Profile::Smoke => 3_000,
        }
    }

    /// Part 1's runs of each contender (rounds; every figure is the median over them): 5 in
    /// the full profile, whose runs are half a second each and move by ±25 % with the other
    /// load of a shared machine (a median of 3 moved the worker ÷ Java ratio from 0.78 to
    /// 1.05 between two runs of the same binaries, 2026-12-02).
    pub fn consume_runs(self) -> usize {
        match self {
            Profile::Full => 5,
            Profile::Quick => 3,
            Profile::Smoke => 1,
        }
    }

    /// Runs of each contender (rounds); every figure is the median over them.
    pub fn runs(self) -> usize {
        match self {
            Profile::Full | Profile::Quick => 3,
            Profile::Smoke => 1,
        }
    }

    /// The contenders, in the order of the first round.
    pub fn contenders(self) -> Vec<Contender> {
        let worker = |ordering, concurrency, sink| Contender::Worker {
            ordering,
            concurrency,
            sink,
            queue_kbytes: None,
        };
        let mut all = vec![
            Contender::JavaConsumerPerformance,
            Contender::RdkafkaPerformance,
            Contender::RawRust,
        ];
        let grid: &[(Ordering, u32)] = match self {
            Profile::Full | Profile::Smoke => &[
                (Ordering::Key, 16),
                (Ordering::Key, 256),
                (Ordering::Partition, 16),
                (Ordering::Partition, 256),
                (Ordering::None, 16),
                (Ordering::None, 256),
            ],
            Profile::Quick => &[
                (Ordering::Key, 16),
                (Ordering::Key, 256),
                (Ordering::None, 256),
            ],
        };
        all.extend(grid.iter().map(|&(o, c)| worker(o, c, Sink::Discard)));
        // The worker caps librdkafka's prefetch queue at 16 MiB; librdkafka's own default is
        // 64 MiB. Measured beside the default to show what that cap costs.
        all.push(Contender::Worker {
            ordering: Ordering::Key,
            concurrency: 256,
            sink: Sink::Discard,
            queue_kbytes: Some(LIBRDKAFKA_DEFAULT_QUEUE_KBYTES),
        });
        for sink in [
            Sink::Log,
            Sink::Kafka,
            Sink::KafkaTransactional,
            Sink::Postgres,
        ] {
            all.push(worker(Ordering::Key, 256, sink));
        }
        all
    }
}
