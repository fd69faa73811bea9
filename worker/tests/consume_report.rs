//! `GET /report` of a consume worker against a local HTTP receiver that is down, then up:
//! the report's counters are the worker's metrics, `failingSince`/`lastError` say deliveries
//! fail while the receiver answers 503 (the error class only: no payload, no URL) and clear
//! once it recovers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use common::consume::{ConsumeWorker, committed, produce};
use pipewright_crds::worker_report::WorkerReport;
use pipewright_testenv::{create_topic, eventually, unique_name};

#[derive(Debug, Clone, Default)]
struct Receiver {
    up: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
}

async fn receive(State(r): State<Receiver>) -> StatusCode {
    r.requests.fetch_add(1, Ordering::Relaxed);
    if r.up.load(Ordering::Relaxed) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn report(addr: std::net::SocketAddr) -> Option<(WorkerReport, String)> {
    let (status, body) = common::http_get(addr, "/report").await?;
    (status == 200).then_some(())?;
    let report = serde_json::from_str(&body).expect("/report is a WorkerReport");
    Some((report, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_report_shows_counters_and_the_failing_sink_while_it_answers_503_and_clears_after_it_recovers()
 {
    let topic = create_topic("ec-report", 1).await;
    let dlq = create_topic("ec-report-dlq", 1).await;
    let group = unique_name("ec-report");
    let total = 20u64;
    // A payload marker and a URL token that must never reach the report.
    let marker = "payload-marker-7f3a";
    let records = (0..total)
        .map(|n| {
            let value =
                format!(r#"{{"event_type":"step","key":"k{n}","n":{n},"note":"{marker}"}}"#);
            (Some(format!("k{n}")), Some(value.into_bytes()))
        })
        .collect();
    produce(&topic, records).await;

    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/events?token=url-token-91c2",
        listener.local_addr().unwrap()
    );
    let app = Router::new()
        .route("/events", post(receive))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let sink = ["--sink", "http", "--sink-http-url", &url];
    // Enough attempts that no record is dead-lettered while the receiver is down.
    let args = [
        "--dead-letter-topic",
        &dlq,
        "--retry-max-attempts",
        "100",
        "--retry-backoff-initial",
        "50ms",
        "--retry-backoff-max",
        "500ms",
    ];
    let mut worker = ConsumeWorker::start_with(&topic, &group, &sink, &args, &[]);
    let addr = worker.addr;

    let (failing, body) = eventually(
        "the report says deliveries fail with http_status_503",
        Duration::from_secs(90),
        || async {
            let (r, body) = report(addr).await?;
            (r.delivery.failing_since.is_some() && r.consumer.as_ref()?.counters.retried >= 3)
                .then_some((r, body))
        },
    )
    .await;
    assert_eq!(
        failing.delivery.last_error.as_deref(),
        Some("http_status_503")
    );
    let counters = &failing.consumer.as_ref().unwrap().counters;
    assert_eq!(counters.processed, 0, "nothing was delivered yet");
    assert_eq!(counters.dead_lettered, 0);
    assert!(failing.outbox.is_none());
    assert!(failing.start_time.0 <= failing.report_time.0);
    assert!(
        failing.delivery.failing_since.as_ref().unwrap().0 <= failing.report_time.0,
        "failingSince lies before the report"
    );
    for secret in [marker, "url-token-91c2", "/events", "127.0.0.1"] {
        assert!(
            !body.contains(secret),
            "{secret} reached the report: {body}"
        );
    }
    // Still failing a while later: failingSince is the first failure, it does not move.
    let before = receiver.requests.load(Ordering::Relaxed);
    eventually("more failed attempts", Duration::from_secs(30), || async {
        (receiver.requests.load(Ordering::Relaxed) >= before + 5).then_some(())
    })
    .await;
    let (later, _) = report(addr).await.unwrap();
    assert_eq!(later.delivery.failing_since, failing.delivery.failing_since);

    receiver.up.store(true, Ordering::Relaxed);
    let (recovered, _) = eventually(
        "every record delivered and the failure cleared",
        Duration::from_secs(60),
        || async {
            let (r, body) = report(addr).await?;
            (r.consumer.as_ref()?.counters.processed == total as i64).then_some((r, body))
        },
    )
    .await;
    assert_eq!(recovered.delivery.failing_since, None);
    assert_eq!(recovered.delivery.last_error, None);
    let counters = &recovered.consumer.as_ref().unwrap().counters;
    // The report's counters are the metrics' counters, not a second count.
    assert_eq!(
        common::scrape(addr, "pipewright_consumer_processed_total").await,
        Some(counters.processed as f64)
    );
    assert_eq!(
        common::scrape(addr, "pipewright_consumer_retried_total").await,
        Some(counters.retried as f64)
    );
    assert_eq!(counters.dead_lettered, 0);
    assert_eq!(recovered.start_time, failing.start_time);
    eventually(
        "every offset committed",
        Duration::from_secs(30),
        || async { (committed(&group, &topic, 1).get(&0) == Some(&(total as i64))).then_some(()) },
    )
    .await;
    assert_eq!(worker.sigterm_and_wait().await, 0);
}
