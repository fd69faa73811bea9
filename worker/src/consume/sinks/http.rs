//! The HTTP sink: one request per event, a CloudEvent (1.0, HTTP protocol binding).
//!
//! *Binary* content mode (the default): the record's value is the body
//! (`content-type: application/json`), the event's attributes are `ce-*` headers
//! (percent-encoded where the binding says so). *Structured* mode: the body is the whole
//! event, `content-type: application/cloudevents+json`, with the record's value (checked JSON
//! by the decoder) as `data`, embedded as it is.
//!
//! | attribute | value |
//! |---|---|
//! | `specversion` | `1.0` |
//! | `id` | `<topic>/<partition>/<offset>` (also in the idempotency header) |
//! | `source` | `sink.http.ceSource`, else `/kafka/<topic>` |
//! | `type` | `sink.http.ceType`, else the event's type |
//! | `time` | the record's timestamp (RFC 3339), when it has one |
//! | `subject` | the record's key, when it is UTF-8 |
//!
//! With `events.format: raw` the value is bytes: in binary mode the body as it is, with the
//! record's `content-type` header as the content type (else `application/octet-stream`); in
//! structured mode base64 in `data_base64`, the content type in `datacontenttype`.
//!
//! The record headers named in `sink.http.forwardHeaders` (e.g. `traceparent`) are copied to
//! the request as they are, in both modes.
//!
//! Outcome: a 2xx answer is done; 429, 5xx, a timeout or a connection failure are retried
//! (backoff, then the dead-letter topic), and a 429's or 503's `Retry-After` (seconds or an
//! HTTP date) lengthens the wait before the next attempt up to the retry policy's longest
//! wait; any other status (4xx, 3xx: redirects are not followed) is dead-lettered at once,
//! with the start of the answer's body in the error message. The answer's body is read (up
//! to 64 KiB) so that the connection is reused. The receiver deduplicates redeliveries (at
//! least once) with the idempotency header (default `Idempotency-Key`).
//!
//! The headers from `headersSecretRef` (one file per header in a mounted Secret) are sent with
//! every request and never logged; an answer's body that repeats one of their values has it
//! replaced before it reaches a message. The CloudEvents attributes are written directly (a
//! handful of headers, or one JSON object) rather than through cloudevents-sdk, whose HTTP
//! bindings target other client stacks than the hyper client used here.

use std::time::Duration;

use base64::prelude::{BASE64_STANDARD, Engine as _};
use bytes::Bytes;
use chrono::{SecondsFormat, TimeZone, Utc};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use pipewright_crds::worker_config::{ContentMode, HttpMethod};

use crate::consume::cloudevents::{CloudEvent, Data};
use crate::consume::events::{GenericEvent, HandlerError, Record};
use crate::error::Chain;
use crate::{Error, traces};

/// Settings of the HTTP sink.
#[derive(Clone)]
pub struct HttpSinkConfig {
    pub url: Uri,
    pub method: Method,
    pub timeout: Duration,
    /// Sent with every request (not credentials).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// From the Secret; never shown.
    pub secret_headers: Vec<(HeaderName, HeaderValue)>,
    pub idempotency_header: HeaderName,
    pub content_mode: ContentMode,
    /// Unset: `/kafka/<topic>`.
    pub ce_source: Option<String>,
    /// Unset: the event's type.
    pub ce_type: Option<String>,
    /// Record headers copied to the request.
    pub forward_headers: Vec<HeaderName>,
    /// `events.format: raw`: the value is bytes, sent as they are with the record's
    /// `content-type` header (else `application/octet-stream`), or as `data_base64` in
    /// structured mode.
    pub raw: bool,
}

impl std::fmt::Debug for HttpSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSinkConfig")
            .field("url", &self.url)
            .field("method", &self.method)
            .field("timeout", &self.timeout)
            .field("headers", &self.headers)
            .field(
                "secret_headers",
                &self
                    .secret_headers
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("idempotency_header", &self.idempotency_header)
            .field("content_mode", &self.content_mode)
            .field("ce_source", &self.ce_source)
            .field("ce_type", &self.ce_type)
            .field("forward_headers", &self.forward_headers)
            .field("raw", &self.raw)
            .finish()
    }
}

fn invalid(field: &'static str, reason: String) -> Error {
    Error::InvalidConfig { field, reason }
}

