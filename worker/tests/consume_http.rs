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
use common::consume::{ConsumeWorker, TopicReader, committed, group_reaches, produce_steps};
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

/// What the second receiver saw of one request.
#[derive(Debug, Clone)]
struct Arrived {
    n: u64,
    at: std::time::Instant,
    peer: std::net::SocketAddr,
    headers: HeaderMap,
    body: serde_json::Value,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_http_sink_structured_mode_waits_for_retry_after_reuses_connections_and_dead_letters_with_the_answer()
 {
    use axum::extract::ConnectInfo;
    use std::net::SocketAddr;

    let topic = create_topic("ec-http-ce", 1).await;
    let dlq = create_topic("ec-http-ce-dlq", 1).await;
    let group = unique_name("ec-http-ce");
    let total = 8u64;
    let records = (0..total)
        .map(|n| {
            let key = format!("k{n}");
            let value = common::consume::step(&key, n).into_bytes();
            let headers = vec![
                (
                    "traceparent".to_string(),
                    format!("00-{n:032x}-{n:016x}-01"),
                ),
                ("x-internal".to_string(), "not forwarded".to_string()),
            ];
            (Some(key), Some(value), headers)
        })
        .collect();
    common::consume::produce_with_headers(&topic, records).await;
    let dead = TopicReader::start(&dlq, "read_committed");

    let seen: Arc<Mutex<Vec<Arrived>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    let log = seen.clone();
    let app = Router::new().route(
        "/events",
        post(
            move |ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap, body: Bytes| {
                let log = log.clone();
                async move {
                    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let n = body["data"]["n"].as_u64().unwrap_or(u64::MAX);
                    let attempts = {
                        let mut log = log.lock().unwrap();
                        log.push(Arrived {
                            n,
                            at: std::time::Instant::now(),
                            peer,
                            headers,
                            body,
                        });
                        log.iter().filter(|a| a.n == n).count()
                    };
                    let mut answer = axum::http::HeaderMap::new();
                    match n {
                        // Rate-limited once, asked to come back in 2 s.
                        2 if attempts == 1 => {
                            answer.insert("retry-after", "2".parse().unwrap());
                            (
                                StatusCode::TOO_MANY_REQUESTS,
                                answer,
                                "slow down".to_string(),
                            )
                        }
                        // Refused, saying why: dead-lettered with the reason.
                        4 => (
                            StatusCode::BAD_REQUEST,
                            answer,
                            "field 'amount' is missing".to_string(),
                        ),
                        // A body larger than one read: only when it is read to its
                        // end is the connection reused.
                        _ => (StatusCode::OK, answer, "accepted ".repeat(4_000)),
                    }
                }
            },
        ),
    );
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });

    let sink = [
        "--sink",
        "http",
        "--sink-http-url",
        &url,
        "--sink-http-content-mode",
        "structured",
        "--sink-http-ce-source",
        "urn:test:orders",
        "--sink-http-ce-type",
        "com.example.step",
        "--sink-http-forward-headers",
        "traceparent",
    ];
    // A backoff of 10-20 ms: only the Retry-After makes the 429's retry wait 2 s.
    let args = [
        "--dead-letter-topic",
        &dlq,
        "--retry-backoff-initial",
        "10ms",
        "--retry-backoff-max",
        "10s",
        "--concurrency",
        "1",
    ];
    let mut worker = ConsumeWorker::start_with(&topic, &group, &sink, &args, &[]);
    group_reaches(&group, &topic, 1, total as i64).await;
    assert_eq!(worker.sigterm_and_wait().await, 0);

    let seen = seen.lock().unwrap().clone();
    let of = |n: u64| seen.iter().filter(|a| a.n == n).collect::<Vec<_>>();
    let retried = of(2);
    assert_eq!(retried.len(), 2, "429 once, then accepted");
    let waited = retried[1].at - retried[0].at;
    assert!(
        waited >= Duration::from_millis(1_950),
        "the retry came {waited:?} after the 429 that asked for 2 s"
    );
    assert_eq!(of(4).len(), 1, "a 400 is not retried");
    for n in (0..total).filter(|n| ![2, 4].contains(n)) {
        assert_eq!(of(n).len(), 1, "event {n} delivered once");
    }
    let first = of(3)[0];
    assert_eq!(
        first.headers["content-type"],
        "application/cloudevents+json"
    );
    assert_eq!(first.body["specversion"], "1.0");
    assert_eq!(first.body["id"], format!("{topic}/0/3"));
    assert_eq!(first.body["source"], "urn:test:orders");
    assert_eq!(first.body["type"], "com.example.step");
    assert_eq!(first.body["subject"], "k3");
    assert_eq!(first.body["datacontenttype"], "application/json");
    assert_eq!(first.body["data"]["key"], "k3");
    assert!(first.body["time"].is_string());
    assert_eq!(first.headers["idempotency-key"], format!("{topic}/0/3"));
    assert_eq!(
        first.headers["traceparent"],
        format!("00-{:032x}-{:016x}-01", 3, 3)
    );
    assert!(!first.headers.contains_key("x-internal"));
    assert!(!first.headers.contains_key("ce-type"), "structured mode");
    // One request at a time, each answer read to its end: the connection is reused.
    let connections: std::collections::BTreeSet<_> = seen.iter().map(|a| a.peer).collect();
    assert!(
        connections.len() <= 2,
        "{} requests over {} connections",
        seen.len(),
        connections.len()
    );

    // Dead letters are acknowledged before their offsets are committed: all are there.
    dead.caught_up().await;
    let letters = dead.snapshot();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].headers["pipewright.error.kind"],
        "http_status_400"
    );
    assert!(
        letters[0].headers["pipewright.error.message"].contains("field 'amount' is missing"),
        "{:?}",
        letters[0].headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_raw_values_reach_the_http_sink_byte_for_byte_and_a_refused_one_is_dead_lettered_unchanged()
 {
    let topic = create_topic("ec-http-raw", 1).await;
    let dlq = create_topic("ec-http-raw-dlq", 1).await;
    let group = unique_name("ec-http-raw");
    // What JSON mode refuses: bytes that are no UTF-8, text that is no JSON, nothing at all,
    // a protobuf-like value with its content type.
    let every_byte: Vec<u8> = (0..=255u8).rev().collect();
    let values: Vec<(Vec<u8>, Option<&str>)> = vec![
        (every_byte.clone(), None),
        (b"plain text, not JSON".to_vec(), Some("text/plain")),
        (Vec::new(), None),
        (vec![0x08, 0x96, 0x01], Some("application/x-protobuf")),
        (b"{ refused".to_vec(), None),
    ];
    let records = values
        .iter()
        .enumerate()
        .map(|(i, (value, content_type))| {
            let headers = content_type
                .map(|c| vec![("content-type".to_string(), c.to_string())])
                .unwrap_or_default();
            (Some(format!("k{i}")), Some(value.clone()), headers)
        })
        .collect();
    common::consume::produce_with_headers(&topic, records).await;
    let dead = TopicReader::start(&dlq, "read_committed");

    // Every request's ce-id, content type, ce-type and body; the record at offset 4 refused.
    let (url, log) = capture_requests(&["ce-id", "content-type", "ce-type"], |h| {
        if offset_of(&h[0]) == 4 {
            (StatusCode::UNPROCESSABLE_ENTITY, "cannot parse this")
        } else {
            (StatusCode::OK, "")
        }
    })
    .await;

    let sink = ["--sink", "http", "--sink-http-url", &url];
    let args = ["--event-format", "raw", "--dead-letter-topic", &dlq];
    let mut worker = ConsumeWorker::start_with(&topic, &group, &sink, &args, &[]);
    let total = values.len() as i64;
    group_reaches(&group, &topic, 1, total).await;
    assert_eq!(worker.sigterm_and_wait().await, 0);

    // offset -> (content type, ce-type, body)
    let got: HashMap<i64, (String, String, Vec<u8>)> = log
        .lock()
        .unwrap()
        .iter()
        .map(|(h, body)| (offset_of(&h[0]), (h[1].clone(), h[2].clone(), body.clone())))
        .collect();
    for (offset, (value, content_type)) in values.iter().enumerate() {
        let (got_type, ce_type, body) = &got[&(offset as i64)];
        assert_eq!(body, value, "offset {offset}: the value byte for byte");
        assert_eq!(
            got_type,
            content_type.unwrap_or("application/octet-stream"),
            "offset {offset}"
        );
        assert_eq!(ce_type, "pipewright.raw");
    }
    // Dead letters are acknowledged before their offsets are committed: all are there.
    dead.caught_up().await;
    let letters = dead.snapshot();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].value.as_deref(), Some(&b"{ refused"[..]));
    assert_eq!(
        letters[0].headers["pipewright.error.kind"],
        "http_status_422"
    );
    assert!(letters[0].headers["pipewright.error.message"].contains("cannot parse this"));
}

