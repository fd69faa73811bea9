//! The dead-letter topic: a record that fails every attempt, or is rejected by the events
//! settings with the `deadLetter` policy, is produced there unchanged (key, value, headers),
//! with these headers added:
//!
//! | header | value |
//! |---|---|
//! | `pipewright.original.topic` / `.partition` / `.offset` | where the record came from |
//! | `pipewright.error.kind` | e.g. `malformed`, `unknown_type`, `http_status_400` |
//! | `pipewright.error.message` | the last error, human-readable (at most 1 KiB) |
//! | `pipewright.attempts` | delivery attempts made (0 for a rejected record) |
//! | `pipewright.first.failure.time` | RFC 3339 time of the first failure |
//!
//! The record is committed only after the dead-letter topic acknowledged it (acks=all).
//!
//! Or an HTTP destination (`processing.deadLetterSink.http`): one `POST` per record, its value
//! the body (`content-type` from the record's own header, else `application/octet-stream`),
//! the same headers as HTTP headers plus `pipewright.original.key` (or
//! `pipewright.original.key-base64` when the key is no valid header value), the record's own
//! headers as `pipewright.header.<name>` (those HTTP can carry) and the idempotency key
//! `<topic>/<partition>/<offset>`. The record is committed only after a 2xx answer; any other
//! outcome is retried (backoff up to [`HTTP_BACKOFF_MAX`]) for up to [`HTTP_GIVE_UP`], then the
//! worker stops without committing it.

use std::time::Duration;

use base64::prelude::{BASE64_STANDARD, Engine as _};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Method, Request};
use percent_encoding::{CONTROLS, utf8_percent_encode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::time::Instant;
use tracing::warn;

use super::events::Record;
use super::retry::RetryPolicy;
use super::sinks::http::{HttpSink, raw_content_type};
use crate::Error;

pub const H_TOPIC: &str = "pipewright.original.topic";
pub const H_PARTITION: &str = "pipewright.original.partition";
pub const H_OFFSET: &str = "pipewright.original.offset";
pub const H_KIND: &str = "pipewright.error.kind";
pub const H_MESSAGE: &str = "pipewright.error.message";
pub const H_ATTEMPTS: &str = "pipewright.attempts";
pub const H_FIRST_FAILURE: &str = "pipewright.first.failure.time";

/// Why a record is dead-lettered.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: String,
    pub message: String,
    pub attempts: u32,
    pub first_failure: DateTime<Utc>,
}

/// Where dead letters go: a topic or an HTTP destination.
#[derive(Clone)]
pub struct DeadLetters {
    target: Target,
}

#[derive(Clone)]
enum Target {
    Topic {
        producer: FutureProducer,
        topic: String,
    },
    Http(Box<HttpSink>),
}

/// The longest wait between two attempts at an HTTP dead-letter destination.
pub const HTTP_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The waits between attempts at an HTTP dead-letter destination: doubling from 100 ms up to
/// [`HTTP_BACKOFF_MAX`], longer when the destination's `Retry-After` asks (up to that maximum
/// too), until [`HTTP_GIVE_UP`] (the attempt count is not the limit).
const HTTP_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: u32::MAX,
    initial: Duration::from_millis(100),
    max: HTTP_BACKOFF_MAX,
};
/// How long an HTTP dead letter is retried before the worker gives up (and stops).
pub const HTTP_GIVE_UP: Duration = Duration::from_secs(300);
/// Prefix of a record's own headers on an HTTP dead letter.
pub const H_HEADER_PREFIX: &str = "pipewright.header.";
pub const H_KEY: &str = "pipewright.original.key";
pub const H_KEY_BASE64: &str = "pipewright.original.key-base64";

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("destination", &self.destination())
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    pub fn new(producer: FutureProducer, topic: String) -> DeadLetters {
        DeadLetters {
            target: Target::Topic { producer, topic },
        }
    }

    /// Dead letters POSTed to `sink`'s URL (its method and CloudEvents settings unused).
    pub fn http(sink: HttpSink) -> DeadLetters {
        DeadLetters {
            target: Target::Http(Box::new(sink)),
        }
    }

    /// The topic, or the URL.
    pub fn destination(&self) -> String {
        match &self.target {
            Target::Topic { topic, .. } => topic.clone(),
            Target::Http(sink) => sink.url().to_string(),
        }
    }

    /// Sends `record` with the failure headers and waits for the acknowledgement.
    pub async fn send(&self, record: &Record, failure: &Failure) -> Result<(), Error> {
        match &self.target {
            Target::Topic { producer, topic } => {
                send_to_topic(producer, topic, record, failure).await
            }
            Target::Http(sink) => send_over_http(sink, record, failure).await,
        }
    }
}

