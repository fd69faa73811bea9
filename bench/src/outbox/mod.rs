//! Section 3, the outbox relay: pipewright's outbox worker against Debezium's embedded engine
//! (PostgreSQL connector over pgoutput logical replication, the outbox `EventRouter`), on the
//! same database, the same Kafka and the same table layout (pipewright's migration, whose
//! columns are Debezium's), publishing the same rows to equivalent topics.
//!
//! - **Drain**: a table pre-filled with N rows; each relay publishes all of them. The window
//!   runs from the first record's append to the last's (broker `LogAppendTime`), so process
//!   start-up (a JVM, a replication connection) is outside it for both. Beside them, a bare
//!   `FOR UPDATE SKIP LOCKED` claim-and-delete loop with no Kafka ([`relays::sql_ceiling`]):
//!   the database's ceiling for the worker's way of reading.
//! - **Latency**: 8 writers insert one row per transaction at a steady total rate. *Commit →
//!   Kafka-acknowledged* is, per row, from the wall-clock moment the writer's `COMMIT`
//!   returned to the broker's `LogAppendTime` of the record (same host, same clock). The
//!   broker stamps the time when it appends the batch to the partition's log; with one broker
//!   and `acks=all` the acknowledgement is sent right after that append, so this is the
//!   commit → acknowledgement delay less the response's trip back to the relay. Appending
//!   time, not the arrival at a consumer, so that the reading consumer's own fetch cadence is
//!   no part of the figure; the resolution is 1 ms (the timestamp's unit).
//!
//! Before the measured load, a warm-up of [`WARM_UP`] at the same rate is published in full
//! (not measured): the relays are compared warm, as they run in production.
//!
//! Every run gets a fresh table and topic; for Debezium the publication and the slot are
//! created before the rows are written, so that its stream starts before the first row.
//! Runs are in rounds (every relay once per round, the order rotated), figures are medians.

pub mod relays;
pub mod report;
pub mod table;
pub mod topic;
pub mod writers;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::process::{Proc, SAMPLE_PERIOD, tail};
use crate::profile::Profile;
use crate::{HOW_TO_START, progress};
use relays::Relay;
use report::{DrainRun, LatencyRun, OutboxResults};

/// Writers of the latency runs.
pub const WRITERS: u32 = 8;
/// Their total rate, rows/s.
pub const RATE: f64 = 2_000.0;
/// Load before the measured load of a latency run (not measured).
pub const WARM_UP: Duration = Duration::from_secs(2);

/// What the outbox benchmark needs: the services of the test environment and the binaries.
#[derive(Debug, Clone)]
pub struct OutboxSetup {
    pub bootstrap: String,
    pub database_url: String,
    /// `PIPEWRIGHT_DEBEZIUM_CLASSPATH`: Debezium's jars (tests/env/debezium/pom.xml).
    pub debezium_classpath: String,
    pub java: PathBuf,
    pub javac: PathBuf,
    pub worker: PathBuf,
    /// Logs of the runs.
    pub work_dir: PathBuf,
}

impl OutboxSetup {
    /// From the environment of `tests/env/up`; Java from `JAVA_HOME` when set.
    pub fn from_env(worker: PathBuf, work_dir: PathBuf) -> Result<OutboxSetup> {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .with_context(|| format!("{name} is not set: {HOW_TO_START}"))
        };
        ensure!(
            worker.is_file(),
            "the worker binary {} does not exist (build it: cargo build --release --locked -p \
             pipewright-worker)",
            worker.display()
        );
        let jdk = std::env::var_os("JAVA_HOME").map(|h| PathBuf::from(h).join("bin"));
        let tool = |name: &str| jdk.as_ref().map_or(PathBuf::from(name), |d| d.join(name));
        std::fs::create_dir_all(&work_dir)
            .with_context(|| format!("create {}", work_dir.display()))?;
        Ok(OutboxSetup {
            bootstrap: var("KAFKA_BOOTSTRAP_SERVERS")?,
            database_url: var("DATABASE_URL")?,
            debezium_classpath: var("PIPEWRIGHT_DEBEZIUM_CLASSPATH").context(
                "the Debezium jars come with the test environment (tests/env/debezium/fetch); \
                 restart it with tests/env/down and tests/env/up if it was started before",
            )?,
            java: std::env::var_os("JAVA").map_or(tool("java"), PathBuf::from),
            javac: tool("javac"),
            worker,
            work_dir,
        })
    }
}

