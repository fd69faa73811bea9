//! The workers' reports (`GET http://<podIP>:8080/report`,
//! [`pipewright_crds::worker_report`]) and what the status makes of them: counters summed
//! over the pods that answered, a delivery rate from successive readings, the outbox
//! publisher's totals and the `Delivering` condition.
//!
//! Read from the pods directly (docs/operator.md, "What the workers report"): the operator
//! already lists them, a worker needs no RBAC to be read, and nothing depends on a Prometheus
//! being installed. Once per status period per resource (the reconciles in between reuse the
//! last reading, [`crate::context::Context::recent_figures`]), every running pod with an IP at
//! once (at most [`CONCURRENT_READS`] in flight), each within [`READ_TIMEOUT`]: a pod that does
//! not answer in time is left out and counted ([`Reports::unanswered`]).

use std::borrow::Borrow;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use futures::StreamExt;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use pipewright_crds::conditions::{
    DELIVERING, DELIVERY_FAILING, DELIVERY_FAILING_AFTER, DELIVERY_SUCCEEDING, NO_WORKER_REPORT,
};
use pipewright_crds::event_consumer::ConsumerCounters;
use pipewright_crds::worker_report::{REPORT_PATH, WorkerReport};
use tracing::debug;

use crate::status;
use crate::workload::WORKER_PORT;

/// How long one pod may take to answer.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Pods read at once, per resource.
pub const CONCURRENT_READS: usize = 16;
/// The largest report body read (a report is about 500 bytes).
const MAX_REPORT_BYTES: usize = 64 * 1024;
/// How far back readings are kept for the rate.
const HISTORY: SignedDuration = SignedDuration::from_secs(180);
/// The rate is over the readings at least this far apart (or fewer while none is that old).
const RATE_WINDOW: SignedDuration = SignedDuration::from_secs(60);
/// A pod first read within this long of its start counts from its start (its counters began
/// at 0 then); one read later than that needs a second reading.
const FRESH_START: SignedDuration = SignedDuration::from_secs(120);

/// One pod's report.
#[derive(Clone, Debug, PartialEq)]
pub struct PodReport {
    pub uid: String,
    pub report: WorkerReport,
}

/// One reading of a resource's worker pods.
#[derive(Clone, Debug, PartialEq)]
pub struct Reports {
    /// When the operator read them (its clock).
    pub at: Timestamp,
    /// The pods that answered.
    pub pods: Vec<PodReport>,
    /// Running pods with an IP that did not answer a report in time.
    pub unanswered: usize,
    /// Records delivered per minute over the pods that answered ([`Rates::record`]).
    pub processed_last_minute: Option<i64>,
}

impl Reports {
    /// The counters summed over the consumer pods that answered (none answered: absent).
    pub fn counters(&self) -> Option<ConsumerCounters> {
        let mut sum: Option<ConsumerCounters> = None;
        for c in self.pods.iter().filter_map(|p| p.report.consumer.as_ref()) {
            sum.get_or_insert_with(ConsumerCounters::default)
                .add(&c.counters);
        }
        sum
    }

    /// The report of the outbox pod that holds the publisher lock (if one answered).
    pub fn active_publisher(&self) -> Option<&pipewright_crds::worker_report::OutboxReport> {
        self.pods
            .iter()
            .filter_map(|p| p.report.outbox.as_ref())
            .find(|o| o.active)
    }
}

/// A client for plain-HTTP reads of pod IPs.
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A client for [`read`].
pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(READ_TIMEOUT));
    Client::builder(TokioExecutor::new()).build(connector)
}

/// The pods a report is asked of: running, with an IP.
fn reachable<P: Borrow<Pod>>(pods: &[P]) -> Vec<(String, String)> {
    pods.iter()
        .map(Borrow::borrow)
        .filter_map(|pod: &Pod| {
            let status = pod.status.as_ref()?;
            if status.phase.as_deref() != Some("Running") {
                return None;
            }
            Some((pod.metadata.uid.clone()?, status.pod_ip.clone()?))
        })
        .collect()
}

