//! The results file (`bench/results/consume.json`), the figures and ratios computed from it,
//! and what is rendered from it: `docs/benchmarks.md` and the PNG plot (gnuplot).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};

use crate::contenders::{Contender, Ordering, Run, Sink};
use crate::profile::Profile;

/// Everything one invocation measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub benchmark: String,
    pub profile: Profile,
    pub started_at: String,
    pub duration_s: f64,
    pub machine: Machine,
    pub versions: Versions,
    pub workload: Workload,
    pub runs_per_contender: usize,
    /// Flags added to every worker run beyond the harness's own (`--worker-arg`).
    #[serde(default)]
    pub worker_extra_args: Vec<String>,
    pub contenders: Vec<ContenderResult>,
    /// The issue's targets, as measured.
    pub targets: Vec<Ratio>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versions {
    /// `git describe --always --dirty` of the tree the worker was built from.
    pub worker_git: String,
    pub librdkafka: String,
    pub kafka: String,
    pub java: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub records: u64,
    pub partitions: i32,
    pub keys: u64,
    pub key_bytes: usize,
    pub value_bytes: usize,
    pub event_types: Vec<String>,
    pub compression: String,
    /// Seconds the fill took (not a figure of any contender).
    pub fill_s: f64,
}

impl Workload {
    pub fn bytes_per_record(&self) -> f64 {
        (self.key_bytes + self.value_bytes) as f64
    }
}

/// The figures of one run or the medians over runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub records_per_s: f64,
    /// 10^6 bytes of key + value per second.
    pub mb_per_s: f64,
    pub cpu_s_per_m_records: f64,
    /// CPU seconds per second of window.
    pub cores_busy: f64,
    pub peak_rss_mib: f64,
}

impl Figures {
    pub fn of_run(run: &Run, workload: &Workload) -> Figures {
        let window = run.window_s.max(1e-9);
        Figures {
            records_per_s: run.records as f64 / window,
            mb_per_s: run.records as f64 * workload.bytes_per_record() / window / 1e6,
            cpu_s_per_m_records: run.cpu_s / run.records.max(1) as f64 * 1e6,
            cores_busy: run.cpu_s / window,
            peak_rss_mib: run.peak_rss_bytes as f64 / (1024.0 * 1024.0),
        }
    }

    /// Each figure's median over `runs` (separately).
    pub fn median(runs: &[Figures]) -> Figures {
        let m = |f: fn(&Figures) -> f64| median(runs.iter().map(f).collect());
        Figures {
            records_per_s: m(|f| f.records_per_s),
            mb_per_s: m(|f| f.mb_per_s),
            cpu_s_per_m_records: m(|f| f.cpu_s_per_m_records),
            cores_busy: m(|f| f.cores_busy),
            peak_rss_mib: m(|f| f.peak_rss_mib),
        }
    }
}

/// The median (the mean of the middle two for an even count); 0 for none.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContenderResult {
    pub id: String,
    pub label: String,
    pub contender: Contender,
    pub runs: Vec<Run>,
    pub median: Figures,
    pub min_records_per_s: f64,
    pub max_records_per_s: f64,
}

impl ContenderResult {
    pub fn new(contender: Contender, runs: Vec<Run>, workload: &Workload) -> ContenderResult {
        let figures: Vec<Figures> = runs.iter().map(|r| Figures::of_run(r, workload)).collect();
        let rates = figures.iter().map(|f| f.records_per_s);
        ContenderResult {
            id: contender.id(),
            label: contender.label(),
            contender,
            median: Figures::median(&figures),
            min_records_per_s: rates.clone().fold(f64::INFINITY, f64::min),
            max_records_per_s: rates.fold(0.0, f64::max),
            runs,
        }
    }
}

/// A ratio of two contenders' median records/s, with the issue's target where there is one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    pub what: String,
    pub numerator: String,
    pub denominator: String,
    pub value: f64,
    pub target: f64,
    pub met: bool,
}

