//! Configuration: command-line flags with environment fallbacks (what the operator renders into
//! the Deployment), and the database URL, read from a file mounted from a Secret
//! (`PIPEWRIGHT_DATABASE_URL_FILE`) or from `PIPEWRIGHT_DATABASE_URL` (an env var filled from a
//! Secret). The URL is wrapped in [`DatabaseUrl`], whose `Debug` shows nothing, and is never
//! logged. Invalid configuration is an [`Error`] whose message names the field; the binary
//! exits with code 2 on it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sqlx::postgres::PgConnectOptions;

use crate::Error;
use crate::outbox::{Cleanup, Destination, PollerConfig, Table};
use crate::telemetry::LogFormat;

/// Environment variable naming a file that holds the database URL (a mounted Secret key).
pub const DATABASE_URL_FILE_ENV: &str = "PIPEWRIGHT_DATABASE_URL_FILE";
/// Environment variable holding the database URL (from a Secret through `valueFrom`).
pub const DATABASE_URL_ENV: &str = "PIPEWRIGHT_DATABASE_URL";

/// Environment variable naming the directory where the `kafka.secretRef` Secret is mounted.
pub const KAFKA_SECRET_DIR_ENV: &str = "PIPEWRIGHT_KAFKA_SECRET_DIR";

/// pipewright's worker.
#[derive(Debug, Parser)]
#[command(name = "pipewright-worker", version, about)]
pub struct Cli {
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "PIPEWRIGHT_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Log format.
    #[arg(
        long,
        env = "PIPEWRIGHT_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// The worker's modes.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish the rows of a PostgreSQL outbox table to Kafka.
    Outbox(OutboxArgs),
}

/// Settings of `pipewright-worker outbox` (the `Outbox` spec, flattened).
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("destination").required(true).args(["topic", "topic_template"])))]
pub struct OutboxArgs {
    /// The outbox table, `table` or `schema.table` (lower-case SQL identifiers).
    #[arg(long, env = "PIPEWRIGHT_OUTBOX_TABLE", default_value = "outbox")]
    pub table: String,
    /// Topic every row goes to.
    #[arg(long, env = "PIPEWRIGHT_OUTBOX_TOPIC")]
    pub topic: Option<String>,
    /// Topic per row, `{aggregatetype}` replaced by the row's aggregatetype.
    #[arg(long, env = "PIPEWRIGHT_OUTBOX_TOPIC_TEMPLATE")]
    pub topic_template: Option<String>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "PIPEWRIGHT_KAFKA_BOOTSTRAP_SERVERS")]
    pub kafka_bootstrap_servers: String,
    /// Extra librdkafka settings, `key=value` (the API's allow-listed tuning keys only;
    /// comma-separated in the environment variable).
    #[arg(long, env = "PIPEWRIGHT_KAFKA_CONFIG", value_delimiter = ',')]
    pub kafka_config: Vec<String>,
    /// Directory of the mounted `kafka.secretRef` Secret: one file per librdkafka security
    /// setting (security.protocol, sasl.mechanism, sasl.username, sasl.password, ssl.ca.pem,
    /// ssl.certificate.pem, ssl.key.pem).
    #[arg(long, env = KAFKA_SECRET_DIR_ENV)]
    pub kafka_secret_dir: Option<PathBuf>,
    /// Wait between reads when the last one found nothing (10ms..1h).
    #[arg(long, env = "PIPEWRIGHT_OUTBOX_POLL_INTERVAL", default_value = "1s")]
    pub poll_interval: humantime::Duration,
    /// Rows per read (1..10000).
    #[arg(long, env = "PIPEWRIGHT_OUTBOX_BATCH_SIZE", default_value_t = 100)]
    pub batch_size: usize,
    /// Rows sent but not acknowledged and cleaned up, at most (batch size..100000).
    #[arg(long, env = "PIPEWRIGHT_OUTBOX_MAX_IN_FLIGHT", default_value_t = 1000)]
    pub max_in_flight: usize,
    /// Wake up on LISTEN/NOTIFY (polling stays the fallback).
    #[arg(long, env = "PIPEWRIGHT_OUTBOX_NOTIFY", default_value_t = true, action = clap::ArgAction::Set)]
    pub notify: bool,
    /// What happens to a published row.
    #[arg(
        long,
        env = "PIPEWRIGHT_OUTBOX_CLEANUP",
        value_enum,
        default_value = "delete"
    )]
    pub cleanup: CleanupPolicy,
    /// With mark-published: delete rows published longer ago than this.
    #[arg(long, env = "PIPEWRIGHT_OUTBOX_RETENTION")]
    pub retention: Option<humantime::Duration>,
    /// How often a standby replica tries to become the publisher (10ms..60s).
    #[arg(
        long,
        env = "PIPEWRIGHT_OUTBOX_LOCK_RETRY_INTERVAL",
        default_value = "1s"
    )]
    pub lock_retry_interval: humantime::Duration,
    /// How long a graceful shutdown waits for the rows in flight.
    #[arg(long, env = "PIPEWRIGHT_SHUTDOWN_GRACE", default_value = "30s")]
    pub shutdown_grace: humantime::Duration,
}

