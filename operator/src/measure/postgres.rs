//! The outbox backlog, counted in the table itself: rows not yet published and the age of the
//! oldest. "Not yet published" follows the worker's cleanup policy (see
//! `worker/src/outbox/poller.rs`): with `delete` a published row is gone, so every row is
//! pending; with `markPublished` the pending rows are those whose `published_at` is null.
//!
//! The DSN comes from the referenced Secret and lives only in the connect options (whose
//! `Debug` the operator never logs); errors are reported without it.

use std::time::Duration;

use pipewright_crds::outbox::CleanupPolicy;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::{IDLE_CLIENT_TTL, Pool};

use crate::error::{Error, Result};

/// The measured backlog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backlog {
    pub pending: i64,
    /// Seconds since the oldest pending row was created; `None` when nothing is pending.
    pub oldest_age_seconds: Option<i64>,
}

/// `table` or `schema.table`, each part a lower-case identifier, quoted; `None` for anything
/// else (the CRD's pattern admits nothing else, this keeps the SQL safe regardless).
pub fn quoted_table(table: &str) -> Option<String> {
    let parts: Vec<&str> = table.split('.').collect();
    if parts.is_empty() || parts.len() > 2 {
        return None;
    }
    let ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    parts.iter().all(|p| ok(p)).then(|| {
        parts
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(".")
    })
}

/// The backlog query for a (quoted) table and cleanup policy.
pub fn backlog_sql(quoted_table: &str, policy: CleanupPolicy) -> String {
    let filter = match policy {
        CleanupPolicy::Delete => "",
        CleanupPolicy::MarkPublished => " WHERE published_at IS NULL",
    };
    format!(
        "SELECT count(*)::bigint, \
         (extract(epoch FROM now() - min(created_at)))::bigint \
         FROM {quoted_table}{filter}"
    )
}

/// Connections the operator opens to one database at most (shared by every Outbox on it).
pub const MAX_CONNECTIONS_PER_DATABASE: u32 = 4;

/// Counts the backlog of `table` in the database `options` connect to, on the database's pooled
/// connections (`key` names the pool: what the options were made from, hashed by the pool).
pub async fn measure(
    pools: &Pool<PgPool>,
    (key, options): (&str, PgConnectOptions),
    table: &str,
    policy: CleanupPolicy,
    timeout: Duration,
) -> Result<Backlog> {
    let quoted = quoted_table(table).ok_or_else(|| Error::InvalidSpec {
        field: "table",
        reason: "must be a lower-case SQL identifier, optionally schema-qualified".into(),
    })?;
    let pool = pools.get(&key, || {
        Ok::<_, Error>(
            PgPoolOptions::new()
                .max_connections(MAX_CONNECTIONS_PER_DATABASE)
                .min_connections(0)
                .acquire_timeout(timeout)
                .idle_timeout(IDLE_CLIENT_TTL)
                .connect_lazy_with(options.application_name("pipewright-operator")),
        )
    })?;
    // The table name is validated and quoted above: safe to splice.
    let row: Result<(i64, Option<i64>), sqlx::Error> = tokio::time::timeout(
        timeout,
        sqlx::query_as(sqlx::AssertSqlSafe(backlog_sql(&quoted, policy))).fetch_one(&*pool),
    )
    .await
    .unwrap_or(Err(sqlx::Error::PoolTimedOut));
    let (pending, oldest) = row.map_err(database_error)?;
    Ok(Backlog {
        pending,
        oldest_age_seconds: oldest.map(|a| a.max(0)),
    })
}

/// What a failed backlog query says, by the server's SQLSTATE: a refused login (class 28), a
/// table or column that is not there (42P01, 42703), or else the database as unreachable.
fn database_error(e: sqlx::Error) -> Error {
    let code = e
        .as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned());
    match code.as_deref() {
        Some(c) if c.starts_with("28") => Error::DatabaseLoginRefused(e),
        Some("42P01" | "42703") => Error::OutboxTableInvalid(e),
        _ => Error::DatabaseUnreachable(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_quoted_identifiers_or_rejected() {
        assert_eq!(quoted_table("outbox").as_deref(), Some("\"outbox\""));
        assert_eq!(
            quoted_table("app.outbox").as_deref(),
            Some("\"app\".\"outbox\"")
        );
        assert_eq!(quoted_table("outbox; drop table x"), None);
        assert_eq!(quoted_table("a.b.c"), None);
        assert_eq!(quoted_table("Outbox"), None);
        assert_eq!(quoted_table("x\""), None);
    }

    #[test]
    fn pending_rows_follow_the_cleanup_policy() {
        assert!(!backlog_sql("\"o\"", CleanupPolicy::Delete).contains("WHERE"));
        assert!(
            backlog_sql("\"o\"", CleanupPolicy::MarkPublished)
                .ends_with("WHERE published_at IS NULL")
        );
    }
}
