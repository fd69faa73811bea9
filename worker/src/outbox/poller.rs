//! The outbox poller: one active publisher per table (advisory lock), a fenced cursor over
//! `seq`, a bounded pipeline of Kafka sends, and cleanup after acknowledgement. The guarantees
//! and their reasons are in the parent module's documentation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::{OutboxMetrics, Table};
use crate::error::Chain;
use crate::kafka::KafkaSettings;
use crate::{Error, Health};

/// Upper bound of any single database call of the poller; past it the session is abandoned
/// (and its lock connection closed), so a publisher cut off from the database stops claiming.
pub const DB_TIMEOUT: Duration = Duration::from_secs(30);

/// The advisory-lock key space of pipewright outboxes ("pwob"), combined with the table oid.
const LOCK_CLASS: i64 = 0x7077_6f62;

/// How often the active replica measures the backlog and applies the retention.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(5);

/// The first wait for a pending fence's writers to end.
const RECHECK_MIN: Duration = Duration::from_millis(5);

/// Rows deleted per retention statement.
const RETENTION_BATCH: i64 = 10_000;

/// Where rows go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Every row to this topic.
    Topic(String),
    /// `{aggregatetype}` replaced by the row's aggregatetype.
    Template(String),
}

impl Destination {
    /// The topic placeholder of a template.
    pub const PLACEHOLDER: &'static str = "{aggregatetype}";

