//! The worker's report: the one contract by which a worker tells the operator what it did.
//!
//! Every `pipewright-worker` process serves a [`WorkerReport`] as JSON at `GET /report`
//! ([`REPORT_PATH`]) on its HTTP port (the one of `/metrics`, `/healthz`, `/readyz`). The
//! operator reads it from each running worker pod once per status period and turns the
//! reports into the resource's status: the consumer counters, the delivery rate, the outbox
//! publisher's totals and the `Delivering` condition (docs/operator.md, "What the workers
//! report").
//!
//! Every figure is about the worker *process* that answers: counters start at 0 when it
//! starts ([`WorkerReport::start_time`]), so a sum over pods is "since the current worker
//! pods started". The report never holds an event payload, a URL, a DSN or a header value:
//! an error is reported as its class only ([`sanitize_error_class`]).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The path the report is served at.
pub const REPORT_PATH: &str = "/report";

/// The longest error class a report carries ([`sanitize_error_class`]).
pub const MAX_ERROR_CLASS_LEN: usize = 64;

/// What one worker process reports about itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerReport {
    /// When this worker process started: every counter below counts from then.
    pub start_time: Time,
    /// When this report was made, on the worker's clock. Durations (how long deliveries have
    /// been failing) are measured between failingSince and this time, so the operator's and
    /// the worker's clocks need not agree.
    pub report_time: Time,
    /// Whether deliveries (consumer: to the sink; outbox: to Kafka) currently succeed.
    pub delivery: DeliveryHealth,
    /// The consume mode's figures (absent in the outbox mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<ConsumerReport>,
    /// The outbox mode's figures (absent in the consume mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<OutboxReport>,
}

/// Whether deliveries currently succeed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryHealth {
    /// The time of the first failed delivery attempt since the last successful delivery.
    /// Absent when the last attempt succeeded, or none was made yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<Time>,
    /// The class of the last failed attempt (e.g. `http_status_503`, `http_timeout`,
    /// `postgres_unavailable`, `postgres_23505`, `kafka_produce`), at most
    /// [`MAX_ERROR_CLASS_LEN`] characters of `[a-z0-9_]`: never a payload, a URL or a DSN.
    /// Absent while failingSince is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The consume mode's figures.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerReport {
    /// Records handled since the process started.
    pub counters: ConsumerCounters,
}

/// Records handled by consumer workers: the same counters as their
/// `pipewright_consumer_*_total` metrics. A record may appear in more than one counter: a
/// rejected record is also dead-lettered or skipped, a retried one is also processed or
/// dead-lettered once it finishes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerCounters {
    /// Records delivered to the sink.
    pub processed: i64,
    /// Delivery attempts that failed and were retried.
    pub retried: i64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: i64,
    /// Records committed undelivered by policy (events.onUnknownType skip).
    pub skipped: i64,
    /// Records that were not valid events, by kind.
    pub rejected: RejectedCounters,
}

/// Records that were not valid events, by kind.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RejectedCounters {
    /// No payload, not JSON, not an object, or no string `event_type`.
    pub malformed: i64,
    /// An `event_type` that is not declared.
    pub unknown_type: i64,
    /// A declared type whose payload does not match its schema.
    pub schema_invalid: i64,
    /// A payload larger than the maximum record size.
    pub oversized: i64,
}

impl ConsumerCounters {
    /// The field-by-field sum (saturating).
    pub fn add(&mut self, other: &ConsumerCounters) {
        self.processed = self.processed.saturating_add(other.processed);
        self.retried = self.retried.saturating_add(other.retried);
        self.dead_lettered = self.dead_lettered.saturating_add(other.dead_lettered);
        self.skipped = self.skipped.saturating_add(other.skipped);
        let (r, o) = (&mut self.rejected, &other.rejected);
        r.malformed = r.malformed.saturating_add(o.malformed);
        r.unknown_type = r.unknown_type.saturating_add(o.unknown_type);
        r.schema_invalid = r.schema_invalid.saturating_add(o.schema_invalid);
        r.oversized = r.oversized.saturating_add(o.oversized);
    }
}

/// The outbox mode's figures.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OutboxReport {
    /// This replica holds the publisher lock (false: it stands by).
    pub active: bool,
    /// Rows this process published (acknowledged by Kafka and cleaned up) since it started.
    pub published_total: i64,
    /// When this process last published a row. Absent: it has published none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_publish_time: Option<Time>,
}

/// An error class as a report may carry it: lower case `[a-z0-9_]` (anything else becomes
/// `_`), at most [`MAX_ERROR_CLASS_LEN`] characters, `error` when nothing is left. A class is
/// a name chosen by code (`http_status_503`), but a custom handler chooses its own: this keeps
/// whatever it chose short and free of anything that reads like a URL or a value.
pub fn sanitize_error_class(class: &str) -> String {
    let cleaned: String = class
        .chars()
        .take(MAX_ERROR_CLASS_LEN)
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect();
    if cleaned.is_empty() {
        "error".to_string()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn error_classes_are_short_lower_case_words() {
        assert_eq!(sanitize_error_class("http_status_503"), "http_status_503");
        assert_eq!(
            sanitize_error_class("Kafka_MessageTimedOut"),
            "kafka_messagetimedout"
        );
        assert_eq!(
            sanitize_error_class("postgres://user:pw@db/x"),
            "postgres___user_pw_db_x"
        );
        assert_eq!(sanitize_error_class(""), "error");
        assert_eq!(
            sanitize_error_class(&"x".repeat(500)).len(),
            MAX_ERROR_CLASS_LEN
        );
        assert_eq!(sanitize_error_class("ü€"), "__");
    }

    #[test]
    fn a_report_is_camel_case_json_and_reads_back() {
        let t = Time(Timestamp::from_second(1_800_000_000).unwrap());
        let report = WorkerReport {
            start_time: t.clone(),
            report_time: t.clone(),
            delivery: DeliveryHealth {
                failing_since: Some(t.clone()),
                last_error: Some("http_status_503".into()),
            },
            consumer: Some(ConsumerReport {
                counters: ConsumerCounters {
                    processed: 3,
                    dead_lettered: 1,
                    rejected: RejectedCounters {
                        unknown_type: 1,
                        ..RejectedCounters::default()
                    },
                    ..ConsumerCounters::default()
                },
            }),
            outbox: None,
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["delivery"]["failingSince"], "2027-01-15T08:00:00Z");
        assert_eq!(json["delivery"]["lastError"], "http_status_503");
        assert_eq!(json["consumer"]["counters"]["deadLettered"], 1);
        assert_eq!(json["consumer"]["counters"]["rejected"]["unknownType"], 1);
        assert!(json.get("outbox").is_none());
        let back: WorkerReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn counters_add_field_by_field() {
        let one = ConsumerCounters {
            processed: 5,
            retried: 2,
            dead_lettered: 1,
            skipped: 1,
            rejected: RejectedCounters {
                malformed: 1,
                unknown_type: 2,
                schema_invalid: 3,
                oversized: 4,
            },
        };
        let mut sum = ConsumerCounters::default();
        sum.add(&one);
        sum.add(&one);
        assert_eq!(sum.processed, 10);
        assert_eq!(sum.retried, 4);
        assert_eq!(sum.rejected.oversized, 8);
    }
}
