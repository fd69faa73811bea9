//! Part 2 of `make bench`: key-ordered concurrency with a slow handler. One partition, 1,000
//! keys, a handler that takes 1 ms (and one that takes 1–20 ms, uniformly), concurrency 16 / 64
//! / 256; the figure is records/s ÷ the ideal (concurrency ÷ mean handler time). The worker
//! (`--ordering key --sink discard --sink-discard-delay ...`) and its peer, Confluent Parallel
//! Consumer (KEY ordering, the same `maxConcurrency`, [`peer`]), read the same topic, one per
//! cell (handler × concurrency), from the beginning in a fresh group, in rounds like part 1.
//!
//! Every contender's mean handler time is measured (the worker's
//! `pipewright_consumer_handler_latency_seconds`, the peer's own clock around its handler): the
//! ratio to the ideal is given both for the nominal handler time (the figure, the
//! target's) and for the measured one (what the contender's handler really took).

pub mod peer;
pub mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pipewright_worker::consume::sinks::discard::jitter_of;
use serde::{Deserialize, Serialize};

use crate::contenders::{self, Contender, Ordering, Run, Setup, Sink, Topic};
use crate::profile::Profile;
use crate::{progress, workload};
use report::{CellResult, OrderedResults};

/// Partitions of every topic of this part.
pub const PARTITIONS: i32 = 1;
/// Distinct keys of every topic of this part.
pub const KEYS: u64 = 1_000;

/// How long the slow handler takes: `delay` plus a uniform `0..=jitter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerTime {
    pub delay_us: u64,
    pub jitter_us: u64,
}

impl HandlerTime {
    /// The handler: 1 ms.
    pub const FIXED_1MS: HandlerTime = HandlerTime {
        delay_us: 1_000,
        jitter_us: 0,
    };
    /// The variant: 1–20 ms, uniformly.
    pub const JITTER_1_TO_20MS: HandlerTime = HandlerTime {
        delay_us: 1_000,
        jitter_us: 19_000,
    };

    /// The mean handler time by design (delay + half the jitter), ms: sizes the topics.
    pub fn design_mean_ms(self) -> f64 {
        (self.delay_us as f64 + self.jitter_us as f64 / 2.0) / 1_000.0
    }

    /// The times the records of a cell's topic are set to take, summed (its one partition,
    /// offsets `0..records`): the delay plus each record's jitter, by the function both
    /// contenders wait by ([`jitter_of`]; the peer reports its own sum, which must be this).
    pub fn set_total(self, records: u64) -> Duration {
        let jitter = Duration::from_micros(self.jitter_us);
        let jitters: Duration = (0..records as i64)
            .map(|offset| jitter_of(jitter, 0, offset))
            .sum();
        Duration::from_micros(self.delay_us * records) + jitters
    }

    /// The mean of [`HandlerTime::set_total`], ms: the nominal ideal's handler time.
    pub fn nominal_mean_ms(self, records: u64) -> f64 {
        self.set_total(records).as_secs_f64() * 1_000.0 / records.max(1) as f64
    }

    /// `1 ms`, `1–20 ms`.
    pub fn label(self) -> String {
        let ms = |us: u64| format!("{}", us as f64 / 1_000.0);
        if self.jitter_us == 0 {
            format!("{} ms", ms(self.delay_us))
        } else {
            format!(
                "{}–{} ms",
                ms(self.delay_us),
                ms(self.delay_us + self.jitter_us)
            )
        }
    }

    fn id(self) -> String {
        format!("d{}j{}", self.delay_us, self.jitter_us)
    }

    /// The worker's flags for this handler.
    pub fn worker_args(self) -> Vec<String> {
        vec![
            format!("--sink-discard-delay={}us", self.delay_us),
            format!("--sink-discard-jitter={}us", self.jitter_us),
        ]
    }
}

/// The records/s of `concurrency` records running at once, each taking `mean_ms`.
pub fn ideal_per_s(concurrency: u32, mean_ms: f64) -> f64 {
    concurrency as f64 / (mean_ms / 1_000.0)
}

/// One comparison: a handler and a concurrency, on a topic of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    pub handler: HandlerTime,
    pub concurrency: u32,
}

impl Cell {
    /// Records in the cell's topic: the nominal ideal rate × the profile's seconds, a whole
    /// number of thousands (every key the same number of times), within the profile's bounds.
    pub fn records(self, profile: Profile) -> u64 {
        let (seconds, min, max) = match profile {
            Profile::Full => (1.5, 4_000, 100_000),
            Profile::Quick => (1.0, 2_000, 50_000),
            Profile::Smoke => (0.0, 200, 200),
        };
        let ideal = ideal_per_s(self.concurrency, self.handler.design_mean_ms());
        ((ideal * seconds / KEYS as f64).round() as u64 * KEYS).clamp(min, max)
    }