/// Rows of the drain runs.
pub fn drain_rows(profile: Profile) -> u64 {
    match profile {
        Profile::Full => 200_000,
        Profile::Quick => 10_000,
        Profile::Smoke => 2_000,
    }
}

/// Duration and rate of the latency runs.
pub fn latency_load(profile: Profile) -> (Duration, f64) {
    match profile {
        Profile::Full => (Duration::from_secs(6), RATE),
        Profile::Quick => (Duration::from_secs(3), RATE),
        Profile::Smoke => (Duration::from_secs(1), 200.0),
    }
}

/// The drain's contenders, in the order of the first round.
pub const DRAIN: [Relay; 3] = [
    Relay::Worker { notify: true },
    Relay::Debezium,
    Relay::SqlCeiling,
];
/// The latency runs' contenders.
pub const LATENCY: [Relay; 5] = [
    Relay::Worker { notify: true },
    Relay::WorkerLingerZero,
    Relay::Worker { notify: false },
    Relay::DebeziumLowLatency,
    Relay::Debezium,
];

/// Runs the outbox benchmark of `profile` and returns its results (medians and targets).
pub fn run(profile: Profile, setup: &OutboxSetup) -> Result<OutboxResults> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let started_at = chrono::Utc::now();
    let clock = Instant::now();
    let invocation = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let pool = rt.block_on(
        PgPoolOptions::new()
            .max_connections(2)
            .connect(&setup.database_url),
    )?;
    rt.block_on(table::remove_leftovers(&pool))?;
    let classpath =
        relays::compile_debezium_relay(setup, &setup.work_dir.join("debezium-relay-classes"))?;
    let runs = profile.runs();
    let rows = drain_rows(profile);
    let (duration, rate) = latency_load(profile);
    progress(&format!(
        "outbox relay, {} profile: drain of {rows} rows × {} relays, then {:.0} rows/s from {WRITERS} \
         writers for {} s × {} relays; {runs} runs each; logs in {}",
        profile.name(),
        DRAIN.len(),
        rate,
        duration.as_secs(),
        LATENCY.len(),
        setup.work_dir.display()
    ));
    let ctx = Ctx {
        setup,
        pool: &pool,
        rt: &rt,
        classpath: &classpath,
        invocation: &invocation,
    };

    let total = (DRAIN.len() + LATENCY.len()) * runs;
    let mut done = 0;
    let mut drain: Vec<Vec<DrainRun>> = vec![Vec::new(); DRAIN.len()];
    for round in 0..runs {
        for k in 0..DRAIN.len() {
            let i = (k + round) % DRAIN.len();
            done += 1;
            let run = ctx
                .drain_once(
                    DRAIN[i],
                    rows,
                    round,
                    &format!("drain-{}-r{round}", DRAIN[i].id()),
                )
                .with_context(|| format!("drain: {}", DRAIN[i].label()))?;
            progress(&format!(
                "{done:>3}/{total} round {}/{runs} drain   {:<52} {:>8.0} rows/s {:>6.2} CPU s/M rows",
                round + 1,
                DRAIN[i].label(),
                run.rows_per_s,
                run.cpu_s_per_m_rows,
            ));
            drain[i].push(run);
        }
    }
    let mut latency: Vec<Vec<LatencyRun>> = vec![Vec::new(); LATENCY.len()];
    for round in 0..runs {
        for k in 0..LATENCY.len() {
            let i = (k + round) % LATENCY.len();
            done += 1;
            let run = ctx
                .latency_once(
                    LATENCY[i],
                    duration,
                    rate,
                    round,
                    &format!("latency-{}-r{round}", LATENCY[i].id()),
                )
                .with_context(|| format!("latency: {}", LATENCY[i].label()))?;
            progress(&format!(
                "{done:>3}/{total} round {}/{runs} latency {:<52} p50 {:>7.1} ms p99 {:>7.1} ms max {:>7.1} ms ({:.0} rows/s written)",
                round + 1,
                LATENCY[i].label(),
                run.p50_ms,
                run.p99_ms,
                run.max_ms,
                run.achieved_rate,
            ));
            latency[i].push(run);
        }
    }
    rt.block_on(pool.close());
    Ok(OutboxResults::new(
        profile,
        started_at.format("%Y-%m-%d %H:%M").to_string(),
        clock.elapsed().as_secs_f64(),
        setup,
        report::Load {
            drain_rows: rows,
            writers: WRITERS,
            rate,
            duration_s: duration.as_secs_f64(),
            aggregates: table::AGGREGATES,
            partitions: topic::PARTITIONS,
        },
        DRAIN.iter().copied().zip(drain).collect(),
        LATENCY.iter().copied().zip(latency).collect(),
    ))
}