/// The issue's targets: worker (key order, no-op sink, c=256) ≥ 0.5 × the raw Rust loop and ≥
/// 1.0 × Java ConsumerPerformance; the transactional Kafka sink ≥ 0.3 × the plain one.
pub fn targets(contenders: &[ContenderResult]) -> Vec<Ratio> {
    let worker = |sink| Contender::Worker {
        ordering: Ordering::Key,
        concurrency: 256,
        sink,
        queue_kbytes: None,
    };
    let wanted = [
        (
            "worker (key order, no-op sink, c=256) vs raw rust-rdkafka loop",
            worker(Sink::Discard),
            Contender::RawRust,
            0.5,
        ),
        (
            "worker (key order, no-op sink, c=256) vs Java ConsumerPerformance",
            worker(Sink::Discard),
            Contender::JavaConsumerPerformance,
            1.0,
        ),
        (
            "transactional Kafka sink vs plain Kafka sink (key order, c=256)",
            worker(Sink::KafkaTransactional),
            worker(Sink::Kafka),
            0.3,
        ),
    ];
    let find = |c: &Contender| contenders.iter().find(|r| r.contender == *c);
    wanted
        .into_iter()
        .filter_map(|(what, num, den, target)| {
            let (n, d) = (find(&num)?, find(&den)?);
            let value = n.median.records_per_s / d.median.records_per_s.max(1e-9);
            Some(Ratio {
                what: what.to_string(),
                numerator: n.id.clone(),
                denominator: d.id.clone(),
                value,
                target,
                met: value >= target,
            })
        })
        .collect()
}

impl Results {
    pub fn read(path: &Path) -> Result<Results> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_string_pretty(self)? + "\n";
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
    }

    fn find(&self, contender: &Contender) -> Option<&ContenderResult> {
        self.contenders.iter().find(|r| r.contender == *contender)
    }

    /// The worker's median peak RSS, key order, c=256, no-op sink (the memory part's "under
    /// load" figure).
    pub fn worker_peak_rss_mib(&self) -> Option<f64> {
        self.find(&Contender::Worker {
            ordering: Ordering::Key,
            concurrency: 256,
            sink: Sink::Discard,
            queue_kbytes: None,
        })
        .map(|r| r.median.peak_rss_mib)
    }
}