    /// Validates a fixed topic or a template.
    pub fn validate(&self) -> Result<(), Error> {
        match self {
            Destination::Topic(topic) if !is_topic(topic) => Err(Error::InvalidConfig {
                field: "topic",
                reason: format!(
                    "{topic:?} is not a Kafka topic name (1-249 of [a-zA-Z0-9._-], not . or ..)"
                ),
            }),
            Destination::Template(t)
                if !t.contains(Self::PLACEHOLDER)
                    || !is_topic(&t.replace(Self::PLACEHOLDER, "x")) =>
            {
                Err(Error::InvalidConfig {
                    field: "topicTemplate",
                    reason: format!(
                        "{t:?} must contain {{aggregatetype}} and otherwise be a Kafka topic name"
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// The topic of a row with this aggregatetype (not yet validated).
    pub fn render(&self, aggregatetype: &str) -> String {
        match self {
            Destination::Topic(topic) => topic.clone(),
            Destination::Template(t) => t.replace(Self::PLACEHOLDER, aggregatetype),
        }
    }

    /// The topic of a row with this aggregatetype, if it is a valid topic name.
    pub fn topic_for(&self, aggregatetype: &str) -> Option<String> {
        Some(self.render(aggregatetype)).filter(|t| is_topic(t))
    }
}

fn is_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// What happens to a row once Kafka acknowledged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// Delete it.
    Delete,
    /// Set `published_at`; delete rows published longer ago than `retention` (when set).
    MarkPublished { retention: Option<Duration> },
}

/// The poller's settings (what the operator renders from an `Outbox` spec).
#[derive(Debug, Clone)]
pub struct PollerConfig {
    pub table: Table,
    pub destination: Destination,
    /// librdkafka settings: `bootstrap.servers`, allowed tuning keys and the credentials of
    /// `kafka.secretRef`. The poller sets idempotence, `acks=all` and the timeouts itself.
    pub kafka: KafkaSettings,
    /// Wait between two reads when the last found nothing (and no NOTIFY came).
    pub poll_interval: Duration,
    /// Rows per claim query.
    pub batch_size: usize,
    /// Rows sent but not yet acknowledged and cleaned up, at most.
    pub max_in_flight: usize,
    /// Wake up on LISTEN/NOTIFY.
    pub notify: bool,
    pub cleanup: Cleanup,
    /// How often a standby tries to take the publisher lock.
    pub lock_retry_interval: Duration,
    /// How long a graceful shutdown waits for the rows in flight.
    pub shutdown_grace: Duration,
}

impl PollerConfig {
    /// Defaults of the `Outbox` spec for `table` and `destination`.
    pub fn new(table: Table, destination: Destination, bootstrap_servers: &str) -> PollerConfig {
        PollerConfig {
            table,
            destination,
            kafka: KafkaSettings::new(bootstrap_servers),
            poll_interval: Duration::from_secs(1),
            batch_size: 100,
            max_in_flight: 1000,
            notify: true,
            cleanup: Cleanup::Delete,
            lock_retry_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(30),
        }
    }

    /// Checks ranges and consistency (the CRD validates the same; the binary may be run alone).
    pub fn validate(&self) -> Result<(), Error> {
        self.destination.validate()?;
        let bad = |field, reason: &str| {
            Err(Error::InvalidConfig {
                field,
                reason: reason.to_string(),
            })
        };
        if !(1..=10_000).contains(&self.batch_size) {
            return bad("batchSize", "must be between 1 and 10000");
        }
        if !(self.batch_size..=100_000).contains(&self.max_in_flight) {
            return bad("maxInFlight", "must be between batchSize and 100000");
        }
        if self.poll_interval < Duration::from_millis(10)
            || self.poll_interval > Duration::from_secs(3600)
        {
            return bad("poll.interval", "must be between 10ms and 1h");
        }
        if self.lock_retry_interval < Duration::from_millis(10)
            || self.lock_retry_interval > Duration::from_secs(60)
        {
            return bad("lockRetryInterval", "must be between 10ms and 60s");
        }
        Ok(())
    }
}

/// The poller: create it with [`Poller::new`], then [`Poller::run`] until the token is
/// cancelled.
#[derive(Debug)]
pub struct Poller {
    config: PollerConfig,
    connect: PgConnectOptions,
    metrics: OutboxMetrics,
    health: Health,
}

/// The resolved table: its oid (lock key, NOTIFY channel) and which optional columns it has.
#[derive(Debug, Clone)]
struct Resolved {
    sql_name: String,
    oid: i64,
    has_headers: bool,
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    seq: i64,
    id: Uuid,
    aggregatetype: String,
    aggregateid: String,
    #[sqlx(rename = "type")]
    event_type: String,
    payload: Option<String>,
    headers: Option<String>,
    age_seconds: f64,
}

/// A record handed to the producer, waiting for its acknowledgement.
struct InFlight {
    seq: i64,
    delivery: DeliveryFuture,
    sent: Instant,
    age_seconds_at_send: f64,
    /// The row's `publish` span (traces on, the row carried a context): ends when this is
    /// dropped, after the acknowledgement.
    _trace: Option<opentelemetry::Context>,
    _permit: OwnedSemaphorePermit,
}

/// What [`Poller::send`] handed to the producer.
struct Sent {
    delivery: DeliveryFuture,
    /// The row's age when it was read.
    age_seconds: f64,
    trace: Option<opentelemetry::Context>,
}

/// The fence over `seq` (see the module doc): rows up to `safe` are complete; `pending` is a
/// fence `(P, M)` waiting for `xmin >= P`.
#[derive(Debug, Default)]
struct Fence {
    safe: i64,
    pending: Option<(i64, i64)>,
}

impl Poller {
    pub fn new(
        config: PollerConfig,
        connect: PgConnectOptions,
        metrics: OutboxMetrics,
        health: Health,
    ) -> Result<Poller, Error> {
        config.validate()?;
        // Server-side keepalives bound how long a vanished host keeps the publisher lock.
        let connect = connect.application_name("pipewright-outbox").options([
            ("tcp_keepalives_idle", "5"),
            ("tcp_keepalives_interval", "2"),
            ("tcp_keepalives_count", "3"),
            ("tcp_user_timeout", "10000"),
            ("statement_timeout", "30000"),
        ]);
        Ok(Poller {
            config,
            connect,
            metrics,
            health,
        })
    }

    /// Runs until `shutdown` is cancelled (then finishes the rows in flight, within
    /// `shutdown_grace`) or a permanent error (missing table, ...). Transient errors are
    /// retried with a bounded exponential backoff (100 ms doubling to 30 s).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            let result = self.session(&shutdown).await;
            self.metrics.active.set(0);
            self.metrics.last_publish.set_active(false);
            self.metrics.in_flight.set(0);
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_permanent() => {
                    self.health.set_ready(false);
                    return Err(e);
                }
                Err(e) => {
                    self.health.set_ready(false);
                    self.metrics.errors.inc();
                    self.metrics
                        .delivery
                        .failed(&crate::report::error_class(&e));
                    if started.elapsed() > Duration::from_secs(60) {
                        backoff = Duration::from_millis(100);
                    }
                    warn!(table = %self.config.table, error = %Chain(&e), retry_in = ?backoff,
                        "outbox session ended; starting over");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// One session: connect, resolve the table, stand by until the lock is ours, publish.
    async fn session(&self, shutdown: &CancellationToken) -> Result<(), Error> {
        let mut conn = db("connect", PgConnection::connect_with(&self.connect)).await?;
        let table = resolve(&mut conn, &self.config).await?;
        self.health.set_ready(true);
        let key = (LOCK_CLASS << 32) | table.oid;
        let mut standing_by = false;
        loop {
            let locked: bool = db(
                "pg_try_advisory_lock",
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(key)
                    .fetch_one(&mut conn),
            )
            .await?;
            if locked {
                break;
            }
            if !standing_by {
                // Connected, and another replica is responsible: nothing of ours is failing.
                self.metrics.delivery.succeeded();
                info!(table = %self.config.table, "another replica publishes; standing by");
                standing_by = true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.config.lock_retry_interval) => {}
            }
        }
        info!(table = %self.config.table, "holding the publisher lock: publishing");
        self.metrics.active.set(1);
        self.metrics.last_publish.set_active(true);
        let result = self.publish(&mut conn, &table, shutdown).await;
        // Closing the session releases the lock.
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
        result
    }

    async fn publish(
        &self,
        conn: &mut PgConnection,
        table: &Resolved,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let config = &self.config;
        let producer = self.producer()?;
        let pool = db(
            "connect",
            PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(DB_TIMEOUT)
                .connect_with(self.connect.clone()),
        )
        .await?;
        let mut listener = if config.notify {
            self.listen(&pool, table).await
        } else {
            None
        };

        let permits = Arc::new(Semaphore::new(config.max_in_flight));
        let (tx, rx) = mpsc::channel::<InFlight>(config.max_in_flight);
        // Cancelled when the acknowledging task stops (error), so the reader stops too.
        let stop = CancellationToken::new();
        let mut acker = tokio::spawn(acknowledge(
            rx,
            pool.clone(),
            table.sql_name.clone(),
            config.cleanup,
            self.metrics.clone(),
            config.batch_size,
            stop.clone(),
        ));

        let mut fence = Fence::default();
        let mut cursor: i64 = 0;
        let mut recheck = RECHECK_MIN;
        // Whether the last claim was full: then rows up to the safe bound remain, and the next
        // claim needs no new fence (a backlog drains at one statement per batch).
        let mut full = false;
        // Backlog figures and retention on the pool, beside the reader: a `count(*)` over the
        // table must not pause the claims (it put a pause every 5 s into the commit -> ack tail).
        let mut maintenance = tokio::spawn(maintain_every(
            MAINTENANCE_INTERVAL,
            pool.clone(),
            table.sql_name.clone(),
            config.cleanup,
            self.metrics.clone(),
            stop.clone(),
        ));
        let claim_sql = claim_sql(table, config);

        let read: Result<(), Error> = async {
            while !shutdown.is_cancelled() && !stop.is_cancelled() {
                if (!full || fence.pending.is_some())
                    && advance_fence(conn, &table.sql_name, &mut fence).await?
                {
                    recheck = RECHECK_MIN;
                }
                let rows: Vec<Row> = db(
                    "claim",
                    sqlx::query_as(sqlx::AssertSqlSafe(claim_sql.clone()))
                        .bind(cursor)
                        .bind(fence.safe)
                        .bind(config.batch_size as i64)
                        .fetch_all(&mut *conn),
                )
                .await?;
                full = rows.len() == config.batch_size;
                if !rows.is_empty() {
                    debug!(first = rows[0].seq, count = rows.len(), "claimed");
                }
                for row in rows {
                    let permit = tokio::select! {
                        p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                        _ = stop.cancelled() => break,
                        _ = shutdown.cancelled() => break,
                    };
                    let seq = row.seq;
                    let sent = self.send(&producer, row)?;
                    self.metrics.in_flight.inc();
                    let item = InFlight {
                        seq,
                        delivery: sent.delivery,
                        sent: Instant::now(),
                        age_seconds_at_send: sent.age_seconds,
                        _trace: sent.trace,
                        _permit: permit,
                    };
                    tokio::select! {
                        sent = tx.send(item) => {
                            if sent.is_err() { break; }
                        }
                        _ = stop.cancelled() => break,
                    }
                    cursor = seq;
                }
                if full {
                    continue;
                }
                // Wait: briefly while a fence is pending (its writers are about to end; the
                // wait doubles while the same fence stays pending, and starts over once one
                // resolves), otherwise until NOTIFY or the poll interval.
                let wait = if fence.pending.is_some() {
                    let w = recheck;
                    recheck = (recheck * 2).min(config.poll_interval);
                    w
                } else {
                    recheck = RECHECK_MIN;
                    config.poll_interval
                };
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(wait) => {}
                    woke = notified(&mut listener), if listener.is_some() => {
                        if let Err(e) = woke {
                            warn!(error = %Chain(&e), "LISTEN failed; falling back to polling");
                            listener = None;
                        }
                    }
                }
            }
            Ok(())
        }
        .await;

        // A failed maintenance statement ends the session like any database error.
        let read = match maintenance.is_finished() {
            true => match (&mut maintenance).await {
                Ok(Err(e)) => read.and(Err(e)),
                _ => read,
            },
            false => read,
        };
        maintenance.abort();
        // Finish what is in flight: on shutdown within the grace period; after an error only
        // if the acknowledging task is still healthy (it stops by itself otherwise).
        drop(tx);
        let drained = if read.is_ok() {
            match tokio::time::timeout(config.shutdown_grace, &mut acker).await {
                Ok(joined) => joined.unwrap_or(Ok(())),
                Err(_) => {
                    warn!(grace = ?config.shutdown_grace, "rows still in flight after the grace period; they stay pending");
                    acker.abort();
                    Ok(())
                }
            }
        } else {
            acker.abort();
            Ok(())
        };
        drop(listener);
        pool.close().await;
        // Dropping the producer purges anything it still holds.
        drop(producer);
        read.and(drained)
    }

    /// Hands one row to the producer.
    fn send(&self, producer: &FutureProducer, row: Row) -> Result<Sent, Error> {
        let topic = self
            .config
            .destination
            .topic_for(&row.aggregatetype)
            .ok_or_else(|| Error::InvalidTopic {
                id: row.id,
                seq: row.seq,
                topic: self.config.destination.render(&row.aggregatetype),
            })?;
        let id = row.id.to_string();
        let seq = row.seq.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "id",
                value: Some(id.as_str()),
            })
            .insert(Header {
                key: "type",
                value: Some(row.event_type.as_str()),
            })
            .insert(Header {
                key: "aggregatetype",
                value: Some(row.aggregatetype.as_str()),
            })
            .insert(Header {
                key: "seq",
                value: Some(seq.as_str()),
            });
        let mut extra = row.headers.as_deref().and_then(|h| {
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(h).ok()
        });
        // With traces on, a row that carries its writer's trace context is published in a
        // span of its own, whose context the record carries on (crate::traces).
        let trace = match (crate::traces::tracer(), extra.as_mut()) {
            (Some(tracer), Some(map)) => {
                let parent = crate::traces::extract_json(map);
                opentelemetry::trace::TraceContextExt::span(&parent)
                    .span_context()
                    .is_valid()
                    .then(|| {
                        let cx = crate::traces::start_publish(tracer, &topic, &id, &parent);
                        for (name, value) in crate::traces::headers_of(&cx) {
                            map.insert(name, serde_json::Value::String(value));
                        }
                        cx
                    })
            }
            _ => None,
        };
        if let Some(extra) = extra {
            for (key, value) in extra {
                let value = match value {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                headers = headers.insert(Header {
                    key: &key,
                    value: Some(value.as_str()),
                });
            }
        }
        let mut record = FutureRecord::to(&topic)
            .key(row.aggregateid.as_str())
            .headers(headers);
        if let Some(payload) = row.payload.as_deref() {
            record = record.payload(payload);
        }
        producer
            .send_result(record)
            .map(|d| Sent {
                delivery: d,
                age_seconds: row.age_seconds,
                trace,
            })
            .map_err(|(e, _)| Error::Kafka(e))
    }

    fn producer(&self) -> Result<FutureProducer, Error> {
        self.config
            .kafka
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("enable.gapless.guarantee", "true")
            // Kafka unreachable: keep retrying; backpressure bounds what waits.
            .set("message.timeout.ms", "0")
            // `linger.ms` is librdkafka's (5 ms) unless `kafka.config` sets it: a
            // latency-sensitive outbox trades batch size for it (docs/outbox.md).
            .create()
            .map_err(Error::Kafka)
    }

    async fn listen(&self, pool: &PgPool, table: &Resolved) -> Option<PgListener> {
        let channel = format!("pipewright_outbox_{}", table.oid);
        let result = async {
            let mut listener = PgListener::connect_with(pool).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match tokio::time::timeout(DB_TIMEOUT, result).await {
            Ok(Ok(listener)) => Some(listener),
            Ok(Err(e)) => {
                warn!(error = %Chain(&e), "LISTEN failed; polling only");
                None
            }
            Err(_) => {
                warn!("LISTEN timed out; polling only");
                None
            }
        }
    }
}

/// Runs [`maintain`] every `interval` until `stop` is cancelled; on an error it cancels `stop`
/// (so the reader ends the session) and returns it.
async fn maintain_every(
    interval: Duration,
    pool: PgPool,
    table: String,
    cleanup: Cleanup,
    metrics: OutboxMetrics,
    stop: CancellationToken,
) -> Result<(), Error> {
    loop {
        if let Err(e) = maintain(&pool, &table, cleanup, &metrics).await {
            stop.cancel();
            return Err(e);
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Measures the backlog and applies the retention.
async fn maintain(
    pool: &PgPool,
    table: &str,
    cleanup: Cleanup,
    metrics: &OutboxMetrics,
) -> Result<(), Error> {
    let pending_filter = match cleanup {
        Cleanup::Delete => "",
        Cleanup::MarkPublished { .. } => " WHERE published_at IS NULL",
    };
    let (count, age): (i64, f64) = db(
        "measure backlog",
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 \
             FROM {table}{pending_filter}"
        )))
        .fetch_one(pool),
    )
    .await?;
    metrics.pending.set(count);
    metrics.oldest_pending_age_seconds.set(age);
    if let Cleanup::MarkPublished {
        retention: Some(retention),
    } = cleanup
    {
        db(
            "retention",
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE seq IN (SELECT seq FROM {table} WHERE published_at < \
                 now() - make_interval(secs => $1) LIMIT $2)"
            )))
            .bind(retention.as_secs_f64())
            .bind(RETENTION_BATCH)
            .execute(pool),
        )
        .await?;
    }
    Ok(())
}

/// Bounds a database call by [`DB_TIMEOUT`].
async fn db<T>(
    operation: &'static str,
    call: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(DB_TIMEOUT, call).await {
        Ok(result) => result.map_err(Error::Database),
        Err(_) => Err(Error::DatabaseTimeout {
            operation,
            seconds: DB_TIMEOUT.as_secs(),
        }),
    }
}

async fn notified(listener: &mut Option<PgListener>) -> Result<(), sqlx::Error> {
    match listener {
        Some(l) => {
            l.recv().await?;
            // Collapse a burst of notifications into one wake-up.
            while l.next_buffered().is_some() {}
            Ok(())
        }
        None => std::future::pending().await,
    }
}

/// The types (PostgreSQL `typname`) a column the poller reads may have; `None`: a column it
/// does not read. What the claim decodes: `seq` as an `int8`, `id` as a `uuid`, the names as
/// text; `payload` and `headers` go out as their text (JSON's text is the JSON; a `bytea`'s
/// would be its hex escape); `created_at` and `published_at` are compared with `now()`;
/// `txid` is compared with the snapshot's `xid8`s (the fence).
fn column_types(column: &str) -> Option<&'static [&'static str]> {
    const NAME: &[&str] = &["text", "varchar", "bpchar"];
    Some(match column {
        "id" => &["uuid"],
        "aggregatetype" | "aggregateid" | "type" => NAME,
        "payload" => &["jsonb", "json", "text", "varchar"],
        "headers" => &["jsonb", "json"],
        "created_at" | "published_at" => &["timestamptz", "timestamp"],
        "seq" => &["int8"],
        "txid" => &["xid8"],
        _ => return None,
    })
}

