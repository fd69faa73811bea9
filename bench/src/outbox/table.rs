//! The outbox tables of the benchmark: pipewright's migration (Debezium-compatible columns) under
//! a name per run, filled server-side, with the publication and logical replication slot that
//! Debezium's pgoutput stream reads, and their removal.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pipewright_worker::outbox::{Table, schema_sql};
use sqlx::PgPool;

/// Every row's aggregatetype: both relays route it to `<prefix>order`.
pub const AGGREGATE_TYPE: &str = "order";
/// Every row's type.
pub const EVENT_TYPE: &str = "order.created";
/// Distinct aggregateids (the record keys).
pub const AGGREGATES: u64 = 1_000;
/// Characters of padding in every payload, which makes it about 180 bytes of JSON.
pub const PAD: usize = 140;

/// Names of a run's objects start with this, so that leftovers of an interrupted invocation can
/// be found and removed.
pub const PREFIX: &str = "bench_outbox_";

/// The aggregateid of row `i`.
pub fn aggregate_id(i: u64) -> String {
    format!("a{:04}", i % AGGREGATES)
}

/// The payload of row `i` (as the writers build it; the fill builds the same in SQL).
pub fn payload(i: u64) -> serde_json::Value {
    serde_json::json!({ "order": i, "amount": (i % 10_000) as i64 * 3 - 500, "pad": "x".repeat(PAD) })
}

/// Creates the outbox table `name` with pipewright's migration (sequence, triggers, index).
pub async fn create(pool: &PgPool, name: &str) -> Result<()> {
    let table = Table::parse(name).with_context(|| format!("table name {name}"))?;
    let ddl = schema_sql(&table)?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(pool)
        .await
        .with_context(|| format!("create the outbox table {name}"))?;
    Ok(())
}

/// Creates a publication of `name` and a pgoutput logical replication slot, both called
/// `name`: Debezium streams every row inserted after this.
pub async fn create_slot(pool: &PgPool, name: &str) -> Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE PUBLICATION {name} FOR TABLE {name}"
    )))
    .execute(pool)
    .await
    .with_context(|| format!("create publication {name}"))?;
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(name)
        .execute(pool)
        .await
        .with_context(|| {
            format!("create replication slot {name} (does PostgreSQL run with wal_level=logical?)")
        })?;
    Ok(())
}

/// Inserts `rows` rows in transactions of 10,000 (the triggers stamp each row).
pub async fn fill(pool: &PgPool, name: &str, rows: u64) -> Result<()> {
    let chunk = 10_000u64;
    let sql = format!(
        "INSERT INTO {name} (id, aggregatetype, aggregateid, type, payload) \
         SELECT gen_random_uuid(), '{AGGREGATE_TYPE}', 'a' || lpad((i % {AGGREGATES})::text, 4, '0'), \
         '{EVENT_TYPE}', jsonb_build_object('order', i, 'amount', (i % 10000) * 3 - 500, \
         'pad', repeat('x', {PAD})) FROM generate_series($1::int8, $2::int8) AS i"
    );
    let mut start = 0;
    while start < rows {
        let end = (start + chunk).min(rows);
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(start as i64)
            .bind(end as i64 - 1)
            .execute(pool)
            .await
            .with_context(|| format!("fill {name}"))?;
        start = end;
    }
    Ok(())
}

/// Rows left in the table.
pub async fn count(pool: &PgPool, name: &str) -> Result<i64> {
    Ok(
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {name}")))
            .fetch_one(pool)
            .await?,
    )
}

/// Drops the slot (waiting up to 30 s for its reader to let go), the publication and the table
/// `name`.
pub async fn drop(pool: &PgPool, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let active: Option<bool> =
            sqlx::query_scalar("SELECT active FROM pg_replication_slots WHERE slot_name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?;
        match active {
            None => break,
            Some(false) => {
                sqlx::query("SELECT pg_drop_replication_slot($1)")
                    .bind(name)
                    .execute(pool)
                    .await
                    .with_context(|| format!("drop replication slot {name}"))?;
                break;
            }
            Some(true) if Instant::now() > deadline => {
                bail!("replication slot {name} is still in use after 30 s")
            }
            Some(true) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP PUBLICATION IF EXISTS {name}; DROP TABLE IF EXISTS {name}"
    )))
    .execute(pool)
    .await
    .with_context(|| format!("drop {name}"))?;
    Ok(())
}

/// Removes what an interrupted invocation left: inactive slots, publications and tables whose
/// names start with [`PREFIX`]. A slot left behind would hold WAL for ever.
pub async fn remove_leftovers(pool: &PgPool) -> Result<()> {
    let pattern = format!("{PREFIX}%");
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE $1 AND NOT active \
         UNION SELECT pubname::text FROM pg_publication WHERE pubname LIKE $1 \
         UNION SELECT relname::text FROM pg_class WHERE relname LIKE $1 AND relkind = 'r'",
    )
    .bind(&pattern)
    .fetch_all(pool)
    .await?;
    for name in names {
        drop(pool, &name).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_ids_match_the_fills_sql_and_repeat_every_aggregates_rows() {
        assert_eq!(aggregate_id(7), "a0007");
        assert_eq!(aggregate_id(7 + AGGREGATES), "a0007");
        assert_eq!(aggregate_id(AGGREGATES - 1), "a0999");
    }

    #[test]
    fn a_payload_is_about_180_bytes_of_json() {
        let len = serde_json::to_string(&payload(123_456)).unwrap().len();
        assert!((170..=190).contains(&len), "{len}");
    }
}
