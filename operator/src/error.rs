//! The operator's one error type: one variant per cause, so that `error_policy` and the
//! metrics can tell them apart. Secret values never reach a message: variants name the Secret
//! and key, never what they hold.

use std::time::Duration;

use kube::runtime::controller::Action;

/// Everything that can go wrong in a reconcile or in the operator process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a request (transient: retried with backoff).
    #[error("kubernetes API request failed: {0}")]
    Kube(#[source] kube::Error),
    /// A Secret the resource references, or a key in it, does not exist. The operator waits
    /// for the Secret (it watches Secrets) and reports Degraded/SecretNotFound meanwhile.
    #[error("{}", secret_not_found(name, key.as_deref()))]
    SecretNotFound { name: String, key: Option<String> },
    /// The spec cannot be turned into a worker (the schema lets few such specs through):
    /// Degraded/InvalidSpec until the spec changes.
    #[error("invalid spec: {field}: {reason}")]
    InvalidSpec { field: &'static str, reason: String },
    /// Serializing a desired object failed (a bug, not the user's doing).
    #[error("cannot serialize {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The Kafka cluster did not answer a measurement. `broker`: the last error librdkafka
    /// reported for the cluster's client (what failed: a name that does not resolve, a
    /// refused connection, a TLS or SASL failure), which the call's own error does not say.
    #[error("kafka: {source}{}", broker_note(.broker))]
    KafkaUnreachable {
        #[source]
        source: rdkafka::error::KafkaError,
        broker: Option<String>,
    },
    /// An HTTP sink's Service reference does not resolve (`service`: namespace/name): the
    /// Service or its port is not there, or the operator may not read it.
    #[error("{field}: Service {service} {reason}")]
    SinkUnresolvable {
        /// `sink.http.ref` or `processing.deadLetterSink.http.ref`.
        field: &'static str,
        service: String,
        reason: String,
    },
    /// A consumed topic does not exist on the cluster.
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),
    /// The outbox database did not answer, or the query failed.
    #[error("database: {0}")]
    DatabaseUnreachable(#[source] sqlx::Error),
    /// The outbox database refused the login of the DSN (SQLSTATE class 28).
    #[error("database refused the login: {0}")]
    DatabaseLoginRefused(#[source] sqlx::Error),
    /// The outbox table does not exist or lacks a column the backlog query reads.
    #[error("outbox table: {0}")]
    OutboxTableInvalid(#[source] sqlx::Error),
    /// A blocking measurement task panicked or was cancelled.
    #[error("measurement task failed: {0}")]
    Join(#[source] tokio::task::JoinError),
    /// This process stopped leading while the reconcile ran: it was dropped at its next await,
    /// so it sent nothing more; the new leader reconciles the resource.
    #[error("stopped leading: the reconcile was abandoned")]
    NotLeading,
    /// The metrics/health listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The label of this error in `pipewright_operator_reconcile_errors_total{reason=...}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
            Error::SecretNotFound { .. } => "SecretNotFound",
            Error::InvalidSpec { .. } => "InvalidSpec",
            Error::Serialize { .. } => "Serialize",
            Error::KafkaUnreachable { .. } => "KafkaUnreachable",
            Error::TopicNotFound(_) => "TopicNotFound",
            Error::SinkUnresolvable { .. } => "SinkUnresolvable",
            Error::DatabaseUnreachable(_) => "DatabaseUnreachable",
            Error::DatabaseLoginRefused(_) => "DatabaseLoginRefused",
            Error::OutboxTableInvalid(_) => "OutboxTableInvalid",
            Error::Join(_) => "Join",
            Error::NotLeading => "NotLeading",
            Error::Listen { .. } => "Listen",
        }
    }

    /// What the controller does after a failed reconcile: transient causes back off and retry;
    /// a missing Secret or an invalid spec waits for a change (the Secret watch or a new
    /// generation triggers the next reconcile), with a long safety requeue.
    pub fn action(&self, attempt_backoff: Duration) -> Action {
        match self {
            Error::SecretNotFound { .. } | Error::InvalidSpec { .. } | Error::NotLeading => {
                Action::await_change()
            }
            Error::Kube(_)
            | Error::Serialize { .. }
            | Error::KafkaUnreachable { .. }
            | Error::TopicNotFound(_)
            | Error::SinkUnresolvable { .. }
            | Error::DatabaseUnreachable(_)
            | Error::DatabaseLoginRefused(_)
            | Error::OutboxTableInvalid(_)
            | Error::Join(_)
            | Error::Listen { .. } => Action::requeue(attempt_backoff),
        }
    }
}

fn secret_not_found(name: &str, key: Option<&str>) -> String {
    match key {
        Some(key) => {
            format!("secret {name:?} or its key {key:?} not found in the resource's namespace")
        }
        None => format!("secret {name:?} not found in the resource's namespace"),
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e)
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The last broker error of [`Error::KafkaUnreachable`], as its message shows it.
fn broker_note(broker: &Option<String>) -> String {
    broker
        .as_deref()
        .map(|b| format!(" (librdkafka: {b})"))
        .unwrap_or_default()
}

/// An error and its causes on one line, for logs and condition messages.
#[derive(Debug)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            // Many errors repeat their source in their own message.
            if !self.0.to_string().contains(&text) {
                write!(f, ": {text}")?;
            }
            source = cause.source();
        }
        Ok(())
    }
}
