//! The log sink: one structured log line (target `pipewright::event`) per event.

use base64::prelude::{BASE64_STANDARD, Engine as _};
use tracing::info;

use crate::consume::events::{GenericEvent, HandlerError, Record};

/// Writes each event to the log.
#[derive(Debug, Clone, Copy)]
pub struct LogSink {
    /// Include the event's JSON in the line.
    pub payload: bool,
    /// `events.format: raw`: the payload is the value's text when it is UTF-8, else its
    /// base64 (`payload_base64`).
    pub raw: bool,
}

impl LogSink {
    pub fn deliver(&self, event: &GenericEvent, record: &Record) -> Result<(), HandlerError> {
        let key = record.key_str();
        let value = record.payload.as_deref().unwrap_or_default();
        match (self.payload, self.raw) {
            (false, _) => info!(
                target: "pipewright::event",
                topic = %record.topic, partition = record.partition, offset = record.offset,
                key = key.as_deref(), event_type = %event.event_type,
                "event"
            ),
            (true, false) => info!(
                target: "pipewright::event",
                topic = %record.topic, partition = record.partition, offset = record.offset,
                key = key.as_deref(), event_type = %event.event_type, payload = %event.body.as_ref().unwrap_or(&serde_json::Value::Null),
                "event"
            ),
            (true, true) => match std::str::from_utf8(value) {
                Ok(text) => info!(
                    target: "pipewright::event",
                    topic = %record.topic, partition = record.partition, offset = record.offset,
                    key = key.as_deref(), event_type = %event.event_type, payload = text,
                    "event"
                ),
                Err(_) => info!(
                    target: "pipewright::event",
                    topic = %record.topic, partition = record.partition, offset = record.offset,
                    key = key.as_deref(), event_type = %event.event_type,
                    payload_base64 = %BASE64_STANDARD.encode(value),
                    "event"
                ),
            },
        }
        Ok(())
    }
}
