//! Configuration: the file the operator renders (`--config <path>`, the types of
//! [`pipewright_crds::worker_config`], docs/worker-config.md), or the same configuration from
//! hand-run flags ([`flags`]); then checked and turned into the modes' runtime settings
//! ([`consume`], [`outbox`]). Secrets are never in the configuration, only the paths of
//! mounted Secret files: the database URL is read from its file (or, for hand-run workers,
//! from `PIPEWRIGHT_DATABASE_URL`), wrapped in [`DatabaseUrl`], whose `Debug` shows nothing,
//! and never logged. Invalid configuration is an [`Error`] whose message names the field path;
//! the binary exits with code 2 on it.

pub mod consume;
pub mod flags;
pub mod outbox;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use pipewright_crds::worker_config;
use sqlx::postgres::PgConnectOptions;

use crate::Error;
use crate::telemetry::LogFormat;

pub use consume::SinkSettings;

/// Environment variable holding the database URL when the configuration names no file
/// (hand-run workers; the operator always mounts the URL as a file).
pub const DATABASE_URL_ENV: &str = "PIPEWRIGHT_DATABASE_URL";

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
// Parsed once at start-up: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Publish the rows of a PostgreSQL outbox table to Kafka.
    Outbox(OutboxArgs),
    /// Consume Kafka topics as typed events and deliver each to a sink.
    Consume(ConsumeArgs),
}

/// Reads a configuration file.
pub fn read_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigFile {
        path: path.to_path_buf(),
        source,
    })?;
    worker_config::from_json(&text).map_err(Error::InvalidConfigFile)
}

/// `pipewright-worker consume`: a configuration file or flags.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// The configuration file (JSON, docs/worker-config.md), as the operator renders it. No
    /// other flag of this mode may be given with it.
    #[arg(long, exclusive = true)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub flags: flags::ConsumeFlags,
}

impl ConsumeArgs {
    /// The configuration, from the file or the flags (not yet checked).
    pub fn read(&self) -> Result<worker_config::Consume, Error> {
        match &self.config {
            Some(path) => read_file(path),
            None => self.flags.read(),
        }
    }

    /// Reads and checks everything and builds the consumer's settings.
    pub fn into_config(
        self,
    ) -> Result<
        (
            crate::consume::ConsumeConfig,
            SinkSettings,
            crate::consume::DeclaredTypes,
        ),
        Error,
    > {
        consume::settings(self.read()?)
    }
}

/// `pipewright-worker outbox`: a configuration file or flags.
#[derive(Debug, Args)]
pub struct OutboxArgs {
    /// The configuration file (JSON, docs/worker-config.md), as the operator renders it. No
    /// other flag of this mode may be given with it.
    #[arg(long, exclusive = true)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub flags: flags::OutboxFlags,
}

impl OutboxArgs {
    /// The configuration, from the file or the flags (not yet checked).
    pub fn read(&self) -> Result<worker_config::Outbox, Error> {
        match &self.config {
            Some(path) => read_file(path),
            None => self.flags.read(),
        }
    }

    /// Reads and checks everything: the poller's settings and the database URL's file.
    pub fn into_config(self) -> Result<(crate::outbox::PollerConfig, Option<PathBuf>), Error> {
        let file = self.read()?;
        let url_file = file.database.url_file.clone();
        Ok((outbox::settings(file)?, url_file))
    }
}