impl HttpSinkConfig {
    /// Checks the settings (`sink.http`) and reads the headers Secret directory (one file per
    /// header).
    pub fn parse(sink: &pipewright_crds::worker_config::HttpSink) -> Result<HttpSinkConfig, Error> {
        let timeout = sink.timeout;
        let url: Uri = sink
            .url
            .parse()
            .map_err(|e| invalid("sink.http.url", format!("not a URL: {e}")))?;
        match url.scheme_str() {
            Some("http" | "https") if url.host().is_some() => {}
            _ => {
                return Err(invalid(
                    "sink.http.url",
                    "must be an absolute http:// or https:// URL".into(),
                ));
            }
        }
        if url.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(invalid(
                "sink.http.url",
                "must not contain credentials (use the headers Secret)".into(),
            ));
        }
        let method = match sink.method {
            HttpMethod::Post => Method::POST,
            HttpMethod::Put => Method::PUT,
        };
        if timeout.is_zero() || timeout > Duration::from_secs(300) {
            return Err(invalid(
                "sink.http.timeout",
                "must be between 1ms and 5m".into(),
            ));
        }
        let header = |field, name: &str, value: &str| -> Result<(HeaderName, HeaderValue), Error> {
            let n = HeaderName::try_from(name)
                .map_err(|_| invalid(field, format!("{name:?} is not a header name")))?;
            let v = HeaderValue::try_from(value).map_err(|_| {
                invalid(
                    field,
                    format!("the value of {name:?} is not a header value"),
                )
            })?;
            Ok((n, v))
        };
        let mut parsed = Vec::new();
        for (name, value) in &sink.headers {
            let lower = name.to_ascii_lowercase();
            if ["authorization", "proxy-authorization", "cookie"].contains(&lower.as_str())
                || lower.ends_with("api-key")
                || lower.ends_with("token")
            {
                return Err(invalid(
                    "sink.http.headers",
                    format!("{name:?} carries credentials: put it in the headers Secret"),
                ));
            }
            parsed.push(header("sink.http.headers", name, value)?);
        }
        let mut secret_headers = Vec::new();
        if let Some(dir) = &sink.headers_secret_dir {
            let field = "sink.http.headersSecretRef";
            let entries = std::fs::read_dir(dir)
                .map_err(|e| invalid(field, format!("cannot read {}: {e}", dir.display())))?;
            let mut names = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| invalid(field, e.to_string()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') {
                    names.push(name);
                }
            }
            names.sort();
            for name in names {
                let value = std::fs::read_to_string(dir.join(&name))
                    .map_err(|e| invalid(field, format!("cannot read key {name:?}: {e}")))?;
                secret_headers.push(header(field, &name, value.trim_end())?);
            }
        }
        let mut forward_headers = Vec::new();
        for name in &sink.forward_headers {
            let lower = name.to_ascii_lowercase();
            if lower.starts_with("ce-")
                || lower.starts_with("ce_")
                || FRAMING.contains(&lower.as_str())
            {
                return Err(invalid(
                    "sink.http.forwardHeaders",
                    format!("{name:?} is a CloudEvents header or one that frames the request"),
                ));
            }
            forward_headers.push(HeaderName::try_from(name.as_str()).map_err(|_| {
                invalid(
                    "sink.http.forwardHeaders",
                    format!("{name:?} is not a header name"),
                )
            })?);
        }
        for (field, value) in [
            ("sink.http.ceSource", &sink.ce_source),
            ("sink.http.ceType", &sink.ce_type),
        ] {
            if value
                .as_deref()
                .is_some_and(|v| v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic()))
            {
                return Err(invalid(
                    field,
                    "must be printable ASCII without spaces".into(),
                ));
            }
        }
        Ok(HttpSinkConfig {
            url,
            method,
            timeout,
            headers: parsed,
            secret_headers,
            content_mode: sink.content_mode,
            ce_source: sink.ce_source.clone(),
            ce_type: sink.ce_type.clone(),
            forward_headers,
            raw: false,
            idempotency_header: HeaderName::try_from(sink.idempotency_header.as_str()).map_err(
                |_| {
                    invalid(
                        "sink.http.idempotencyHeader",
                        format!("{:?} is not a header name", sink.idempotency_header),
                    )
                },
            )?,
        })
    }
}