/// The failure headers, in one order for both destinations.
fn failure_headers(record: &Record, failure: &Failure) -> Vec<(&'static str, String)> {
    let mut message = failure.message.clone();
    if message.len() > 1024 {
        let mut cut = 1024;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    vec![
        (H_TOPIC, record.topic.to_string()),
        (H_PARTITION, record.partition.to_string()),
        (H_OFFSET, record.offset.to_string()),
        (H_KIND, failure.kind.clone()),
        (H_MESSAGE, message),
        (H_ATTEMPTS, failure.attempts.to_string()),
        (
            H_FIRST_FAILURE,
            failure
                .first_failure
                .to_rfc3339_opts(SecondsFormat::Millis, true),
        ),
    ]
}

async fn send_to_topic(
    producer: &FutureProducer,
    topic: &str,
    record: &Record,
    failure: &Failure,
) -> Result<(), Error> {
    let mut headers = OwnedHeaders::new();
    for (k, v) in &record.headers {
        headers = headers.insert(Header {
            key: k,
            value: v.as_deref(),
        });
    }
    for (key, value) in failure_headers(record, failure) {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_str()),
        });
    }
    let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
    if let Some(key) = &record.key {
        out = out.key(key.as_slice());
    }
    if let Some(payload) = &record.payload {
        out = out.payload(payload.as_slice());
    }
    producer
        .send(out, Duration::from_secs(30))
        .await
        .map(|_| ())
        .map_err(|(e, _)| Error::Kafka(e))
}

/// The request for one dead letter (see the module's documentation).
pub fn http_request(
    sink: &HttpSink,
    record: &Record,
    failure: &Failure,
) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(sink.url().clone())
        .header(sink.idempotency_header(), record.id().to_string())
        .header(CONTENT_TYPE, raw_content_type(record));
    for (name, value) in failure_headers(record, failure) {
        // The message may hold what a header cannot (control characters): percent-encoded.
        let value = HeaderValue::from_str(&value).unwrap_or_else(|_| {
            HeaderValue::from_str(&utf8_percent_encode(&value, CONTROLS).to_string())
                .unwrap_or_else(|_| HeaderValue::from_static(""))
        });
        builder = builder.header(name, value);
    }
    if let Some(key) = &record.key {
        builder = match HeaderValue::from_bytes(key) {
            Ok(value) => builder.header(H_KEY, value),
            Err(_) => builder.header(H_KEY_BASE64, BASE64_STANDARD.encode(key)),
        };
    }
    for (name, value) in &record.headers {
        let (Some(value), Ok(name)) = (
            value,
            HeaderName::from_bytes(format!("{H_HEADER_PREFIX}{name}").as_bytes()),
        ) else {
            continue;
        };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            builder = builder.header(name, value);
        }
    }
    for (name, value) in sink.secret_headers() {
        builder = builder.header(name, value);
    }
    builder.body(Full::new(Bytes::from(
        record.payload.clone().unwrap_or_default(),
    )))
}

async fn send_over_http(sink: &HttpSink, record: &Record, failure: &Failure) -> Result<(), Error> {
    let give_up = Instant::now() + HTTP_GIVE_UP;
    let mut wait = HTTP_RETRY.initial;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let request = http_request(sink, record, failure).map_err(|e| Error::Sink {
            sink: "deadLetterSink",
            reason: format!("cannot build the request: {e}"),
        })?;
        let error = match sink.send(request).await {
            (_, Ok(())) => return Ok(()),
            (_, Err(e)) => e,
        };
        let pause = HTTP_RETRY.wait(wait, error.retry_after);
        if Instant::now() + pause >= give_up {
            return Err(Error::Sink {
                sink: "deadLetterSink",
                reason: format!(
                    "{} did not take the dead letter of {} in {attempt} attempts over {}s: {} ({})",
                    sink.url(),
                    record.id(),
                    HTTP_GIVE_UP.as_secs(),
                    error.message,
                    error.kind
                ),
            });
        }
        warn!(
            record = %record.id(), attempt, error.kind = %error.kind, error = %error.message,
            retry_in_ms = pause.as_millis() as u64,
            "the dead-letter destination did not take the record; retrying"
        );
        tokio::time::sleep(pause).await;
        wait = (wait * 2).min(HTTP_RETRY.max);
    }
}
