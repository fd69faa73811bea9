//! The worker's error type: one variant per cause, so callers (and the binary's exit code) can
//! tell an invalid configuration from a transient outage.

use std::path::PathBuf;

/// Everything that can go wrong in the worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A table name that is not `table` or `schema.table` of lower-case SQL identifiers.
    #[error(
        "invalid table name {name:?}: expected `table` or `schema.table`, each part a lower-case \
         SQL identifier matching ^[a-z_][a-z0-9_]{{0,62}}$"
    )]
    InvalidTableName { name: String },
    /// A configuration value out of range or inconsistent with another.
    #[error("invalid configuration: {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    /// The configuration file could not be read.
    #[error("cannot read the configuration file {}", path.display())]
    ConfigFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The configuration (file or flags) does not match its types: the field path and why.
    #[error("invalid configuration: {0}")]
    InvalidConfigFile(pipewright_crds::worker_config::FileError),
    /// The database URL file could not be read.
    #[error("cannot read the database URL from {}", path.display())]
    DatabaseUrlFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No database URL in the environment.
    #[error(
        "the database URL is not set: name its file in the configuration (database.urlFile, \
         sink.postgres.dsnFile: a file mounted from a Secret) or set PIPEWRIGHT_DATABASE_URL"
    )]
    DatabaseUrlMissing,
    /// The database URL does not parse. The URL itself is never part of the message.
    #[error("the database URL is not a valid PostgreSQL URL (value not shown)")]
    DatabaseUrlInvalid(#[source] sqlx::Error),
    /// A query or connection failed; transient (the poller retries).
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// A database operation took longer than its bound; transient.
    #[error("database operation {operation} timed out after {seconds} s")]
    DatabaseTimeout {
        operation: &'static str,
        seconds: u64,
    },
    /// The configured outbox table does not exist.
    #[error(
        "outbox table {table} does not exist: create it with the outbox migration \
         (pipewright_worker::outbox::MIGRATOR, see docs/outbox.md)"
    )]
    TableMissing { table: String },
    /// The outbox table lacks columns the poller needs.
    #[error("outbox table {table} lacks the column(s) {missing}: see docs/outbox.md for its shape")]
    TableColumns { table: String, missing: String },
    /// Columns of the outbox table have types the poller cannot read as it must (a `bytea`
    /// payload would be published as its hex text, a `bigint` txid breaks the fence).
    #[error(
        "outbox table {table} has column(s) of the wrong type: {columns} (see docs/outbox.md for its shape)"
    )]
    TableColumnTypes { table: String, columns: String },
    /// The outbox table has no enabled `pipewright_outbox_stamp` trigger, so rows carry no
    /// commit-safe sequence number.
    #[error(
        "outbox table {table} has no enabled pipewright_outbox_stamp trigger: without it the \
         poller cannot order rows safely (see docs/outbox.md)"
    )]
    TableNotStamped { table: String },
    /// A Kafka client could not be created or a record could not be enqueued or delivered.
    #[error("Kafka error")]
    Kafka(#[source] rdkafka::error::KafkaError),
    /// A row names a topic (through the topic template) that Kafka cannot accept.
    #[error("outbox row {id} (seq {seq}): invalid topic {topic:?} from the topic template")]
    InvalidTopic {
        id: uuid::Uuid,
        seq: i64,
        topic: String,
    },
    /// An event could not be serialized.
    #[error("cannot serialize the event")]
    Serialize(#[source] serde_json::Error),
    /// An event does not serialize to an object with a string `event_type` tag.
    #[error(
        "the event does not serialize to a JSON object with a string \"event_type\" field \
         (derive it with #[serde(tag = \"event_type\")])"
    )]
    MissingEventType,
    /// A consumed record could neither be delivered nor dead-lettered (or the policy for
    /// invalid events is `fail`): the consumer stops without committing it.
    #[error("poison message {record} ({kind}): {message}")]
    PoisonMessage {
        /// The record's coordinates.
        record: pipewright_crds::termination::RecordRef,
        kind: String,
        message: String,
    },
    /// A sink could not be set up (connection, table, client).
    #[error("{sink} sink: {reason}")]
    Sink { sink: &'static str, reason: String },
    /// The HTTP server could not bind or serve.
    #[error("HTTP server on {addr}")]
    Http {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Errors no retry can fix: the configuration or the table must change first.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::InvalidTableName { .. }
                | Error::InvalidConfig { .. }
                | Error::ConfigFile { .. }
                | Error::InvalidConfigFile(_)
                | Error::DatabaseUrlFile { .. }
                | Error::DatabaseUrlMissing
                | Error::DatabaseUrlInvalid(_)
                | Error::TableMissing { .. }
                | Error::TableColumns { .. }
                | Error::TableColumnTypes { .. }
                | Error::TableNotStamped { .. }
        )
    }
}

/// Formats an error with its whole `source()` chain on one line, for logs and CLI output.
#[derive(Debug)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
