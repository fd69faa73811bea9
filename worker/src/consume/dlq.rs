//! The dead-letter topic: a record that fails every attempt, or is rejected by the events
//! settings with the `deadLetter` policy, is produced there unchanged (key, value, headers),
//! with these headers added:
//!
//! | header | value |
//! |---|---|
//! | `pipewright.original.topic` / `.partition` / `.offset` | where the record came from |
//! | `pipewright.error.kind` | e.g. `malformed`, `unknown_type`, `http_status_400` |
//! | `pipewright.error.message` | the last error, human-readable (at most 1 KiB) |
//! | `pipewright.attempts` | delivery attempts made (0 for a rejected record) |
//! | `pipewright.first.failure.time` | RFC 3339 time of the first failure |
//!
//! The record is committed only after the dead-letter topic acknowledged it (acks=all).

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::events::Record;
use crate::Error;

pub const H_TOPIC: &str = "pipewright.original.topic";
pub const H_PARTITION: &str = "pipewright.original.partition";
pub const H_OFFSET: &str = "pipewright.original.offset";
pub const H_KIND: &str = "pipewright.error.kind";
pub const H_MESSAGE: &str = "pipewright.error.message";
pub const H_ATTEMPTS: &str = "pipewright.attempts";
pub const H_FIRST_FAILURE: &str = "pipewright.first.failure.time";

/// Why a record is dead-lettered.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: String,
    pub message: String,
    pub attempts: u32,
    pub first_failure: DateTime<Utc>,
}

/// A producer for the dead-letter topic.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    pub fn new(producer: FutureProducer, topic: String) -> DeadLetters {
        DeadLetters { producer, topic }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Produces `record` with the failure headers and waits for the acknowledgement.
    pub async fn send(&self, record: &Record, failure: &Failure) -> Result<(), Error> {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &record.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let mut message = failure.message.clone();
        if message.len() > 1024 {
            let mut cut = 1024;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let attempts = failure.attempts.to_string();
        let first = failure
            .first_failure
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        for (key, value) in [
            (H_TOPIC, &*record.topic),
            (H_PARTITION, partition.as_str()),
            (H_OFFSET, offset.as_str()),
            (H_KIND, failure.kind.as_str()),
            (H_MESSAGE, message.as_str()),
            (H_ATTEMPTS, attempts.as_str()),
            (H_FIRST_FAILURE, first.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = &record.key {
            out = out.key(key.as_slice());
        }
        if let Some(payload) = &record.payload {
            out = out.payload(payload.as_slice());
        }
        self.producer
            .send(out, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| Error::Kafka(e))
    }
}
