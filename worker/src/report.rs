//! The worker's report (`GET /report`, [`pipewright_crds::worker_report`]): what the
//! operator reads to fill the resource's status.
//!
//! The figures are not counted here: the consumer's counters are its Prometheus counters
//! ([`ConsumerMetrics`]), read when the report is made; the outbox publisher's are its own
//! ([`OutboxMetrics`]). What only the report needs is kept here: whether deliveries currently
//! fail ([`DeliveryHealth`]) and when the publisher last published ([`LastPublish`]).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use pipewright_crds::worker_report::{
    self, ConsumerCounters, ConsumerReport, OutboxReport, RejectedCounters, WorkerReport,
};

use crate::consume::metrics::KindLabels;
use crate::consume::{ConsumerMetrics, RejectionKind};
use crate::outbox::OutboxMetrics;

/// No time recorded (the atomics below hold Unix milliseconds, never 0 once set).
const NONE: i64 = 0;

fn now_millis() -> i64 {
    Utc::now().timestamp_millis().max(1)
}

fn time_of_millis(millis: i64) -> Option<Time> {
    (millis != NONE)
        .then(|| Timestamp::from_millisecond(millis).ok().map(Time))
        .flatten()
}

/// Whether deliveries currently fail: the time of the first failed attempt since the last
/// success, and the class of the last failure. Cheap on the path of every record: a success
/// reads one atomic and writes it only when deliveries were failing.
#[derive(Debug, Clone, Default)]
pub struct DeliveryHealth {
    failing_since: Arc<AtomicI64>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl DeliveryHealth {
    /// A delivery succeeded.
    pub fn succeeded(&self) {
        if self.failing_since.load(Ordering::Relaxed) != NONE {
            self.failing_since.store(NONE, Ordering::Relaxed);
        }
    }

    /// A delivery attempt failed with an error of `class` (e.g. `http_status_503`; it is
    /// sanitised, see [`worker_report::sanitize_error_class`]).
    pub fn failed(&self, class: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(worker_report::sanitize_error_class(class));
        let _ = self.failing_since.compare_exchange(
            NONE,
            now_millis(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The health as reported.
    pub fn report(&self) -> worker_report::DeliveryHealth {
        let failing_since = time_of_millis(self.failing_since.load(Ordering::Relaxed));
        let last_error = failing_since
            .is_some()
            .then(|| {
                self.last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
            })
            .flatten();
        worker_report::DeliveryHealth {
            failing_since,
            last_error,
        }
    }
}

/// When the outbox publisher last published a row, and whether it holds the lock.
#[derive(Debug, Clone, Default)]
pub struct LastPublish {
    at: Arc<AtomicI64>,
    active: Arc<AtomicBool>,
}

impl LastPublish {
    /// Rows were just published.
    pub fn published(&self) {
        self.at.store(now_millis(), Ordering::Relaxed);
    }

    /// This replica took (true) or lost (false) the publisher lock.
    pub fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Relaxed);
    }

    fn time(&self) -> Option<Time> {
        time_of_millis(self.at.load(Ordering::Relaxed))
    }

    fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }
}

/// What the worker process reports, whatever its mode: makes a [`WorkerReport`] on demand.
#[derive(Debug, Clone)]
pub struct Reporter {
    start_time: DateTime<Utc>,
    mode: Mode,
}

#[derive(Debug, Clone)]
enum Mode {
    Consume(ConsumerMetrics),
    Outbox(OutboxMetrics),
}

impl Reporter {
    /// The report of a consumer with these metrics, started now.
    pub fn consumer(metrics: &ConsumerMetrics) -> Reporter {
        Reporter {
            start_time: Utc::now(),
            mode: Mode::Consume(metrics.clone()),
        }
    }

    /// The report of an outbox publisher with these metrics, started now.
    pub fn outbox(metrics: &OutboxMetrics) -> Reporter {
        Reporter {
            start_time: Utc::now(),
            mode: Mode::Outbox(metrics.clone()),
        }
    }