impl HttpSinkConfig {
    /// The settings of an HTTP dead-letter destination (`processing.deadLetterHttp`), checked
    /// as the sink's are: its URL, timeout and headers Secret.
    pub fn dead_letters(
        d: &pipewright_crds::worker_config::DeadLetterHttp,
    ) -> Result<HttpSinkConfig, Error> {
        let as_sink = pipewright_crds::worker_config::HttpSink {
            url: d.url.clone(),
            method: HttpMethod::Post,
            timeout: d.timeout,
            headers: Default::default(),
            headers_secret_dir: d.headers_secret_dir.clone(),
            idempotency_header: pipewright_crds::common::DEFAULT_IDEMPOTENCY_HEADER.into(),
            content_mode: ContentMode::Binary,
            ce_source: None,
            ce_type: None,
            forward_headers: Vec::new(),
        };
        HttpSinkConfig::parse(&as_sink).map_err(|e| match e {
            Error::InvalidConfig { field, reason } => Error::InvalidConfig {
                field: match field {
                    "sink.http.url" => "processing.deadLetterHttp.url",
                    "sink.http.timeout" => "processing.deadLetterHttp.timeout",
                    "sink.http.headersSecretRef" => "processing.deadLetterHttp.headersSecretDir",
                    other => other,
                },
                reason,
            },
            other => other,
        })
    }
}

/// Delivers each event as a CloudEvent over HTTP(S).
#[derive(Debug, Clone)]
pub struct HttpSink {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    config: HttpSinkConfig,
}

