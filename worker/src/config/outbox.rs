//! The `outbox` configuration ([`worker_config::Outbox`]) checked and turned into the
//! poller's settings.

use pipewright_crds::worker_config::{self, CleanupPolicy};

use super::kafka_settings;
use crate::Error;
use crate::outbox::{Cleanup, Destination, PollerConfig, Table};

/// Checks `file` and builds the poller's settings.
pub fn settings(file: worker_config::Outbox) -> Result<PollerConfig, Error> {
    let table = Table::parse(&file.table)?;
    let destination = match (file.topic, file.topic_template) {
        (Some(topic), None) => Destination::Topic(topic),
        (None, Some(template)) => Destination::Template(template),
        _ => {
            return Err(Error::InvalidConfig {
                field: "topic",
                reason: "exactly one of topic, topicTemplate must be set".into(),
            });
        }
    };
    let cleanup = match (file.cleanup.policy, file.cleanup.retention) {
        (CleanupPolicy::Delete, None) => Cleanup::Delete,
        (CleanupPolicy::Delete, Some(_)) => {
            return Err(Error::InvalidConfig {
                field: "cleanup.retention",
                reason: "applies only to the markPublished policy".into(),
            });
        }
        (CleanupPolicy::MarkPublished, retention) => Cleanup::MarkPublished { retention },
    };
    let mut config = PollerConfig::new(table, destination, "");
    // The connection with its tuning keys and credentials, not only the bootstrap servers.
    config.kafka = kafka_settings(&file.kafka)?;
    config.poll_interval = file.poll.interval;
    config.batch_size = file.poll.batch_size;
    config.max_in_flight = file.poll.max_in_flight;
    config.notify = file.poll.notify;
    config.cleanup = cleanup;
    config.lock_retry_interval = file.lock_retry_interval;
    config.shutdown_grace = file.shutdown_grace;
    config.validate()?;
    Ok(config)
}