/// The librdkafka settings of `kafka.*` (allow-listed tuning keys, credentials from the
/// Secret directory).
pub fn kafka_settings(kafka: &worker_config::Kafka) -> Result<crate::kafka::KafkaSettings, Error> {
    if kafka.bootstrap_servers.is_empty() {
        return Err(Error::InvalidConfig {
            field: "kafka.bootstrapServers",
            reason: "at least one host:port is required".into(),
        });
    }
    let mut settings = crate::kafka::KafkaSettings::new(&kafka.bootstrap_servers.join(","));
    for (key, value) in &kafka.config {
        settings.add_tuning(key, value)?;
    }
    if let Some(dir) = &kafka.secret_dir {
        settings.add_secret_dir(dir)?;
    }
    for (key, value) in &kafka.security {
        settings.add_security(key, value)?;
    }
    for (key, file) in &kafka.secret_files {
        settings.add_secret_file(key, file)?;
    }
    Ok(settings)
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
    /// From `file` (a mounted Secret key, named by the configuration) or, without one,
    /// `PIPEWRIGHT_DATABASE_URL`.
    pub fn load(file: Option<&Path>) -> Result<DatabaseUrl, Error> {
        DatabaseUrl::from_lookup(file, |name| std::env::var(name).ok())
    }

    /// As [`DatabaseUrl::load`], with a variable lookup (for tests).
    pub fn from_lookup(
        file: Option<&Path>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<DatabaseUrl, Error> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| Error::DatabaseUrlFile {
                path: path.to_path_buf(),
                source,
            })?;
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
    use std::collections::BTreeSet;

    use super::*;
    use crate::outbox::PollerConfig;

    fn cli(argv: &[&str]) -> Result<Cli, String> {
        let mut all = vec!["pipewright-worker"];
        all.extend_from_slice(argv);
        Cli::try_parse_from(all).map_err(|e| e.to_string())
    }

    fn args(extra: &[&str]) -> Result<PollerConfig, String> {
        let mut argv = vec!["outbox", "--kafka-bootstrap-servers", "k:9092"];
        argv.extend_from_slice(extra);
        let Command::Outbox(a) = cli(&argv)?.command else {
            panic!("not the outbox command")
        };
        a.into_config().map(|(c, _)| c).map_err(|e| e.to_string())
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
            "markPublished",
            "--retention",
            "168h",
        ]);
        assert!(ok.is_ok(), "{ok:?}");
        let err =
            args(&["--topic", "t", "--kafka-config", "enable.idempotence=false"]).unwrap_err();
        assert!(err.contains("not an allowed key"), "{err}");
    }

    #[test]
    fn a_wrong_value_of_a_flag_is_refused_with_its_field_path() {
        let err = args(&["--topic", "t", "--cleanup", "sometimes"]).unwrap_err();
        assert!(err.contains("cleanup.policy"), "{err}");
        let Command::Consume(c) = cli(&[
            "consume",
            "--topics",
            "a",
            "--group-id",
            "g",
            "--kafka-bootstrap-servers",
            "k:9092",
            "--sink",
            "http",
        ])
        .unwrap()
        .command
        else {
            panic!("not the consume command")
        };
        let err = c.read().unwrap_err().to_string();
        assert!(err.contains("sink.http") && err.contains("url"), "{err}");
    }

    #[test]
    fn the_configuration_file_excludes_every_other_flag_of_its_mode() {
        assert!(cli(&["consume", "--config", "/c.json"]).is_ok());
        assert!(cli(&["outbox", "--config", "/c.json"]).is_ok());
        let err = cli(&["consume", "--config", "/c.json", "--topics", "a"]).unwrap_err();
        assert!(err.contains("--config"), "{err}");
        // The process-wide flags stay.
        assert!(cli(&["--log-format", "json", "outbox", "--config", "/c.json"]).is_ok());
    }

    /// Every flag set to a value other than the default, and the paths of what they build.
    fn paths_of_flags(argv: &[&str]) -> BTreeSet<String> {
        let cli = cli(argv).unwrap();
        let value = match cli.command {
            Command::Consume(c) => serde_json::to_value(c.read().unwrap()),
            Command::Outbox(o) => serde_json::to_value(o.read().unwrap()),
        }
        .unwrap();
        worker_config::field_paths(&value)
    }

    #[test]
    fn every_field_of_the_configuration_is_reachable_from_flags() {
        let common = [
            "--kafka-bootstrap-servers",
            "k:9092",
            "--kafka-config",
            "linger.ms=5",
            "--kafka-secret-dir",
            "/s/kafka",
            "--kafka-security",
            "security.protocol=SASL_SSL",
            "--kafka-secret-file",
            "sasl.password=/s/kafka-sasl-password/sasl.password",
        ];
        let consume = [
            "--topics",
            "a,b",
            "--group-id",
            "g",
            "--group-instance-id",
            "i",
            "--initial-offset",
            "latest",
            "--event-types",
            "x",
            "--event-schemas",
            r#"{"y": {"file": "/s/y.json"}, "z": {"inline": {"type": "object"}}}"#,
            "--on-unknown-type",
            "skip",
            "--concurrency",
            "3",
            "--ordering",
            "none",
            "--retry-max-attempts",
            "2",
            "--retry-backoff-initial",
            "1s",
            "--retry-backoff-max",
            "2s",
            "--dead-letter-topic",
            "d",
            "--drain-timeout",
            "3s",
            "--commit-interval",
            "4s",
            "--max-uncommitted-per-partition",
            "5",
            "--max-buffered-bytes-per-partition",
            "6",
            "--revoke-timeout",
            "7s",
            "--max-record-bytes",
            "8",
            "--compression",
            "lz4",
        ];
        let sinks: [&[&str]; 5] = [
            &[
                "--sink",
                "log",
                "--sink-log-payload",
                "false",
                "--event-type-header",
                "type",
            ],
            &[
                "--sink",
                "http",
                "--sink-http-url",
                "http://h/",
                "--sink-http-method",
                "PUT",
                "--sink-http-timeout",
                "1s",
                "--sink-http-headers",
                "X-A=1",
                "--sink-http-headers-secret-dir",
                "/s/h",
                "--sink-http-idempotency-header",
                "X-Id",
                "--dead-letter-url",
                "http://d/",
                "--dead-letter-timeout",
                "2s",
                "--dead-letter-headers-secret-dir",
                "/s/d",
                "--sink-http-content-mode",
                "structured",
                "--sink-http-ce-source",
                "urn:s",
                "--sink-http-ce-type",
                "t",
                "--sink-http-forward-headers",
                "traceparent",
            ],
            &[
                "--sink",
                "kafka",
                "--sink-kafka-topic",
                "o",
                "--sink-kafka-transactional",
                "true",
                "--sink-kafka-transactional-id",
                "tx",
            ],
            &[
                "--sink",
                "postgres",
                "--sink-postgres-dsn-file",
                "/s/db",
                "--sink-postgres-table",
                "t",
                "--sink-postgres-upsert-key",
                "a,b",
                "--sink-postgres-offsets-table",
                "o",
                "--event-type-field",
                "kind",
            ],
            &[
                "--sink",
                "discard",
                "--sink-discard-delay",
                "1ms",
                "--sink-discard-jitter",
                "2ms",
                "--event-format",
                "raw",
            ],
        ];
        let mut from_flags = BTreeSet::new();
        for sink in sinks {
            let mut argv = vec!["consume"];
            argv.extend(common);
            argv.extend(consume);
            argv.extend(sink);
            from_flags.extend(paths_of_flags(&argv));
        }
        let mut every = BTreeSet::new();
        for c in worker_config::fixtures::every_field_consume() {
            every.extend(worker_config::field_paths(
                &serde_json::to_value(c).unwrap(),
            ));
        }
        assert_eq!(from_flags, every, "consume: flags vs the type's fields");

        let mut argv = vec!["outbox"];
        argv.extend(common);
        argv.extend([
            "--database-url-file",
            "/s/db",
            "--table",
            "t",
            "--topic",
            "o",
            "--poll-interval",
            "2s",
            "--batch-size",
            "3",
            "--max-in-flight",
            "4",
            "--notify",
            "false",
            "--cleanup",
            "markPublished",
            "--retention",
            "1h",
            "--lock-retry-interval",
            "5s",
            "--shutdown-grace",
            "6s",
        ]);
        let mut from_flags = paths_of_flags(&argv);
        let mut argv = vec!["outbox", "--kafka-bootstrap-servers", "k:9092"];
        argv.extend(["--database-url-file", "/s/db"]);
        argv.extend(["--topic-template", "o.{aggregatetype}"]);
        from_flags.extend(paths_of_flags(&argv));
        let mut every = BTreeSet::new();
        for o in worker_config::fixtures::every_field_outbox() {
            every.extend(worker_config::field_paths(
                &serde_json::to_value(o).unwrap(),
            ));
        }
        assert_eq!(from_flags, every, "outbox: flags vs the type's fields");
    }

    #[test]
    fn the_database_url_comes_from_its_file_first_and_is_never_shown() {
        let dir = std::env::temp_dir().join(format!("pw-dsn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("dsn");
        std::fs::write(&file, "postgres://u:s3cret@db/app\n").unwrap();
        let url = DatabaseUrl::from_lookup(Some(&file), |n| match n {
            DATABASE_URL_ENV => Some("postgres://other@x/y".into()),
            _ => None,
        })
        .unwrap();
        assert!(url.connect_options().is_ok());
        assert!(!format!("{url:?}").contains("s3cret"));
        let missing = DatabaseUrl::from_lookup(None, |_| None).unwrap_err();
        assert!(missing.to_string().contains(DATABASE_URL_ENV));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
