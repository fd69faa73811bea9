//! The transactional outbox: [`enqueue`] events in the application's own transaction, and a
//! [`Poller`] that publishes them to Kafka.
//!
//! # The table
//!
//! [`MIGRATOR`] (the sqlx migration in `src/outbox/migrations/`) creates `outbox` with the
//! Debezium outbox columns `id uuid, aggregatetype, aggregateid, type, payload jsonb`, plus
//! `headers jsonb`, `created_at`, `published_at` (for the `markPublished` cleanup policy) and two
//! columns that a `BEFORE INSERT` trigger fills: `txid` (the writing transaction's id, taken
//! first) and `seq` (from a `CACHE 1` sequence, taken second). An `AFTER INSERT` statement
//! trigger sends `NOTIFY pipewright_outbox_<table oid>`. [`schema_sql`] renders the same DDL for
//! another table name.
//!
//! # Guarantees
//!
//! **Commit-safe order, nothing skipped.** The active poller publishes every committed row
//! exactly in `seq` order (so in insert order within each aggregate, and the record key
//! `aggregateid` keeps an aggregate on one partition), even when transactions commit in another
//! order than they took their numbers, and never a row of a rolled-back transaction. The method
//! is a *fence*, not a per-row test:
//!
//! 1. The poller reads `M = max(seq)` (one statement, so one snapshot), then, in a later
//!    statement, allocates a transaction id `P = pg_current_xact_id()`.
//! 2. It claims rows with `seq <= M` only once `pg_snapshot_xmin(pg_current_snapshot()) >= P`,
//!    that is, once every transaction with an id below `P` has ended.
//!
//! Why that is enough: take any row `r'` with `seq' <= M`. Its transaction `T'` had its id `x'`
//! before it took `seq'` (the trigger asks for the id first), `seq'` was taken no later than
//! the row holding `M` took its number (`CACHE 1` numbers follow call order), which committed
//! before the snapshot of step 1, which precedes the allocation of `P`. Ids are handed out in
//! increasing order, so `x' < P`; by step 2 `T'` has ended, so `r'` is either committed and
//! visible to the claim, or rolled back and will never exist. Hence the claim of `seq <= M` sees
//! the complete, final set of rows numbered up to `M`, and a cursor over `seq` never passes a
//! row that could still appear. This is the failure of a plain "highest id published" cursor
//! (kamu-data/kamu-cli#1398) avoided by construction. The simpler test "row's `txid < xmin`"
//! is *not* enough: a transaction that got its id early (it wrote something else first) can
//! take a larger `seq` than a still-open younger transaction and commit first; the fence holds
//! its row back, the per-row test would publish it ahead of the older number. The test
//! `outbox_publishes_every_committed_row_in_seq_order_despite_out_of_order_commits` builds
//! exactly that interleaving.
//!
//! The price: `xmin` is cluster-wide, so a *writing* transaction that is open anywhere in the
//! PostgreSQL cluster when the poller takes a fence (or a prepared transaction) holds back the
//! rows up to that fence until it ends, whether or not it writes to the outbox: the poller
//! cannot see which numbers an open transaction holds. It delays rows; it never loses or
//! reorders them. Read-only transactions do not count (they have no id). Keep writing
//! transactions short; `oldest_pending_age_seconds` shows such a stall.
//!
//! **At least once.** A row is deleted (or marked published) only after Kafka acknowledged it
//! with `acks=all`. The producer is idempotent (`enable.idempotence`,
//! `enable.gapless.guarantee`), so inside one producer session its own retries add no duplicates
//! and no gaps. Across sessions (crash, SIGKILL, failover) the rows that were sent but not yet
//! deleted are sent again: at most `maxInFlight` rows, the ones in flight at the end. Consumers
//! deduplicate on the `id` header, or on the `seq` header (increasing per table).
//!
//! **Backpressure.** At most `maxInFlight` rows are sent and not yet acknowledged *and* cleaned
//! up; reading stops until acknowledgements come back. Kafka being unreachable therefore stops
//! reading, leaves the rows pending, and does not crash the process (`message.timeout.ms=0`:
//! librdkafka retries until the broker is back).
//!
//! **One active publisher, bounded failover.** Each replica holds a dedicated PostgreSQL
//! connection and tries `pg_try_advisory_lock(key)` (session level; the key is derived from the
//! table's oid) every `lockRetryInterval`. The holder publishes, the others stand by. A session
//! lock needs no lease renewal and cannot be stolen while the holder lives: when the holder's
//! process dies, its kernel closes the socket, the server ends the backend at once and the lock
//! is free, so a standby takes over within `lockRetryInterval` (+ one connect). When the holder's
//! *host* vanishes without a FIN, the server notices through the keepalives the poller sets on
//! its sessions (`tcp_keepalives_idle=5`, `interval=2`, `count=3`, `tcp_user_timeout=10s`): about
//! 11 s, then `lockRetryInterval`. All claims run on the lock connection, so a publisher that
//! lost its session cannot claim again; every database call has a client-side timeout
//! ([`DB_TIMEOUT`]). The lock needs a session-mode connection (not a transaction-pooling proxy).
//!
//! Failure handling: any database or Kafka error ends the publishing session (dropping the
//! producer purges what it had queued), and the replica starts over after a bounded exponential
//! backoff, re-reading pending rows from the table. A missing or malformed table is permanent:
//! [`Poller::run`] returns the error (the binary exits non-zero with a message naming the table).

