//! Rendering pieces both kinds share: the Kafka connection and the database URL as parts of
//! the worker's configuration file ([`pipewright_crds::worker_config`]) and the Secret mounts
//! their paths point into (docs/worker-config.md is the contract).

use std::collections::BTreeMap;
use std::path::PathBuf;

use pipewright_crds::KafkaConnection;
use pipewright_crds::common::{KAFKA_SECRET_KEYS, SecretKeyRef, kafka_setting_value};
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
    // One mount per Secret key of `tls`/`sasl`, the file named as its librdkafka setting.
    let mut secret_files = BTreeMap::new();
    for (setting, key_ref) in kafka.secret_key_settings() {
        let volume = format!("kafka-{}", setting.replace('.', "-"));
        let path = format!("{KAFKA_SECRET_DIR}-{}", setting.replace('.', "-"));
        mounts.push(SecretMount {
            volume,
            secret: key_ref.name.clone(),
            items: vec![(key_ref.key.clone(), setting.into())],
            path: path.clone(),
        });
        secret_files.insert(
            setting.to_string(),
            PathBuf::from(format!("{path}/{setting}")),
        );
    }
    worker_config::Kafka {
        bootstrap_servers: kafka.bootstrap_servers.clone(),
        config: kafka.config.clone(),
        secret_dir,
        security: kafka
            .security_settings()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        secret_files,
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
    let whole = kafka.secret_ref.iter().map(|s| SecretUse {
        name: s.name.clone(),
        key: None,
    });
    let keys = kafka
        .secret_key_settings()
        .into_iter()
        .map(|(_, r)| SecretUse {
            name: r.name.clone(),
            key: Some(r.key.clone()),
        });
    whole.chain(keys).collect()
}

/// The operator's own Kafka client settings from the Kafka Secret: the keys a worker accepts
/// ([`KAFKA_SECRET_KEYS`], one list for both); a Secret with another key makes the workers
/// refuse their configuration (`WorkerConfigRejected`), so the operator does not guess.
///
/// With `tls`/`sasl`: the same settings the workers get (`security.protocol`, the mechanism,
/// each credential from its Secret key).
pub fn kafka_settings(connection: &KafkaConnection, secrets: &Secrets) -> Vec<(String, String)> {
    let mut settings: Vec<(String, String)> = connection
        .security_settings()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    for (setting, key_ref) in connection.secret_key_settings() {
        if let Some(value) = secrets.value(&key_ref.name, &key_ref.key) {
            settings.push((setting.to_string(), kafka_setting_value(setting, value)));
        }
    }
    let Some(secret) = &connection.secret_ref else {
        return settings;
    };
    settings.extend(
        secrets
            .entries(&secret.name)
            .into_iter()
            .filter(|(k, _)| KAFKA_SECRET_KEYS.contains(&k.as_str()))
            .map(|(k, v)| {
                let v = kafka_setting_value(&k, v);
                (k, v)
            }),
    );
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Strimzi user's Secrets as they are: the cluster CA (`ca.crt`) and a SCRAM KafkaUser
    /// (`password`).
    fn strimzi_scram() -> KafkaConnection {
        serde_json::from_value(serde_json::json!({
            "bootstrapServers": ["my-cluster-kafka-bootstrap:9093"],
            "tls": {"caSecretRef": {"name": "my-cluster-cluster-ca-cert", "key": "ca.crt"}},
            "sasl": {"mechanism": "SCRAM-SHA-512", "username": "orders",
                     "passwordSecretRef": {"name": "orders", "key": "password"}},
        }))
        .unwrap()
    }

    #[test]
    fn tls_and_sasl_render_one_mount_per_secret_key_and_the_settings_that_are_not_secret() {
        let mut mounts = Vec::new();
        let config = kafka(&mut mounts, &strimzi_scram());
        assert_eq!(config.secret_dir, None);
        assert_eq!(
            config.security,
            [
                ("sasl.mechanism".to_string(), "SCRAM-SHA-512".to_string()),
                ("sasl.username".to_string(), "orders".to_string()),
                ("security.protocol".to_string(), "SASL_SSL".to_string()),
            ]
            .into()
        );
        let files: Vec<(&str, &str)> = config
            .secret_files
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            files,
            [
                (
                    "sasl.password",
                    "/var/run/secrets/pipewright/kafka-sasl-password/sasl.password"
                ),
                (
                    "ssl.ca.pem",
                    "/var/run/secrets/pipewright/kafka-ssl-ca-pem/ssl.ca.pem"
                ),
            ]
        );
        let mounted: Vec<(&str, &str, &str)> = mounts
            .iter()
            .map(|m| {
                (
                    m.secret.as_str(),
                    m.items[0].0.as_str(),
                    m.items[0].1.as_str(),
                )
            })
            .collect();
        assert_eq!(
            mounted,
            [
                ("my-cluster-cluster-ca-cert", "ca.crt", "ssl.ca.pem"),
                ("orders", "password", "sasl.password"),
            ]
        );
        let uses: Vec<(String, Option<String>)> = kafka_secret_uses(&strimzi_scram())
            .into_iter()
            .map(|u| (u.name, u.key))
            .collect();
        assert_eq!(
            uses,
            [
                ("my-cluster-cluster-ca-cert".into(), Some("ca.crt".into())),
                ("orders".into(), Some("password".into())),
            ]
        );
    }
}