impl HttpSink {
    pub fn new(config: HttpSinkConfig) -> Result<HttpSink, Error> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| Error::Sink {
                sink: "http",
                reason: format!("cannot load the system's root certificates: {e}"),
            })?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(HttpSink { client, config })
    }

    pub fn url(&self) -> &Uri {
        &self.config.url
    }

    pub fn idempotency_header(&self) -> &HeaderName {
        &self.config.idempotency_header
    }

    /// The headers from the headers Secret (never shown).
    pub(crate) fn secret_headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.config.secret_headers
    }

    /// The request for one event.
    pub fn request(
        &self,
        event: &GenericEvent,
        record: &Record,
    ) -> Result<Request<Full<Bytes>>, HandlerError> {
        if let Some(ce) = event.cloud_event.as_deref() {
            return self.cloud_event_request(ce, record);
        }
        let c = &self.config;
        let id = record.id().to_string();
        let source = match &c.ce_source {
            Some(source) => source.clone(),
            None => format!("/kafka/{}", record.topic),
        };
        let ce_type = c.ce_type.as_deref().unwrap_or(&event.event_type);
        let time = record
            .timestamp_ms
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true));
        let subject = record
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok());
        // The CloudEvents distributed-tracing extension: the context the event was made in
        // (the record's own `traceparent`), not this hop's (which goes in the HTTP header).
        let origin = |name: &str| {
            record
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| std::str::from_utf8(v.as_deref()?).ok())
                .filter(|v| !v.is_empty() && v.is_ascii())
        };
        let traceparent = origin(traces::TRACEPARENT);
        let tracestate = traceparent.and(origin(traces::TRACESTATE));
        let mut builder = Request::builder()
            .method(c.method.clone())
            .uri(c.url.clone())
            .header(&c.idempotency_header, &id);
        let content_type = if c.raw {
            raw_content_type(record)
        } else {
            HeaderValue::from_static(JSON)
        };
        let body = match c.content_mode {
            ContentMode::Binary => {
                builder = builder
                    .header("content-type", content_type)
                    .header("ce-specversion", "1.0")
                    .header("ce-id", ce_header(&id))
                    .header("ce-source", ce_header(&source))
                    .header("ce-type", ce_header(ce_type));
                if let Some(time) = &time {
                    builder = builder.header("ce-time", time);
                }
                if let Some(subject) = subject {
                    builder = builder.header("ce-subject", ce_header(subject));
                }
                if let Some(traceparent) = traceparent {
                    builder = builder.header("ce-traceparent", ce_header(traceparent));
                }
                if let Some(tracestate) = tracestate {
                    builder = builder.header("ce-tracestate", ce_header(tracestate));
                }
                Bytes::from(record.payload.clone().unwrap_or_default())
            }
            ContentMode::Structured => {
                builder = builder.header("content-type", "application/cloudevents+json");
                let attributes = Attributes {
                    specversion: "1.0",
                    id: &id,
                    source: &source,
                    ce_type,
                    time: time.as_deref(),
                    subject,
                    datacontenttype: content_type.to_str().unwrap_or(OCTETS),
                    traceparent,
                    tracestate,
                };
                structured(&attributes, record, c.raw)
            }
        };
        self.finish(builder, body, record)
    }

    /// The request for a CloudEvent read from the record (`events.format: cloudEvents`): its
    /// own attributes go on (`ceSource`/`ceType` still override `source`/`type`), its data is
    /// the body (binary) or `data`/`data_base64` (structured).
    fn cloud_event_request(
        &self,
        ce: &CloudEvent,
        record: &Record,
    ) -> Result<Request<Full<Bytes>>, HandlerError> {
        let c = &self.config;
        let attributes = ce.attributes.iter().map(|(name, value)| {
            let overridden = match name.as_str() {
                "source" => c.ce_source.as_deref(),
                "type" => c.ce_type.as_deref(),
                _ => None,
            };
            match overridden {
                Some(v) => (name.as_str(), serde_json::Value::String(v.to_string())),
                None => (name.as_str(), value.clone()),
            }
        });
        let mut builder = Request::builder()
            .method(c.method.clone())
            .uri(c.url.clone())
            .header(&c.idempotency_header, record.id().to_string());
        let body = match c.content_mode {
            ContentMode::Binary => {
                let mut content_type = None;
                for (name, value) in attributes {
                    let text = match &value {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    if name == "datacontenttype" {
                        content_type = Some(text);
                    } else {
                        builder = builder.header(format!("ce-{name}"), ce_header(&text));
                    }
                }
                let content_type = content_type.unwrap_or_else(|| {
                    match &ce.data {
                        Some(Data::Bytes(_)) => OCTETS,
                        _ => JSON,
                    }
                    .to_string()
                });
                builder = builder.header("content-type", content_type);
                Bytes::from(match &ce.data {
                    Some(Data::Json(d) | Data::Bytes(d)) => d.clone(),
                    None => Vec::new(),
                })
            }
            ContentMode::Structured => {
                builder = builder.header("content-type", "application/cloudevents+json");
                let map: serde_json::Map<String, serde_json::Value> =
                    attributes.map(|(k, v)| (k.to_string(), v)).collect();
                let mut body = serde_json::to_vec(&map).expect("attributes serialize");
                match &ce.data {
                    None => {}
                    Some(data) => {
                        // Replace the closing brace with `,"data":<text>}` or
                        // `,"data_base64":"..."}` (the attributes are never empty).
                        body.pop();
                        match data {
                            Data::Json(text) => {
                                body.extend_from_slice(b",\"data\":");
                                body.extend_from_slice(text);
                            }
                            Data::Bytes(bytes) => {
                                body.extend_from_slice(b",\"data_base64\":\"");
                                body.extend_from_slice(BASE64_STANDARD.encode(bytes).as_bytes());
                                body.push(b'"');
                            }
                        }
                        body.push(b'}');
                    }
                }
                Bytes::from(body)
            }
        };
        self.finish(builder, body, record)
    }

    /// What every request carries besides the event: this hop's trace context, the record
    /// headers `forwardHeaders` names, the configured headers.
    fn finish(
        &self,
        mut builder: hyper::http::request::Builder,
        body: Bytes,
        record: &Record,
    ) -> Result<Request<Full<Bytes>>, HandlerError> {
        let c = &self.config;
        // This hop's context: the delivery span's, in place of a forwarded one.
        let hop = record.trace.as_deref().map(traces::headers_of);
        for (name, value) in hop.iter().flatten() {
            builder = builder.header(name, value);
        }
        for (name, value) in &record.headers {
            let Some(value) = value else { continue };
            if hop.is_some()
                && (name.eq_ignore_ascii_case(traces::TRACEPARENT)
                    || name.eq_ignore_ascii_case(traces::TRACESTATE))
            {
                continue;
            }
            let Some(forward) = c
                .forward_headers
                .iter()
                .find(|f| f.as_str().eq_ignore_ascii_case(name))
            else {
                continue;
            };
            // A value HTTP cannot carry (binary, control characters) is left out.
            if let Ok(value) = HeaderValue::from_bytes(value) {
                builder = builder.header(forward, value);
            }
        }
        for (name, value) in c.headers.iter().chain(&c.secret_headers) {
            builder = builder.header(name, value);
        }
        builder
            .body(Full::new(body))
            .map_err(|e| HandlerError::permanent("http_request", e.to_string()))
    }

    pub async fn deliver(&self, event: &GenericEvent, record: &Record) -> Result<(), HandlerError> {
        let mut request = self.request(event, record)?;
        // Traces on: each attempt is a client span, a child of the delivery's, and the request
        // carries its context (in place of the delivery span's).
        let span = record.trace.as_deref().and_then(|cx| {
            traces::start_http_request(cx, request.method().as_str(), &self.config.url)
        });
        if let Some(cx) = &span {
            for (name, value) in traces::headers_of(cx) {
                if let (Ok(name), Ok(value)) = (
                    hyper::header::HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    request.headers_mut().insert(name, value);
                }
            }
        }
        let (status, result) = self.send(request).await;
        if let Some(cx) = &span {
            traces::end_http_request(cx, status, result.as_ref().err().map(|e| e.kind.as_str()));
        }
        result
    }

    /// Sends one request: the answer's status (when there was one) and what it means.
    pub(crate) async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> (Option<u16>, Result<(), HandlerError>) {
        let timeout = self.config.timeout;
        let answer = tokio::time::timeout(timeout, async {
            let response = self.client.request(request).await?;
            Ok::<_, hyper_util::client::legacy::Error>(self.read(response).await)
        })
        .await;
        let (status, retry_after, body) = match answer {
            Err(_) => {
                return (
                    None,
                    Err(HandlerError::retryable(
                        "http_timeout",
                        format!("no answer within {timeout:?}"),
                    )),
                );
            }
            // With its causes: hyper's own text is only "client error (Connect)"; the cause
            // says which (refused, reset, a certificate no root vouches for).
            Ok(Err(e)) => {
                return (
                    None,
                    Err(HandlerError::retryable(
                        failure_kind(&e),
                        Chain(&e).to_string(),
                    )),
                );
            }
            Ok(Ok(answer)) => answer,
        };
        let code = Some(status.as_u16());
        if status.is_success() {
            return (code, Ok(()));
        }
        let kind = format!("http_status_{}", status.as_u16());
        let message = match body {
            Some(body) => format!("the endpoint answered {status}: {body}"),
            None => format!("the endpoint answered {status}"),
        };
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            (
                code,
                Err(HandlerError::retryable(kind, message).with_retry_after(retry_after)),
            )
        } else {
            (code, Err(HandlerError::permanent(kind, message)))
        }
    }

    /// The status, the `Retry-After` of a 429 or 503, and the start of the body of an
    /// answer that is not a 2xx. The body is read to its end (up to [`BODY_LIMIT`]), which
    /// returns the connection to the pool; a longer one is dropped with its connection.
    async fn read(
        &self,
        response: Response<hyper::body::Incoming>,
    ) -> (StatusCode, Option<Duration>, Option<String>) {
        let status = response.status();
        let retry_after = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        )
        .then(|| response.headers().get(RETRY_AFTER))
        .flatten()
        .and_then(|v| retry_after(v, std::time::SystemTime::now()));
        let body = Limited::new(response.into_body(), BODY_LIMIT)
            .collect()
            .await
            .ok()
            .map(|b| b.to_bytes());
        let excerpt = (!status.is_success())
            .then_some(body)
            .flatten()
            .and_then(|b| self.excerpt(&b));
        (status, retry_after, excerpt)
    }

    /// The start of an answer's body for a message: text, at most [`EXCERPT_CHARS`]
    /// characters, with any value of a secret header replaced.
    fn excerpt(&self, body: &[u8]) -> Option<String> {
        let text = String::from_utf8_lossy(body);
        let mut text: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
            .trim()
            .to_string();
        for (_, value) in &self.config.secret_headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            if !value.is_empty() {
                text = text.replace(value.as_ref(), "[redacted]");
            }
        }
        if text.is_empty() {
            return None;
        }
        if text.chars().count() > EXCERPT_CHARS {
            text = text.chars().take(EXCERPT_CHARS).collect::<String>() + "…";
        }
        Some(text)
    }
}

