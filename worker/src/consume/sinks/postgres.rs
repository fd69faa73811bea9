//! The PostgreSQL sink: each event becomes a row of a table, written in one transaction with
//! the record's offset, so a replayed record is a no-op (effectively once).
//!
//! - **Batches.** Deliveries queue their rows for a few writer tasks (at most
//!   [`MAX_WRITERS`], each with its own connection); a writer takes whatever is queued (at
//!   most [`MAX_BATCH`]) and writes it in one transaction: one statement for the offsets of
//!   the whole batch, one per run of rows with the same columns, one commit. A delivery
//!   returns when its batch committed, so a key's next record still starts only after its
//!   row is durable (per-key order), and under load one commit (and its fsync) serves
//!   hundreds of records instead of one. A data error fails the batch's transaction without
//!   saying which row it was: the batch is then written again one record per transaction, so
//!   only the bad record is dead-lettered.
//!
//! - Row: the table's columns that the event's JSON object has as top-level fields, converted
//!   by `jsonb_populate_record` (so types follow the table). With `upsertKey`, an existing row
//!   with the same key columns is updated (`ON CONFLICT (key) DO UPDATE`); without it every
//!   event inserts a row.
//! - Offsets: the offsets table has one row per applied record, `(group_id, topic, partition,
//!   offset)`, inserted in the same transaction as the event's row. A record whose row is
//!   already there was applied before (a redelivery after a crash): the transaction does
//!   nothing else. Rows below the group's committed Kafka offset are never replayed and are
//!   deleted after commits ([`PostgresSink::prune`]) once they are 10 minutes old (longer than
//!   a zombie consumer that lost its partition can still be working on one), so the table
//!   stays small.
//! - Errors: connection and serialization failures are retried; data errors (SQLSTATE
//!   classes 22 and 23: a value that does not fit a column, a violated constraint) are
//!   permanent, so the record is dead-lettered.
//!
//! Guarantee (test `consume_postgres_sink_writes_exactly_one_row_per_event_across_sigkill`):
//! after crashes and restarts, each consumed record is applied to the table exactly once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::{info, warn};

use crate::Error;
use crate::consume::events::{GenericEvent, HandlerError, Record};
use crate::consume::offsets::Tp;
use crate::outbox::{Table, quote};

/// Settings of the PostgreSQL sink.
#[derive(Debug, Clone)]
pub struct PostgresSinkConfig {
    pub table: Table,
    /// Columns identifying a row; empty: every event inserts.
    pub upsert_key: Vec<String>,
    pub offsets_table: Table,
    /// The consumer group, the offsets' owner.
    pub group_id: String,
    /// Connections at most (the pipeline's concurrency is a good value).
    pub max_connections: u32,
}

/// Writer tasks at most (each holds a connection while it writes a batch).
pub const MAX_WRITERS: u32 = 4;

/// Records per transaction at most.
pub const MAX_BATCH: usize = 512;

/// Rows queued for the writers at most; a delivery waits for room beyond.
const QUEUE: usize = 4 * MAX_BATCH;

/// Writes events as rows (see the module documentation).
#[derive(Debug, Clone)]
pub struct PostgresSink {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Pending>,
}

#[derive(Debug)]
struct Shared {
    pool: PgPool,
    config: PostgresSinkConfig,
    columns: HashSet<String>,
    /// The statement that writes the offsets of a batch.
    offsets_sql: String,
}

/// One record's row, waiting for a writer.
#[derive(Debug)]
struct Pending {
    /// The statement for the event's columns ([`Shared::statement`]), taking a JSON array.
    sql: Arc<str>,
    /// The event's upsert key values (two rows with the same key are written by separate
    /// statements, in order); `None` without an upsert key.
    key: Option<String>,
    /// The event's JSON object.
    body: String,
    topic: String,
    partition: i32,
    offset: i64,
    done: oneshot::Sender<Result<(), HandlerError>>,
}

fn sink_error(reason: String) -> Error {
    Error::Sink {
        sink: "postgres",
        reason,
    }
}

