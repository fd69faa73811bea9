//! Rendering pieces both kinds share: the Kafka connection and the database URL as parts of
//! the worker's configuration file ([`pipewright_crds::worker_config`]) and the Secret mounts
//! their paths point into (docs/worker-config.md is the contract).

use std::path::PathBuf;

use pipewright_crds::KafkaConnection;
use pipewright_crds::common::{KAFKA_SECRET_KEYS, SecretKeyRef};
use pipewright_crds::worker_config;

use crate::controller::{SecretUse, Secrets};
use crate::error::{Error, Result};

use crate::workload::SecretMount;

/// Where the `kafka.secretRef` Secret is mounted (one file per key).
pub const KAFKA_SECRET_DIR: &str = "/var/run/secrets/pipewright/kafka";
/// Where the database URL is mounted.
pub const DATABASE_DIR: &str = "/var/run/secrets/pipewright/database";
/// The file name of the database URL in [`DATABASE_DIR`].
pub const DATABASE_FILE: &str = "url";

/// A spec duration as a [`std::time::Duration`] (the schema admits only valid ones).
pub fn duration(field: &'static str, d: &pipewright_crds::Duration) -> Result<std::time::Duration> {
    d.to_std().map_err(|e| Error::InvalidSpec {
        field,
        reason: e.to_string(),
    })
}

/// A spec count (an `int32` the schema keeps positive) as the worker's unsigned type.
pub fn count<T: TryFrom<i32>>(field: &'static str, n: i32) -> Result<T> {
    T::try_from(n).map_err(|_| Error::InvalidSpec {
        field,
        reason: format!("{n} is out of range"),
    })
}

/// The Kafka connection of the configuration, and the mount of its Secret.
pub fn kafka(mounts: &mut Vec<SecretMount>, kafka: &KafkaConnection) -> worker_config::Kafka {
    let secret_dir = kafka.secret_ref.as_ref().map(|secret| {
        mounts.push(SecretMount {
            volume: "kafka-secret".into(),
            secret: secret.name.clone(),
            items: vec![],
            path: KAFKA_SECRET_DIR.into(),
        });
        PathBuf::from(KAFKA_SECRET_DIR)
    });
    worker_config::Kafka {
        bootstrap_servers: kafka.bootstrap_servers.clone(),
        config: kafka.config.clone(),
        secret_dir,
    }
}

/// The mount of a database URL from a Secret key, and the path of its file.
pub fn database(mounts: &mut Vec<SecretMount>, dsn: &SecretKeyRef) -> PathBuf {
    mounts.push(SecretMount {
        volume: "database".into(),
        secret: dsn.name.clone(),
        items: vec![(dsn.key.clone(), DATABASE_FILE.into())],
        path: DATABASE_DIR.into(),
    });
    PathBuf::from(format!("{DATABASE_DIR}/{DATABASE_FILE}"))
}

/// The Secret uses of a Kafka connection.
pub fn kafka_secret_uses(kafka: &KafkaConnection) -> Vec<SecretUse> {
    kafka
        .secret_ref
        .iter()
        .map(|s| SecretUse {
            name: s.name.clone(),
            key: None,
        })
        .collect()
}

/// The operator's own Kafka client settings from the Kafka Secret: the keys a worker accepts
/// ([`KAFKA_SECRET_KEYS`], one list for both); a Secret with another key makes the workers
/// refuse their configuration (`WorkerConfigRejected`), so the operator does not guess.
pub fn kafka_settings(connection: &KafkaConnection, secrets: &Secrets) -> Vec<(String, String)> {
    let Some(secret) = &connection.secret_ref else {
        return vec![];
    };
    secrets
        .entries(&secret.name)
        .into_iter()
        .filter(|(k, _)| KAFKA_SECRET_KEYS.contains(&k.as_str()))
        .collect()
}