/// Looks the table up, checks its columns (present, of a type it can read) and its stamping
/// trigger.
async fn resolve(conn: &mut PgConnection, config: &PollerConfig) -> Result<Resolved, Error> {
    let sql_name = config.table.quoted();
    let oid: Option<i64> = db(
        "resolve table",
        sqlx::query_scalar("SELECT to_regclass($1)::oid::int8")
            .bind(&sql_name)
            .fetch_one(&mut *conn),
    )
    .await?;
    let table = config.table.to_string();
    let oid = oid.ok_or_else(|| Error::TableMissing {
        table: table.clone(),
    })?;
    // Each column with its type (a domain's base type).
    let typed: Vec<(String, String)> = db(
        "read columns",
        sqlx::query_as(
            "SELECT a.attname::text, b.typname::text FROM pg_attribute a \
             JOIN pg_type t ON t.oid = a.atttypid \
             JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
             WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped",
        )
        .bind(oid)
        .fetch_all(&mut *conn),
    )
    .await?;
    let columns: Vec<String> = typed.iter().map(|(name, _)| name.clone()).collect();
    let mut required = vec![
        "id",
        "aggregatetype",
        "aggregateid",
        "type",
        "payload",
        "created_at",
        "seq",
        "txid",
    ];
    if matches!(config.cleanup, Cleanup::MarkPublished { .. }) {
        required.push("published_at");
    }
    let missing: Vec<&str> = required
        .into_iter()
        .filter(|c| !columns.iter().any(|have| have == c))
        .collect();
    if !missing.is_empty() {
        return Err(Error::TableColumns {
            table,
            missing: missing.join(", "),
        });
    }
    let wrong: Vec<String> = typed
        .iter()
        .filter_map(|(name, ty)| {
            let allowed = column_types(name)?;
            (!allowed.contains(&ty.as_str()))
                .then(|| format!("{name} is {ty} (expected {})", allowed.join(" or ")))
        })
        .collect();
    if !wrong.is_empty() {
        return Err(Error::TableColumnTypes {
            table,
            columns: wrong.join(", "),
        });
    }
    let stamped: bool = db(
        "read triggers",
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid \
             WHERE t.tgrelid = $1::oid AND p.proname = 'pipewright_outbox_stamp' \
             AND t.tgenabled <> 'D')",
        )
        .bind(oid)
        .fetch_one(&mut *conn),
    )
    .await?;
    if !stamped {
        return Err(Error::TableNotStamped { table });
    }
    Ok(Resolved {
        sql_name,
        oid,
        has_headers: columns.iter().any(|c| c == "headers"),
    })
}