impl PostgresSink {
    /// Connects, creates the offsets table if needed, and reads the target table's columns.
    pub async fn connect(
        options: PgConnectOptions,
        config: PostgresSinkConfig,
    ) -> Result<PostgresSink, Error> {
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.clamp(1, 64))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(Error::Database)?;
        // Replicas start together: two concurrent `CREATE TABLE IF NOT EXISTS` of one table
        // race in PostgreSQL (a unique violation on pg_type), so they take turns under a
        // transaction-scoped advisory lock named by the table.
        let mut tx = pool.begin().await.map_err(Error::Database)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(config.offsets_table.quoted())
            .execute(&mut *tx)
            .await
            .map_err(Error::Database)?;
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {} (group_id text NOT NULL, topic text NOT NULL, \
             partition integer NOT NULL, \"offset\" bigint NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now(), \
             PRIMARY KEY (group_id, topic, partition, \"offset\"))",
            config.offsets_table.quoted()
        )))
        .execute(&mut *tx)
        .await
        .map_err(Error::Database)?;
        tx.commit().await.map_err(Error::Database)?;
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) \
             AND attnum > 0 AND NOT attisdropped",
        )
        .bind(config.table.quoted())
        .fetch_all(&pool)
        .await
        .map_err(Error::Database)?;
        if columns.is_empty() {
            return Err(sink_error(format!(
                "table {} does not exist (or has no columns)",
                config.table
            )));
        }
        let columns: HashSet<String> = columns.into_iter().collect();
        let missing: Vec<&String> = config
            .upsert_key
            .iter()
            .filter(|k| !columns.contains(*k))
            .collect();
        if !missing.is_empty() {
            return Err(sink_error(format!(
                "table {} has no column(s) {missing:?} of upsertKey",
                config.table
            )));
        }
        let offsets_sql = format!(
            "INSERT INTO {} (group_id, topic, partition, \"offset\") \
             SELECT $1, t, p, o FROM unnest($2::text[], $3::int4[], $4::int8[]) AS u(t, p, o) \
             ON CONFLICT DO NOTHING RETURNING topic, partition, \"offset\"",
            config.offsets_table.quoted()
        );
        let writers = config.max_connections.clamp(1, MAX_WRITERS);
        info!(table = %config.table, columns = columns.len(), writers, "postgres sink ready");
        let shared = Arc::new(Shared {
            pool,
            config,
            columns,
            offsets_sql,
        });
        let (queue, receiver) = mpsc::channel(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..writers {
            tokio::spawn(write_batches(shared.clone(), receiver.clone()));
        }
        Ok(PostgresSink { shared, queue })
    }

    /// Queues one event's row and its offset; returns once their transaction committed (a
    /// no-op for a record applied before).
    pub async fn deliver(&self, event: &GenericEvent, record: &Record) -> Result<(), HandlerError> {
        let Some(sql) = self.shared.statement(event) else {
            return Err(HandlerError::permanent(
                "postgres_no_columns",
                format!(
                    "the event has no field named like a column of {}",
                    self.shared.config.table
                ),
            ));
        };
        let body = event
            .body
            .as_ref()
            .map(|b| b.to_string())
            .unwrap_or_default();
        let key = self.shared.upsert_key(event);
        let (done, written) = oneshot::channel();
        let pending = Pending {
            sql,
            key,
            body,
            topic: record.topic.to_string(),
            partition: record.partition,
            offset: record.offset,
            done,
        };
        if self.queue.send(pending).await.is_err() {
            return Err(HandlerError::retryable(
                "postgres_unavailable",
                "the sink's writers stopped",
            ));
        }
        written.await.unwrap_or_else(|_| {
            Err(HandlerError::retryable(
                "postgres_unavailable",
                "the sink's writer stopped before the row was written",
            ))
        })
    }

    /// Deletes the offsets rows below the group's committed offsets: Kafka never replays them.
    pub async fn prune(&self, offsets: &[(Tp, i64)]) {
        self.shared.prune(offsets).await
    }
}

/// A writer: takes what is queued (at least one row, at most [`MAX_BATCH`]), writes it, and
/// answers each delivery; ends when the sink is dropped.
async fn write_batches(shared: Arc<Shared>, receiver: Arc<Mutex<mpsc::Receiver<Pending>>>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            let mut receiver = receiver.lock().await;
            if receiver.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
        }
        let result = shared.write(&batch).await;
        match result {
            Err(e) if !e.retryable && batch.len() > 1 => {
                // Which row was bad? Each record alone, so only that one is dead-lettered.
                for pending in batch.drain(..) {
                    let alone = shared.write(std::slice::from_ref(&pending)).await;
                    let _ = pending.done.send(alone);
                }
            }
            result => {
                for pending in batch.drain(..) {
                    let _ = pending.done.send(result.clone());
                }
            }
        }
    }
}

