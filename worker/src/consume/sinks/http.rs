//! The HTTP sink: one request per event in CloudEvents 1.0 *binary* content mode: the record's
//! value is the body (`content-type: application/json`), the event's attributes are `ce-*`
//! headers:
//!
//! | header | value |
//! |---|---|
//! | `ce-specversion` | `1.0` |
//! | `ce-id` | `<topic>/<partition>/<offset>` (also in the idempotency header) |
//! | `ce-source` | `/kafka/<topic>` |
//! | `ce-type` | the event's `event_type` |
//! | `ce-time` | the record's timestamp (RFC 3339), when it has one |
//! | `ce-subject` | the record's key, when it is UTF-8 |
//!
//! Outcome: a 2xx answer is done; 429, 5xx, a timeout or a connection failure are retried
//! (backoff, then the dead-letter topic); any other status (4xx, 3xx: redirects are not
//! followed) is dead-lettered at once. The receiver deduplicates redeliveries (at least once)
//! with the idempotency header (default `Idempotency-Key`).
//!
//! The headers from `headersSecretRef` (one file per header in a mounted Secret) are sent with
//! every request and never logged. The CloudEvents attributes are written directly (a handful
//! of headers) rather than through cloudevents-sdk, whose HTTP bindings target other client
//! stacks than the hyper client used here.

use std::time::Duration;

use bytes::Bytes;
use chrono::{SecondsFormat, TimeZone, Utc};
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use pipewright_crds::worker_config::HttpMethod;

use crate::Error;
use crate::consume::events::{GenericEvent, HandlerError, Record};

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
        Ok(HttpSinkConfig {
            url,
            method,
            timeout,
            headers: parsed,
            secret_headers,
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

    /// The request for one event.
    pub fn request(
        &self,
        event: &GenericEvent,
        record: &Record,
    ) -> Result<Request<Full<Bytes>>, HandlerError> {
        let id = record.id().to_string();
        let mut builder = Request::builder()
            .method(self.config.method.clone())
            .uri(self.config.url.clone())
            .header("content-type", "application/json")
            .header("ce-specversion", "1.0")
            .header("ce-id", &id)
            .header("ce-source", format!("/kafka/{}", record.topic))
            .header("ce-type", &event.event_type)
            .header(&self.config.idempotency_header, &id);
        if let Some(time) = record
            .timestamp_ms
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        {
            builder = builder.header("ce-time", time.to_rfc3339_opts(SecondsFormat::Millis, true));
        }
        if let Some(subject) = record
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| HeaderValue::try_from(k).ok())
        {
            builder = builder.header("ce-subject", subject);
        }
        for (name, value) in self
            .config
            .headers
            .iter()
            .chain(&self.config.secret_headers)
        {
            builder = builder.header(name, value);
        }
        let body = Bytes::from(record.payload.clone().unwrap_or_default());
        builder
            .body(Full::new(body))
            .map_err(|e| HandlerError::permanent("http_request", e.to_string()))
    }

    pub async fn deliver(&self, event: &GenericEvent, record: &Record) -> Result<(), HandlerError> {
        let request = self.request(event, record)?;
        let response =
            match tokio::time::timeout(self.config.timeout, self.client.request(request)).await {
                Err(_) => {
                    return Err(HandlerError::retryable(
                        "http_timeout",
                        format!("no answer within {:?}", self.config.timeout),
                    ));
                }
                Ok(Err(e)) => return Err(HandlerError::retryable("http_connect", e.to_string())),
                Ok(Ok(response)) => response,
            };
        let status = response.status();
        // The body is not needed; dropping the response frees the connection.
        drop(response);
        if status.is_success() {
            Ok(())
        } else if status.as_u16() == 429 || status.is_server_error() {
            Err(HandlerError::retryable(
                format!("http_status_{}", status.as_u16()),
                format!("the endpoint answered {status}"),
            ))
        } else {
            Err(HandlerError::permanent(
                format!("http_status_{}", status.as_u16()),
                format!("the endpoint answered {status}"),
            ))
        }
    }
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
        std::fs::remove_dir_all(dir).unwrap();
    }
}
