//! The log sink: one structured log line (target `pipewright::event`) per event.

use tracing::info;

use crate::consume::events::{GenericEvent, HandlerError, Record};

/// Writes each event to the log.
#[derive(Debug, Clone, Copy)]
pub struct LogSink {
    /// Include the event's JSON in the line.
    pub payload: bool,
}

impl LogSink {
    pub fn deliver(&self, event: &GenericEvent, record: &Record) -> Result<(), HandlerError> {
        let key = record.key_str();
        if self.payload {
            info!(
                target: "pipewright::event",
                topic = %record.topic, partition = record.partition, offset = record.offset,
                key = key.as_deref(), event_type = %event.event_type, payload = %event.body.as_ref().unwrap_or(&serde_json::Value::Null),
                "event"
            );
        } else {
            info!(
                target: "pipewright::event",
                topic = %record.topic, partition = record.partition, offset = record.offset,
                key = key.as_deref(), event_type = %event.event_type,
                "event"
            );
        }
        Ok(())
    }
}
