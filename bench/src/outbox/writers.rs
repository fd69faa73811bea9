//! The steady load of the latency runs: `writers` connections each inserting one row per
//! transaction (autocommit) on a fixed schedule, `rate` rows/s in all (open loop: a writer
//! that falls behind its schedule does not lower the rate after it catches up). Each writer
//! notes the wall-clock time at which its COMMIT returned, by row id.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use super::table::{AGGREGATE_TYPE, EVENT_TYPE, aggregate_id, payload};

/// A row a writer committed.
#[derive(Debug, Clone)]
pub struct Written {
    pub aggregate_id: String,
    pub payload: serde_json::Value,
    /// When the writer's COMMIT returned.
    pub committed: SystemTime,
}

/// What the writers did.
#[derive(Debug)]
pub struct Load {
    pub rows: HashMap<Uuid, Written>,
    /// Rows per second actually committed over the load's duration.
    pub achieved_rate: f64,
    /// How late the latest insert started against its schedule, ms.
    pub max_behind_ms: f64,
}

/// Inserts one row now (the sentinel that tells a relay is live, and the writers' statement).
pub async fn insert(conn: &mut PgConnection, table: &str, i: u64) -> Result<(Uuid, Written)> {
    let id = Uuid::new_v4();
    let (aggregate, body) = (aggregate_id(i), payload(i));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (id, aggregatetype, aggregateid, type, payload) \
         VALUES ($1, '{AGGREGATE_TYPE}', $2, '{EVENT_TYPE}', $3)"
    )))
    .bind(id)
    .bind(&aggregate)
    .bind(sqlx::types::Json(&body))
    .execute(&mut *conn)
    .await
    .context("insert an outbox row")?;
    Ok((
        id,
        Written {
            aggregate_id: aggregate,
            payload: body,
            committed: SystemTime::now(),
        },
    ))
}

/// Runs `writers` writers at `rate` rows/s in all for `duration`.
pub async fn steady(
    database_url: &str,
    table: &str,
    writers: u32,
    rate: f64,
    duration: Duration,
) -> Result<Load> {
    let mut conns = Vec::new();
    for _ in 0..writers {
        conns.push(PgConnection::connect(database_url).await?);
    }
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(w, mut conn)| {
            let table = table.to_string();
            tokio::spawn(async move {
                let mut rows = Vec::new();
                let mut max_behind = Duration::ZERO;
                let mut i = w as u64;
                while i < total {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                    max_behind = max_behind.max(Instant::now().saturating_duration_since(due));
                    rows.push(insert(&mut conn, &table, 1_000_000 + i).await?);
                    i += writers as u64;
                }
                conn.close().await?;
                anyhow::Ok((rows, max_behind))
            })
        })
        .collect();
    let mut load = Load {
        rows: HashMap::with_capacity(total as usize),
        achieved_rate: 0.0,
        max_behind_ms: 0.0,
    };
    for task in tasks {
        let (rows, behind) = task.await.context("writer task")??;
        load.rows.extend(rows);
        load.max_behind_ms = load.max_behind_ms.max(behind.as_secs_f64() * 1e3);
    }
    load.achieved_rate = load.rows.len() as f64 / start.elapsed().as_secs_f64();
    Ok(load)
}
