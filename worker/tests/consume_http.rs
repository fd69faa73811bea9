//! The HTTP sink against a local HTTP server: CloudEvents binary mode, retries of 5xx,
//! dead-lettering of 4xx, credentials from a Secret directory that never reach the log.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::consume::{ConsumeWorker, TopicReader, committed, produce_steps};
use pipewright_testenv::{create_topic, eventually, unique_name};

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    headers: HashMap<String, String>,
    n: u64,
}

#[derive(Debug, Clone, Default)]
struct Server {
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn receive(State(server): State<Server>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let n = value["n"].as_u64().unwrap_or(u64::MAX);
    let headers = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let attempts = {
        let mut seen = server.seen.lock().unwrap();
        seen.push(Seen { headers, n });
        seen.iter().filter(|s| s.n == n).count()
    };
    match n {
        // Refused: dead-lettered at once.
        5 => StatusCode::UNPROCESSABLE_ENTITY,
        // Unavailable twice, then accepted.
        7 if attempts <= 2 => StatusCode::SERVICE_UNAVAILABLE,
        // Rate-limited once.
        9 if attempts <= 1 => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::OK,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_http_sink_sends_cloudevents_retries_5xx_and_429_and_dead_letters_other_4xx() {
    let topic = create_topic("ec-http", 1).await;
    let dlq = create_topic("ec-http-dlq", 1).await;
    let group = unique_name("ec-http");
    let total = 50u64;
    produce_steps(&topic, total, 5).await;
    let dead = TopicReader::start(&dlq, "read_committed");

    let server = Server::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/events", post(receive))
        .with_state(server.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let secret_dir = std::env::temp_dir().join(unique_name("pw-http-secret"));
    std::fs::create_dir_all(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("authorization"), "Bearer s3cret-token\n").unwrap();
    let secret = secret_dir.display().to_string();
    let sink = [
        "--sink",
        "http",
        "--sink-http-url",
        &url,
        "--sink-http-headers",
        "X-Team=payments",
        "--sink-http-headers-secret-dir",
        &secret,
        "--sink-http-timeout",
        "5s",
    ];
    let args = [
        "--dead-letter-topic",
        &dlq,
        "--retry-backoff-initial",
        "20ms",
        "--retry-backoff-max",
        "100ms",
        "--concurrency",
        "8",
    ];
    let mut worker = ConsumeWorker::start_with(&topic, &group, &sink, &args, &[]);
    eventually(
        "every offset committed",
        Duration::from_secs(120),
        || async { (committed(&group, &topic, 1).get(&0) == Some(&(total as i64))).then_some(()) },
    )
    .await;
    let addr = worker.addr;
    let metric = |name: &'static str| async move { common::scrape(addr, name).await };
    assert_eq!(
        metric("pipewright_consumer_processed_total").await,
        Some(49.0)
    );
    assert_eq!(metric("pipewright_consumer_retried_total").await, Some(3.0));
    assert_eq!(
        metric("pipewright_consumer_dead_lettered_total").await,
        Some(1.0)
    );
    assert_eq!(metric("pipewright_consumer_in_flight").await, Some(0.0));
    eventually(
        "per-partition lag is reported",
        Duration::from_secs(30),
        || async {
            let body = common::http_get(addr, "/metrics").await?.1;
            body.lines()
                .any(|l| l.starts_with("pipewright_consumer_lag{") && l.ends_with(" 0"))
                .then_some(())
        },
    )
    .await;
    assert_eq!(worker.sigterm_and_wait().await, 0);

    let seen = server.seen.lock().unwrap().clone();
    let count = |n: u64| seen.iter().filter(|s| s.n == n).count();
    assert_eq!(count(5), 1, "a 422 is not retried");
    assert_eq!(count(7), 3, "503 twice, then accepted");
    assert_eq!(count(9), 2, "429 once, then accepted");
    for n in (0..total).filter(|n| ![5, 7, 9].contains(n)) {
        assert_eq!(count(n), 1, "event {n} delivered once");
    }
    let first = seen.iter().find(|s| s.n == 3).unwrap();
    let h = &first.headers;
    assert_eq!(h["ce-specversion"], "1.0");
    assert_eq!(h["ce-type"], "step");
    assert_eq!(h["ce-id"], format!("{topic}/0/3"));
    assert_eq!(h["idempotency-key"], h["ce-id"]);
    assert_eq!(h["ce-source"], format!("/kafka/{topic}"));
    assert_eq!(h["ce-subject"], "k3");
    assert!(h.contains_key("ce-time"));
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["x-team"], "payments");
    assert_eq!(h["authorization"], "Bearer s3cret-token");

    let letters = eventually(
        "the refused event is dead-lettered",
        Duration::from_secs(30),
        || {
            let s = dead.snapshot();
            async move { (!s.is_empty()).then_some(s) }
        },
    )
    .await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].headers["pipewright.error.kind"],
        "http_status_422"
    );
    assert_eq!(letters[0].headers["pipewright.original.offset"], "5");
    assert_eq!(letters[0].headers["pipewright.attempts"], "1");
    assert!(
        !worker.log_text().contains("s3cret"),
        "the secret header reached the log"
    );
    std::fs::remove_dir_all(secret_dir).unwrap();
}