/// Reads the report of every running pod with an IP, concurrently (bounded), each within
/// [`READ_TIMEOUT`].
pub async fn read<P: Borrow<Pod>>(client: &HttpClient, pods: &[P]) -> Reports {
    let targets = reachable(pods);
    let total = targets.len();
    let answers: Vec<PodReport> = futures::stream::iter(targets)
        .map(|(uid, ip)| async move {
            match tokio::time::timeout(READ_TIMEOUT, read_one(client, &ip)).await {
                Ok(Ok(report)) => Some(PodReport { uid, report }),
                Ok(Err(e)) => {
                    debug!(pod_ip = %ip, error = %e, "no worker report");
                    None
                }
                Err(_) => {
                    debug!(pod_ip = %ip, "no worker report within the timeout");
                    None
                }
            }
        })
        .buffer_unordered(CONCURRENT_READS)
        .filter_map(|r| async move { r })
        .collect()
        .await;
    Reports {
        at: Timestamp::now(),
        unanswered: total - answers.len(),
        pods: answers,
        processed_last_minute: None,
    }
}

async fn read_one(client: &HttpClient, ip: &str) -> Result<WorkerReport, String> {
    // An IPv6 pod IP is written in brackets.
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let uri: hyper::Uri = format!("http://{host}:{WORKER_PORT}{REPORT_PATH}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let response = client.get(uri).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_REPORT_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("not a worker report: {e}"))
}

/// One earlier reading of a pod's `processed` counter.
#[derive(Clone, Debug, PartialEq)]
struct Sample {
    /// The operator's time of the reading.
    at: Timestamp,
    /// The worker process it was read from.
    start_time: Time,
    processed: i64,
}

/// The earlier readings of one resource's pods, by pod uid: what the delivery rate is
/// computed from.
#[derive(Clone, Debug, Default)]
pub struct Rates {
    by_pod: BTreeMap<String, VecDeque<Sample>>,
}

impl Rates {
    /// Records `reports` and returns the records delivered per minute over the pods that
    /// answered: per pod, the growth of `processed` since the newest earlier reading of the
    /// same process at least [`RATE_WINDOW`] old (the oldest while none is), scaled to a
    /// minute; a process first read within [`FRESH_START`] of its start counts from its
    /// start, on its own clock. Absent when no pod could be counted.
    pub fn record(&mut self, reports: &Reports) -> Option<i64> {
        let now = reports.at;
        let mut total: Option<i64> = None;
        for pod in &reports.pods {
            let Some(consumer) = &pod.report.consumer else {
                continue;
            };
            let processed = consumer.counters.processed;
            let start_time = &pod.report.start_time;
            let history = self.by_pod.entry(pod.uid.clone()).or_default();
            // A restarted container is another process: its counters began again at 0.
            history.retain(|s| &s.start_time == start_time);
            let earlier = history
                .iter()
                .rev()
                .find(|s| now.duration_since(s.at) >= RATE_WINDOW)
                .or_else(|| history.front());
            let since = match earlier {
                Some(s) => Some((processed - s.processed, now.duration_since(s.at))),
                None => {
                    let up = pod.report.report_time.0.duration_since(start_time.0);
                    (up <= FRESH_START).then_some((processed, up))
                }
            };
            if let Some((delta, span)) = since {
                let millis = span.as_millis();
                if millis >= 1000 && delta >= 0 {
                    let per_minute = i128::from(delta) * 60_000 / millis;
                    let per_minute = i64::try_from(per_minute).unwrap_or(i64::MAX);
                    total = Some(total.unwrap_or(0).saturating_add(per_minute));
                }
            }
            history.push_back(Sample {
                at: now,
                start_time: start_time.clone(),
                processed,
            });
        }
        // Forget readings too old to matter, and pods not read for as long.
        for history in self.by_pod.values_mut() {
            while history
                .front()
                .is_some_and(|s| now.duration_since(s.at) > HISTORY)
            {
                history.pop_front();
            }
        }
        self.by_pod.retain(|_, h| !h.is_empty());
        total
    }
}

/// The `Delivering` condition from the latest reading (absent: nothing read).
pub fn delivering(
    reports: Option<&Reports>,
    generation: Option<i64>,
    previous: &[Condition],
    now: Timestamp,
) -> Condition {
    let Some(reports) = reports.filter(|r| !r.pods.is_empty()) else {
        return status::condition_of(
            DELIVERING,
            "Unknown",
            NO_WORKER_REPORT,
            "no worker pod answered with its report".to_string(),
            generation,
            previous,
            now,
        );
    };
    let threshold = SignedDuration::try_from(DELIVERY_FAILING_AFTER).unwrap_or(RATE_WINDOW);
    // Each worker's failing span on its own clock: the clocks need not agree.
    let failing: Vec<(&Time, &str)> = reports
        .pods
        .iter()
        .filter_map(|p| {
            let d = &p.report.delivery;
            let since = d.failing_since.as_ref()?;
            (p.report.report_time.0.duration_since(since.0) > threshold)
                .then(|| (since, d.last_error.as_deref().unwrap_or("error")))
        })
        .collect();
    let answered = reports.pods.len();
    match failing.iter().min_by_key(|(since, _)| since.0) {
        Some((since, error)) => status::condition_of(
            DELIVERING,
            "False",
            DELIVERY_FAILING,
            format!(
                "{} of {answered} worker(s) failing every delivery for more than {}s, the first since {}; last error: {error}",
                failing.len(),
                DELIVERY_FAILING_AFTER.as_secs(),
                since.0,
            ),
            generation,
            previous,
            now,
        ),
        None => status::condition_of(
            DELIVERING,
            "True",
            DELIVERY_SUCCEEDING,
            format!(
                "no worker of {answered} has been failing deliveries for more than {}s",
                DELIVERY_FAILING_AFTER.as_secs()
            ),
            generation,
            previous,
            now,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipewright_crds::worker_report::{ConsumerReport, DeliveryHealth, OutboxReport};

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn consumer(start: i64, now: i64, processed: i64) -> WorkerReport {
        WorkerReport {
            start_time: Time(at(start)),
            report_time: Time(at(now)),
            delivery: DeliveryHealth::default(),
            consumer: Some(ConsumerReport {
                counters: ConsumerCounters {
                    processed,
                    ..ConsumerCounters::default()
                },
            }),
            outbox: None,
        }
    }

    fn reading(now: i64, pods: &[(&str, WorkerReport)]) -> Reports {
        Reports {
            at: at(now),
            pods: pods
                .iter()
                .map(|(uid, r)| PodReport {
                    uid: uid.to_string(),
                    report: r.clone(),
                })
                .collect(),
            unanswered: 0,
            processed_last_minute: None,
        }
    }

    #[test]
    fn counters_sum_over_the_pods_that_answered() {
        let r = reading(
            0,
            &[("a", consumer(-500, 0, 10)), ("b", consumer(-500, 0, 32))],
        );
        assert_eq!(r.counters().unwrap().processed, 42);
        assert_eq!(reading(0, &[]).counters(), None);
    }

    #[test]
    fn the_rate_is_the_growth_since_the_reading_a_minute_ago_per_minute() {
        let mut rates = Rates::default();
        // An old process read for the first time: no rate yet (not since its start).
        assert_eq!(
            rates.record(&reading(0, &[("a", consumer(-3600, 0, 1000))])),
            None
        );
        // 30 s later: the oldest reading while none is a minute old: 300 in 30 s.
        assert_eq!(
            rates.record(&reading(30, &[("a", consumer(-3600, 30, 1300))])),
            Some(600)
        );
        // 60 s after the first: 1200 in 60 s.
        assert_eq!(
            rates.record(&reading(60, &[("a", consumer(-3600, 60, 2200))])),
            Some(1200)
        );
        // 90 s: the newest reading at least 60 s old is the one at 30 s: 600 in 60 s.
        assert_eq!(
            rates.record(&reading(90, &[("a", consumer(-3600, 90, 1900))])),
            Some(600)
        );
    }

    #[test]
    fn a_new_or_restarted_process_counts_from_its_start() {
        let mut rates = Rates::default();
        // Started 20 s ago (its clock), 100 processed: 300 per minute.
        assert_eq!(
            rates.record(&reading(0, &[("a", consumer(-20, 0, 100))])),
            Some(300)
        );
        // Same pod uid, restarted 10 s ago: counts from the new start, not a negative delta.
        assert_eq!(
            rates.record(&reading(30, &[("a", consumer(20, 30, 50))])),
            Some(300)
        );
        // Two pods: the rates add up.
        assert_eq!(
            rates.record(&reading(
                60,
                &[("a", consumer(20, 60, 80)), ("b", consumer(50, 60, 10))]
            )),
            Some(60 + 60)
        );
    }

    fn failing(since: i64, now: i64, error: &str) -> WorkerReport {
        WorkerReport {
            delivery: DeliveryHealth {
                failing_since: Some(Time(at(since))),
                last_error: Some(error.into()),
            },
            ..consumer(-1000, now, 5)
        }
    }

    fn status_of(c: &Condition) -> (&str, &str) {
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn delivering_turns_false_only_after_the_threshold_and_true_on_recovery() {
        let unknown = delivering(None, Some(1), &[], at(0));
        assert_eq!(status_of(&unknown), ("Unknown", NO_WORKER_REPORT));
        let empty = reading(0, &[]);
        assert_eq!(
            status_of(&delivering(Some(&empty), Some(1), &[], at(0))),
            ("Unknown", NO_WORKER_REPORT)
        );
        // Failing for 30 s: not yet.
        let young = reading(30, &[("a", failing(0, 30, "http_status_503"))]);
        let c = delivering(
            Some(&young),
            Some(1),
            std::slice::from_ref(&unknown),
            at(30),
        );
        assert_eq!(status_of(&c), ("True", DELIVERY_SUCCEEDING));
        // Failing for 61 s on one of two workers: False, with the error class.
        let old = reading(
            61,
            &[
                ("a", failing(0, 61, "http_status_503")),
                ("b", consumer(-1000, 61, 9)),
            ],
        );
        let c = delivering(Some(&old), Some(1), &[c], at(61));
        assert_eq!(status_of(&c), ("False", DELIVERY_FAILING));
        assert!(c.message.contains("1 of 2"), "{}", c.message);
        assert!(c.message.contains("http_status_503"), "{}", c.message);
        assert_eq!(c.last_transition_time.0, at(61));
        // Recovered: True again.
        let ok = reading(90, &[("a", consumer(-1000, 90, 9))]);
        let c = delivering(Some(&ok), Some(1), &[c], at(90));
        assert_eq!(status_of(&c), ("True", DELIVERY_SUCCEEDING));
        assert_eq!(c.last_transition_time.0, at(90));
    }

    #[test]
    fn the_failing_span_is_measured_on_the_workers_clock() {
        // The worker's clock is an hour behind the operator's: its 61 s still count as 61 s.
        let r = reading(3600, &[("a", failing(0, 61, "http_timeout"))]);
        let c = delivering(Some(&r), None, &[], at(3600));
        assert_eq!(status_of(&c), ("False", DELIVERY_FAILING));
        let r = reading(3600, &[("a", failing(0, 59, "http_timeout"))]);
        let c = delivering(Some(&r), None, &[], at(3600));
        assert_eq!(status_of(&c), ("True", DELIVERY_SUCCEEDING));
    }

    #[test]
    fn the_active_publisher_is_the_pod_holding_the_lock() {
        let outbox = |active: bool, published: i64| WorkerReport {
            consumer: None,
            outbox: Some(OutboxReport {
                active,
                published_total: published,
                last_publish_time: None,
            }),
            ..consumer(0, 0, 0)
        };
        let r = reading(
            0,
            &[("standby", outbox(false, 0)), ("active", outbox(true, 77))],
        );
        assert_eq!(r.active_publisher().unwrap().published_total, 77);
        let r = reading(0, &[("standby", outbox(false, 0))]);
        assert_eq!(r.active_publisher(), None);
    }

    #[test]
    fn only_running_pods_with_an_ip_are_read() {
        let pod = |uid: &str, phase: &str, ip: Option<&str>| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"uid": uid},
                "status": {"phase": phase, "podIP": ip},
            }))
            .unwrap()
        };
        let pods = [
            pod("a", "Running", Some("10.0.0.1")),
            pod("b", "Pending", None),
            pod("c", "Running", None),
            pod("d", "Failed", Some("10.0.0.4")),
        ];
        assert_eq!(
            reachable(&pods),
            vec![("a".to_string(), "10.0.0.1".to_string())]
        );
    }
}
