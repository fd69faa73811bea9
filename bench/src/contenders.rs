//! The contenders of the consume benchmark and how one run of each is measured.
//!
//! Every run reads the whole topic from the beginning in a fresh consumer group. Its window is
//! from its first record to its last (group join and process start-up are outside it, for
//! every contender alike); records/s and MB/s are over that window. How each one's window is
//! known:
//!
//! - Java `ConsumerPerformance`: its own `fetch.time.ms` (from the partitions' assignment to
//!   its last record; `rebalance.time.ms`, the join, is excluded by the tool itself), ending
//!   at its printed `end.time`.
//! - `rdkafka_performance`: its own figure (from its first message to its last).
//! - the raw Rust loop: the wall clock of its first and last record, which it prints.
//! - the worker: its `/metrics` counter `pipewright_consumer_processed_total`, scraped every
//!   [`SAMPLE_PERIOD`]: the first record lies between the last scrape that read 0 and the
//!   first that read more, the last record between the last scrape that read fewer than all
//!   and the first that read all; each end of the window is the midpoint of its two scrapes
//!   (within half the time between those two scrapes, about 5 ms, either way: the window taken from the outer scrapes
//!   was up to two periods longer than the truth, never shorter, a bias against the worker of
//!   up to 3 % in a 0.6 s window). A topic read within one period falls back to the outer scrapes.
//!
//! CPU is read from `/proc` ([`crate::process`]) over the same window; for
//! `rdkafka_performance`, whose window has no wall-clock anchor, over its whole process
//! (start-up and close of a C program cost next to nothing). Peak RSS is the process's
//! `VmHWM`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::process::{Proc, SAMPLE_PERIOD, tail};
use crate::workload::{self, EVENT_TYPES, PARTITIONS};

/// Which records the worker delivers in order (`--ordering`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    Key,
    Partition,
    None,
}

impl Ordering {
    pub fn flag(self) -> &'static str {
        match self {
            Ordering::Key => "key",
            Ordering::Partition => "partition",
            Ordering::None => "none",
        }
    }
}

/// The worker's sink (`--sink`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sink {
    /// `--sink discard`: decoded, checked, dropped.
    Discard,
    /// `--sink log --sink-log-payload false`, stderr to a file.
    Log,
    /// `--sink kafka` to a topic of its own.
    Kafka,
    /// `--sink kafka --sink-kafka-transactional true`.
    KafkaTransactional,
    /// `--sink postgres` into a table of its own.
    Postgres,
}

impl Sink {
    pub fn name(self) -> &'static str {
        match self {
            Sink::Discard => "no-op (discard)",
            Sink::Log => "log, no payload",
            Sink::Kafka => "Kafka",
            Sink::KafkaTransactional => "Kafka, transactional",
            Sink::Postgres => "PostgreSQL",
        }
    }

    fn id(self) -> &'static str {
        match self {
            Sink::Discard => "discard",
            Sink::Log => "log",
            Sink::Kafka => "kafka",
            Sink::KafkaTransactional => "kafka-txn",
            Sink::Postgres => "postgres",
        }
    }
}

/// One contender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Contender {
    /// Kafka's Java `org.apache.kafka.tools.ConsumerPerformance`.
    JavaConsumerPerformance,
    /// librdkafka's `examples/rdkafka_performance` in balanced-consumer mode (`-G`).
    RdkafkaPerformance,
    /// `pipewright-bench-raw-consumer`: a rust-rdkafka BaseConsumer loop decoding each value.
    RawRust,
    /// `pipewright-worker consume`.
    Worker {
        ordering: Ordering,
        concurrency: u32,
        sink: Sink,
        /// `--kafka-config queued.max.messages.kbytes=N`; `None`: the worker's default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queue_kbytes: Option<u32>,
    },
}