fn claim_sql(table: &Resolved, config: &PollerConfig) -> String {
    let headers = if table.has_headers {
        "headers::text"
    } else {
        "NULL::text"
    };
    let pending = match config.cleanup {
        Cleanup::Delete => "",
        Cleanup::MarkPublished { .. } => " AND published_at IS NULL",
    };
    format!(
        "SELECT seq, id, aggregatetype, aggregateid, type, payload::text AS payload, \
         {headers} AS headers, EXTRACT(EPOCH FROM now() - created_at)::float8 AS age_seconds \
         FROM {} WHERE seq > $1 AND seq <= $2{pending} ORDER BY seq LIMIT $3",
        table.sql_name
    )
}

/// Moves the fence: resolves a pending fence whose writers have all ended, sets a new one when
/// rows beyond the safe bound exist, and checks that new one at once (in a later statement, as
/// the proof needs): when no writer was open at its allocation it resolves right away, and a
/// row committed just now is claimed in this round, not the next. Returns whether a fence
/// resolved.
async fn advance_fence(
    conn: &mut PgConnection,
    table: &str,
    fence: &mut Fence,
) -> Result<bool, Error> {
    let mut resolved = resolve_fence(conn, fence).await?;
    if fence.pending.is_none() {
        // First the highest number (one snapshot), then a fresh transaction id: the order the
        // proof in the module doc needs. Both run in autocommit, each its own statement.
        let m: Option<i64> = db(
            "read max(seq)",
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT max(seq) FROM {table}")))
                .fetch_one(&mut *conn),
        )
        .await?;
        if let Some(m) = m.filter(|m| *m > fence.safe) {
            let p: i64 = db(
                "allocate fence xid",
                sqlx::query_scalar("SELECT pg_current_xact_id()::text::int8").fetch_one(&mut *conn),
            )
            .await?;
            fence.pending = Some((p, m));
            resolved |= resolve_fence(conn, fence).await?;
        }
    }
    Ok(resolved)
}