/// `events.format: cloudEvents`: records that are CloudEvents in Kafka's binding — structured
/// (one JSON object, data as JSON or base64) and binary (`ce_` headers, the value as data) —
/// reach the HTTP sink with their own attributes (id, source, type, extensions) and their
/// data byte for byte, in order per key; one that is not a CloudEvent is dead-lettered
/// unchanged, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_cloudevents_in_structured_and_binary_mode_reach_the_http_sink_with_their_own_attributes_and_data()
 {
    let topic = create_topic("ec-http-ce", 1).await;
    let dlq = create_topic("ec-http-ce-dlq", 1).await;
    let group = unique_name("ec-http-ce");
    let structured = |id: &str, data: &str| {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"urn:shop","type":"order.placed","tenant":"eu",{data}}}"#
        )
        .into_bytes()
    };
    let binary_headers = |id: &str, content_type: &str| {
        vec![
            ("ce_specversion".to_string(), "1.0".to_string()),
            ("ce_id".to_string(), id.to_string()),
            ("ce_source".to_string(), "/billing".to_string()),
            ("ce_type".to_string(), "order.paid".to_string()),
            ("ce_tenant".to_string(), "us".to_string()),
            ("content-type".to_string(), content_type.to_string()),
        ]
    };
    let records = vec![
        (
            Some("o-1".to_string()),
            Some(structured("s-1", r#""data":{"order_id": "o-1"}"#)),
            vec![(
                "content-type".to_string(),
                "application/cloudevents+json".to_string(),
            )],
        ),
        (
            Some("o-1".to_string()),
            Some(br#"{"order_id":"o-1","paid":true}"#.to_vec()),
            binary_headers("b-1", "application/json"),
        ),
        (
            Some("o-2".to_string()),
            Some(structured("s-2", r#""data_base64":"AJ+Slg==""#)),
            vec![],
        ),
        (
            Some("o-2".to_string()),
            Some(vec![0, 1, 2, 255]),
            binary_headers("b-2", "application/octet-stream"),
        ),
        (
            Some("o-3".to_string()),
            Some(br#"{"event_type":"order.placed","order_id":"o-3"}"#.to_vec()),
            vec![],
        ),
    ];
    common::consume::produce_with_headers(&topic, records).await;
    let dead = TopicReader::start(&dlq, "read_committed");

    // Every request's ce-id, ce-source, ce-type, ce-tenant, content-type and body.
    let (url, log) = capture_requests(
        &["ce-id", "ce-source", "ce-type", "ce-tenant", "content-type"],
        |_| (StatusCode::NO_CONTENT, ""),
    )
    .await;

    let sink = ["--sink", "http", "--sink-http-url", &url];
    let args = [
        "--event-format",
        "cloudEvents",
        "--event-types",
        "order.placed,order.paid",
        "--dead-letter-topic",
        &dlq,
    ];
    let mut worker = ConsumeWorker::start_with(&topic, &group, &sink, &args, &[]);
    group_reaches(&group, &topic, 1, 5).await;
    assert_eq!(worker.sigterm_and_wait().await, 0);

    // (ce-id, [ce-source, ce-type, ce-tenant, content-type], body), in arrival order.
    let got: Vec<(String, [String; 4], Vec<u8>)> = log
        .lock()
        .unwrap()
        .iter()
        .map(|(h, body)| {
            let attributes = [h[1].clone(), h[2].clone(), h[3].clone(), h[4].clone()];
            (h[0].clone(), attributes, body.clone())
        })
        .collect();
    let by_id: HashMap<&str, (&[String; 4], &[u8])> = got
        .iter()
        .map(|(id, h, body)| (id.as_str(), (h, body.as_slice())))
        .collect();
    assert_eq!(got.len(), 4, "four CloudEvents delivered: {got:?}");
    let expect = [
        (
            "s-1",
            ["urn:shop", "order.placed", "eu", "application/json"],
            &br#"{"order_id": "o-1"}"#[..],
        ),
        (
            "b-1",
            ["/billing", "order.paid", "us", "application/json"],
            &br#"{"order_id":"o-1","paid":true}"#[..],
        ),
        (
            "s-2",
            ["urn:shop", "order.placed", "eu", "application/octet-stream"],
            &[0, 159, 146, 150][..],
        ),
        (
            "b-2",
            ["/billing", "order.paid", "us", "application/octet-stream"],
            &[0, 1, 2, 255][..],
        ),
    ];
    for (id, headers, body) in expect {
        let (got_headers, got_body) = by_id[id];
        assert_eq!(
            got_headers,
            &headers.map(str::to_string),
            "{id}: attributes"
        );
        assert_eq!(got_body, body, "{id}: the data byte for byte");
    }
    // Per key, in order: o-1's structured event before its binary one.
    let order: Vec<&str> = got.iter().map(|(id, _, _)| id.as_str()).collect();
    let position = |id: &str| order.iter().position(|x| *x == id).unwrap();
    assert!(
        position("s-1") < position("b-1") && position("s-2") < position("b-2"),
        "{order:?}"
    );
    // The record that is no CloudEvent: dead-lettered unchanged, with the reason.
    dead.caught_up().await;
    let letters = dead.snapshot();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].value.as_deref(),
        Some(&br#"{"event_type":"order.placed","order_id":"o-3"}"#[..])
    );
    assert_eq!(letters[0].headers["pipewright.error.kind"], "malformed");
    assert!(
        letters[0].headers["pipewright.error.message"].contains("specversion"),
        "{:?}",
        letters[0].headers
    );
}

/// `processing.deadLetterHttp`: the records a dead-letter topic would take — one that is no
/// JSON, one of an undeclared type, one the sink refuses with a 422 — are POSTed to an HTTP
/// destination instead: the record's value byte for byte as the body, the error and the
/// record's origin in `pipewright.*` headers, its own headers as `pipewright.header.*`, the
/// headers Secret's token; the destination's 503 is retried; every offset is committed only
/// after the destination took the letter (the group reaches the end, each letter arrived).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_dead_letters_go_to_an_http_destination_with_the_error_in_headers_retried_until_taken()
 {
    let topic = create_topic("ec-http-dl", 1).await;
    let group = unique_name("ec-http-dl");
    let records: Vec<common::consume::Produced> = vec![
        (
            Some("k0".into()),
            Some(common::consume::step("k0", 0).into_bytes()),
            vec![],
        ),
        (
            Some("k1".into()),
            Some(b"not JSON {".to_vec()),
            vec![("x-origin".into(), "legacy-app".into())],
        ),
        (
            Some("k2".into()),
            Some(br#"{"event_type":"other","n":2}"#.to_vec()),
            vec![],
        ),
        (
            Some("k3".into()),
            Some(common::consume::step("k3", 3).into_bytes()),
            vec![],
        ),
        (
            Some("k4".into()),
            Some(common::consume::step("k4", 4).into_bytes()),
            vec![],
        ),
    ];
    common::consume::produce_with_headers(&topic, records).await;

    // The sink refuses the record at offset 3.
    let (sink_url, _) = capture_requests(&["idempotency-key"], |h| {
        if offset_of(&h[0]) == 3 {
            (StatusCode::UNPROCESSABLE_ENTITY, "n must not be 3")
        } else {
            (StatusCode::OK, "")
        }
    })
    .await;
    // The dead-letter destination is unavailable for its first request.
    const LETTER_HEADERS: &[&str] = &[
        "idempotency-key",
        "pipewright.error.kind",
        "pipewright.error.message",
        "pipewright.original.topic",
        "pipewright.original.partition",
        "pipewright.original.offset",
        "pipewright.original.key",
        "pipewright.attempts",
        "pipewright.header.x-origin",
        "authorization",
        "content-type",
        "pipewright.first.failure.time",
    ];
    static LETTERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let (dead_url, letters) = capture_requests(LETTER_HEADERS, |_| {
        if LETTERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            (StatusCode::SERVICE_UNAVAILABLE, "starting")
        } else {
            (StatusCode::NO_CONTENT, "")
        }
    })
    .await;
    let secret_dir = std::env::temp_dir().join(unique_name("pw-dl-secret"));
    std::fs::create_dir_all(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("authorization"), "Bearer dl-s3cret\n").unwrap();
    let secret = secret_dir.display().to_string();

    let sink = ["--sink", "http", "--sink-http-url", &sink_url];
    let args = [
        "--event-types",
        "step",
        "--dead-letter-url",
        &dead_url,
        "--dead-letter-headers-secret-dir",
        &secret,
        "--dead-letter-timeout",
        "5s",
    ];
    let mut worker = ConsumeWorker::start_with(&topic, &group, &sink, &args, &[]);
    group_reaches(&group, &topic, 1, 5).await;
    assert_eq!(worker.sigterm_and_wait().await, 0);

    let got = letters.lock().unwrap().clone();
    // The first request was answered 503 and sent again: 4 requests, 3 letters.
    assert_eq!(got.len(), 4, "{got:?}");
    let mut by_offset: HashMap<i64, (Vec<String>, Vec<u8>)> = HashMap::new();
    for (h, body) in &got[1..] {
        by_offset.insert(h[5].parse().unwrap(), (h.clone(), body.clone()));
    }
    let refused = &got[0].0[5];
    assert_eq!(
        got.iter().filter(|(h, _)| &h[5] == refused).count(),
        2,
        "the letter answered 503 is sent again"
    );
    let expect = [
        (1, "malformed", b"not JSON {".to_vec(), "0"),
        (
            2,
            "unknown_type",
            br#"{"event_type":"other","n":2}"#.to_vec(),
            "0",
        ),
        (
            3,
            "http_status_422",
            common::consume::step("k3", 3).into_bytes(),
            "1",
        ),
    ];
    for (offset, kind, value, attempts) in expect {
        let (h, body) = by_offset
            .get(&offset)
            .unwrap_or_else(|| panic!("no letter for offset {offset}: {by_offset:?}"));
        assert_eq!(body, &value, "offset {offset}: the value byte for byte");
        assert_eq!(h[0], format!("{topic}/0/{offset}"), "idempotency key");
        assert_eq!(h[1], kind, "offset {offset}");
        assert!(!h[2].is_empty(), "an error message");
        assert_eq!(h[3], topic);
        assert_eq!(h[4], "0");
        assert_eq!(h[6], format!("k{offset}"));
        assert_eq!(h[7], attempts, "offset {offset}");
        assert_eq!(h[9], "Bearer dl-s3cret");
        assert_eq!(h[10], "application/octet-stream");
        assert!(h[11].ends_with('Z'), "an RFC 3339 time: {}", h[11]);
    }
    assert_eq!(by_offset[&1].0[8], "legacy-app", "the record's own header");
    assert!(by_offset[&3].0[2].contains("n must not be 3"));
    assert!(
        !worker.log_text().contains("dl-s3cret"),
        "the secret header reached the log"
    );
    std::fs::remove_dir_all(secret_dir).unwrap();
}

/// What [`capture_requests`] kept of each request: the named headers' values (empty when
/// absent) and the body, in arrival order.
type Captured = Arc<Mutex<Vec<(Vec<String>, Vec<u8>)>>>;

/// Serves `POST /events` on a free local port: keeps `headers`' values and the body of every
/// request, and answers what `answer` says for those values. Returns the URL and the log.
async fn capture_requests(
    headers: &'static [&'static str],
    answer: fn(&[String]) -> (StatusCode, &'static str),
) -> (String, Captured) {
    let log: Captured = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    let kept = log.clone();
    let app = Router::new().route(
        "/events",
        post(move |got: HeaderMap, body: Bytes| {
            let kept = kept.clone();
            async move {
                let values: Vec<String> = headers
                    .iter()
                    .map(|n| {
                        got.get(*n)
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default()
                    })
                    .collect();
                let reply = answer(&values);
                kept.lock().unwrap().push((values, body.to_vec()));
                reply
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, log)
}

/// The offset in a `ce-id` of `<topic>/<partition>/<offset>`.
fn offset_of(ce_id: &str) -> i64 {
    ce_id.rsplit('/').next().unwrap().parse().unwrap()
}