/// Request headers a record header must not set: they frame the request.
const FRAMING: [&str; 10] = [
    "content-type",
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// The most of an answer's body that is read (and so lets the connection be reused).
const BODY_LIMIT: usize = 64 * 1024;

/// The most of an answer's body that goes into an error message (and a dead letter's header).
const EXCERPT_CHARS: usize = 256;

/// What the CloudEvents HTTP binding percent-encodes in a `ce-*` header: space, `"`, `%` and
/// everything outside printable ASCII.
const CE_HEADER: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

fn ce_header(value: &str) -> HeaderValue {
    let encoded = utf8_percent_encode(value, CE_HEADER).to_string();
    // Only printable ASCII is left, which is always a valid header value.
    HeaderValue::try_from(encoded).expect("percent-encoded text is a header value")
}

/// The content type of JSON events.
const JSON: &str = "application/json";

/// The content type of raw values without a `content-type` header.
const OCTETS: &str = "application/octet-stream";

/// A raw value's content type: its record's `content-type` header (a CloudEvent in Kafka's
/// binary mode, many producers' habit), else bytes.
pub(crate) fn raw_content_type(record: &Record) -> HeaderValue {
    record
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .and_then(|(_, v)| v.as_deref())
        .and_then(|v| HeaderValue::from_bytes(v).ok())
        .filter(|v| v.to_str().is_ok())
        .unwrap_or(HeaderValue::from_static(OCTETS))
}

/// The attributes of a structured-mode event.
#[derive(serde::Serialize)]
struct Attributes<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    ce_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    datacontenttype: &'a str,
    /// The distributed-tracing extension.
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracestate: Option<&'a str>,
}