/// What every run needs.
struct Ctx<'a> {
    setup: &'a OutboxSetup,
    pool: &'a PgPool,
    rt: &'a tokio::runtime::Runtime,
    classpath: &'a str,
    invocation: &'a str,
}

/// A run's table (and Debezium's slot and publication, same name) and topic; removed on drop
/// of [`Ctx::prepare`]'s caller through [`Ctx::clean_up`].
struct RunObjects {
    table: String,
    prefix: String,
    topic: String,
}

impl Ctx<'_> {
    fn prepare(&self, relay: Relay, run_id: &str) -> Result<RunObjects> {
        let n = run_id.replace('-', "_");
        let objects = RunObjects {
            table: format!("{}{}_{n}", table::PREFIX, self.invocation),
            prefix: format!("bench-outbox-{}-{run_id}-", self.invocation),
            topic: String::new(),
        };
        let objects = RunObjects {
            topic: relays::topic_of(&objects.prefix),
            ..objects
        };
        self.rt.block_on(async {
            table::create(self.pool, &objects.table).await?;
            if matches!(relay, Relay::Debezium | Relay::DebeziumLowLatency) {
                table::create_slot(self.pool, &objects.table).await?;
            }
            if relay != Relay::SqlCeiling {
                topic::create(&self.setup.bootstrap, &objects.topic).await?;
            }
            anyhow::Ok(())
        })?;
        Ok(objects)
    }

    fn clean_up(&self, objects: &RunObjects) {
        self.rt.block_on(async {
            if let Err(e) = table::drop(self.pool, &objects.table).await {
                progress(&format!("warning: cleaning up {}: {e:#}", objects.table));
            }
            crate::workload::delete_topics(&self.setup.bootstrap, &[&objects.topic]).await;
        });
    }

    fn start(&self, relay: Relay, objects: &RunObjects, run_id: &str) -> Result<Proc> {
        let files = relays::run_files(&self.setup.work_dir, run_id);
        match relay {
            Relay::Worker { notify } => relays::start_worker(
                self.setup,
                &objects.table,
                &objects.prefix,
                notify,
                false,
                &files.with_extension("log"),
            ),
            Relay::WorkerLingerZero => relays::start_worker(
                self.setup,
                &objects.table,
                &objects.prefix,
                true,
                true,
                &files.with_extension("log"),
            ),
            Relay::Debezium | Relay::DebeziumLowLatency => relays::start_debezium(
                self.setup,
                self.classpath,
                &objects.table,
                &objects.prefix,
                relay == Relay::DebeziumLowLatency,
                &files,
            ),
            Relay::SqlCeiling => bail!("the SQL ceiling is no process"),
        }
    }

    fn drain_once(&self, relay: Relay, rows: u64, round: usize, run_id: &str) -> Result<DrainRun> {
        let objects = self.prepare(relay, run_id)?;
        let result = self.drain_in(relay, rows, round, run_id, &objects);
        self.clean_up(&objects);
        result
    }

    fn drain_in(
        &self,
        relay: Relay,
        rows: u64,
        round: usize,
        run_id: &str,
        objects: &RunObjects,
    ) -> Result<DrainRun> {
        self.rt
            .block_on(table::fill(self.pool, &objects.table, rows))?;
        if relay == Relay::SqlCeiling {
            let run = self.rt.block_on(relays::sql_ceiling(
                &self.setup.database_url,
                &objects.table,
            ))?;
            ensure!(
                run.rows == rows,
                "the claim loop took {} of {rows} rows",
                run.rows
            );
            let window = run.last.duration_since(run.first)?.as_secs_f64();
            return Ok(DrainRun::new(round, rows, window, None, None));
        }
        let mut proc = self.start(relay, objects, run_id)?;
        let marks = topic::Watermarks::new(&self.setup.bootstrap, &objects.topic)?;
        wait_for_records(&mut proc, &marks, rows as i64, Duration::from_secs(60))?;
        let (first_ms, last_ms) = marks.append_span()?;
        let (first, last) = (at_ms(first_ms), at_ms(last_ms));
        // The sampler reads the process every period; let it pass the window's end.
        std::thread::sleep(SAMPLE_PERIOD * 2);
        proc.sample()?;
        let cpu = proc.cpu_at(last) - proc.cpu_at(first);
        let peak = proc.peak_rss_bytes();
        stop(&mut proc)?;
        ensure!(
            marks.records()? == rows as i64,
            "{} holds {} records after {rows} rows (duplicates?)",
            objects.topic,
            marks.records()?
        );
        if matches!(relay, Relay::Worker { .. } | Relay::WorkerLingerZero) {
            let left = self.rt.block_on(table::count(self.pool, &objects.table))?;
            ensure!(left == 0, "{left} rows left in the table after the drain");
        }
        let window = (last_ms - first_ms).max(1) as f64 / 1e3;
        Ok(DrainRun::new(round, rows, window, Some(cpu), Some(peak)))
    }

    fn latency_once(
        &self,
        relay: Relay,
        duration: Duration,
        rate: f64,
        round: usize,
        run_id: &str,
    ) -> Result<LatencyRun> {
        let objects = self.prepare(relay, run_id)?;
        let result = self.latency_in(relay, duration, rate, round, run_id, &objects);
        self.clean_up(&objects);
        result
    }

    fn latency_in(
        &self,
        relay: Relay,
        duration: Duration,
        rate: f64,
        round: usize,
        run_id: &str,
        objects: &RunObjects,
    ) -> Result<LatencyRun> {
        let mut proc = self.start(relay, objects, run_id)?;
        let marks = topic::Watermarks::new(&self.setup.bootstrap, &objects.topic)?;
        // A sentinel row: once it is in Kafka, the relay is live (its start-up is behind it).
        let (sentinel, _) = self.rt.block_on(async {
            let mut conn = self.pool.acquire().await?;
            writers::insert(&mut conn, &objects.table, 0).await
        })?;
        wait_for_records(&mut proc, &marks, 1, Duration::from_secs(120))?;
        // Warm-up at the same rate, published in full before the measured load: a JVM's JIT
        // (and any relay's caches and connections) warm, as in a relay that has been running.
        let warm = self.rt.block_on(writers::steady(
            &self.setup.database_url,
            &objects.table,
            WRITERS,
            rate,
            WARM_UP.min(duration),
        ))?;
        let warmed = 1 + warm.rows.len() as i64;
        wait_for_records(&mut proc, &marks, warmed, Duration::from_secs(60))?;
        let cpu_before = proc.sample()?.cpu_s;
        let load = self.rt.block_on(writers::steady(
            &self.setup.database_url,
            &objects.table,
            WRITERS,
            rate,
            duration,
        ))?;
        let expected = warmed + load.rows.len() as i64;
        wait_for_records(&mut proc, &marks, expected, Duration::from_secs(60))?;
        let cpu = proc.sample()?.cpu_s - cpu_before;
        let peak = proc.peak_rss_bytes();
        stop(&mut proc)?;
        let records = topic::read_all(&self.setup.bootstrap, &objects.topic, expected as usize)?;
        let mut latencies = Vec::with_capacity(load.rows.len());
        for r in &records {
            let id: uuid::Uuid = r
                .headers
                .get("id")
                .context("a record without an id header")?
                .parse()
                .context("id header")?;
            if id == sentinel || warm.rows.contains_key(&id) {
                continue;
            }
            let written = load
                .rows
                .get(&id)
                .with_context(|| format!("a record of no written row: {id}"))?;
            check_record(r, &id, written)?;
            let committed_ms = written.committed.duration_since(UNIX_EPOCH)?.as_secs_f64() * 1e3;
            latencies.push(r.append_ms as f64 - committed_ms);
        }
        ensure!(
            latencies.len() == load.rows.len(),
            "{} records for {} rows",
            latencies.len(),
            load.rows.len()
        );
        Ok(LatencyRun::new(round, latencies, &load, cpu, peak))
    }
}