    /// The report as of now.
    pub fn report(&self) -> WorkerReport {
        let time = |t: DateTime<Utc>| {
            Time(Timestamp::from_millisecond(t.timestamp_millis()).unwrap_or(Timestamp::UNIX_EPOCH))
        };
        let mut report = WorkerReport {
            start_time: time(self.start_time),
            report_time: time(Utc::now()),
            delivery: worker_report::DeliveryHealth::default(),
            consumer: None,
            outbox: None,
        };
        match &self.mode {
            Mode::Consume(m) => {
                report.delivery = m.delivery.report();
                report.consumer = Some(ConsumerReport {
                    counters: counters(m),
                });
            }
            Mode::Outbox(m) => {
                report.delivery = m.delivery.report();
                report.outbox = Some(OutboxReport {
                    active: m.last_publish.is_active(),
                    published_total: count(m.published.get()),
                    last_publish_time: m.last_publish.time(),
                });
            }
        }
        report
    }
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The consumer's counters, read from its metrics.
fn counters(m: &ConsumerMetrics) -> ConsumerCounters {
    let rejected = |kind: RejectionKind| {
        count(
            m.rejected
                .get_or_create(&KindLabels {
                    kind: kind.as_str().to_string(),
                })
                .get(),
        )
    };
    ConsumerCounters {
        processed: count(m.processed.get()),
        retried: count(m.retried.get()),
        dead_lettered: count(m.dead_lettered.get()),
        skipped: count(m.skipped.get()),
        rejected: RejectedCounters {
            malformed: rejected(RejectionKind::Malformed),
            unknown_type: rejected(RejectionKind::UnknownType),
            schema_invalid: rejected(RejectionKind::SchemaInvalid),
            oversized: rejected(RejectionKind::Oversized),
        },
    }
}

/// The class of an error that ended an outbox session, as a report carries it: the SQLSTATE
/// or the Kafka error code, never a message (which may quote a value or a host).
pub fn error_class(e: &crate::Error) -> String {
    use crate::Error;
    let class = match e {
        Error::Database(sqlx::Error::Database(db)) => match db.code() {
            Some(code) => format!("postgres_{code}"),
            None => "postgres_error".to_string(),
        },
        Error::Database(_) => "postgres_unavailable".to_string(),
        Error::DatabaseTimeout { .. } => "postgres_timeout".to_string(),
        Error::Kafka(k) => match k.rdkafka_error_code() {
            Some(code) => format!("kafka_{code:?}"),
            None => "kafka_error".to_string(),
        },
        Error::TableMissing { .. }
        | Error::TableColumns { .. }
        | Error::TableColumnTypes { .. }
        | Error::TableNotStamped { .. } => "outbox_table".to_string(),
        Error::InvalidTopic { .. } => "invalid_topic".to_string(),
        _ => "error".to_string(),
    };
    worker_report::sanitize_error_class(&class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_since_is_the_first_failure_since_the_last_success() {
        let h = DeliveryHealth::default();
        assert_eq!(h.report(), worker_report::DeliveryHealth::default());
        h.failed("http_status_503");
        let first = h.report();
        assert!(first.failing_since.is_some());
        std::thread::sleep(std::time::Duration::from_millis(5));
        h.failed("http_timeout");
        let second = h.report();
        assert_eq!(second.failing_since, first.failing_since);
        assert_eq!(second.last_error.as_deref(), Some("http_timeout"));
        h.succeeded();
        assert_eq!(h.report(), worker_report::DeliveryHealth::default());
    }

    #[test]
    fn the_consumer_report_reads_the_metrics_counters() {
        let m = ConsumerMetrics::unregistered();
        m.processed.inc_by(7);
        m.retried.inc();
        m.rejected
            .get_or_create(&KindLabels {
                kind: "unknown_type".into(),
            })
            .inc_by(2);
        let r = Reporter::consumer(&m).report();
        let c = r.consumer.unwrap().counters;
        assert_eq!(c.processed, 7);
        assert_eq!(c.retried, 1);
        assert_eq!(c.rejected.unknown_type, 2);
        assert_eq!(c.rejected.malformed, 0);
        assert!(r.outbox.is_none());
    }
}