impl Contender {
    /// A stable identifier (results, plots).
    pub fn id(&self) -> String {
        match self {
            Contender::JavaConsumerPerformance => "java".into(),
            Contender::RdkafkaPerformance => "rdkafka_performance".into(),
            Contender::RawRust => "raw-rust".into(),
            Contender::Worker {
                ordering,
                concurrency,
                sink,
                queue_kbytes,
            } => {
                let queue = queue_kbytes.map_or(String::new(), |k| format!("-queue{k}k"));
                format!(
                    "worker-{}-c{concurrency}-{}{queue}",
                    ordering.flag(),
                    sink.id()
                )
            }
        }
    }

    /// A human label (tables).
    pub fn label(&self) -> String {
        match self {
            Contender::JavaConsumerPerformance => "Java ConsumerPerformance".into(),
            Contender::RdkafkaPerformance => "rdkafka_performance (C)".into(),
            Contender::RawRust => "raw rust-rdkafka loop + serde".into(),
            Contender::Worker {
                ordering,
                concurrency,
                sink,
                queue_kbytes,
            } => {
                let queue = queue_kbytes.map_or(String::new(), |k| {
                    format!(", queued.max.messages.kbytes={k}")
                });
                format!(
                    "worker: {} order, c={concurrency}, {}{queue}",
                    ordering.flag(),
                    sink.name()
                )
            }
        }
    }

    pub fn is_worker(&self) -> bool {
        matches!(self, Contender::Worker { .. })
    }
}

/// Where everything is: the services of the test environment and the binaries.
#[derive(Debug, Clone)]
pub struct Setup {
    pub bootstrap: String,
    pub database_url: String,
    /// `PIPEWRIGHT_KAFKA_CLASSPATH`: the Kafka jars.
    pub kafka_classpath: String,
    pub java: PathBuf,
    pub worker: PathBuf,
    /// Extra flags for every worker run (`--worker-arg`), after the harness's own.
    pub worker_args: Vec<String>,
    pub raw_consumer: PathBuf,
    pub rdkafka_performance: PathBuf,
    /// Logs of the runs.
    pub work_dir: PathBuf,
}

/// The topic every contender reads.
#[derive(Debug, Clone)]
pub struct Topic {
    pub name: String,
    pub records: u64,
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// The round (0-based): every contender runs once per round, rounds one after another.
    pub round: usize,
    pub records: u64,
    /// First to last record, seconds.
    pub window_s: f64,
    /// CPU seconds (user + system) over `cpu_scope`.
    pub cpu_s: f64,
    /// `window` or `process` (whole process life).
    pub cpu_scope: String,
    /// CPU seconds of the whole process life up to its last record (start-up and join
    /// included), for comparison.
    pub cpu_process_s: f64,
    pub peak_rss_bytes: u64,
    /// Contender-specific figures (Java's `rebalance.time.ms`, the tools' own rates, the
    /// worker's time from start to first record).
    #[serde(default)]
    pub extra: BTreeMap<String, f64>,
}

/// Runs one contender once, to completion, and checks that it consumed every record.
pub fn run_once(
    setup: &Setup,
    topic: &Topic,
    contender: &Contender,
    round: usize,
    run_id: &str,
    rt: &tokio::runtime::Runtime,
) -> Result<Run> {
    let group = format!("bench-{run_id}");
    let log = setup.work_dir.join(format!("{run_id}.log"));
    let stdout = setup.work_dir.join(format!("{run_id}.out"));
    match contender {
        Contender::JavaConsumerPerformance => run_java(setup, topic, round, &group, &stdout, &log),
        Contender::RdkafkaPerformance => run_rdkafka(setup, topic, round, &group, &stdout, &log),
        Contender::RawRust => run_raw(setup, topic, round, &group, &stdout, &log),
        Contender::Worker {
            ordering,
            concurrency,
            sink,
            queue_kbytes,
        } => {
            let target = SinkTarget::prepare(setup, *sink, run_id, rt)?;
            let run = run_worker(
                setup,
                topic,
                round,
                &group,
                *ordering,
                *concurrency,
                *queue_kbytes,
                &target,
                &log,
            );
            let checked = run.and_then(|run| {
                target.check(setup, topic, rt)?;
                Ok(run)
            });
            target.clean_up(setup, rt);
            if checked.is_ok() && *sink == Sink::Log {
                // 100 MB of event lines per 500k records: kept only when the run failed.
                let _ = std::fs::remove_file(&log);
            }
            checked
        }
    }
}

