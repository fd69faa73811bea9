//! Traces: OpenTelemetry spans of the data path, exported over OTLP (HTTP/protobuf), with the
//! W3C trace context (`traceparent`, `tracestate`) carried from the application's transaction
//! to the last sink.
//!
//! **Off by default.** [`init`] turns them on only when the standard variables ask for it:
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and neither
//! `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`. The SDK reads the rest itself:
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`,
//! `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`, `..._TIMEOUT`, `..._COMPRESSION`. The operator renders
//! them from a resource's `spec.observability.tracing` (docs/tracing.md). Only the
//! `http/protobuf` protocol is built in (no gRPC stack): another `OTEL_EXPORTER_OTLP_PROTOCOL`
//! is refused at start. When off, the data path makes no span and record headers pass through
//! as they are (the HTTP sink still copies a record's `traceparent` into the CloudEvents
//! extension: that is the event's context, not a span of the worker's).
//!
//! The spans (OpenTelemetry messaging conventions):
//! - `publish <topic>` (producer), made by the outbox relay for a row whose `headers` carry a
//!   `traceparent` ([`crate::outbox::enqueue`] writes the caller's): a child of the
//!   application's span; the published record carries the relay span's context instead.
//! - `process <topic>` (consumer), one per delivery: a child of the context in the record's
//!   headers, with each retry attempt as an event and an error status when the record is
//!   dead-lettered or stops the consumer. It ends when the record does (delivered, skipped,
//!   dead-lettered, or cancelled by a revocation or shutdown).
//! - The HTTP sink makes a client span per request (attempt), a child of the delivery span,
//!   sends its context as `traceparent` and keeps the event's
//!   own (the record's) in the CloudEvents distributed-tracing extension (`ce-traceparent`,
//!   or `traceparent` in structured mode), as that extension asks; the Kafka sink's output
//!   record carries the delivery span's context.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::global::{self, BoxedTracer};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use pipewright_crds::common::otel_env;

use crate::Error;

/// The W3C trace-context headers, as the propagator writes them.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The instrumentation scope of the worker's spans.
const SCOPE: &str = "pipewright-worker";

static TRACER: OnceLock<BoxedTracer> = OnceLock::new();

/// The exporter, kept to flush and stop it at the end ([`Traces::shutdown`]).
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Exports the spans still buffered and stops the exporter. Call once, at the end.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "flushing the last spans failed");
        }
    }
}

/// Whether the environment asks for traces (see the module documentation).
pub fn requested() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let is = |name: &str, value: &str| {
        std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
    };
    (set(otel_env::TRACES_ENDPOINT) || set(otel_env::ENDPOINT))
        && !is(otel_env::SDK_DISABLED, "true")
        && !is(otel_env::TRACES_EXPORTER, "none")
}

/// Turns traces on when the environment asks for them (see the module documentation); `None`
/// when it does not. Needs a tokio runtime (the exporter runs on it). Call once.
pub fn init() -> Result<Option<Traces>, Error> {
    if !requested() {
        return Ok(None);
    }
    for name in [otel_env::TRACES_PROTOCOL, otel_env::PROTOCOL] {
        if let Ok(protocol) = std::env::var(name)
            && protocol.trim() != otel_env::PROTOCOL_HTTP_PROTOBUF
        {
            return Err(invalid(format!(
                "{name}={protocol:?}: only http/protobuf is supported (OTLP over HTTP, port 4318)"
            )));
        }
    }
    // TLS with the system's roots (an https endpoint), as the HTTP sink.
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| invalid(format!("cannot load the system's root certificates: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(HyperClient::new(https, Duration::from_secs(10), None))
        .build()
        .map_err(|e| invalid(e.to_string()))?;
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let mut resource = Resource::builder();
    let named = std::env::var(otel_env::SERVICE_NAME).is_ok()
        || std::env::var(otel_env::RESOURCE_ATTRIBUTES).is_ok_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name(SCOPE);
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build();
    global::set_text_map_propagator(TraceContextPropagator::new());
    global::set_tracer_provider(provider.clone());
    let _ = TRACER.set(global::tracer(SCOPE));
    tracing::info!("exporting traces over OTLP");
    Ok(Some(Traces { provider }))
}

fn invalid(reason: String) -> Error {
    Error::InvalidConfig {
        field: otel_env::ENDPOINT,
        reason,
    }
}

/// The worker's tracer, when [`init`] turned traces on.
pub fn tracer() -> Option<&'static BoxedTracer> {
    TRACER.get()
}

/// The context carried by Kafka record headers (empty when they carry none).
pub fn extract(headers: &[(String, Option<Vec<u8>>)]) -> Context {
    global::get_text_map_propagator(|p| p.extract(&RecordHeaders(headers)))
}

/// The context carried by JSON headers of an outbox row (empty when they carry none).
pub fn extract_json(headers: &serde_json::Map<String, serde_json::Value>) -> Context {
    global::get_text_map_propagator(|p| p.extract(&JsonHeaders(headers)))
}

/// The trace-context headers of `cx`, as (name, value) pairs: none when `cx` has no span.
pub fn headers_of(cx: &Context) -> Vec<(String, String)> {
    let mut out = Fields(Vec::new());
    if cx.span().span_context().is_valid() {
        // The W3C propagator directly: `enqueue` writes the caller's context also where the
        // process installed no global propagator.
        use opentelemetry::propagation::TextMapPropagator;
        TraceContextPropagator::new().inject_context(cx, &mut out);
    }
    out.0
}

/// Starts the span of one record's delivery (`process <topic>`), a child of the context in
/// its headers.
pub fn start_delivery(
    tracer: &BoxedTracer,
    group: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    headers: &[(String, Option<Vec<u8>>)],
) -> Context {
    let parent = extract(headers);
    let span = tracer
        .span_builder(format!("process {topic}"))
        .with_kind(SpanKind::Consumer)
        .with_attributes([
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.destination.name", topic.to_string()),
            KeyValue::new("messaging.destination.partition.id", partition.to_string()),
            KeyValue::new("messaging.kafka.offset", offset),
            KeyValue::new("messaging.consumer.group.name", group.to_string()),
        ])
        .start_with_context(tracer, &parent);
    parent.with_span(span)
}

/// Starts the relay's span for publishing an outbox row (`publish <topic>`), a child of
/// `parent` (the row's context).
pub fn start_publish(tracer: &BoxedTracer, topic: &str, row_id: &str, parent: &Context) -> Context {
    let span = tracer
        .span_builder(format!("publish {topic}"))
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.destination.name", topic.to_string()),
            KeyValue::new("messaging.message.id", row_id.to_string()),
        ])
        .start_with_context(tracer, parent);
    parent.with_span(span)
}

/// Starts the client span of one HTTP request (an attempt of a delivery), a child of the
/// delivery span `parent`: named after the method, with the URL without its query (a query
/// may hold a token). `None` when traces are off.
pub fn start_http_request(parent: &Context, method: &str, url: &hyper::Uri) -> Option<Context> {
    let tracer = tracer()?;
    let full = format!(
        "{}://{}{}",
        url.scheme_str().unwrap_or("http"),
        url.authority().map_or("", |a| a.as_str()),
        url.path()
    );
    let span = tracer
        .span_builder(method.to_string())
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("url.full", full),
            KeyValue::new("server.address", url.host().unwrap_or_default().to_string()),
        ])
        .start_with_context(tracer, parent);
    Some(parent.with_span(span))
}

/// Ends an HTTP request's span: the answer's status code, an error status when the attempt
/// failed (`error_type` is its dead-letter kind, e.g. `http_status_503`, `http_timeout`).
pub fn end_http_request(cx: &Context, status: Option<u16>, error_type: Option<&str>) {
    let span = cx.span();
    if let Some(code) = status {
        span.set_attribute(KeyValue::new("http.response.status_code", i64::from(code)));
    }
    if let Some(kind) = error_type {
        span.set_attribute(KeyValue::new("error.type", kind.to_string()));
        span.set_status(opentelemetry::trace::Status::error(kind.to_string()));
    }
    span.end();
}

/// Records a failed attempt on a delivery span (an event per attempt).
pub fn attempt_failed(cx: &Context, attempt: u32, kind: &str, message: &str, retry_in: Duration) {
    cx.span().add_event(
        "delivery attempt failed",
        vec![
            KeyValue::new("attempt", i64::from(attempt)),
            KeyValue::new("error.type", kind.to_string()),
            KeyValue::new("exception.message", message.to_string()),
            KeyValue::new("retry_in_ms", retry_in.as_millis() as i64),
        ],
    );
}

/// Marks a delivery span as failed: the record was dead-lettered (`outcome`
/// `dead-lettered`) or stopped the consumer (`poison`).
pub fn delivery_failed(cx: &Context, outcome: &'static str, kind: &str, message: &str) {
    let span = cx.span();
    span.set_attribute(KeyValue::new("pipewright.outcome", outcome));
    span.set_attribute(KeyValue::new("error.type", kind.to_string()));
    span.set_status(opentelemetry::trace::Status::error(format!(
        "{outcome}: {kind}: {message}"
    )));
}

/// Notes on a delivery span how it ended when it was not delivered: `skipped` (not a valid
/// event, skipped by policy) or `cancelled` (revoked or shut down: left uncommitted for
/// the next owner).
pub fn delivery_ended(cx: &Context, outcome: &'static str) {
    cx.span()
        .set_attribute(KeyValue::new("pipewright.outcome", outcome));
}

struct RecordHeaders<'a>(&'a [(String, Option<Vec<u8>>)]);

impl Extractor for RecordHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .and_then(|(_, v)| std::str::from_utf8(v.as_deref()?).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

struct JsonHeaders<'a>(&'a serde_json::Map<String, serde_json::Value>);

impl Extractor for JsonHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .and_then(|(_, v)| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct Fields(Vec<(String, String)>);

impl Injector for Fields {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes an empty `tracestate` when there is none: no header then.
        if !value.is_empty() {
            self.0.push((key.to_string(), value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    fn remote(trace: u128, span: u64) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ))
    }

    #[test]
    fn a_context_written_as_headers_is_read_back_from_record_and_row_headers() {
        let cx = remote(0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331);
        let headers = headers_of(&cx);
        assert_eq!(
            headers,
            [(
                TRACEPARENT.to_string(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string()
            )]
        );
        global::set_text_map_propagator(TraceContextPropagator::new());
        let record: Vec<_> = headers
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone().into_bytes())))
            .collect();
        let row: serde_json::Map<_, _> = headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        for back in [extract(&record), extract_json(&row)] {
            assert_eq!(back.span().span_context(), cx.span().span_context());
        }
    }

    #[test]
    fn no_span_no_headers_and_headers_without_a_context_give_none() {
        assert!(headers_of(&Context::new()).is_empty());
        global::set_text_map_propagator(TraceContextPropagator::new());
        let junk = [(
            "traceparent".to_string(),
            Some(b"not a traceparent".to_vec()),
        )];
        assert!(!extract(&junk).span().span_context().is_valid());
    }
}
