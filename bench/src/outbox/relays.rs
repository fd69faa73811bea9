//! The relays: pipewright's outbox worker, Debezium's embedded engine (bench/java/
//! DebeziumRelay.java) and, for the drain, a bare claim-and-delete loop with no Kafka (the
//! database's ceiling). Both real relays read the same table layout and publish the same record
//! to an equivalent topic: key `aggregateid`, value the `payload` (jsonb as text), headers `id`,
//! `type`, `aggregatetype`, `seq`, topic `<prefix><aggregatetype>`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use super::OutboxSetup;
use crate::process::Proc;

/// One contender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Relay {
    /// `pipewright-worker outbox` with its defaults (batch 100, max in flight 1000, delete
    /// after acknowledgement), `--notify` as given.
    Worker { notify: bool },
    /// The same with NOTIFY on and `--kafka-config linger.ms=0`: the producer sends at once
    /// instead of waiting up to librdkafka's 5 ms for a batch to fill (docs/outbox.md).
    WorkerLingerZero,
    /// Debezium's embedded engine, PostgreSQL connector (pgoutput), outbox EventRouter, with
    /// the connector's defaults.
    Debezium,
    /// The same with `poll.interval.ms` at [`DEBEZIUM_LOW_LATENCY_POLL_MS`] instead of 500: the
    /// connector sleeps that long when its stream has nothing, and its queue waits that long
    /// for a batch to fill, so the default puts about a second between commit and publish.
    DebeziumLowLatency,
    /// `DELETE ... WHERE seq IN (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 100) RETURNING ...` in
    /// a loop on one connection, no Kafka.
    SqlCeiling,
}

impl Relay {
    /// A stable identifier (results, plots).
    pub fn id(&self) -> &'static str {
        match self {
            Relay::Worker { notify: true } => "worker-notify",
            Relay::Worker { notify: false } => "worker-poll",
            Relay::WorkerLingerZero => "worker-notify-linger0",
            Relay::Debezium => "debezium",
            Relay::DebeziumLowLatency => "debezium-poll5ms",
            Relay::SqlCeiling => "sql-ceiling",
        }
    }

    /// A human label (tables).
    pub fn label(&self) -> &'static str {
        match self {
            Relay::Worker { notify: true } => "pipewright worker, NOTIFY on",
            Relay::Worker { notify: false } => "pipewright worker, NOTIFY off (poll every 1 s)",
            Relay::WorkerLingerZero => "pipewright worker, NOTIFY on, linger.ms=0",
            Relay::Debezium => "Debezium 3.6.1 embedded engine + EventRouter",
            Relay::DebeziumLowLatency => "Debezium, poll.interval.ms=5 (default 500)",
            Relay::SqlCeiling => "SQL ceiling: SKIP LOCKED claim-and-delete, no Kafka",
        }
    }

    /// A short label (plots).
    pub fn short(&self) -> &'static str {
        match self {
            Relay::Worker { notify: true } => "pipewright",
            Relay::Worker { notify: false } => "pipewright no NOTIFY",
            Relay::WorkerLingerZero => "pipewright linger 0",
            Relay::Debezium => "Debezium",
            Relay::DebeziumLowLatency => "Debezium poll 5 ms",
            Relay::SqlCeiling => "SQL ceiling",
        }
    }
}

/// `poll.interval.ms` of [`Relay::DebeziumLowLatency`].
pub const DEBEZIUM_LOW_LATENCY_POLL_MS: u32 = 5;

/// Rows per claim of the SQL ceiling: the worker's default batch size.
pub const CEILING_BATCH: i64 = 100;

/// The topic a run's rows go to, for both relays: `<prefix>order`.
pub fn topic_of(prefix: &str) -> String {
    format!("{prefix}{}", super::table::AGGREGATE_TYPE)
}

/// Starts `pipewright-worker outbox` on `table`, publishing to `<prefix>{aggregatetype}`.
pub fn start_worker(
    setup: &OutboxSetup,
    table: &str,
    prefix: &str,
    notify: bool,
    linger_zero: bool,
    log: &Path,
) -> Result<Proc> {
    let mut command = Command::new(&setup.worker);
    command
        .env("PIPEWRIGHT_DATABASE_URL", &setup.database_url)
        .args(["--listen", "127.0.0.1:0", "--log-format", "text", "outbox"])
        .args(["--table", table])
        .arg(format!("--topic-template={prefix}{{aggregatetype}}"))
        .args(["--kafka-bootstrap-servers", &setup.bootstrap])
        .arg(format!("--notify={notify}"));
    if linger_zero {
        command.args(["--kafka-config", "linger.ms=0"]);
    }
    Proc::spawn("pipewright-worker outbox", command, None, log)
}

/// Compiles the Debezium relay into `dir` (once per invocation); returns the classpath to run
/// it with.
pub fn compile_debezium_relay(setup: &OutboxSetup, dir: &Path) -> Result<String> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("java/DebeziumRelay.java");
    std::fs::create_dir_all(dir)?;
    let output = Command::new(&setup.javac)
        .arg("-cp")
        .arg(&setup.debezium_classpath)
        .arg("-d")
        .arg(dir)
        .arg(&source)
        .output()
        .with_context(|| {
            format!(
                "run {} (a JDK is needed: apt-get install openjdk-17-jdk-headless)",
                setup.javac.display()
            )
        })?;
    ensure!(
        output.status.success(),
        "javac {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(format!("{}:{}", dir.display(), setup.debezium_classpath))
}