/// The JVM options of Kafka's scripts (`kafka-run-class.sh`), for every Java contender.
pub fn env_java_opts(command: &mut Command) {
    // What bin/kafka-consumer-perf-test.sh and kafka-run-class.sh give the tool.
    command.args([
        "-Xmx512M",
        "-server",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-Djava.awt.headless=true",
    ]);
}

fn run_java(
    setup: &Setup,
    topic: &Topic,
    round: usize,
    group: &str,
    stdout: &std::path::Path,
    log: &std::path::Path,
) -> Result<Run> {
    let mut command = Command::new(&setup.java);
    env_java_opts(&mut command);
    command
        .arg("-cp")
        .arg(&setup.kafka_classpath)
        .arg("org.apache.kafka.tools.ConsumerPerformance")
        .args(["--bootstrap-server", &setup.bootstrap])
        .args(["--topic", &topic.name])
        .args(["--num-records", &topic.records.to_string()])
        .args(["--group", group])
        .args(["--date-format", "yyyy-MM-dd'T'HH:mm:ss.SSSXXX"])
        .args(["--timeout", "60000"]);
    let mut proc = Proc::spawn("Java ConsumerPerformance", command, Some(stdout), log)?;
    let status = proc.wait_sampling(run_timeout(topic))?;
    let out = std::fs::read_to_string(stdout).unwrap_or_default();
    ensure!(
        status.success(),
        "ConsumerPerformance failed ({status}):\n{out}\n{}",
        tail(log, 20)
    );
    let line = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("ConsumerPerformance printed nothing")?;
    let java = JavaReport::parse(line)
        .with_context(|| format!("unexpected ConsumerPerformance output: {out}"))?;
    ensure!(
        java.records == topic.records,
        "ConsumerPerformance read {} of {} records:\n{out}",
        java.records,
        topic.records
    );
    let window_s = java.fetch_ms / 1000.0;
    let last = java.end;
    let first = last - Duration::from_secs_f64(window_s);
    let cpu_s = proc.cpu_at(last) - proc.cpu_at(first);
    let mut extra = BTreeMap::new();
    extra.insert("rebalance_ms".into(), java.rebalance_ms);
    extra.insert("reported_records_per_s".into(), java.fetch_records_per_s);
    Ok(Run {
        round,
        records: java.records,
        window_s,
        cpu_s,
        cpu_scope: "window".into(),
        cpu_process_s: proc.cpu_at(last),
        peak_rss_bytes: proc.peak_rss_bytes(),
        extra,
    })
}

/// The summary line of `ConsumerPerformance` (without `--show-detailed-stats`).
#[derive(Debug, Clone, PartialEq)]
pub struct JavaReport {
    pub end: SystemTime,
    pub records: u64,
    pub rebalance_ms: f64,
    pub fetch_ms: f64,
    pub fetch_records_per_s: f64,
}

impl JavaReport {
    /// `start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec,
    /// rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec`, times as
    /// `yyyy-MM-dd'T'HH:mm:ss.SSSXXX`.
    pub fn parse(line: &str) -> Result<JavaReport> {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        ensure!(
            fields.len() == 10,
            "expected 10 fields, got {}",
            fields.len()
        );
        let end = chrono::DateTime::parse_from_str(fields[1], "%Y-%m-%dT%H:%M:%S%.3f%:z")
            .or_else(|_| chrono::DateTime::parse_from_rfc3339(fields[1]))
            .with_context(|| format!("end.time {:?}", fields[1]))?;
        let millis = u64::try_from(end.timestamp_millis()).context("end.time before 1970")?;
        Ok(JavaReport {
            end: UNIX_EPOCH + Duration::from_millis(millis),
            records: fields[4].parse().context("data.consumed.in.nMsg")?,
            rebalance_ms: fields[6].parse().context("rebalance.time.ms")?,
            fetch_ms: fields[7].parse().context("fetch.time.ms")?,
            fetch_records_per_s: fields[9].parse().context("fetch.nMsg.sec")?,
        })
    }
}