mod enqueue;
mod metrics;
mod poller;

pub use enqueue::{OutboxEvent, enqueue, enqueue_into};
pub use metrics::OutboxMetrics;
pub use poller::{Cleanup, DB_TIMEOUT, Destination, Poller, PollerConfig};

use crate::Error;

/// The outbox migration, for `MIGRATOR.run(&pool)`; it creates `outbox` (with its sequence,
/// triggers and functions) in the first schema of the `search_path`. An application with its
/// own sqlx migrations can copy the file into its migrations folder instead.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/outbox/migrations");

/// A validated outbox table name, `table` or `schema.table`, each part a lower-case SQL
/// identifier (`^[a-z_][a-z0-9_]{0,62}$`). It is still quoted wherever it reaches SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    schema: Option<String>,
    name: String,
}

impl Table {
    /// Validates `name`; an error names the rule it broke.
    pub fn parse(name: &str) -> Result<Table, Error> {
        let invalid = || Error::InvalidTableName {
            name: name.to_string(),
        };
        let mut parts = name.split('.');
        let (schema, table) = match (parts.next(), parts.next(), parts.next()) {
            (Some(table), None, None) => (None, table),
            (Some(schema), Some(table), None) => (Some(schema), table),
            _ => return Err(invalid()),
        };
        if !schema.is_none_or(is_identifier) || !is_identifier(table) {
            return Err(invalid());
        }
        Ok(Table {
            schema: schema.map(str::to_string),
            name: table.to_string(),
        })
    }