    /// `1 ms, c=64`.
    pub fn label(self) -> String {
        format!("{}, c={}", self.handler.label(), self.concurrency)
    }

    fn id(self) -> String {
        format!("{}-c{}", self.handler.id(), self.concurrency)
    }
}

/// The cells of a profile, in order.
pub fn cells(profile: Profile) -> Vec<Cell> {
    let grid: &[(HandlerTime, u32)] = match profile {
        Profile::Full => &[
            (HandlerTime::FIXED_1MS, 16),
            (HandlerTime::FIXED_1MS, 64),
            (HandlerTime::FIXED_1MS, 256),
            (HandlerTime::JITTER_1_TO_20MS, 16),
            (HandlerTime::JITTER_1_TO_20MS, 64),
            (HandlerTime::JITTER_1_TO_20MS, 256),
        ],
        Profile::Quick => &[
            (HandlerTime::FIXED_1MS, 16),
            (HandlerTime::FIXED_1MS, 256),
            (HandlerTime::JITTER_1_TO_20MS, 64),
        ],
        Profile::Smoke => &[
            (HandlerTime::FIXED_1MS, 16),
            (HandlerTime::JITTER_1_TO_20MS, 64),
        ],
    };
    grid.iter()
        .map(|&(handler, concurrency)| Cell {
            handler,
            concurrency,
        })
        .collect()
}

/// The two contenders of every cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Who {
    /// `pipewright-worker consume --ordering key --sink discard --sink-discard-delay ...`.
    Worker,
    /// Confluent Parallel Consumer, KEY ordering ([`peer`]).
    ParallelConsumer,
}

impl Who {
    pub const ALL: [Who; 2] = [Who::Worker, Who::ParallelConsumer];

    pub fn label(self) -> &'static str {
        match self {
            Who::Worker => "worker",
            Who::ParallelConsumer => "Parallel Consumer",
        }
    }

    fn id(self) -> &'static str {
        match self {
            Who::Worker => "worker",
            Who::ParallelConsumer => "pc",
        }
    }
}

/// Runs part 2: builds the peer, fills a topic per cell, runs both contenders on each in
/// rounds, and returns the results (medians, ratios, targets). Fails on the first run that
/// fails or does not consume every record.
pub fn run(profile: Profile, setup: &Setup) -> Result<OrderedResults> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let started_at = chrono::Utc::now();
    let clock = Instant::now();
    let peer = peer::Peer::build(setup)?;
    let invocation = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let cells = cells(profile);
    let topics: Vec<Topic> = cells
        .iter()
        .map(|c| Topic {
            name: format!("bench-ordered-{invocation}-{}", c.id()),
            records: c.records(profile),
        })
        .collect();
    progress(&format!(
        "key-ordered concurrency with a slow handler, {} profile: {} cells × {} contenders × {} \
         runs, one partition, {KEYS} keys; logs in {}",
        profile.name(),
        cells.len(),
        Who::ALL.len(),
        profile.runs(),
        setup.work_dir.display()
    ));
    let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
    let result = (|| {
        for topic in &topics {
            rt.block_on(workload::create_topic(
                &setup.bootstrap,
                &topic.name,
                PARTITIONS,
            ))?;
            workload::fill_keyed(&setup.bootstrap, &topic.name, topic.records, KEYS)?;
        }
        progress(&format!(
            "wrote {} records to {} topics",
            topics.iter().map(|t| t.records).sum::<u64>(),
            topics.len()
        ));
        rounds(profile, setup, &peer, &cells, &topics, &invocation, &rt)
    })();
    rt.block_on(workload::delete_topics(&setup.bootstrap, &names));
    let runs = result?;
    let cells: Vec<CellResult> = cells
        .iter()
        .zip(topics.iter())
        .zip(runs)
        .map(|((cell, topic), runs)| CellResult::new(*cell, topic.records, runs))
        .collect();
    let targets = report::targets(&cells);
    Ok(OrderedResults {
        benchmark: "ordered".into(),
        profile,
        started_at: started_at.format("%Y-%m-%d %H:%M").to_string(),
        duration_s: clock.elapsed().as_secs_f64(),
        machine: crate::machine(),
        versions: crate::versions(setup),
        peer: peer.version(),
        partitions: PARTITIONS,
        keys: KEYS,
        runs_per_contender: profile.runs(),
        worker_extra_args: setup.worker_args.clone(),
        cells,
        targets,
    })
}