fn run_rdkafka(
    setup: &Setup,
    topic: &Topic,
    round: usize,
    group: &str,
    stdout: &std::path::Path,
    log: &std::path::Path,
) -> Result<Run> {
    let mut command = Command::new(&setup.rdkafka_performance);
    command
        .args(["-G", group])
        .args(["-t", &topic.name])
        .args(["-b", &setup.bootstrap])
        .args(["-c", &topic.records.to_string()])
        .args(["-X", "auto.offset.reset=earliest"]);
    let mut proc = Proc::spawn("rdkafka_performance", command, Some(stdout), log)?;
    let status = proc.wait_sampling(run_timeout(topic))?;
    let out = std::fs::read_to_string(stdout).unwrap_or_default();
    ensure!(
        status.success(),
        "rdkafka_performance failed ({status}):\n{out}\n{}",
        tail(log, 20)
    );
    let report = RdkafkaReport::parse(&out)
        .with_context(|| format!("no summary line in rdkafka_performance's output:\n{out}"))?;
    ensure!(
        report.records == topic.records,
        "rdkafka_performance read {} of {} records:\n{out}",
        report.records,
        topic.records
    );
    let window_s = report.records as f64 / report.records_per_s;
    let mut extra = BTreeMap::new();
    extra.insert("reported_records_per_s".into(), report.records_per_s);
    extra.insert("reported_ms".into(), report.ms);
    Ok(Run {
        round,
        records: report.records,
        window_s,
        cpu_s: proc.cpu_s(),
        cpu_scope: "process".into(),
        cpu_process_s: proc.cpu_s(),
        peak_rss_bytes: proc.peak_rss_bytes(),
        extra,
    })
}

/// The summary line of `rdkafka_performance -G`: `% N messages (B bytes) consumed in Tms: R
/// msgs/s (M MB/s)`.
#[derive(Debug, Clone, PartialEq)]
pub struct RdkafkaReport {
    pub records: u64,
    pub ms: f64,
    pub records_per_s: f64,
}

impl RdkafkaReport {
    pub fn parse(output: &str) -> Result<RdkafkaReport> {
        let line = output
            .lines()
            .rev()
            .find(|l| {
                l.starts_with("% ") && l.contains(" messages (") && l.contains(" consumed in ")
            })
            .context("no `% N messages (B bytes) consumed in` line")?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |word: &str| -> Option<&str> {
            words
                .iter()
                .position(|w| *w == word)
                .and_then(|i| words.get(i + 1).copied())
        };
        let records = words.get(1).context("message count")?.parse()?;
        let ms = after("in")
            .and_then(|w| w.strip_suffix("ms:"))
            .context("`in Tms:`")?
            .parse()?;
        let records_per_s: f64 = words
            .iter()
            .position(|w| *w == "msgs/s")
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| words.get(i))
            .context("`R msgs/s`")?
            .parse()?;
        ensure!(records_per_s > 0.0, "a rate of 0 msgs/s");
        Ok(RdkafkaReport {
            records,
            ms,
            records_per_s,
        })
    }
}

/// The raw loop's librdkafka settings: the worker's own
/// ([`pipewright_worker::consume::consumer::PREFETCH_DEFAULTS`]), so that the worker-to-raw-loop
/// ratio measures the pipeline and not a fetch setting, with the same prefetch memory: the
/// worker caps each partition's queue, the raw loop's one queue holds every partition, so its
/// cap is the worker's times the partitions.
pub fn raw_loop_config(partitions: u32) -> Vec<(String, String)> {
    pipewright_worker::consume::consumer::PREFETCH_DEFAULTS
        .iter()
        .map(|&(key, value)| {
            let value = match (key, value.parse::<u32>()) {
                ("queued.max.messages.kbytes", Ok(per_partition)) => {
                    (per_partition * partitions).to_string()
                }
                _ => value.to_string(),
            };
            (key.to_string(), value)
        })
        .collect()
}