fn si(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2} M", value / 1e6)
    } else if value >= 1e4 {
        format!("{:.0} k", value / 1e3)
    } else if value >= 1e3 {
        format!("{:.1} k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

fn ratio_cell(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{v:.2}×"))
}

/// A short name for the plot's axis.
pub fn short_label(contender: &Contender) -> String {
    match contender {
        Contender::JavaConsumerPerformance => "Java".into(),
        Contender::RdkafkaPerformance => "rdkafka_perf".into(),
        Contender::RawRust => "raw rust".into(),
        Contender::Worker {
            ordering,
            concurrency,
            sink,
            queue_kbytes,
        } => match sink {
            Sink::Discard if queue_kbytes.is_some() => {
                format!("{} c{concurrency} queue64M", ordering.flag())
            }
            Sink::Discard => format!("{} c{concurrency}", ordering.flag()),
            Sink::Log => "log sink".into(),
            Sink::Kafka => "kafka sink".into(),
            Sink::KafkaTransactional => "kafka txn".into(),
            Sink::Postgres => "postgres".into(),
        },
    }
}

/// `docs/benchmarks.md`.
pub fn markdown(results: &Results, plot: Option<&str>) -> String {
    let w = &results.workload;
    let raw = results
        .find(&Contender::RawRust)
        .map(|r| r.median.records_per_s);
    let java = results
        .find(&Contender::JavaConsumerPerformance)
        .map(|r| r.median.records_per_s);
    let mut md = String::new();
    let mut line = |s: &str| {
        md.push_str(s);
        md.push('\n');
    };
    line("# Benchmarks");
    line("");
    line(
        "<!-- Generated by `make bench` (bench/src/report.rs and each part's report module) from \
         bench/results/*.json: edit the generator, not this file. -->",
    );
    line("");
    line(&format!(
        "Last run: `{}` profile, {} UTC, {} min {} s for the comparisons. Machine: {} CPUs \
         ({}), {:.0} GiB, Linux {}. Worker built from `{}` (release); librdkafka {}; Kafka {}; \
         {}.",
        results.profile.name(),
        results.started_at,
        results.duration_s as u64 / 60,
        results.duration_s as u64 % 60,
        results.machine.cpus,
        results.machine.cpu_model,
        results.machine.memory_gib,
        results.machine.kernel,
        results.versions.worker_git,
        results.versions.librdkafka,
        results.versions.kafka,
        results.versions.java,
    ));
    line("");
    line("```sh");
    line(
        "make bench            # starts the test environment, builds release, runs every comparison, writes this file and the plot",
    );
    line(
        "make bench QUICK=1    # 100k records and fewer worker variants, still the median of 3 runs each",
    );
    line("```");
    line("");
    line(
        "The results of the last run are kept in `bench/results/` (one file per part); \
         `pipewright-bench render` re-renders this file and the plots from them. `make test` runs the same harness with \
         3,000 records and one run of every contender (`bench/tests/smoke.rs`), so it cannot rot.",
    );
    line("");
    line("## 1. Consume throughput");
    line("");
    line(&format!(
        "One topic, written once per invocation: {} records, {} partitions, {} keys, keyed \
         {}-byte typed JSON values (`{{\"event_type\": ...}}`, {} types, padded), uncompressed. \
         Every contender reads all of it from the beginning in a fresh consumer group, {} times \
         (rounds, see below). Figures are medians of the {} runs; records/s shows the range.",
        w.records,
        w.partitions,
        w.keys,
        w.value_bytes,
        w.event_types.len(),
        results.runs_per_contender,
        results.runs_per_contender,
    ));
    line("");
    if !results.worker_extra_args.is_empty() {
        line(&format!(
            "**Every worker run had these flags beyond the harness's own:** `{}`.",
            results.worker_extra_args.join(" ")
        ));
        line("");
    }
    line(
        "| contender | records/s (min–max) | MB/s | CPU s / M records | cores busy | peak RSS MiB | × raw Rust loop | × Java |",
    );
    line("|---|---:|---:|---:|---:|---:|---:|---:|");
    for c in &results.contenders {
        let m = &c.median;
        let scope = if c.runs.iter().any(|r| r.cpu_scope == "process") {
            " ¹"
        } else {
            ""
        };
        line(&format!(
            "| {} | **{}** ({}–{}) | {:.1} | {:.2}{scope} | {:.2} | {:.0} | {} | {} |",
            c.label,
            si(m.records_per_s),
            si(c.min_records_per_s),
            si(c.max_records_per_s),
            m.mb_per_s,
            m.cpu_s_per_m_records,
            m.cores_busy,
            m.peak_rss_mib,
            ratio_cell(raw.map(|r| m.records_per_s / r)),
            ratio_cell(java.map(|j| m.records_per_s / j)),
        ));
    }
    line("");
    line(
        "¹ over the whole process (its start, group join and close included): the tool prints \
         no wall clock to anchor its window to. The others: over the window from first to last \
         record.",
    );
    line("");
    if let Some(plot) = plot {
        line(&format!(
            "![records/s and CPU per million records of each contender]({plot})"
        ));
        line("");
    }
    line("### Targets");
    line("");
    line("| ratio of median records/s | measured | target | |");
    line("|---|---:|---:|---|");
    for t in &results.targets {
        line(&format!(
            "| {} | {} | ≥ {:.1} | {} |",
            t.what,
            ratio_text(t.value, t.target),
            t.target,
            if t.met { "met" } else { "**not met**" }
        ));
    }
    line("");
    let unmet: Vec<&Ratio> = results.targets.iter().filter(|t| !t.met).collect();
    if unmet.is_empty() {
        line("Every target is met in this run.");
    } else {
        line(&format!(
            "Not met in this run: {}.",
            unmet
                .iter()
                .map(|t| {
                    let value = ratio_text(t.value, t.target);
                    format!("{} ({value}, target {:.1})", t.what, t.target)
                })
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    line("");
    line("### What limits each figure");
    line("");
    for text in limits(results) {
        line(&format!("- {text}"));
    }
    line("");
    line("### Method, and why");
    line("");
    for text in METHOD {
        line(&format!("- {text}"));
    }
    md
}

/// The method, as bullet points.
const METHOD: &[&str] = &[
    "**Ratios, not absolute numbers.** The machine is shared and small: the Kafka broker (a JVM), \
     PostgreSQL and the contender run on the same 2 cores, so a contender that uses more CPU \
     takes it from the broker that feeds it. Absolute figures move with whatever else runs; \
     every comparison is a ratio against a peer measured in the same invocation, on the same \
     topic (or table).",
    "**Rounds.** Each round runs every contender once, one at a time; the order is rotated by one \
     per round so that no contender always runs first (cold) or last. Drift during an invocation \
     (page cache, broker GC, other load) then hits every contender alike, and a median of 3 \
     drops one outlier.",
    "**Window: first record to last record.** Process start-up (a JVM takes about a second) and \
     the consumer-group join (the broker's, not the client's, time) are outside it for every \
     contender. Java `ConsumerPerformance` reports its own `fetch.time.ms` (from assignment to \
     its last record; `rebalance.time.ms` is its join), `rdkafka_performance` its own rate (from \
     its first message), the raw Rust loop prints the wall clock of its first and last record, \
     and the worker's `pipewright_consumer_processed_total` is scraped from `/metrics` every \
     10 ms: each end of its window is the midpoint of the two scrapes around its first \
     (last) record, within half the time between them (about 5 ms) of the truth either way (until 2026-12-05 the outer scrapes: \
     up to 20 ms longer than the truth, never shorter: up to 3 % against the worker here). The \
     worker's count is of records its sink finished, \
     the peers' of records they received: the worker's window includes its pipeline's and \
     sink's tail.",
    "**CPU** is user + system time of all threads, read from `/proc/<pid>/stat` every 10 ms \
     with the wall clock and interpolated at the window's ends (`rdkafka_performance`: whole \
     process, marked ¹). *cores busy* = CPU seconds per second of window. **Peak RSS** is \
     `VmHWM`, the process's high-water mark (a JVM's includes its heap, `-Xmx512M`).",
    "**MB/s** counts key + value bytes (6 + 256 per record) in 10^6 bytes, the same for every \
     contender, so it is records/s × 262 bytes.",
    "**Each tool with its own defaults.** Java `ConsumerPerformance` with the JVM options of \
     `kafka-consumer-perf-test.sh` (`-Xmx512M`, G1, `kafka-run-class.sh`'s GC flags); \
     `rdkafka_performance -G` (which raises `queued.min.messages` to 1,000,000 on its own); the \
     raw loop with the librdkafka settings the worker sets itself (`fetch.queue.backoff.ms` \
     10: with librdkafka's 1 s backoff a fast consumer stalls a second whenever it drains its \
     queue; `fetch.wait.max.ms` 100: a partition with a backlog waits behind a fetch the \
     broker holds for caught-up partitions) and the same prefetch memory (the worker caps \
     each partition's own queue at `queued.max.messages.kbytes` 4096, the raw loop's one queue \
     at 6 × 4096), so that the worker-to-raw-loop ratio measures the pipeline and not a fetch \
     setting; the worker with its CLI defaults (commit interval \
     1 s, Kafka sink zstd) plus `--event-types` (the 4 types declared) and `--on-unknown-type \
     skip`. All start at the earliest offset.",
    "**What the peers do per record.** Java and `rdkafka_performance` count bytes and do not \
     look inside; the raw Rust loop decodes every value with serde_json into a typed \
     `#[serde(tag = \"event_type\")]` enum; the worker decodes and checks each record as an \
     event (declared type), runs it through its bounded, ordered pipeline, delivers it to the \
     sink and commits its offset.",
    "**Checks.** A run counts only if the contender read every record: the tools' own counts, \
     the raw loop's count, and for the worker its counter (no record skipped, rejected or \
     dead-lettered), the group's committed offsets equal to the topic's end offsets after its \
     graceful stop (SIGTERM), and the sink's output (the Kafka sink's topic holds every record, \
     the PostgreSQL table a row per record).",
    "**Builds.** Release builds only (`cargo build --release --locked`): the worker binary is \
     the one the image ships. `rdkafka_performance` is librdkafka's own \
     `examples/rdkafka_performance.c`, compiled (`-O2`) by `bench/build.rs` from the librdkafka \
     tree that `rdkafka-sys` configured and built for this workspace, against that same \
     `librdkafka.a`: the version, configure flags and library the worker links. Cargo caches \
     it with the build, and it is rebuilt exactly when `rdkafka-sys` is, so it needs no cache \
     of its own.",
    "**Plots** are drawn by gnuplot (Debian `gnuplot-nox`, which `bench/run` installs when \
     missing) from the results file: it adds nothing to the workspace build or to CI, where a \
     plotting crate would add its build to every cold `make test`.",
];

/// What limits each contender, from the figures of this run.
fn limits(results: &Results) -> Vec<String> {
    let cpus = results.machine.cpus as f64;
    let get = |c: &Contender| results.find(c).map(|r| r.median);
    let range = |c: &Contender| {
        results
            .find(c)
            .map(|r| (r.min_records_per_s, r.max_records_per_s))
    };
    let worker = |ordering, concurrency, sink| Contender::Worker {
        ordering,
        concurrency,
        sink,
        queue_kbytes: None,
    };
    let key256 = get(&worker(Ordering::Key, 256, Sink::Discard));
    let raw = get(&Contender::RawRust);
    let mut out = Vec::new();
    out.push(format!(
        "**Every contender** shares the {cpus:.0} cores with the broker that serves it (the \
         broker reads the log from page cache and sends it; its CPU is in no row). *cores busy* \
         tells whether a contender is bound by its own CPU (near {cpus:.0}, taking CPU from the \
         broker too) or by waiting for records (well below 1)."
    ));
    if let (Some(j), Some(r)) = (
        get(&Contender::JavaConsumerPerformance),
        get(&Contender::RdkafkaPerformance),
    ) {
        out.push(format!(
            "**Java ConsumerPerformance** ({:.2} cores busy) and **rdkafka_performance** ({:.2}) \
             do no per-record work beyond counting bytes: they show how fast this broker hands \
             the topic to one consumer here. Java's window includes its JIT warm-up, and its \
             runs vary most (see the range).",
            j.cores_busy, r.cores_busy
        ));
    }
    if let Some(r) = raw {
        out.push(format!(
            "**The raw Rust loop** ({:.2} cores busy, {:.2} CPU s per million records) adds a \
             serde_json decode of each value into a typed enum on its one poll thread, beside \
             librdkafka's fetch threads. Its gap to `rdkafka_performance` is that decode plus \
             rust-rdkafka's per-message overhead.",
            r.cores_busy, r.cpu_s_per_m_records
        ));
    }
    if let Some(w) = key256 {
        let bound = if w.cores_busy < 0.5 {
            format!(
                "is not bound by its CPU: {:.2} cores busy, so it waits for records most of \
                 its window",
                w.cores_busy
            )
        } else {
            format!("uses {:.2} cores", w.cores_busy)
        };
        let mut text = format!(
            "**The worker with the no-op sink** (key order, c=256) {bound}. Per record it does \
             what the raw loop does (the event check: JSON, declared type) plus the pipeline \
             (lanes, windows, offset tracking, commits)"
        );
        if let Some(r) = raw {
            text.push_str(&format!(
                ": {:.2} CPU s per million records against the raw loop's {:.2}",
                w.cpu_s_per_m_records, r.cpu_s_per_m_records
            ));
        }
        text.push_str(
            ". **Where the time goes** (`perf record` of the release worker reading a \
             4-million-record topic, key order, c=256, 2026-12-02): one thread, the fetch loop, \
             is busy all the time (75 % of the process's samples; librdkafka's broker thread \
             23 %), so its cost per record sets the rate. On it: the event check (JSON scan for \
             the type, declared-type lookup) 13 %, `clock_gettime` 11 % (librdkafka reads the \
             clock about three times for every message it hands out and rust-rdkafka's poll once \
             more: 8 %; the handler-latency histogram twice per record: 3 %), librdkafka's queue \
             and message handling ~8 %, the pipeline's bookkeeping (take, lanes, windows, \
             offsets) ~8 %, allocation and copies ~8 %. **What was cut**, each a same-session \
             A/B of the old and the new binary (median of 5 alternating runs, 4M records): \
             SipHash → foldhash in the maps looked up per record, an atomic flag instead of a \
             cancellation token's lock, and the retry backoff built only at a failure: 792 k → \
             855 k records/s (with mimalloc as the allocator, measured alone afterwards: no \
             change, 910 k against 909 k, and 10 MiB more RSS: not kept); a record's topic shared per topic \
             instead of a `String` per record: 847 k → 886 k; a delivery that needs no waiting \
             (no-op, log, the Kafka sink's hand-off to its producer) made without building its \
             future (`Handler::handle_now`): 911 k → 1.03 M. Earlier, the record's future was \
             kept small (880 bytes; the largest sink's future inline made it 9.6 kB, and moving \
             it took 17–20 % of the CPU: 441 k → 595 k in the quick profile). **Tried and \
             dropped**: a second thread starting the ready records beside the fetch loop was \
             slower (793 k against 845 k starting 64 per turn, 645 k against 893 k with 16): \
             both threads contend for the pipeline's one lock (contended locking 4 %, context \
             switches 7 % of the samples). What would go further: a lock per partition, so that \
             partition queues (librdkafka can split them) are served by a task each.",
        );
        let queued = Contender::Worker {
            ordering: Ordering::Key,
            concurrency: 256,
            sink: Sink::Discard,
            queue_kbytes: Some(crate::profile::LIBRDKAFKA_DEFAULT_QUEUE_KBYTES),
        };
        if let (Some(q), Some((q_min, _)), Some((_, w_max))) = (
            get(&queued),
            range(&queued),
            range(&worker(Ordering::Key, 256, Sink::Discard)),
        ) {
            let gain = q.records_per_s / w.records_per_s;
            // A difference counts only when the ranges of the runs do not overlap.
            let clear = q_min > w_max;
            text.push_str(&format!(
                " The worker caps librdkafka's prefetch of each partition \
                 (`queued.max.messages.kbytes`) at 4096 kB; with librdkafka's default, 65536 kB, \
                 the same worker runs at {gain:.2}× \
                 ({:.2} cores busy, peak RSS {:.0} MiB against {:.0}: the cap bounds memory; \
                 row *queued.max.messages.kbytes=65536*){}",
                q.cores_busy,
                q.peak_rss_mib,
                w.peak_rss_mib,
                if clear {
                    ": how fast records reach the pipeline, not the pipeline, limits the default \
                     configuration."
                } else {
                    ": the ranges of the runs overlap, so this run cannot tell the cap's cost \
                     from noise."
                }
            ));
        }
        out.push(text);
    }
    let grid: Vec<f64> = results
        .contenders
        .iter()
        .filter(|c| {
            matches!(
                c.contender,
                Contender::Worker {
                    sink: Sink::Discard,
                    queue_kbytes: None,
                    ..
                }
            )
        })
        .map(|c| c.median.records_per_s)
        .collect();
    if grid.len() > 1 {
        let (lo, hi) = (
            grid.iter().copied().fold(f64::INFINITY, f64::min),
            grid.iter().copied().fold(0.0, f64::max),
        );
        out.push(format!(
            "**Ordering and concurrency** with the no-op sink: the slowest of the {} variants \
             runs at {:.2}× the fastest (compare the ranges: runs of one variant differ by as \
             much on this shared machine). A no-op delivery is made at once, inline on the fetch \
             task (`Handler::handle_now`, `worker/src/consume/pipeline.rs`), so records seldom \
             wait for a slot or behind their key; these settings matter once the sink takes \
             time. Key order costs a lane (a map entry per key in flight) per record: compare \
             it with *none*.",
            grid.len(),
            lo / hi
        ));
    }
    let sink_text = |sink: Sink, title: &str, what: &str| -> Option<String> {
        let s = get(&worker(Ordering::Key, 256, sink))?;
        let w = key256?;
        Some(format!(
            "**The {title}** ({:.2}× the no-op sink, {:.2} cores busy, {:.1} CPU s per million \
             records) {what}",
            s.records_per_s / w.records_per_s,
            s.cores_busy,
            s.cpu_s_per_m_records
        ))
    };
    out.extend(sink_text(
        Sink::Log,
        "log sink (no payload)",
        "formats one structured line per event and writes it to stderr (a file here, as a \
         container runtime's log would be): formatting and the write are the added cost.",
    ));
    out.extend(sink_text(
        Sink::Kafka,
        "Kafka sink",
        "produces every event again, zstd-compressed, to a topic on the same broker. A \
         delivery returns once librdkafka has the output (which keeps a key's outputs in \
         order); each commit waits until the outputs below it are acknowledged. The \
         compression and librdkafka's producer cost CPU in the worker, and the broker writes as \
         much as it reads, on the same cores.",
    ));
    if let (Some(t), Some(k)) = (
        get(&worker(Ordering::Key, 256, Sink::KafkaTransactional)),
        get(&worker(Ordering::Key, 256, Sink::Kafka)),
    ) {
        out.push(format!(
            "**The transactional Kafka sink** ({:.2}× the plain one) commits a transaction with \
             the consumed offsets in it every commit interval (1 s) and whenever a partition's \
             window is a quarter full; the fetch loop takes nothing new while the records in \
             flight finish and the transaction commits (a few milliseconds: the commit first \
             waits until the producer has settled, because rust-rdkafka's flush inside \
             `commit_transaction` otherwise polls a fixed 100 ms).",
            t.records_per_s / k.records_per_s
        ));
    }
    out.extend(sink_text(
        Sink::Postgres,
        "PostgreSQL sink",
        "writes each event's row together with its offset row (effectively once), in batches: \
         up to 4 writers each take what is queued (at most 512 records) and write it in one \
         transaction (one statement for the offsets, one for the rows, one commit), on the \
         same cores as the database. No peer runs this workload.",
    ));
    out
}

/// Draws the plot with gnuplot: median records/s (bars, min–max error bars) and CPU seconds
/// per million records of each contender.
pub fn plot(results: &Results, png: &Path) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("pipewright-bench-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let data = dir.join("consume.dat");
    let mut rows = String::new();
    for (i, c) in results.contenders.iter().enumerate() {
        let color = if c.contender.is_worker() {
            "0x4477aa"
        } else {
            "0xcc6677"
        };
        rows.push_str(&format!(
            "{i} \"{}\" {:.1} {:.1} {:.1} {:.4} {color}\n",
            short_label(&c.contender),
            c.median.records_per_s,
            c.min_records_per_s,
            c.max_records_per_s,
            c.median.cpu_s_per_m_records,
        ));
    }
    std::fs::write(&data, rows)?;
    let script = format!(
        r#"set terminal pngcairo noenhanced size 1400,1000 font "sans,11"
set output "{png}"
set datafile separator whitespace
set multiplot layout 2,1 title "Consume throughput: {records} records, {partitions} partitions, {value} B typed JSON values; median of {runs} runs ({profile} profile, {cpus} CPUs)"
set style fill solid 0.7 border -1
set boxwidth 0.7
set grid ytics
set xtics rotate by -30 left nomirror
set yrange [0:*]
set xrange [-0.6:{last}.6]
set format y "%.1s%c"
set ylabel "records/s (bars: min-max)"
plot "{data}" using 1:3:7:xtic(2) with boxes lc rgb variable notitle, \
     "{data}" using 1:3:4:5 with yerrorbars lc rgb "black" pt 0 notitle, \
     "{data}" using 1:3:(sprintf("%.0fk", $3/1000)) with labels offset 0,0.8 notitle
set format y "%g"
set ylabel "CPU s per million records"
plot "{data}" using 1:6:7:xtic(2) with boxes lc rgb variable notitle, \
     "{data}" using 1:6:(sprintf("%.2f", $6)) with labels offset 0,0.8 notitle
unset multiplot
"#,
        png = png.display(),
        data = data.display(),
        records = results.workload.records,
        partitions = results.workload.partitions,
        value = results.workload.value_bytes,
        runs = results.runs_per_contender,
        profile = results.profile.name(),
        cpus = results.machine.cpus,
        last = results.contenders.len().saturating_sub(1),
    );
    let script_path = dir.join("consume.gp");
    std::fs::write(&script_path, script)?;
    let output = Command::new("gnuplot")
        .arg(&script_path)
        .output()
        .context("run gnuplot (Debian package gnuplot-nox; `bench/run` installs it)")?;
    ensure!(
        output.status.success(),
        "gnuplot failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A ratio with two decimals, or four where two would round it across its target (0.4996
/// against 0.5 reads "0.4996", not "0.50 not met").
pub fn ratio_text(value: f64, target: f64) -> String {
    let short = format!("{value:.2}");
    let reads_met = short.parse::<f64>().is_ok_and(|v| v >= target);
    if reads_met == (value >= target) {
        short
    } else {
        format!("{value:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ratio_is_never_rounded_across_its_target() {
        assert_eq!(ratio_text(0.4996, 0.5), "0.4996");
        assert_eq!(ratio_text(0.71, 1.0), "0.71");
        assert_eq!(ratio_text(0.5004, 0.5), "0.50");
        assert_eq!(ratio_text(0.98, 0.3), "0.98");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn figures_of_a_run_are_per_window_and_per_million_records() {
        let workload = Workload {
            records: 500_000,
            partitions: 6,
            keys: 10_000,
            key_bytes: 6,
            value_bytes: 256,
            event_types: vec![],
            compression: "none".into(),
            fill_s: 0.0,
        };
        let run = Run {
            round: 0,
            records: 500_000,
            window_s: 2.0,
            cpu_s: 3.0,
            cpu_scope: "window".into(),
            cpu_process_s: 4.0,
            peak_rss_bytes: 64 * 1024 * 1024,
            extra: Default::default(),
        };
        let f = Figures::of_run(&run, &workload);
        assert_eq!(f.records_per_s, 250_000.0);
        assert_eq!(f.mb_per_s, 250_000.0 * 262.0 / 1e6);
        assert_eq!(f.cpu_s_per_m_records, 6.0);
        assert_eq!(f.cores_busy, 1.5);
        assert_eq!(f.peak_rss_mib, 64.0);
    }
}