/// Fails unless the record is what the row says: key `aggregateid`, the payload, headers
/// `type`, `aggregatetype`, `seq` (the same for both relays).
fn check_record(r: &topic::Received, id: &uuid::Uuid, w: &writers::Written) -> Result<()> {
    ensure!(
        r.key.as_deref() == Some(w.aggregate_id.as_str()),
        "row {id}: key {:?}, expected the aggregateid {}",
        r.key,
        w.aggregate_id
    );
    let value: serde_json::Value =
        serde_json::from_str(r.payload.as_deref().unwrap_or("null")).context("payload")?;
    ensure!(value == w.payload, "row {id}: payload {value}");
    for (header, expected) in [
        ("type", Some(table::EVENT_TYPE)),
        ("aggregatetype", Some(table::AGGREGATE_TYPE)),
        ("seq", None),
    ] {
        let got = r
            .headers
            .get(header)
            .with_context(|| format!("row {id}: no {header} header: {:?}", r.headers))?;
        if let Some(expected) = expected {
            ensure!(got == expected, "row {id}: header {header} = {got}");
        } else {
            got.parse::<i64>()
                .with_context(|| format!("row {id}: header {header} = {got}"))?;
        }
    }
    Ok(())
}

/// Waits (sampling the relay) until the topic holds `expected` records; fails when the relay
/// exits or makes no progress for `idle_limit`.
fn wait_for_records(
    proc: &mut Proc,
    marks: &topic::Watermarks,
    expected: i64,
    idle_limit: Duration,
) -> Result<()> {
    let mut last = (Instant::now(), -1);
    loop {
        proc.ensure_running()?;
        proc.sample()?;
        let n = marks.records()?;
        if n >= expected {
            return Ok(());
        }
        if n > last.1 {
            last = (Instant::now(), n);
        } else if last.0.elapsed() > idle_limit {
            bail!(
                "no progress for {idle_limit:?} at {n} of {expected} records; last lines of {}:\n{}",
                proc.log().display(),
                tail(proc.log(), 20)
            );
        }
        std::thread::sleep(SAMPLE_PERIOD * 2);
    }
}

/// SIGTERM, and the exit within 60 s. A JVM that ends on SIGTERM exits with 143 after its
/// shutdown hooks: that counts as a clean stop.
fn stop(proc: &mut Proc) -> Result<()> {
    let status = proc.terminate(Duration::from_secs(60))?;
    ensure!(
        status.success() || status.code() == Some(143),
        "{} exited with {status} after SIGTERM; last lines of its log:\n{}",
        proc.log().display(),
        tail(proc.log(), 20)
    );
    Ok(())
}

fn at_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms as u64)
}
