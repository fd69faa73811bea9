//! Traces end to end, checked in a real tracing backend: Jaeger (`$JAEGER`, built from its Go
//! module by tests/env/build; OTLP/HTTP in on the node's address, in-memory storage, its query
//! API read here). An application commits an order in a `tracing` span exported by
//! `tracing-opentelemetry`; the Outbox's relay and the EventConsumer's worker export to Jaeger
//! because their resources say `spec.observability.tracing`; the HTTP receiver refuses the
//! first delivery. One trace must hold the whole path with the right parents: the
//! application's span, the relay's, the delivery's, and one HTTP client span per attempt.
//!
//! Needs the local node and the images (`make test` builds them).

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{NODE, Stack, WAIT, bootstrap, event_consumer, outbox, serve_on_node, var};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use pipewright_crds::{EventConsumer, Outbox};
use pipewright_testenv::{create_topic, eventually, unique_name};
use pipewright_worker::outbox::{self, OutboxEvent, Table};
use serde::Serialize;
use serde_json::{Value, json};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// Jaeger all-in-one on free ports (OTLP on the node's address, reachable from the pods;
/// the query API and health check on 127.0.0.1), killed when dropped.
struct Jaeger {
    child: Child,
    /// The OTLP/HTTP base URL.
    otlp: String,
    query: String,
    health: String,
    /// Its log: kept when the test fails.
    log: std::path::PathBuf,
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Jaeger {
    fn start() -> Jaeger {
        let node = var("PIPEWRIGHT_NODE_IP");
        let otlp = format!("{node}:{}", free_port(&node));
        let query = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let health = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let log = std::env::temp_dir().join(unique_name("pw-jaeger") + ".log");
        let child = Command::new(var("JAEGER"))
            .arg(format!("--config=file:{}", var("JAEGER_CONFIG")))
            .env("JAEGER_OTLP", &otlp)
            .env("JAEGER_QUERY", &query)
            .env(
                "JAEGER_QUERY_GRPC",
                format!("127.0.0.1:{}", free_port("127.0.0.1")),
            )
            .env("JAEGER_HEALTH", &health)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start $JAEGER");
        Jaeger {
            child,
            otlp: format!("http://{otlp}"),
            query: format!("http://{query}"),
            health: format!("http://{health}/status"),
            log,
        }
    }

    fn get(url: &str) -> Option<Value> {
        let out = Command::new("curl").args(["-fsS", url]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    async fn ready(&self) {
        let url = self.health.clone();
        eventually("Jaeger healthy", Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                tokio::task::spawn_blocking(move || Jaeger::get(&url))
                    .await
                    .unwrap()
                    .filter(|s| s["healthy"] == true)
            }
        })
        .await;
    }

    /// The trace `id` (32 hex digits) as the query API answers it, once it has `spans` spans.
    async fn trace(&self, id: &str, spans: usize) -> Value {
        let url = format!("{}/api/traces/{id}", self.query);
        eventually(
            &format!("{spans} spans of trace {id} in Jaeger"),
            WAIT,
            || {
                let url = url.clone();
                async move {
                    let trace = tokio::task::spawn_blocking(move || Jaeger::get(&url))
                        .await
                        .unwrap()?;
                    let trace = trace["data"][0].clone();
                    let n = trace["spans"].as_array().map_or(0, Vec::len);
                    assert!(
                        n <= spans,
                        "{n} spans where {spans} were expected: {trace:#}"
                    );
                    (n == spans).then_some(trace)
                }
            },
        )
        .await
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("Jaeger's log: {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// One span of a Jaeger trace: its id, parent (CHILD_OF), service and events.
#[derive(Debug)]
struct Span {
    id: String,
    parent: Option<String>,
    service: String,
    kind: Option<String>,
    events: Vec<Value>,
    /// `http.response.status_code`, on an HTTP request's span.
    status: Option<i64>,
}

fn span(trace: &Value, operation: &str) -> Span {
    let mut all = spans(trace, operation);
    assert_eq!(all.len(), 1, "one span {operation:?} in {trace:#}");
    all.remove(0)
}

fn spans(trace: &Value, operation: &str) -> Vec<Span> {
    trace["spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["operationName"] == operation)
        .map(|s| one_span(trace, s))
        .collect()
}

fn one_span(trace: &Value, s: &Value) -> Span {
    let tag = |key: &str| {
        s["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["key"] == key)
            .and_then(|t| t["value"].as_str().map(str::to_string))
    };
    let status = s["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["key"] == "http.response.status_code")
        .and_then(|t| t["value"].as_i64());
    Span {
        status,
        id: s["spanID"].as_str().unwrap().to_string(),
        parent: s["references"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["refType"] == "CHILD_OF")
            .map(|r| r["spanID"].as_str().unwrap().to_string()),
        service: trace["processes"][s["processID"].as_str().unwrap()]["serviceName"]
            .as_str()
            .unwrap()
            .to_string(),
        kind: tag("span.kind"),
        events: s["logs"].as_array().cloned().unwrap_or_default(),
    }
}

/// The (trace id, span id) of a W3C `traceparent` value.
fn parent_ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "not a traceparent: {traceparent}");
    (parts[1].to_string(), parts[2].to_string())
}

/// What the receiver saw of a request: its answer, `traceparent` and `ce-traceparent`.
type Request = (u16, Option<String>, Option<String>);

#[derive(Serialize)]
#[serde(tag = "event_type")]
enum ShopEvent {
    OrderPlaced { order_id: String },
}

impl OutboxEvent for ShopEvent {
    fn aggregate_type(&self) -> &str {
        "order"
    }
    fn aggregate_id(&self) -> String {
        let ShopEvent::OrderPlaced { order_id } = self;
        order_id.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_one_trace_spans_the_application_commit_the_outbox_publish_the_consume_with_its_retry_and_each_http_request()
 {
    let _node = NODE.lock().await;
    let jaeger = Jaeger::start();
    jaeger.ready().await;
    let stack = Stack::up("e2e-traces").await;
    let schema = stack.schema.name.clone();
    let topic = create_topic("e2e-traces", 1).await;
    outbox::MIGRATOR
        .run(&stack.schema.pool)
        .await
        .expect("outbox migration");

    // The receiver refuses the first delivery (503), takes the next; keeps each request's
    // trace headers.
    let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
    let app = axum::Router::new().route(
        "/orders",
        axum::routing::post({
            let requests = requests.clone();
            move |headers: axum::http::HeaderMap| {
                let requests = requests.clone();
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let mut requests = requests.lock().unwrap();
                    let status = if requests.is_empty() { 503 } else { 204 };
                    requests.push((status, header("traceparent"), header("ce-traceparent")));
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            }
        }),
    );
    let url = format!("http://{}/orders", serve_on_node(app).await);

    let tracing_spec = json!({"tracing": {"endpoint": jaeger.otlp}});
    let mut relay = outbox("shop", &format!("{schema}.outbox"), &topic);
    relay["spec"]["observability"] = tracing_spec.clone();
    let _: Outbox = stack.apply(relay).await;
    let _: EventConsumer = stack
        .apply(event_consumer(
            "fulfilment",
            json!({
                "kafka": {"bootstrapServers": bootstrap()},
                "topics": [topic],
                "groupId": unique_name("e2e-traces"),
                "events": {"types": [{"name": "OrderPlaced"}], "onUnknownType": "skip"},
                "processing": {"retry": {"backoff": {"initial": "100ms", "max": "1s"}}},
                "sink": {"http": {"url": url}},
                "observability": tracing_spec,
            }),
        ))
        .await;
    stack.wait_workers_ready("shop", 1).await;
    stack.wait_workers_ready("fulfilment", 1).await;

    // The application: its own tracer provider (OTLP to the same Jaeger), `tracing` spans
    // bridged by tracing-opentelemetry, the order committed inside the span.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", jaeger.otlp))
        .with_http_client(
            opentelemetry_http::hyper::HyperClient::with_default_connector(
                Duration::from_secs(10),
                None,
            ),
        )
        .build()
        .unwrap();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter, Tokio).build())
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("shop-application")
                .build(),
        )
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("shop")));
    let trace_id = {
        let _default = tracing::subscriber::set_default(subscriber);
        let span = tracing::info_span!("place order");
        let trace_id = span.context().span().span_context().trace_id().to_string();
        let table = Table::parse(&format!("{schema}.outbox")).unwrap();
        async {
            let mut tx = stack.schema.pool.begin().await.unwrap();
            let event = ShopEvent::OrderPlaced {
                order_id: "o-1".into(),
            };
            outbox::enqueue_into(&mut tx, &table, &event).await.unwrap();
            tx.commit().await.unwrap();
        }
        .instrument(span)
        .await;
        trace_id
    };
    tokio::task::spawn_blocking(move || provider.shutdown())
        .await
        .unwrap()
        .expect("the application's span exported");

    let got = eventually("a refused and an accepted delivery", WAIT, || async {
        let got = requests.lock().unwrap().clone();
        assert!(got.len() <= 2, "more requests than deliveries: {got:?}");
        (got.len() == 2).then_some(got)
    })
    .await;
    let (_, first_parent) = parent_ids(got[0].1.as_deref().expect("a traceparent header"));
    let (_, hop, origin) = &got[1];
    let (hop_trace, hop_parent) = parent_ids(hop.as_deref().expect("a traceparent header"));
    let (origin_trace, origin_span) =
        parent_ids(origin.as_deref().expect("a ce-traceparent header"));
    assert_eq!(
        hop_trace, trace_id,
        "the HTTP request continues the application's trace"
    );
    assert_eq!(origin_trace, trace_id);

    // The application's span, the relay's and the consumer's, in one trace.
    let trace = jaeger.trace(&trace_id, 5).await;
    let commit = span(&trace, "place order");
    let publish = span(&trace, &format!("publish {topic}"));
    let process = span(&trace, &format!("process {topic}"));
    assert_eq!(commit.service, "shop-application");
    assert_eq!(commit.parent, None);
    assert_eq!(publish.service, "shop-outbox");
    assert_eq!(publish.kind.as_deref(), Some("producer"));
    assert_eq!(
        publish.parent.as_deref(),
        Some(commit.id.as_str()),
        "the relay's span is a child of the application's"
    );
    assert_eq!(process.service, "fulfilment-consumer");
    assert_eq!(process.kind.as_deref(), Some("consumer"));
    assert_eq!(
        process.parent.as_deref(),
        Some(publish.id.as_str()),
        "the delivery's span is a child of the relay's"
    );
    // Each attempt an HTTP client span, a child of the delivery's; each request carries its
    // own attempt's context.
    let requests = spans(&trace, "POST");
    assert_eq!(requests.len(), 2, "{trace:#}");
    for request in &requests {
        assert_eq!(request.kind.as_deref(), Some("client"));
        assert_eq!(request.parent.as_deref(), Some(process.id.as_str()));
    }
    let refused = requests
        .iter()
        .find(|r| r.status == Some(503))
        .expect("the 503 attempt");
    let accepted = requests
        .iter()
        .find(|r| r.status == Some(204))
        .expect("the 204 attempt");
    assert_eq!(
        first_parent, refused.id,
        "the refused request's traceparent is its span's"
    );
    assert_eq!(
        hop_parent, accepted.id,
        "the accepted request's traceparent is its span's"
    );
    assert_eq!(
        origin_span, publish.id,
        "the CloudEvents extension carries the event's own context (the record's)"
    );
    // The refused attempt, as an event of the delivery span.
    assert_eq!(process.events.len(), 1, "{:#?}", process.events);
    let fields = process.events[0]["fields"].as_array().unwrap();
    let field = |key: &str| {
        fields
            .iter()
            .find(|f| f["key"] == key)
            .map(|f| f["value"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(field("event"), "delivery attempt failed");
    assert_eq!(field("attempt"), 1);
    assert_eq!(field("error.type"), "http_status_503");
    stack.down().await;
}
