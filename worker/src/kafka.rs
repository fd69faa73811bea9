//! librdkafka settings as the worker receives them: the bootstrap servers, the allow-listed
//! tuning keys of `kafka.config`, and the security settings of the `kafka.secretRef` Secret,
//! mounted as a directory (one file per key). The allow-list and the Secret's keys are the
//! API's own ([`KAFKA_CONFIG_ALLOWED_KEYS`], [`KAFKA_SECRET_KEYS`]), so the CRD and the worker
//! cannot drift apart. Values from the Secret never show in `Debug` output or logs.

use std::collections::BTreeSet;
use std::path::Path;

use pipewright_crds::common::{KAFKA_CONFIG_ALLOWED_KEYS, KAFKA_SECRET_KEYS, kafka_setting_value};
use rdkafka::ClientConfig;

use crate::Error;

/// Settings for one librdkafka client; the mode adds the ones its guarantees need.
#[derive(Clone, Default)]
pub struct KafkaSettings {
    entries: Vec<(String, String)>,
    secret: BTreeSet<String>,
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in &self.entries {
            if self.secret.contains(key) {
                map.entry(key, &"<redacted>");
            } else {
                map.entry(key, value);
            }
        }
        map.finish()
    }
}

impl KafkaSettings {
    /// Settings that reach the brokers in `bootstrap_servers` (comma-separated `host:port`).
    pub fn new(bootstrap_servers: &str) -> KafkaSettings {
        KafkaSettings {
            entries: vec![("bootstrap.servers".into(), bootstrap_servers.into())],
            secret: BTreeSet::new(),
        }
    }

    /// Adds a `kafka.config` entry; only the API's allow-listed tuning keys.
    pub fn add_tuning(&mut self, key: &str, value: &str) -> Result<(), Error> {
        if !KAFKA_CONFIG_ALLOWED_KEYS.contains(&key) {
            return Err(Error::InvalidConfig {
                field: "kafka.config",
                reason: format!(
                    "{key:?} is not an allowed key (allowed: {}; credentials come from kafka.secretRef)",
                    KAFKA_CONFIG_ALLOWED_KEYS.join(", ")
                ),
            });
        }
        self.entries.push((key.to_string(), value.to_string()));
        Ok(())
    }

    /// Reads the security settings from a mounted Secret: each file is one key. Kubernetes'
    /// own entries of a Secret volume (`..data`, `..2026_...` and other dot-files) are skipped;
    /// any other unknown key is an error, so a typo does not silently mean "no TLS".
    pub fn add_secret_dir(&mut self, dir: &Path) -> Result<(), Error> {
        let field = "kafka.secretRef";
        let unreadable = |reason: String| Error::InvalidConfig { field, reason };
        let entries = std::fs::read_dir(dir)
            .map_err(|e| unreadable(format!("cannot read {}: {e}", dir.display())))?;
        let mut names: Vec<String> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| unreadable(format!("{}: {e}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                names.push(name);
            }
        }
        names.sort();
        for name in names {
            if !KAFKA_SECRET_KEYS.contains(&name.as_str()) {
                return Err(unreadable(format!(
                    "the Secret has the key {name:?}; allowed keys: {}",
                    KAFKA_SECRET_KEYS.join(", ")
                )));
            }
            let value = std::fs::read_to_string(dir.join(&name))
                .map_err(|e| unreadable(format!("cannot read key {name:?}: {e}")))?;
            let value = kafka_setting_value(&name, value);
            self.secret.insert(name.clone());
            self.entries.push((name, value));
        }
        Ok(())
    }

    /// Adds a security setting that is not secret (`kafka.security`, from the resource's
    /// `kafka.tls`/`kafka.sasl`): one of the API's security keys.
    pub fn add_security(&mut self, key: &str, value: &str) -> Result<(), Error> {
        check_security_key("kafka.security", key)?;
        self.entries.push((key.to_string(), value.to_string()));
        Ok(())
    }