    /// The unqualified table name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name as SQL, each part double-quoted: `"schema"."table"`.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quote(schema), quote(&self.name)),
            None => quote(&self.name),
        }
    }

    /// A sibling object in the table's schema (its sequence, index, trigger), quoted.
    fn sibling(&self, suffix: &str) -> String {
        let name = format!("{}_{suffix}", self.name);
        match &self.schema {
            Some(schema) => format!("{}.{}", quote(schema), quote(&name)),
            None => quote(&name),
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && s.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Double-quotes an identifier (doubling any quote inside, although validated names have none).
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The DDL of an outbox table named `table`: the migration's statements with the names
/// replaced. The table name may be at most 55 characters, so that its sequence, index and
/// triggers (`<name>_seq`, `<name>_pending`, ...) stay within PostgreSQL's 63.
pub fn schema_sql(table: &Table) -> Result<String, Error> {
    if table.name.len() > 55 {
        return Err(Error::InvalidConfig {
            field: "table",
            reason: "schema_sql needs a table name of at most 55 characters".to_string(),
        });
    }
    let migration = MIGRATOR
        .iter()
        .next()
        .map(|m| m.sql.as_ref().to_string())
        .unwrap_or_default();
    // The functions are created in the table's schema (when it names one).
    let function = |f: &str| match &table.schema {
        Some(schema) => format!("{}.{f}", quote(schema)),
        None => f.to_string(),
    };
    let seq_literal = format!("{}_seq", table.name);
    Ok(migration
        .replace(
            "pipewright_outbox_stamp()",
            &format!("{}()", function("pipewright_outbox_stamp")),
        )
        .replace(
            "pipewright_outbox_notify()",
            &format!("{}()", function("pipewright_outbox_notify")),
        )
        .replace(
            "pipewright_outbox_stamp('outbox_seq')",
            &format!("{}('{seq_literal}')", function("pipewright_outbox_stamp")),
        )
        .replace(
            "OWNED BY outbox.seq",
            &format!("OWNED BY {}.seq", table.quoted()),
        )
        .replace(
            "SEQUENCE outbox_seq",
            &format!("SEQUENCE {}", table.sibling("seq")),
        )
        .replace(
            "INDEX outbox_pending ON outbox",
            &format!(
                "INDEX {} ON {}",
                quote(&format!("{}_pending", table.name)),
                table.quoted()
            ),
        )
        .replace(
            "TRIGGER outbox_stamp BEFORE INSERT ON outbox",
            &format!(
                "TRIGGER {} BEFORE INSERT ON {}",
                quote(&format!("{}_stamp", table.name)),
                table.quoted()
            ),
        )
        .replace(
            "TRIGGER outbox_notify AFTER INSERT ON outbox",
            &format!(
                "TRIGGER {} AFTER INSERT ON {}",
                quote(&format!("{}_notify", table.name)),
                table.quoted()
            ),
        )
        .replace(
            "CREATE TABLE outbox (",
            &format!("CREATE TABLE {} (", table.quoted()),
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_lower_case_identifiers_optionally_qualified() {
        for ok in ["outbox", "_x", "app.outbox", "s1.t_2", &"a".repeat(63)] {
            assert!(Table::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Outbox",
            "1outbox",
            "out-box",
            "outbox; DROP TABLE users",
            "\"outbox\"",
            "a.b.c",
            ".outbox",
            "outbox.",
            "out box",
            "outbox--",
            "öutbox",
            &"a".repeat(64),
        ] {
            let err = Table::parse(bad).unwrap_err();
            assert!(
                err.to_string().contains("invalid table name"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn table_names_are_quoted_in_sql() {
        assert_eq!(Table::parse("select").unwrap().quoted(), "\"select\"");
        assert_eq!(
            Table::parse("app.order").unwrap().quoted(),
            "\"app\".\"order\""
        );
    }

    #[test]
    fn schema_sql_of_the_default_table_is_the_migration() {
        let migration = MIGRATOR.iter().next().unwrap().sql.as_ref().to_string();
        let rendered = schema_sql(&Table::parse("outbox").unwrap()).unwrap();
        // Same statements; only the quoting of the names differs.
        assert_eq!(rendered.replace('"', ""), migration.replace('"', ""));
    }

    #[test]
    fn schema_sql_renames_every_object() {
        let sql = schema_sql(&Table::parse("app.events").unwrap()).unwrap();
        assert!(sql.contains("CREATE TABLE \"app\".\"events\" ("), "{sql}");
        assert!(sql.contains("SEQUENCE \"app\".\"events_seq\""), "{sql}");
        assert!(
            sql.contains("\"app\".pipewright_outbox_stamp('events_seq')"),
            "{sql}"
        );
        for stale in ["ON outbox", "TABLE outbox", "outbox.seq", "'outbox_seq'"] {
            assert!(!sql.contains(stale), "{stale}: {sql}");
        }
    }
}
