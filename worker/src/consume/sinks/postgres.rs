//! The PostgreSQL sink: each event becomes a row of a table, written in one transaction with
//! the record's offset, so a replayed record is a no-op (effectively once).
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
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
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

/// Writes events as rows (see the module documentation).
#[derive(Debug, Clone)]
pub struct PostgresSink {
    pool: PgPool,
    config: PostgresSinkConfig,
    columns: HashSet<String>,
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
        info!(table = %config.table, columns = columns.len(), "postgres sink ready");
        Ok(PostgresSink {
            pool,
            config,
            columns,
        })
    }

    /// The upsert statement for the columns this event has.
    fn statement(&self, event: &GenericEvent) -> Option<String> {
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
            "INSERT INTO {table} ({list}) SELECT {list} FROM jsonb_populate_record(NULL::{table}, $1)"
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
        Some(sql)
    }

    /// Writes one event and its offset in one transaction; a no-op for a record applied before.
    pub async fn deliver(&self, event: &GenericEvent, record: &Record) -> Result<(), HandlerError> {
        let Some(sql) = self.statement(event) else {
            return Err(HandlerError::permanent(
                "postgres_no_columns",
                format!(
                    "the event has no field named like a column of {}",
                    self.config.table
                ),
            ));
        };
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let inserted = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (group_id, topic, partition, \"offset\") VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
            self.config.offsets_table.quoted()
        )))
        .bind(&self.config.group_id)
        .bind(&record.topic)
        .bind(record.partition)
        .bind(record.offset)
        .execute(&mut *tx)
        .await
        .map_err(classify)?
        .rows_affected();
        if inserted == 0 {
            // Applied before: a redelivery.
            tx.rollback().await.map_err(classify)?;
            return Ok(());
        }
        sqlx::query(AssertSqlSafe(sql))
            .bind(&event.body)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)
    }

    /// Deletes the offsets rows below the group's committed offsets: Kafka never replays them.
    pub async fn prune(&self, offsets: &[(Tp, i64)]) {
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