/// A structured-mode body: the attributes, and the record's value as `data` — JSON (checked
/// by the decoder) copied as it is rather than parsed and written again — or, raw, as
/// `data_base64`.
fn structured(attributes: &Attributes<'_>, record: &Record, raw: bool) -> Bytes {
    let mut body = serde_json::to_vec(attributes).expect("attributes serialize");
    if let Some(data) = record.payload.as_deref().filter(|d| raw || !d.is_empty()) {
        // Replace the closing brace with `,"data":<value>}` or `,"data_base64":"..."}`.
        body.pop();
        if raw {
            body.extend_from_slice(b",\"data_base64\":\"");
            body.extend_from_slice(BASE64_STANDARD.encode(data).as_bytes());
            body.extend_from_slice(b"\"}");
        } else {
            body.extend_from_slice(b",\"data\":");
            body.extend_from_slice(data);
            body.push(b'}');
        }
    }
    Bytes::from(body)
}

/// A `Retry-After` value as a wait from `now`: delay-seconds, or an HTTP date (a past date
/// is no wait). `None` when it is neither.
fn retry_after(value: &HeaderValue, now: std::time::SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// The kind of a request that got no answer: `http_tls` when the TLS handshake failed (a
/// certificate no configured root vouches for, an expired one, no common protocol version),
/// `http_connect` for every other failure to connect or send (refused, reset, unresolvable).
fn failure_kind(e: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if err.is::<rustls::Error>() {
            return "http_tls";
        }
        // hyper-rustls wraps tokio-rustls's io::Error (which wraps the handshake's error) in
        // another; an io::Error's `source()` skips what it wraps, `get_ref()` does not.
        cause = match err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    "http_connect"
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipewright_crds::worker_config::HttpSink;

    fn sink(url: &str, headers: std::collections::BTreeMap<String, String>) -> HttpSink {
        HttpSink {
            url: url.into(),
            method: HttpMethod::Post,
            timeout: Duration::from_secs(1),
            headers,
            headers_secret_dir: None,
            idempotency_header: "Idempotency-Key".into(),
            content_mode: ContentMode::Binary,
            ce_source: None,
            ce_type: None,
            forward_headers: vec![],
        }
    }

    fn record(headers: &[(&str, &[u8])]) -> Record {
        Record {
            topic: "orders".into(),
            partition: 2,
            offset: 7,
            key: Some("clé 1".as_bytes().to_vec()),
            payload: Some(br#"{"event_type":"placed","n":1}"#.to_vec()),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), Some(v.to_vec())))
                .collect(),
            timestamp_ms: Some(1_700_000_000_000),
            trace: None,
        }
    }

    fn event() -> GenericEvent {
        GenericEvent {
            event_type: "order placed".into(),
            body: None,
            cloud_event: None,
        }
    }

    fn header<'a>(request: &'a Request<Full<Bytes>>, name: &str) -> Vec<&'a str> {
        request
            .headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn binary_mode_percent_encodes_attributes_and_forwards_only_the_listed_headers() {
        let config = HttpSinkConfig::parse(&HttpSink {
            forward_headers: vec!["traceparent".into(), "X-Tenant".into()],
            ..sink("http://h/x", Default::default())
        })
        .unwrap();
        let sink = super::HttpSink::new(config).unwrap();
        let record = record(&[
            (
                "traceparent",
                b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("x-tenant", b"a"),
            ("X-TENANT", b"b"),
            ("x-internal", b"no"),
            ("x-tenant", b"bad\nvalue"),
        ]);
        let request = sink.request(&event(), &record).unwrap();
        assert_eq!(header(&request, "ce-type"), ["order%20placed"]);
        assert_eq!(header(&request, "ce-subject"), ["cl%C3%A9%201"]);
        assert_eq!(header(&request, "ce-id"), ["orders/2/7"]);
        assert_eq!(header(&request, "ce-source"), ["/kafka/orders"]);
        assert_eq!(header(&request, "ce-time"), ["2023-11-14T22:13:20.000Z"]);
        assert_eq!(header(&request, "content-type"), ["application/json"]);
        assert_eq!(
            header(&request, "traceparent"),
            ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
        );
        assert_eq!(
            header(&request, "x-tenant"),
            ["a", "b"],
            "every valid value"
        );
        assert!(header(&request, "x-internal").is_empty(), "not listed");
    }

    #[test]
    fn structured_mode_sends_the_attributes_and_the_value_as_data_in_one_json_object() {
        let config = HttpSinkConfig::parse(&HttpSink {
            content_mode: ContentMode::Structured,
            ce_source: Some("urn:shop:orders".into()),
            ce_type: Some("com.example.order".into()),
            ..sink("http://h/x", Default::default())
        })
        .unwrap();
        let sink = super::HttpSink::new(config).unwrap();
        let request = sink.request(&event(), &record(&[])).unwrap();
        assert_eq!(
            header(&request, "content-type"),
            ["application/cloudevents+json"]
        );
        assert!(header(&request, "ce-type").is_empty());
        assert_eq!(header(&request, "idempotency-key"), ["orders/2/7"]);
        let body = futures::executor::block_on(request.into_body().collect())
            .unwrap()
            .to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "specversion": "1.0",
                "id": "orders/2/7",
                "source": "urn:shop:orders",
                "type": "com.example.order",
                "time": "2023-11-14T22:13:20.000Z",
                "subject": "clé 1",
                "datacontenttype": "application/json",
                "data": {"event_type": "placed", "n": 1},
            })
        );
    }

    #[test]
    fn a_cloudevent_read_from_the_record_goes_on_with_its_own_attributes_in_either_mode() {
        let mut input = record(&[]);
        input.payload = Some(
            br#"{"specversion":"1.0","id":"evt-1","source":"urn:shop","type":"order.placed",
                "traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "sequence":42,"data":{"order_id": "o-1"}}"#
                .to_vec(),
        );
        let ce = crate::consume::cloudevents::CloudEvent::read(&input).unwrap();
        let event = GenericEvent {
            event_type: "order.placed".into(),
            body: None,
            cloud_event: Some(Box::new(ce)),
        };
        let with = |mode, ce_type: Option<&str>| {
            let config = HttpSinkConfig::parse(&HttpSink {
                content_mode: mode,
                ce_type: ce_type.map(str::to_string),
                ..sink("http://h/x", Default::default())
            })
            .unwrap();
            super::HttpSink::new(config)
                .unwrap()
                .request(&event, &input)
                .unwrap()
        };
        let binary = with(ContentMode::Binary, None);
        assert_eq!(
            header(&binary, "ce-id"),
            ["evt-1"],
            "the event's id, not the record's"
        );
        assert_eq!(header(&binary, "ce-source"), ["urn:shop"]);
        assert_eq!(header(&binary, "ce-type"), ["order.placed"]);
        assert_eq!(header(&binary, "ce-sequence"), ["42"]);
        assert_eq!(
            header(&binary, "ce-traceparent"),
            ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
        );
        assert_eq!(header(&binary, "content-type"), ["application/json"]);
        assert_eq!(header(&binary, "idempotency-key"), ["orders/2/7"]);
        let body = futures::executor::block_on(binary.into_body().collect())
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], br#"{"order_id": "o-1"}"#, "the data as it was");

        let structured = with(ContentMode::Structured, Some("com.example.order"));
        let body = futures::executor::block_on(structured.into_body().collect())
            .unwrap()
            .to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "specversion": "1.0", "id": "evt-1", "source": "urn:shop",
                "type": "com.example.order",
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "sequence": 42, "data": {"order_id": "o-1"},
            }),
            "ceType overrides the type; the rest is the event's"
        );
    }

    #[test]
    fn raw_values_go_as_they_are_with_their_content_type_or_as_data_base64() {
        let raw = |mode| {
            let config = HttpSinkConfig::parse(&HttpSink {
                content_mode: mode,
                ..sink("http://h/x", Default::default())
            })
            .unwrap();
            super::HttpSink::new(HttpSinkConfig {
                raw: true,
                ..config
            })
            .unwrap()
        };
        let bytes = Record {
            payload: Some(vec![0x0a, 0xff, 0x00]),
            ..record(&[("Content-Type", b"application/x-protobuf")])
        };
        let body = |r: Request<Full<Bytes>>| {
            futures::executor::block_on(r.into_body().collect())
                .unwrap()
                .to_bytes()
        };
        let request = raw(ContentMode::Binary).request(&event(), &bytes).unwrap();
        assert_eq!(header(&request, "content-type"), ["application/x-protobuf"]);
        assert_eq!(&body(request)[..], [0x0a, 0xff, 0x00]);
        let untyped = Record {
            headers: vec![],
            ..bytes.clone()
        };
        let request = raw(ContentMode::Binary)
            .request(&event(), &untyped)
            .unwrap();
        assert_eq!(
            header(&request, "content-type"),
            ["application/octet-stream"]
        );

        let request = raw(ContentMode::Structured)
            .request(&event(), &bytes)
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body(request)).unwrap();
        assert_eq!(json["data_base64"], "Cv8A");
        assert_eq!(json["datacontenttype"], "application/x-protobuf");
        assert!(json.get("data").is_none());
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_an_http_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let value = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(retry_after(&value("3"), now), Some(Duration::from_secs(3)));
        assert_eq!(
            retry_after(&value("Tue, 14 Nov 2023 22:13:50 GMT"), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after(&value("Tue, 14 Nov 2023 22:00:00 GMT"), now),
            Some(Duration::ZERO),
            "a date already past"
        );
        assert_eq!(retry_after(&value("soon"), now), None);
        assert_eq!(retry_after(&value("-1"), now), None);
    }

    #[test]
    fn forwarding_cloudevents_or_framing_headers_is_refused() {
        for name in ["ce-type", "CE_ID", "Content-Length", "host"] {
            let parsed = HttpSinkConfig::parse(&HttpSink {
                forward_headers: vec![name.into()],
                ..sink("http://h/x", Default::default())
            });
            assert!(parsed.is_err(), "{name} accepted");
        }
    }

    #[test]
    fn urls_with_credentials_and_credential_headers_are_refused() {
        let parse = |url: &str, headers: &[(&str, &str)]| {
            HttpSinkConfig::parse(&sink(
                url,
                headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ))
        };
        assert!(parse("http://h:8080/x", &[("X-Team", "a")]).is_ok());
        assert!(parse("http://user:pw@h/x", &[]).is_err());
        assert!(parse("ftp://h/x", &[]).is_err());
        assert!(parse("http://h/x", &[("Authorization", "Bearer x")]).is_err());
        assert!(parse("http://h/x", &[("X-Api-Key", "x")]).is_err());
    }

    #[test]
    fn secret_headers_are_never_shown() {
        let dir = std::env::temp_dir().join(format!("pw-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("authorization"), "Bearer s3cret\n").unwrap();
        let config = HttpSinkConfig::parse(&HttpSink {
            method: HttpMethod::Put,
            headers_secret_dir: Some(dir.clone()),
            ..sink("https://h/x", Default::default())
        })
        .unwrap();
        assert_eq!(config.secret_headers[0].1, "Bearer s3cret");
        assert!(!format!("{config:?}").contains("s3cret"));
        let sink = super::HttpSink::new(config).unwrap();
        assert_eq!(
            sink.excerpt(b"denied: you sent 'Bearer s3cret'\n")
                .as_deref(),
            Some("denied: you sent '[redacted]'"),
            "an answer that echoes a secret header"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