    /// Adds a security setting read from a file (`kafka.secretFiles`: a mounted Secret key,
    /// e.g. Strimzi's `ca.crt` as `ssl.ca.pem`). Its value never shows in `Debug` output.
    pub fn add_secret_file(&mut self, key: &str, file: &Path) -> Result<(), Error> {
        let field = "kafka.secretFiles";
        check_security_key(field, key)?;
        let value = std::fs::read_to_string(file).map_err(|e| Error::InvalidConfig {
            field,
            reason: format!("cannot read {key:?} from {}: {e}", file.display()),
        })?;
        let value = kafka_setting_value(key, value);
        self.secret.insert(key.to_string());
        self.entries.push((key.to_string(), value));
        Ok(())
    }

    /// A client configuration with these settings; the caller adds its own on top.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in &self.entries {
            config.set(key, value);
        }
        config
    }
}

fn check_security_key(field: &'static str, key: &str) -> Result<(), Error> {
    if KAFKA_SECRET_KEYS.contains(&key) {
        return Ok(());
    }
    Err(Error::InvalidConfig {
        field,
        reason: format!(
            "{key:?} is not a security setting (allowed: {})",
            KAFKA_SECRET_KEYS.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pw-kafka-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn tuning_keys_follow_the_api_allow_list() {
        let mut settings = KafkaSettings::new("k:9092");
        settings.add_tuning("linger.ms", "20").unwrap();
        let err = settings.add_tuning("sasl.password", "x").unwrap_err();
        assert!(err.to_string().contains("kafka.config"), "{err}");
        let err = settings
            .add_tuning("enable.idempotence", "false")
            .unwrap_err();
        assert!(format!("{err:?}").contains("not an allowed key"), "{err:?}");
        assert_eq!(
            settings.client_config().get("linger.ms"),
            Some("20"),
            "allowed keys reach the client"
        );
    }

    #[test]
    fn secret_values_reach_the_client_but_never_debug_output() {
        let dir = temp_dir("secret");
        std::fs::write(dir.join("sasl.password"), "s3cret\n").unwrap();
        std::fs::write(dir.join("security.protocol"), "SASL_SSL").unwrap();
        std::fs::create_dir(dir.join("..data")).unwrap();
        let mut settings = KafkaSettings::new("k:9092");
        settings.add_secret_dir(&dir).unwrap();
        let config = settings.client_config();
        assert_eq!(config.get("sasl.password"), Some("s3cret"));
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        let shown = format!("{settings:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn per_key_secret_files_and_security_settings_reach_the_client_and_files_stay_redacted() {
        let dir = temp_dir("files");
        std::fs::write(dir.join("password"), "scram-s3cret\n").unwrap();
        std::fs::write(dir.join("ca.crt"), "-----BEGIN CERTIFICATE-----\nx\n").unwrap();
        let mut settings = KafkaSettings::new("k:9093");
        settings
            .add_security("security.protocol", "SASL_SSL")
            .unwrap();
        settings
            .add_security("sasl.mechanism", "SCRAM-SHA-512")
            .unwrap();
        settings
            .add_secret_file("sasl.password", &dir.join("password"))
            .unwrap();
        settings
            .add_secret_file("ssl.ca.pem", &dir.join("ca.crt"))
            .unwrap();
        let config = settings.client_config();
        assert_eq!(config.get("sasl.password"), Some("scram-s3cret"));
        assert_eq!(
            config.get("ssl.ca.pem"),
            Some("-----BEGIN CERTIFICATE-----\nx\n"),
            "PEM keeps its newlines"
        );
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("scram-s3cret") && !shown.contains("BEGIN"),
            "{shown}"
        );
        assert!(shown.contains("SCRAM-SHA-512"), "{shown}");
        let err = settings.add_security("linger.ms", "5").unwrap_err();
        assert!(err.to_string().contains("kafka.security"), "{err}");
        let err = settings
            .add_secret_file("sasl.password", &dir.join("missing"))
            .unwrap_err();
        assert!(format!("{err}").contains("kafka.secretFiles"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unknown_key_in_the_secret_is_an_error() {
        let dir = temp_dir("unknown");
        std::fs::write(dir.join("sasl.pasword"), "typo").unwrap();
        let err = KafkaSettings::new("k:9092")
            .add_secret_dir(&dir)
            .unwrap_err();
        assert!(format!("{err:?}").contains("sasl.pasword"), "{err:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