/// Starts the Debezium relay on `table`, streaming from the slot and publication named like
/// the table, routing to `<prefix>${routedByValue}` (the aggregatetype).
pub fn start_debezium(
    setup: &OutboxSetup,
    classpath: &str,
    table: &str,
    prefix: &str,
    low_latency: bool,
    work: &Path,
) -> Result<Proc> {
    let db = PgConnectOptions::from_str(&setup.database_url).context("DATABASE_URL")?;
    let mut properties = vec![
        ("name", "pipewright-bench".to_string()),
        (
            "connector.class",
            "io.debezium.connector.postgresql.PostgresConnector".into(),
        ),
        (
            "offset.storage",
            "org.apache.kafka.connect.storage.MemoryOffsetBackingStore".into(),
        ),
        ("offset.flush.interval.ms", "1000".into()),
        ("database.hostname", db.get_host().to_string()),
        ("database.port", db.get_port().to_string()),
        ("database.user", db.get_username().to_string()),
        ("database.password", String::new()),
        (
            "database.dbname",
            db.get_database().unwrap_or("postgres").to_string(),
        ),
        ("topic.prefix", "bench".into()),
        ("plugin.name", "pgoutput".into()),
        ("slot.name", table.into()),
        ("publication.name", table.into()),
        ("publication.autocreate.mode", "disabled".into()),
        ("table.include.list", format!("public.{table}")),
        ("snapshot.mode", "no_data".into()),
        ("transforms", "outbox".into()),
        (
            "transforms.outbox.type",
            "io.debezium.transforms.outbox.EventRouter".into(),
        ),
        (
            "transforms.outbox.route.topic.replacement",
            format!("{prefix}${{routedByValue}}"),
        ),
        // The headers pipewright sets besides `id` (which the EventRouter sets itself).
        (
            "transforms.outbox.table.fields.additional.placement",
            "type:header:type,aggregatetype:header:aggregatetype,seq:header:seq".into(),
        ),
        ("producer.bootstrap.servers", setup.bootstrap.clone()),
        // What pipewright's producer sets: acks=all, idempotent, linger 5 ms.
        ("producer.acks", "all".into()),
        ("producer.enable.idempotence", "true".into()),
        ("producer.linger.ms", "5".into()),
    ];
    if low_latency {
        properties.push(("poll.interval.ms", DEBEZIUM_LOW_LATENCY_POLL_MS.to_string()));
    }
    let file = work.with_extension("properties");
    let text: String = properties
        .iter()
        .map(|(k, v)| format!("{k}={}\n", v.replace('\\', "\\\\")))
        .collect();
    std::fs::write(&file, text).with_context(|| format!("write {}", file.display()))?;
    let mut command = Command::new(&setup.java);
    crate::contenders::env_java_opts(&mut command);
    command
        .arg("-cp")
        .arg(classpath)
        .arg("DebeziumRelay")
        .arg(&file);
    Proc::spawn(
        "Debezium relay",
        command,
        Some(&work.with_extension("out")),
        &work.with_extension("log"),
    )
}

/// What the SQL ceiling reads of each row: the columns a relay publishes.
type ClaimedRow = (
    i64,
    uuid::Uuid,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
);

/// The SQL ceiling's run: the wall-clock window from its first claim to the claim that emptied
/// the table, and the rows it claimed.
#[derive(Debug, Clone, Copy)]
pub struct CeilingRun {
    pub first: SystemTime,
    pub last: SystemTime,
    pub rows: u64,
}

/// Claims and deletes every row of `table` in batches of [`CEILING_BATCH`], in `seq` order,
/// reading the columns a relay publishes; on one connection (autocommit: one transaction per
/// batch).
pub async fn sql_ceiling(database_url: &str, table: &str) -> Result<CeilingRun> {
    let mut conn = PgConnection::connect(database_url).await?;
    let sql = format!(
        "DELETE FROM {table} WHERE seq IN (SELECT seq FROM {table} ORDER BY seq LIMIT $1 \
         FOR UPDATE SKIP LOCKED) RETURNING seq, id, aggregatetype, aggregateid, type, \
         payload::text, headers::text"
    );
    let first = SystemTime::now();
    let started = Instant::now();
    let mut rows = 0u64;
    let mut last = first;
    loop {
        let claimed: Vec<ClaimedRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(CEILING_BATCH)
            .fetch_all(&mut conn)
            .await
            .context("claim and delete")?;
        if claimed.is_empty() {
            break;
        }
        rows += claimed.len() as u64;
        last = SystemTime::now();
        ensure!(
            started.elapsed().as_secs() < 600,
            "the SQL ceiling loop ran for 10 min"
        );
    }
    conn.close().await?;
    Ok(CeilingRun { first, last, rows })
}

/// Where a run's files go: `<work_dir>/<run id>.{log,out,properties}`.
pub fn run_files(work_dir: &Path, run_id: &str) -> PathBuf {
    work_dir.join(run_id)
}