impl Shared {
    /// Writes a batch in one transaction: the offsets of its records, then the rows of those
    /// not applied before, in order.
    async fn write(&self, batch: &[Pending]) -> Result<(), HandlerError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let mut topics = Vec::with_capacity(batch.len());
        let mut partitions = Vec::with_capacity(batch.len());
        let mut offsets = Vec::with_capacity(batch.len());
        for p in batch {
            topics.push(p.topic.as_str());
            partitions.push(p.partition);
            offsets.push(p.offset);
        }
        let fresh: Vec<(String, i32, i64)> =
            sqlx::query_as(AssertSqlSafe(self.offsets_sql.as_str()))
                .bind(&self.config.group_id)
                .bind(&topics)
                .bind(&partitions)
                .bind(&offsets)
                .fetch_all(&mut *tx)
                .await
                .map_err(classify)?;
        let mut fresh: HashSet<(String, i32, i64)> = fresh.into_iter().collect();
        // Runs of rows with one statement and no upsert key twice, written in order: the same
        // outcome as one statement per row.
        let mut run: Option<(&str, Vec<&str>, HashSet<&str>)> = None;
        for p in batch {
            // Applied before (a redelivery), or twice in this batch: no row.
            if !fresh.remove(&(p.topic.clone(), p.partition, p.offset)) {
                continue;
            }
            let starts_anew = match &run {
                Some((sql, _, keys)) => {
                    *sql != &*p.sql || p.key.as_deref().is_some_and(|k| keys.contains(k))
                }
                None => true,
            };
            if starts_anew && let Some((sql, rows, _)) = run.take() {
                self.write_rows(&mut tx, sql, &rows).await?;
            }
            let (_, rows, keys) = run.get_or_insert_with(|| (&p.sql, Vec::new(), HashSet::new()));
            rows.push(&p.body);
            if let Some(k) = &p.key {
                keys.insert(k);
            }
        }
        if let Some((sql, rows, _)) = run {
            self.write_rows(&mut tx, sql, &rows).await?;
        }
        tx.commit().await.map_err(classify)
    }

    async fn write_rows(
        &self,
        tx: &mut sqlx::PgConnection,
        sql: &str,
        rows: &[&str],
    ) -> Result<(), HandlerError> {
        let mut array = String::with_capacity(rows.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
        array.push('[');
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                array.push(',');
            }
            array.push_str(row);
        }
        array.push(']');
        sqlx::query(AssertSqlSafe(sql))
            .bind(array)
            .execute(tx)
            .await
            .map(|_| ())
            .map_err(classify)
    }

    /// The event's upsert key values, as one string; `None` without an upsert key.
    fn upsert_key(&self, event: &GenericEvent) -> Option<String> {
        if self.config.upsert_key.is_empty() {
            return None;
        }
        let object = event.body.as_ref()?.as_object()?;
        let values: Vec<&serde_json::Value> = self
            .config
            .upsert_key
            .iter()
            .map(|c| object.get(c).unwrap_or(&serde_json::Value::Null))
            .collect();
        Some(serde_json::to_string(&values).unwrap_or_default())
    }

    /// The upsert statement for the columns this event has, taking a JSON array of rows.
    fn statement(&self, event: &GenericEvent) -> Option<Arc<str>> {
        let object = event.body.as_ref()?.as_object()?;
        let mut cols: Vec<&String> = object
            .keys()
            .filter(|k| self.columns.contains(*k))
            .collect();
        if cols.is_empty() {
            return None;
        }
        cols.sort();
        let list = cols.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
        let table = self.config.table.quoted();
        let mut sql = format!(
            "INSERT INTO {table} ({list}) SELECT {list} \
             FROM jsonb_populate_recordset(NULL::{table}, $1::text::jsonb)"
        );
        if !self.config.upsert_key.is_empty() {
            let key = self
                .config
                .upsert_key
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", ");
            let updates: Vec<String> = cols
                .iter()
                .filter(|c| !self.config.upsert_key.contains(c))
                .map(|c| format!("{0} = EXCLUDED.{0}", quote(c)))
                .collect();
            if updates.is_empty() {
                sql.push_str(&format!(" ON CONFLICT ({key}) DO NOTHING"));
            } else {
                sql.push_str(&format!(
                    " ON CONFLICT ({key}) DO UPDATE SET {}",
                    updates.join(", ")
                ));
            }
        }
        Some(sql.into())
    }

    async fn prune(&self, offsets: &[(Tp, i64)]) {
        for (tp, offset) in offsets {
            let result = sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {} WHERE group_id = $1 AND topic = $2 AND partition = $3 \
                 AND \"offset\" < $4 AND applied_at < now() - interval '10 minutes'",
                self.config.offsets_table.quoted()
            )))
            .bind(&self.config.group_id)
            .bind(&tp.topic)
            .bind(tp.partition)
            .bind(offset)
            .execute(&self.pool)
            .await;
            if let Err(e) = result {
                warn!(error = %e, "pruning the offsets table failed; retried after the next commit");
                return;
            }
        }
    }
}

/// Data errors are permanent; everything else (connections, timeouts, serialization) is
/// retried.
fn classify(e: sqlx::Error) -> HandlerError {
    if let sqlx::Error::Database(db) = &e
        && let Some(code) = db.code()
        && (code.starts_with("22") || code.starts_with("23"))
    {
        return HandlerError::permanent(format!("postgres_{code}"), db.message().to_string());
    }
    HandlerError::retryable("postgres_unavailable", e.to_string())
}