fn run_raw(
    setup: &Setup,
    topic: &Topic,
    round: usize,
    group: &str,
    stdout: &std::path::Path,
    log: &std::path::Path,
) -> Result<Run> {
    let mut command = Command::new(&setup.raw_consumer);
    command
        .args(["--bootstrap-servers", &setup.bootstrap])
        .args(["--topic", &topic.name])
        .args(["--group-id", group])
        .args(["--records", &topic.records.to_string()]);
    for (key, value) in raw_loop_config(crate::workload::PARTITIONS as u32) {
        command.args(["--config", &format!("{key}={value}")]);
    }
    let mut proc = Proc::spawn("raw rust-rdkafka loop", command, Some(stdout), log)?;
    let status = proc.wait_sampling(run_timeout(topic))?;
    let out = std::fs::read_to_string(stdout).unwrap_or_default();
    ensure!(
        status.success(),
        "the raw consumer failed ({status}):\n{out}\n{}",
        tail(log, 20)
    );
    let report: serde_json::Value = serde_json::from_str(out.trim())
        .with_context(|| format!("unexpected raw consumer output: {out}"))?;
    let records = report["records"].as_u64().context("records")?;
    ensure!(
        records == topic.records,
        "the raw consumer read {records} of {} records",
        topic.records
    );
    let instant = |field: &str| -> Result<SystemTime> {
        let nanos: u64 = report[field]
            .as_str()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("{field} in {out}"))?;
        Ok(UNIX_EPOCH + Duration::from_nanos(nanos))
    };
    let (first, last) = (instant("first_unix_ns")?, instant("last_unix_ns")?);
    let window_s = last.duration_since(first).unwrap_or_default().as_secs_f64();
    Ok(Run {
        round,
        records,
        window_s,
        cpu_s: proc.cpu_at(last) - proc.cpu_at(first),
        cpu_scope: "window".into(),
        cpu_process_s: proc.cpu_at(last),
        peak_rss_bytes: proc.peak_rss_bytes(),
        extra: BTreeMap::new(),
    })
}

/// The output of a worker run that needs one: a topic or tables of its own.
#[derive(Debug)]
enum SinkTarget {
    None(Sink),
    Topic { name: String, transactional: bool },
    Table { table: String, offsets: String },
}