/// Resolves a pending fence `(P, M)` once `xmin >= P`: rows up to `M` are then safe. Returns
/// whether it resolved.
async fn resolve_fence(conn: &mut PgConnection, fence: &mut Fence) -> Result<bool, Error> {
    let Some((p, m)) = fence.pending else {
        return Ok(false);
    };
    let xmin: i64 = db(
        "read xmin",
        sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8")
            .fetch_one(&mut *conn),
    )
    .await?;
    if xmin < p {
        return Ok(false);
    }
    fence.safe = fence.safe.max(m);
    fence.pending = None;
    Ok(true)
}

/// Awaits acknowledgements in send order and cleans acknowledged rows up in batches. Stops
/// (cancelling `stop`) at the first failed delivery: the reader then ends the session, and the
/// rows not cleaned up are read again by the next one.
async fn acknowledge(
    mut rx: mpsc::Receiver<InFlight>,
    pool: PgPool,
    table: String,
    cleanup: Cleanup,
    metrics: OutboxMetrics,
    batch_size: usize,
    stop: CancellationToken,
) -> Result<(), Error> {
    let _stop_on_exit = stop.drop_guard();
    let mut done: Vec<InFlight> = Vec::with_capacity(batch_size);
    loop {
        let next = if done.is_empty() {
            rx.recv().await
        } else {
            match rx.try_recv() {
                Ok(item) => Some(item),
                Err(mpsc::error::TryRecvError::Empty) => {
                    clean_up(&pool, &table, cleanup, &metrics, &mut done).await?;
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            }
        };
        let Some(mut item) = next else {
            clean_up(&pool, &table, cleanup, &metrics, &mut done).await?;
            return Ok(());
        };
        match (&mut item.delivery).await {
            Ok(Ok(_)) => {
                metrics
                    .publish_latency_seconds
                    .observe(item.sent.elapsed().as_secs_f64());
                metrics
                    .end_to_end_latency_seconds
                    .observe(item.age_seconds_at_send + item.sent.elapsed().as_secs_f64());
                done.push(item);
            }
            Ok(Err((e, _))) => {
                // Clean up what was acknowledged before it, then stop.
                clean_up(&pool, &table, cleanup, &metrics, &mut done).await?;
                return Err(Error::Kafka(e));
            }
            Err(_canceled) => {
                clean_up(&pool, &table, cleanup, &metrics, &mut done).await?;
                return Err(Error::Kafka(rdkafka::error::KafkaError::Canceled));
            }
        }
        if done.len() >= batch_size {
            clean_up(&pool, &table, cleanup, &metrics, &mut done).await?;
        }
    }
}

async fn clean_up(
    pool: &PgPool,
    table: &str,
    cleanup: Cleanup,
    metrics: &OutboxMetrics,
    done: &mut Vec<InFlight>,
) -> Result<(), Error> {
    if done.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = done.iter().map(|d| d.seq).collect();
    let sql = match cleanup {
        Cleanup::Delete => format!("DELETE FROM {table} WHERE seq = ANY($1)"),
        Cleanup::MarkPublished { .. } => {
            format!("UPDATE {table} SET published_at = now() WHERE seq = ANY($1)")
        }
    };
    db(
        "clean up",
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&seqs)
            .execute(pool),
    )
    .await?;
    metrics.published.inc_by(seqs.len() as u64);
    metrics.last_publish.published();
    metrics.delivery.succeeded();
    metrics.in_flight.dec_by(seqs.len() as i64);
    // Dropping the items releases their in-flight permits.
    done.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_templates_replace_the_aggregate_type_and_reject_invalid_topics() {
        let d = Destination::Template("outbox.event.{aggregatetype}".into());
        assert!(d.validate().is_ok());
        assert_eq!(d.topic_for("order").as_deref(), Some("outbox.event.order"));
        assert_eq!(d.topic_for("bad/type"), None);
        assert_eq!(d.topic_for(&"x".repeat(300)), None);
        assert!(
            Destination::Template("no-placeholder".into())
                .validate()
                .is_err()
        );
        assert!(Destination::Topic("a topic".into()).validate().is_err());
        assert!(Destination::Topic("orders".into()).validate().is_ok());
    }

    #[test]
    fn config_bounds_are_checked() {
        let table = Table::parse("outbox").unwrap();
        let mut c = PollerConfig::new(table, Destination::Topic("t".into()), "k:9092");
        assert!(c.validate().is_ok());
        c.max_in_flight = c.batch_size - 1;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("maxInFlight")
        );
        c.max_in_flight = 1000;
        c.batch_size = 0;
        assert!(c.validate().unwrap_err().to_string().contains("batchSize"));
    }
}