/// Runs of every cell, per contender in [`Who::ALL`] order.
type CellRuns = Vec<Vec<Run>>;

/// Every cell's contenders once per round; the order of the contenders alternates by round.
fn rounds(
    profile: Profile,
    setup: &Setup,
    peer: &peer::Peer,
    cells: &[Cell],
    topics: &[Topic],
    invocation: &str,
    rt: &tokio::runtime::Runtime,
) -> Result<Vec<CellRuns>> {
    let mut runs: Vec<CellRuns> = vec![vec![Vec::new(); Who::ALL.len()]; cells.len()];
    let total = cells.len() * Who::ALL.len() * profile.runs();
    let mut done = 0;
    for round in 0..profile.runs() {
        for (c, (cell, topic)) in cells.iter().zip(topics).enumerate() {
            for k in 0..Who::ALL.len() {
                let w = (k + round) % Who::ALL.len();
                let who = Who::ALL[w];
                done += 1;
                let run_id = format!("{invocation}-{}-{}-r{round}", cell.id(), who.id());
                let clock = Instant::now();
                let run = match who {
                    Who::Worker => run_worker(setup, topic, *cell, round, &run_id, rt),
                    Who::ParallelConsumer => peer.run(setup, topic, *cell, round, &run_id),
                }
                .with_context(|| format!("{} on {} (run {run_id})", who.label(), cell.label()))?;
                let rate = run.records as f64 / run.window_s.max(1e-9);
                let nominal = ideal_per_s(
                    cell.concurrency,
                    cell.handler.nominal_mean_ms(topic.records),
                );
                let measured_ms = report::handler_mean_ms(&run);
                progress(&format!(
                    "{done:>3}/{total} round {}/{} {:<22} {:<17} {:>8.0} records/s = {:.2} of ideal; \
                     handler {:.3} ms measured → {:.2} of that ideal  ({:.1} s)",
                    round + 1,
                    profile.runs(),
                    cell.label(),
                    who.label(),
                    rate,
                    rate / nominal,
                    measured_ms,
                    rate / ideal_per_s(cell.concurrency, measured_ms),
                    clock.elapsed().as_secs_f64()
                ));
                runs[c][w].push(run);
            }
        }
    }
    Ok(runs)
}

fn run_worker(
    setup: &Setup,
    topic: &Topic,
    cell: Cell,
    round: usize,
    run_id: &str,
    rt: &tokio::runtime::Runtime,
) -> Result<Run> {
    let mut setup = setup.clone();
    // The handler's flags first: `--worker-arg`s given to the harness come after them.
    let extra = std::mem::take(&mut setup.worker_args);
    setup.worker_args = cell.handler.worker_args();
    setup.worker_args.extend(extra);
    let contender = Contender::Worker {
        ordering: Ordering::Key,
        concurrency: cell.concurrency,
        sink: Sink::Discard,
        queue_kbytes: None,
    };
    contenders::run_once(&setup, topic, &contender, round, run_id, rt)
}

/// Where part 2's results go by default.
pub fn default_results() -> PathBuf {
    PathBuf::from("bench/results/ordered.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ideal_is_concurrency_over_the_mean_handler_time() {
        assert_eq!(HandlerTime::FIXED_1MS.nominal_mean_ms(4_000), 1.0);
        assert_eq!(HandlerTime::JITTER_1_TO_20MS.design_mean_ms(), 10.5);
        // The jitter of 1,000,000 records averages out near half of 19 ms.
        let mean = HandlerTime::JITTER_1_TO_20MS.nominal_mean_ms(1_000_000);
        assert!((10.45..10.55).contains(&mean), "{mean}");
        assert_eq!(ideal_per_s(64, 1.0), 64_000.0);
        assert_eq!(HandlerTime::JITTER_1_TO_20MS.label(), "1–20 ms");
    }

    #[test]
    fn every_cell_has_whole_thousands_of_records_within_the_profile_bounds() {
        for profile in [Profile::Full, Profile::Quick] {
            for cell in cells(profile) {
                let r = cell.records(profile);
                assert_eq!(r % KEYS, 0, "{cell:?}");
                assert!((2_000..=100_000).contains(&r), "{cell:?}: {r}");
            }
        }
        assert_eq!(
            Cell {
                handler: HandlerTime::FIXED_1MS,
                concurrency: 16
            }
            .records(Profile::Full),
            24_000
        );
    }
}
