//! Rendering pieces both kinds share: the Kafka connection and the database URL as the
//! worker's environment variables and mounted Secret files (docs/worker-config.md is the
//! contract).

use std::collections::BTreeMap;

use pipewright_crds::KafkaConnection;
use pipewright_crds::common::SecretKeyRef;

use crate::controller::{SecretUse, Secrets};
use crate::error::{Error, Result};
use crate::measure::kafka;
use crate::workload::SecretMount;

/// Where the `kafka.secretRef` Secret is mounted (one file per key).
pub const KAFKA_SECRET_DIR: &str = "/var/run/secrets/pipewright/kafka";
/// Where the database URL is mounted.
pub const DATABASE_DIR: &str = "/var/run/secrets/pipewright/database";
/// The file name of the database URL in [`DATABASE_DIR`].
pub const DATABASE_FILE: &str = "url";

/// Environment and mounts of the Kafka connection.
pub fn kafka(
    env: &mut BTreeMap<String, String>,
    mounts: &mut Vec<SecretMount>,
    kafka: &KafkaConnection,
) -> Result<()> {
    env.insert(
        "PIPEWRIGHT_KAFKA_BOOTSTRAP_SERVERS".into(),
        kafka.bootstrap_servers.join(","),
    );
    if !kafka.config.is_empty() {
        let mut entries = Vec::new();
        for (k, v) in &kafka.config {
            if v.contains(',') || k.contains('=') {
                return Err(Error::InvalidSpec {
                    field: "kafka.config",
                    reason: format!(
                        "the value of {k:?} contains a comma, which the worker's \
                         PIPEWRIGHT_KAFKA_CONFIG list cannot carry"
                    ),
                });
            }
            entries.push(format!("{k}={v}"));
        }
        env.insert("PIPEWRIGHT_KAFKA_CONFIG".into(), entries.join(","));
    }
    if let Some(secret) = &kafka.secret_ref {
        env.insert(
            "PIPEWRIGHT_KAFKA_SECRET_DIR".into(),
            KAFKA_SECRET_DIR.into(),
        );
        mounts.push(SecretMount {
            volume: "kafka-secret".into(),
            secret: secret.name.clone(),
            items: vec![],
            path: KAFKA_SECRET_DIR.into(),
        });
    }
    Ok(())
}

/// Environment and mount of a database URL from a Secret key.
pub fn database(
    env: &mut BTreeMap<String, String>,
    mounts: &mut Vec<SecretMount>,
    dsn: &SecretKeyRef,
) {
    env.insert(
        "PIPEWRIGHT_DATABASE_URL_FILE".into(),
        format!("{DATABASE_DIR}/{DATABASE_FILE}"),
    );
    mounts.push(SecretMount {
        volume: "database".into(),
        secret: dsn.name.clone(),
        items: vec![(dsn.key.clone(), DATABASE_FILE.into())],
        path: DATABASE_DIR.into(),
    });
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

/// The operator's own Kafka client settings from the Kafka Secret (security keys only).
pub fn kafka_settings(connection: &KafkaConnection, secrets: &Secrets) -> Vec<(String, String)> {
    let Some(secret) = &connection.secret_ref else {
        return vec![];
    };
    secrets
        .entries(&secret.name)
        .into_iter()
        .filter(|(k, _)| kafka::SECRET_KEYS.contains(&k.as_str()))
        .collect()
}