impl SinkTarget {
    fn prepare(
        setup: &Setup,
        sink: Sink,
        run_id: &str,
        rt: &tokio::runtime::Runtime,
    ) -> Result<SinkTarget> {
        let suffix = run_id.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        match sink {
            Sink::Discard | Sink::Log => Ok(SinkTarget::None(sink)),
            Sink::Kafka | Sink::KafkaTransactional => {
                let name = format!("bench-out-{run_id}");
                rt.block_on(workload::create_topic(&setup.bootstrap, &name, PARTITIONS))?;
                Ok(SinkTarget::Topic {
                    name,
                    transactional: sink == Sink::KafkaTransactional,
                })
            }
            Sink::Postgres => {
                let table = format!("bench_events_{suffix}").to_lowercase();
                let offsets = format!("bench_offsets_{suffix}").to_lowercase();
                rt.block_on(async {
                    let pool = sqlx::PgPool::connect(&setup.database_url).await?;
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "CREATE TABLE {table} (event_type text NOT NULL, id bigint NOT NULL, \
                         key text NOT NULL, amount bigint NOT NULL)"
                    )))
                    .execute(&pool)
                    .await?;
                    pool.close().await;
                    anyhow::Ok(())
                })
                .context("create the PostgreSQL sink's table")?;
                Ok(SinkTarget::Table { table, offsets })
            }
        }
    }

    fn args(&self, transactional_id: &str) -> Vec<String> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        match self {
            SinkTarget::None(Sink::Log) => s(&["--sink", "log", "--sink-log-payload", "false"]),
            SinkTarget::None(_) => s(&["--sink", "discard"]),
            SinkTarget::Topic {
                name,
                transactional: false,
            } => s(&["--sink", "kafka", "--sink-kafka-topic", name]),
            SinkTarget::Topic {
                name,
                transactional: true,
            } => s(&[
                "--sink",
                "kafka",
                "--sink-kafka-topic",
                name,
                "--sink-kafka-transactional",
                "true",
                "--sink-kafka-transactional-id",
                transactional_id,
            ]),
            SinkTarget::Table { table, offsets } => s(&[
                "--sink",
                "postgres",
                "--sink-postgres-table",
                table,
                "--sink-postgres-offsets-table",
                offsets,
            ]),
        }
    }

    /// Checks that the sink received every record.
    fn check(&self, setup: &Setup, topic: &Topic, rt: &tokio::runtime::Runtime) -> Result<()> {
        match self {
            SinkTarget::None(_) => Ok(()),
            SinkTarget::Topic {
                name,
                transactional,
            } => {
                let written: i64 = workload::end_offsets(&setup.bootstrap, name)?.iter().sum();
                // A transactional topic also holds one commit marker per partition and
                // transaction.
                let ok = if *transactional {
                    written >= topic.records as i64
                } else {
                    written == topic.records as i64
                };
                ensure!(
                    ok,
                    "the Kafka sink's topic {name} holds {written} records, expected {}",
                    topic.records
                );
                Ok(())
            }
            SinkTarget::Table { table, .. } => {
                let rows: i64 = rt.block_on(async {
                    let pool = sqlx::PgPool::connect(&setup.database_url).await?;
                    let rows = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                        "SELECT count(*) FROM {table}"
                    )))
                    .fetch_one(&pool)
                    .await?;
                    pool.close().await;
                    anyhow::Ok(rows)
                })?;
                ensure!(
                    rows == topic.records as i64,
                    "the PostgreSQL sink's table {table} has {rows} rows, expected {}",
                    topic.records
                );
                Ok(())
            }
        }
    }

    /// Drops what `prepare` made (best effort: it is the harness's own).
    fn clean_up(&self, setup: &Setup, rt: &tokio::runtime::Runtime) {
        match self {
            SinkTarget::None(_) => {}
            SinkTarget::Topic { name, .. } => {
                rt.block_on(workload::delete_topics(&setup.bootstrap, &[name]));
            }
            SinkTarget::Table { table, offsets } => {
                let _ = rt.block_on(async {
                    let pool = sqlx::PgPool::connect(&setup.database_url).await?;
                    for t in [table, offsets] {
                        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
                            .execute(&pool)
                            .await?;
                    }
                    pool.close().await;
                    anyhow::Ok(())
                });
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_worker(
    setup: &Setup,
    topic: &Topic,
    round: usize,
    group: &str,
    ordering: Ordering,
    concurrency: u32,
    queue_kbytes: Option<u32>,
    target: &SinkTarget,
    log: &std::path::Path,
) -> Result<Run> {
    let listen = free_local_address()?;
    let mut command = Command::new(&setup.worker);
    command
        .env("PIPEWRIGHT_DATABASE_URL", &setup.database_url)
        .args([
            "--listen",
            &listen.to_string(),
            "--log-format",
            "text",
            "consume",
        ])
        .args(["--topics", &topic.name])
        .args(["--group-id", group])
        .args(["--kafka-bootstrap-servers", &setup.bootstrap])
        .args(["--event-types", &EVENT_TYPES.join(",")])
        .args(["--on-unknown-type", "skip"])
        .args(["--ordering", ordering.flag()])
        .args(["--concurrency", &concurrency.to_string()])
        .args(target.args(group));
    if let Some(k) = queue_kbytes {
        command.arg(format!("--kafka-config=queued.max.messages.kbytes={k}"));
    }
    command.args(&setup.worker_args);
    let started = SystemTime::now();
    let mut proc = Proc::spawn("pipewright-worker", command, None, log)?;

    let idle_limit = Duration::from_secs(30);
    let mut last_progress = (Instant::now(), 0u64);
    let mut last_zero_scrape = started;
    let mut last_partial_scrape = started;
    let mut first: Option<SystemTime> = None;
    let mut retried;
    let mut handler_mean_s = None;
    let (last, cpu_at_last) = loop {
        std::thread::sleep(SAMPLE_PERIOD);
        proc.ensure_running()?;
        let before = SystemTime::now();
        let metrics = scrape(listen);
        let sample = proc.sample()?;
        let Some(metrics) = metrics else { continue };
        let processed = metric_sum(&metrics, "pipewright_consumer_processed_total") as u64;
        retried = metric_sum(&metrics, "pipewright_consumer_retried_total");
        let invalid = ["skipped", "unknown_type", "rejected", "dead_lettered"]
            .iter()
            .map(|m| metric_sum(&metrics, &format!("pipewright_consumer_{m}_total")))
            .sum::<f64>();
        ensure!(
            invalid == 0.0,
            "the worker skipped, rejected or dead-lettered records: {}",
            metrics
                .lines()
                .filter(|l| l.starts_with("pipewright_consumer_"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        if processed == 0 {
            last_zero_scrape = before;
        } else if first.is_none() {
            first = Some(midpoint(last_zero_scrape, before));
        }
        if processed >= topic.records {
            let calls = metric_sum(
                &metrics,
                "pipewright_consumer_handler_latency_seconds_count",
            );
            if calls > 0.0 {
                let sum = metric_sum(&metrics, "pipewright_consumer_handler_latency_seconds_sum");
                handler_mean_s = Some(sum / calls);
            }
            ensure!(
                processed == topic.records,
                "the worker processed {processed} records of a topic of {}",
                topic.records
            );
            let last = midpoint(last_partial_scrape, before);
            if first.is_none_or(|first| last <= first) {
                // Every record within one period: the outer scrapes.
                first = Some(last_zero_scrape);
                break (sample.at, sample.cpu_s);
            }
            break (last, proc.cpu_at(last));
        }
        last_partial_scrape = before;
        if processed > last_progress.1 {
            last_progress = (Instant::now(), processed);
        } else if last_progress.0.elapsed() > idle_limit {
            bail!(
                "the worker made no progress for {idle_limit:?} at {processed} of {} records; log: {}",
                topic.records,
                proc.log().display()
            );
        }
    };
    let peak_rss_bytes = proc.peak_rss_bytes();
    let first = first.unwrap_or(last);
    let status = proc.terminate(Duration::from_secs(60))?;
    ensure!(
        status.success(),
        "the worker exited with {status} after SIGTERM; last lines of {}:\n{}",
        log.display(),
        tail(log, 20)
    );
    check_committed(setup, topic, group)?;
    let window_s = last.duration_since(first).unwrap_or_default().as_secs_f64();
    let mut extra = BTreeMap::new();
    // Delivery attempts that failed and were retried (0 in a clean run).
    extra.insert("retried".into(), retried);
    // The mean time of one sink call (the worker's own histogram).
    if let Some(mean) = handler_mean_s {
        extra.insert("handler_mean_s".into(), mean);
    }
    extra.insert(
        "start_to_first_record_s".into(),
        first
            .duration_since(started)
            .unwrap_or_default()
            .as_secs_f64(),
    );
    Ok(Run {
        round,
        records: topic.records,
        window_s,
        cpu_s: cpu_at_last - proc.cpu_at(first),
        cpu_scope: "window".into(),
        cpu_process_s: cpu_at_last,
        peak_rss_bytes,
        extra,
    })
}

/// The time halfway between `a` and `b` (`a` when `b` is not later).
fn midpoint(a: SystemTime, b: SystemTime) -> SystemTime {
    a + b.duration_since(a).unwrap_or_default() / 2
}

/// Fails unless the group's committed offsets are the topic's end offsets.
pub fn check_committed(setup: &Setup, topic: &Topic, group: &str) -> Result<()> {
    let ends = workload::end_offsets(&setup.bootstrap, &topic.name)?;
    let consumer: BaseConsumer = workload::kafka_config(&setup.bootstrap)
        .set("group.id", group)
        .create()
        .context("Kafka consumer")?;
    let mut partitions = TopicPartitionList::new();
    for p in 0..ends.len() as i32 {
        partitions.add_partition(&topic.name, p);
    }
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .context("committed offsets")?;
    for (p, end) in ends.iter().enumerate() {
        let offset = committed
            .find_partition(&topic.name, p as i32)
            .map(|e| e.offset());
        ensure!(
            offset == Some(Offset::Offset(*end)),
            "group {group} committed {offset:?} on {}/{p}, the end is {end}",
            topic.name
        );
    }
    Ok(())
}

/// A local address nobody listens on (the worker binds it right after).
fn free_local_address() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind a local port")?;
    Ok(listener.local_addr()?)
}

/// `GET /metrics` of the worker; `None` until it serves. A plain HTTP/1.1 request over a
/// TcpStream: the endpoint is local and plain text, and an HTTP client crate would only add
/// build time to the harness.
fn scrape(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The sum of a metric's samples (every label set) in Prometheus/OpenMetrics text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// How long one run may take at most before it is called stuck.
pub fn run_timeout(topic: &Topic) -> Duration {
    Duration::from_secs(120 + topic.records / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raw_loop_gets_the_workers_fetch_settings_and_its_prefetch_memory_over_all_partitions() {
        let raw = raw_loop_config(6);
        let get = |k: &str| {
            raw.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        // The report's text names these values (report.rs, "Each tool with its own defaults").
        assert_eq!(get("queued.max.messages.kbytes"), Some("24576"));
        assert_eq!(get("fetch.queue.backoff.ms"), Some("10"));
        assert_eq!(get("fetch.wait.max.ms"), Some("100"));
        assert_eq!(
            raw.len(),
            pipewright_worker::consume::consumer::PREFETCH_DEFAULTS.len()
        );
    }

    #[test]
    fn java_summary_line_gives_end_time_records_rebalance_and_fetch_time() {
        let line = "2026-11-30T10:00:05.250Z, 2026-11-30T10:00:09.750+01:00, 122.0743, 27.1276, \
                    500000, 111111.1111, 1500, 3000, 40.6914, 166666.6667";
        let report = JavaReport::parse(line).unwrap();
        assert_eq!(report.records, 500_000);
        assert_eq!(report.rebalance_ms, 1500.0);
        assert_eq!(report.fetch_ms, 3000.0);
        assert_eq!(report.fetch_records_per_s, 166_666.666_7);
        let expected = chrono::DateTime::parse_from_rfc3339("2026-11-30T09:00:09.750Z").unwrap();
        assert_eq!(
            report.end,
            UNIX_EPOCH + Duration::from_millis(expected.timestamp_millis() as u64)
        );
        assert!(JavaReport::parse("start.time, end.time, data.consumed.in.MB").is_err());
    }

    #[test]
    fn rdkafka_summary_line_gives_records_time_and_rate() {
        let out = "% Waiting for group rebalance..\n\
                   % 500000 messages (128000000 bytes) consumed in 1712ms: 292056 msgs/s (74.77 MB/s)\n\
                   % Average application fetch latency: 3us\n";
        assert_eq!(
            RdkafkaReport::parse(out).unwrap(),
            RdkafkaReport {
                records: 500_000,
                ms: 1712.0,
                records_per_s: 292_056.0
            }
        );
        assert!(RdkafkaReport::parse("% Waiting for group rebalance..\n").is_err());
    }

    #[test]
    fn metric_sum_adds_every_label_set_and_ignores_longer_names() {
        let text = "# TYPE pipewright_consumer_processed counter\n\
                    pipewright_consumer_processed_total 1234\n\
                    pipewright_consumer_processed_total_other 5\n\
                    pipewright_consumer_rejected_total{kind=\"malformed\"} 2\n\
                    pipewright_consumer_rejected_total{kind=\"oversized\"} 3\n";
        assert_eq!(
            metric_sum(text, "pipewright_consumer_processed_total"),
            1234.0
        );
        assert_eq!(metric_sum(text, "pipewright_consumer_rejected_total"), 5.0);
        assert_eq!(metric_sum(text, "pipewright_consumer_skipped_total"), 0.0);
    }

    #[test]
    fn contender_ids_are_distinct() {
        let all = crate::profile::Profile::Full.contenders();
        let mut ids: Vec<String> = all.iter().map(Contender::id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), all.len());
    }
}