/// What happens to a published row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CleanupPolicy {
    Delete,
    MarkPublished,
}

impl OutboxArgs {
    /// Validates everything and builds the poller's configuration.
    pub fn into_config(self) -> Result<PollerConfig, Error> {
        let table = Table::parse(&self.table)?;
        let destination = match (self.topic, self.topic_template) {
            (Some(topic), None) => Destination::Topic(topic),
            (None, Some(template)) => Destination::Template(template),
            _ => {
                return Err(Error::InvalidConfig {
                    field: "topic",
                    reason: "exactly one of topic, topicTemplate must be set".into(),
                });
            }
        };
        let cleanup = match (self.cleanup, self.retention) {
            (CleanupPolicy::Delete, None) => Cleanup::Delete,
            (CleanupPolicy::Delete, Some(_)) => {
                return Err(Error::InvalidConfig {
                    field: "cleanup.retention",
                    reason: "applies only to the mark-published policy".into(),
                });
            }
            (CleanupPolicy::MarkPublished, retention) => Cleanup::MarkPublished {
                retention: retention.map(Duration::from),
            },
        };
        let mut config =
            PollerConfig::new(table, destination, self.kafka_bootstrap_servers.as_str());
        for entry in &self.kafka_config {
            config.kafka.add_tuning(entry)?;
        }
        if let Some(dir) = &self.kafka_secret_dir {
            config.kafka.add_secret_dir(dir)?;
        }
        config.poll_interval = self.poll_interval.into();
        config.batch_size = self.batch_size;
        config.max_in_flight = self.max_in_flight;
        config.notify = self.notify;
        config.cleanup = cleanup;
        config.lock_retry_interval = self.lock_retry_interval.into();
        config.shutdown_grace = self.shutdown_grace.into();
        config.validate()?;
        Ok(config)
    }
}

/// A database URL. `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrl(<redacted>)")
    }
}

impl DatabaseUrl {
    /// From `PIPEWRIGHT_DATABASE_URL_FILE` (preferred) or `PIPEWRIGHT_DATABASE_URL`.
    pub fn from_env() -> Result<DatabaseUrl, Error> {
        DatabaseUrl::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`DatabaseUrl::from_env`], with a variable lookup (for tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<DatabaseUrl, Error> {
        if let Some(path) = lookup(DATABASE_URL_FILE_ENV).filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            let text = std::fs::read_to_string(&path)
                .map_err(|source| Error::DatabaseUrlFile { path, source })?;
            return Ok(DatabaseUrl(text.trim().to_string()));
        }
        lookup(DATABASE_URL_ENV)
            .filter(|u| !u.is_empty())
            .map(DatabaseUrl)
            .ok_or(Error::DatabaseUrlMissing)
    }

    /// Parses the URL into connection options.
    pub fn connect_options(&self) -> Result<PgConnectOptions, Error> {
        self.0.parse().map_err(Error::DatabaseUrlInvalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<PollerConfig, String> {
        let mut argv = vec![
            "pipewright-worker",
            "outbox",
            "--kafka-bootstrap-servers",
            "k:9092",
        ];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Command::Outbox(a) = cli.command;
        a.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn hostile_table_names_are_rejected_as_invalid_configuration() {
        let err = args(&["--topic", "t", "--table", "outbox; DROP TABLE users"]).unwrap_err();
        assert!(err.contains("invalid table name"), "{err}");
        let err = args(&["--topic", "t", "--table", "x\"; --"]).unwrap_err();
        assert!(err.contains("invalid table name"), "{err}");
    }

    #[test]
    fn exactly_one_destination_is_required() {
        assert!(args(&[]).is_err());
        assert!(args(&["--topic", "t", "--topic-template", "a.{aggregatetype}"]).is_err());
        assert!(args(&["--topic-template", "a.{aggregatetype}"]).is_ok());
    }

    #[test]
    fn retention_needs_mark_published_and_kafka_keys_are_allow_listed() {
        let err = args(&["--topic", "t", "--retention", "1h"]).unwrap_err();
        assert!(err.contains("retention"), "{err}");
        let ok = args(&[
            "--topic",
            "t",
            "--cleanup",
            "mark-published",
            "--retention",
            "168h",
        ]);
        assert!(ok.is_ok(), "{ok:?}");
        let err =
            args(&["--topic", "t", "--kafka-config", "enable.idempotence=false"]).unwrap_err();
        assert!(err.contains("not an allowed key"), "{err}");
    }

    #[test]
    fn the_database_url_comes_from_a_file_first_and_is_never_shown() {
        let dir = std::env::temp_dir().join(format!("pw-dsn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("dsn");
        std::fs::write(&file, "postgres://u:s3cret@db/app\n").unwrap();
        let url = DatabaseUrl::from_lookup(|n| match n {
            DATABASE_URL_FILE_ENV => Some(file.display().to_string()),
            DATABASE_URL_ENV => Some("postgres://other@x/y".into()),
            _ => None,
        })
        .unwrap();
        assert!(url.connect_options().is_ok());
        assert!(!format!("{url:?}").contains("s3cret"));
        let missing = DatabaseUrl::from_lookup(|_| None).unwrap_err();
        assert!(missing.to_string().contains(DATABASE_URL_FILE_ENV));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
