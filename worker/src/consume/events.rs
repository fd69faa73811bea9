//! Typed events: the [`Handler`] trait a library user implements, the decoding of a record into
//! an event (`{"event_type": "...", ...}`), and what happens to a record that is not a valid
//! event ([`Rejection`], [`InvalidPolicy`]).
//!
//! A custom worker declares its events as a `#[serde(tag = "event_type")]` enum and matches on
//! it exhaustively; the generic binary uses [`GenericEvent`] with the event types declared in
//! the EventConsumer (see [`DeclaredTypes`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pipewright_crds::event_consumer::RAW_EVENT_TYPE;
use pipewright_crds::termination::RecordRef;
use serde::de::DeserializeOwned;

use super::FastMap;
use super::cloudevents::CloudEvent;
use super::offsets::Tp;

/// One Kafka record, owned (the pipeline keeps it while it is in flight).
#[derive(Debug, Clone)]
pub struct Record {
    /// Shared by the records of a topic (one allocation per topic, not per record).
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The record's timestamp, milliseconds since the epoch, when it has one.
    pub timestamp_ms: Option<i64>,
    /// The span of this record's delivery, when traces are on ([`crate::traces`]): a child
    /// of the context in its headers. Boxed: records are moved through the pipeline, and with
    /// traces off this costs them one pointer.
    pub trace: Option<Box<opentelemetry::Context>>,
}

impl Record {
    /// The record's coordinates, written `<topic>/<partition>/<offset>`: unique per record,
    /// stable across redeliveries.
    pub fn id(&self) -> RecordRef {
        RecordRef {
            topic: self.topic.to_string(),
            partition: self.partition,
            offset: self.offset,
        }
    }

    /// The key as (lossy) UTF-8, for logs.
    pub fn key_str(&self) -> Option<String> {
        self.key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }
}

/// Why a record is not a valid event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectionKind {
    /// No payload, not JSON, not an object, or no string `event_type`.
    Malformed,
    /// An `event_type` that is not declared.
    UnknownType,
    /// A declared type whose payload does not match its schema (or its Rust type).
    SchemaInvalid,
    /// A payload larger than the configured maximum.
    Oversized,
}

impl RejectionKind {
    /// The value of the dead-letter `error.kind` header and the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionKind::Malformed => "malformed",
            RejectionKind::UnknownType => "unknown_type",
            RejectionKind::SchemaInvalid => "schema_invalid",
            RejectionKind::Oversized => "oversized",
        }
    }
}

/// A record that is not a valid event, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectionKind,
    pub message: String,
    /// The `event_type`, when the record had one.
    pub event_type: Option<String>,
}

/// What happens to a rejected record (`events.onUnknownType`; it applies to every
/// [`RejectionKind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InvalidPolicy {
    /// Park it in the dead-letter topic, go on.
    DeadLetter,
    /// Commit it undelivered, go on.
    Skip,
    /// Stop the worker (the record is not committed).
    Fail,
}

/// A failed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// Whether another attempt may succeed (a timeout, a 5xx) or not (a 4xx).
    pub retryable: bool,
    /// Short machine-readable cause (dead-letter `error.kind` header), e.g. `http_status_500`.
    pub kind: String,
    pub message: String,
    /// The least wait before the next attempt that the other side asked for (an HTTP
    /// `Retry-After`): the retry waits the longer of this and its backoff, up to the retry
    /// policy's longest wait.
    pub retry_after: Option<Duration>,
}

impl HandlerError {
    pub fn retryable(kind: impl Into<String>, message: impl Into<String>) -> HandlerError {
        HandlerError {
            retryable: true,
            kind: kind.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn permanent(kind: impl Into<String>, message: impl Into<String>) -> HandlerError {
        HandlerError {
            retryable: false,
            kind: kind.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// Asks the next attempt to wait at least `wait` (see [`HandlerError::retry_after`]).
    pub fn with_retry_after(mut self, wait: Option<Duration>) -> HandlerError {
        self.retry_after = wait;
        self
    }
}

/// The application's processing of one event type. Implement it for a custom worker:
///
/// ```
/// use pipewright_worker::consume::{Handler, HandlerError, Record};
///
/// #[derive(Debug, serde::Deserialize)]
/// #[serde(tag = "event_type")]
/// enum OrderEvent {
///     OrderPlaced { order_id: String },
///     OrderShipped { order_id: String },
/// }
///
/// struct Orders;
///
/// impl Handler for Orders {
///     type Event = OrderEvent;
///     async fn handle(&self, event: &OrderEvent, _record: &Record) -> Result<(), HandlerError> {
///         match event {
///             OrderEvent::OrderPlaced { order_id } => tracing::info!(order_id, "placed"),
///             OrderEvent::OrderShipped { order_id } => tracing::info!(order_id, "shipped"),
///         }
///         Ok(())
///     }
/// }
/// ```
///
/// `handle` is called again (after a backoff) when it returns a retryable error; it must be
/// idempotent, since delivery is at least once.
pub trait Handler: Send + Sync + 'static {
    /// The events, a `#[serde(tag = "event_type")]` enum.
    type Event: DeserializeOwned + Send + Sync + 'static;

    /// Decodes a record; the default parses the payload as a tagged JSON event.
    fn decode(&self, record: &Record) -> Result<Self::Event, Rejection> {
        decode_tagged(record)
    }

    /// Delivers one event.
    fn handle(
        &self,
        event: &Self::Event,
        record: &Record,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Delivers one event at once when that needs no waiting (a log line, a hand-off to a
    /// producer's queue): `Some` with the result of that attempt. `None` when delivering has
    /// to wait: nothing was done, and [`Handler::handle`] is called instead. Saves the
    /// future of a delivery (built, moved and freed per record). The default is `None`.
    fn handle_now(&self, event: &Self::Event, record: &Record) -> Option<Result<(), HandlerError>> {
        let _ = (event, record);
        None
    }

    /// Called (in the background) after these offsets were committed: the records below them
    /// are never delivered again. For handlers that keep state per record (the PostgreSQL
    /// sink's offsets table). The default does nothing.
    fn committed(&self, offsets: &[(Tp, i64)]) -> impl Future<Output = ()> + Send {
        let _ = offsets;
        async {}
    }

    /// For handlers whose [`Handler::handle`] returns once an output is *sent* rather than
    /// acknowledged (the Kafka sink: its producer keeps the per-key order of what it was
    /// given, so the next record of the key need not wait for the acknowledgement): a mark
    /// covering every output sent so far. Read after the offsets to commit are chosen, so
    /// every record below them sent its outputs before the mark. The default is 0.
    fn outputs_sent(&self) -> u64 {
        0
    }

    /// Blocks until every output sent before `mark` is acknowledged, at most `timeout`. Called
    /// before any offset is committed (periodic, revoke, shutdown), on a blocking thread: an
    /// error means an output may be lost, and nothing is committed (the worker stops; its
    /// restart delivers again from the last commit). On revoke it also makes sure nothing
    /// this worker sent for the partitions arrives after their next owner's outputs. The
    /// default returns at once.
    fn await_outputs(&self, mark: u64, timeout: Duration) -> Result<(), crate::Error> {
        let _ = (mark, timeout);
        Ok(())
    }
}

/// A shared handler is a handler (keep a handle to inspect it, e.g. in tests).
impl<H: Handler> Handler for std::sync::Arc<H> {
    type Event = H::Event;

    fn decode(&self, record: &Record) -> Result<Self::Event, Rejection> {
        (**self).decode(record)
    }

    fn handle(
        &self,
        event: &Self::Event,
        record: &Record,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        (**self).handle(event, record)
    }

    fn handle_now(&self, event: &Self::Event, record: &Record) -> Option<Result<(), HandlerError>> {
        (**self).handle_now(event, record)
    }

    fn committed(&self, offsets: &[(Tp, i64)]) -> impl Future<Output = ()> + Send {
        (**self).committed(offsets)
    }

    fn outputs_sent(&self) -> u64 {
        (**self).outputs_sent()
    }

    fn await_outputs(&self, mark: u64, timeout: Duration) -> Result<(), crate::Error> {
        (**self).await_outputs(mark, timeout)
    }
}

fn malformed(message: String) -> Rejection {
    Rejection {
        kind: RejectionKind::Malformed,
        message,
        event_type: None,
    }
}

fn payload_of(record: &Record) -> Result<&[u8], Rejection> {
    record
        .payload
        .as_deref()
        .ok_or_else(|| malformed("the record has no value".into()))
}

/// Parses the payload as JSON (any value).
fn parse_json(record: &Record) -> Result<serde_json::Value, Rejection> {
    serde_json::from_slice(payload_of(record)?).map_err(|e| malformed(format!("not JSON: {e}")))
}

/// Checks the payload is JSON (any value) without building it. The UTF-8 of the whole text
/// first: serde_json does not check it in the strings it skips.
fn check_json(record: &Record) -> Result<(), Rejection> {
    let text = std::str::from_utf8(payload_of(record)?)
        .map_err(|e| malformed(format!("not JSON: not UTF-8: {e}")))?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(|_| ())
        .map_err(|e| malformed(format!("not JSON: {e}")))
}

/// Parses the payload as a JSON object with a string `event_type`.
pub fn parse_event(record: &Record) -> Result<(String, serde_json::Value), Rejection> {
    // The tree keeps the last of two `event_type`s; the type alone is read first (cheap) to
    // refuse them, as the fast path does.
    if let Some(Err(true)) = record.payload.as_deref().map(event_type_only) {
        return Err(malformed(
            "the object names \"event_type\" more than once".into(),
        ));
    }
    let value = parse_json(record)?;
    let event_type = value
        .get("event_type")
        .and_then(|t| t.as_str())
        .ok_or_else(|| malformed("not a JSON object with a string \"event_type\"".into()))?
        .to_string();
    Ok((event_type, value))
}

/// Decodes a `#[serde(tag = "event_type")]` enum: an unknown variant is
/// [`RejectionKind::UnknownType`], a known one with bad fields [`RejectionKind::SchemaInvalid`].
pub fn decode_tagged<E: DeserializeOwned>(record: &Record) -> Result<E, Rejection> {
    let (event_type, value) = parse_event(record)?;
    serde_json::from_value(value).map_err(|e| {
        let message = e.to_string();
        let kind = if message.starts_with("unknown variant") {
            RejectionKind::UnknownType
        } else {
            RejectionKind::SchemaInvalid
        };
        Rejection {
            kind,
            message,
            event_type: Some(event_type),
        }
    })
}

/// An event of the generic binary: its type and, when the sink needs it, the whole JSON
/// object.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct GenericEvent {
    pub event_type: String,
    /// The whole object; `None` when nothing needs it (the sink sends the record's bytes as
    /// they are, and the type declares no schema): then only `event_type` was read, the rest
    /// was checked to be JSON and skipped, not built into a tree.
    pub body: Option<serde_json::Value>,
    /// The CloudEvent the record is (`events.format: cloudEvents`): its attributes and data,
    /// which the sinks use instead of the record's value. `body` is then its data.
    pub cloud_event: Option<Box<CloudEvent>>,
}

impl TryFrom<serde_json::Value> for GenericEvent {
    type Error = String;

    fn try_from(body: serde_json::Value) -> Result<GenericEvent, String> {
        let event_type = body
            .get("event_type")
            .and_then(|t| t.as_str())
            .ok_or("not a JSON object with a string \"event_type\"")?
            .to_string();
        Ok(GenericEvent {
            event_type,
            body: Some(body),
            cloud_event: None,
        })
    }
}

/// The event type in the record header `name` (UTF-8).
fn header_type(record: &Record, name: &str) -> Result<String, Rejection> {
    let header = record
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_deref())
        .ok_or_else(|| malformed(format!("no header {name:?} (the event type)")))?;
    std::str::from_utf8(header)
        .map(str::to_string)
        .map_err(|_| malformed(format!("the header {name:?} is not UTF-8")))
}

/// Reads `event_type` of a JSON object, checking the rest is JSON without building it.
/// `Err(true)`: the object names `event_type` more than once.
fn event_type_only(payload: &[u8]) -> Result<String, bool> {
    #[derive(serde::Deserialize)]
    struct Tag<'a> {
        #[serde(borrow)]
        event_type: std::borrow::Cow<'a, str>,
    }
    // Found by the `event_decode` fuzz target, each a record the full parse refuses:
    // - a derived struct also deserializes from a JSON array (`["a"]` read as `event_type`
    //   "a"): only an object is an event;
    // - serde_json does not check the UTF-8 of strings it skips (`{"event_type":"a",
    //   "x":"\xE1"}` passed): the whole payload is checked first (JSON text is UTF-8).
    // - an object with `event_type` twice: serde_json's tree keeps the last, this struct
    //   refuses it; two readers of one record must not see two types, so it is malformed
    //   on every path ([`parse_event`] checks too; found by the bad-input catalogue).
    let text = std::str::from_utf8(payload).map_err(|_| false)?;
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Err(false);
    }
    serde_json::from_str::<Tag<'_>>(text)
        .map(|t| t.event_type.into_owned())
        .map_err(|e| e.to_string().starts_with("duplicate field"))
}

/// A JSON Schema check of one declared event type.
pub trait SchemaCheck: Send + Sync + std::fmt::Debug {
    /// `Err(message)` when `value` does not match.
    fn check(&self, value: &serde_json::Value) -> Result<(), String>;
}

/// A compiled JSON Schema (its draft from `$schema`, default 2020-12). Remote `$ref`s are not
/// fetched.
#[derive(Debug)]
pub struct JsonSchema(jsonschema::Validator);

impl JsonSchema {
    /// Compiles `schema`; `Err` says why it is not a valid schema.
    pub fn compile(schema: &serde_json::Value) -> Result<JsonSchema, String> {
        jsonschema::validator_for(schema)
            .map(JsonSchema)
            .map_err(|e| e.to_string())
    }
}

impl SchemaCheck for JsonSchema {
    fn check(&self, value: &serde_json::Value) -> Result<(), String> {
        self.0.validate(value).map_err(|e| {
            let path = e.instance_path().to_string();
            format!("{e} (at {})", if path.is_empty() { "/" } else { &path })
        })
    }
}

/// Where a record's event type is read (`events.typeFrom`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TypeSource {
    /// The `event_type` field of the JSON object (`#[serde(tag = "event_type")]`).
    #[default]
    EventTypeField,
    /// Another top-level string field of the JSON object.
    Field(String),
    /// A record header (its value UTF-8); the value must still be JSON.
    Header(String),
}

/// The event types declared in `events.types`; `None` declares nothing (every event type is
/// accepted unchecked).
#[derive(Debug, Default)]
pub struct DeclaredTypes {
    types: Option<FastMap<String, Option<Box<dyn SchemaCheck>>>>,
    source: TypeSource,
    /// `events.format: raw`: the values are not read (any bytes are an event).
    raw: bool,
    /// `events.format: cloudEvents`: each record is a CloudEvent (binary or structured).
    cloud_events: bool,
}

impl DeclaredTypes {
    /// Accept every event type.
    pub fn any() -> DeclaredTypes {
        DeclaredTypes::default()
    }

    /// `events.format: raw`: any value is an event, delivered as it is; its type is the
    /// [`TypeSource::Header`]'s value, else [`RAW_EVENT_TYPE`] (a [`TypeSource::Field`] is
    /// refused by the configuration's checks; here it is read as no source).
    pub fn with_raw(mut self, raw: bool) -> DeclaredTypes {
        self.raw = raw;
        self
    }

    /// `events.format: cloudEvents`: each record is a CloudEvent in Kafka's binding; its
    /// type is the `type` attribute (a [`TypeSource`] is not used).
    pub fn with_cloud_events(mut self, cloud_events: bool) -> DeclaredTypes {
        self.cloud_events = cloud_events;
        self
    }

    /// Reads the event type from `source` instead of `event_type`.
    pub fn with_source(mut self, source: TypeSource) -> DeclaredTypes {
        self.source = source;
        self
    }

    /// Only these names (without schemas).
    pub fn names<I: IntoIterator<Item = String>>(names: I) -> DeclaredTypes {
        DeclaredTypes {
            types: Some(names.into_iter().map(|n| (n, None)).collect()),
            source: TypeSource::default(),
            raw: false,
            cloud_events: false,
        }
    }

    /// Adds a schema to a declared type.
    pub fn with_schema(mut self, name: &str, check: Box<dyn SchemaCheck>) -> DeclaredTypes {
        self.types
            .get_or_insert_with(FastMap::default)
            .insert(name.to_string(), Some(check));
        self
    }

    /// Decodes a record as a [`GenericEvent`] of a declared type; `body` says whether the
    /// whole object is wanted (a type with a schema builds it anyway, to check it).
    pub fn decode(&self, record: &Record, body: bool) -> Result<GenericEvent, Rejection> {
        if self.cloud_events {
            return self.decode_cloud_event(record, body);
        }
        let (event_type, value) = self.type_and_value(record, body)?;
        self.check_declared(record, event_type, value, body)
    }

    /// A CloudEvent: its type from `type`, the value a schema or a sink sees is its data.
    fn decode_cloud_event(&self, record: &Record, body: bool) -> Result<GenericEvent, Rejection> {
        let event = CloudEvent::read(record).map_err(malformed)?;
        let event_type = event.event_type().to_string();
        let value = if body || self.has_schema(&event_type) {
            Some(event.data_value().map_err(|message| Rejection {
                kind: RejectionKind::Malformed,
                message,
                event_type: Some(event_type.clone()),
            })?)
        } else {
            None
        };
        let mut decoded = self.check_declared(record, event_type, value, body)?;
        decoded.cloud_event = Some(Box::new(event));
        Ok(decoded)
    }

    /// The event type, and the JSON value when it was built (`body`, or a schema to check).
    fn type_and_value(
        &self,
        record: &Record,
        body: bool,
    ) -> Result<(String, Option<serde_json::Value>), Rejection> {
        if self.raw {
            if record.payload.is_none() {
                return Err(malformed("no value (a tombstone)".into()));
            }
            let event_type = match &self.source {
                TypeSource::Header(name) => header_type(record, name)?,
                TypeSource::EventTypeField | TypeSource::Field(_) => RAW_EVENT_TYPE.to_string(),
            };
            return Ok((event_type, None));
        }
        match &self.source {
            TypeSource::EventTypeField => self.event_type_field(record, body),
            TypeSource::Field(name) => {
                let value = parse_json(record)?;
                let event_type = value
                    .get(name)
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| malformed(format!("not a JSON object with a string {name:?}")))?
                    .to_string();
                Ok((event_type, Some(value)))
            }
            TypeSource::Header(name) => {
                let event_type = header_type(record, name)?;
                if body || self.has_schema(&event_type) {
                    Ok((event_type, Some(parse_json(record)?)))
                } else {
                    check_json(record)?;
                    Ok((event_type, None))
                }
            }
        }
    }

    fn event_type_field(
        &self,
        record: &Record,
        body: bool,
    ) -> Result<(String, Option<serde_json::Value>), Rejection> {
        let fast = if body {
            None
        } else {
            record
                .payload
                .as_deref()
                .and_then(|p| event_type_only(p).ok())
                .filter(|t| !self.has_schema(t))
        };
        match fast {
            Some(event_type) => Ok((event_type, None)),
            // Also every bad record: the full parse names what is wrong.
            None => {
                let (event_type, value) = parse_event(record)?;
                Ok((event_type, Some(value)))
            }
        }
    }

    /// Checks the type is declared and, with a schema, the value matches it.
    fn check_declared(
        &self,
        record: &Record,
        event_type: String,
        value: Option<serde_json::Value>,
        body: bool,
    ) -> Result<GenericEvent, Rejection> {
        if let Some(types) = &self.types {
            match types.get(&event_type) {
                None => {
                    return Err(Rejection {
                        kind: RejectionKind::UnknownType,
                        message: format!("event_type {event_type:?} is not declared"),
                        event_type: Some(event_type),
                    });
                }
                Some(Some(schema)) => {
                    // Never `None` here (a type with a schema takes the full parse); parse
                    // anyway rather than assume.
                    let parsed;
                    let value = match &value {
                        Some(v) => v,
                        None => {
                            parsed = parse_json(record)?;
                            &parsed
                        }
                    };
                    if let Err(message) = schema.check(value) {
                        return Err(Rejection {
                            kind: RejectionKind::SchemaInvalid,
                            message,
                            event_type: Some(event_type),
                        });
                    }
                }
                Some(None) => {}
            }
        }
        Ok(GenericEvent {
            event_type,
            body: if body { value } else { None },
            cloud_event: None,
        })
    }

    fn has_schema(&self, event_type: &str) -> bool {
        self.types
            .as_ref()
            .and_then(|t| t.get(event_type))
            .is_some_and(Option::is_some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(payload: &str, header: (&str, &[u8])) -> Record {
        Record {
            headers: vec![(header.0.to_string(), Some(header.1.to_vec()))],
            ..record(payload)
        }
    }

    #[test]
    fn the_event_type_is_read_from_the_configured_header_or_field_and_the_value_must_be_json() {
        let by_header = DeclaredTypes::names(["OrderPaid".to_string()])
            .with_source(TypeSource::Header("type".into()));
        for body in [false, true] {
            let e = by_header
                .decode(
                    &with_header(r#"{"order_id":"o1"}"#, ("type", b"OrderPaid")),
                    body,
                )
                .unwrap();
            assert_eq!(e.event_type, "OrderPaid");
            assert_eq!(e.body.is_some(), body);
        }
        let kind = |r: &Record| by_header.decode(r, false).unwrap_err().kind;
        // No header, a header that is not UTF-8, a value that is not JSON: malformed.
        assert_eq!(
            kind(&record(r#"{"event_type":"OrderPaid"}"#)),
            RejectionKind::Malformed
        );
        assert_eq!(
            kind(&with_header("{}", ("type", b"\xff"))),
            RejectionKind::Malformed
        );
        assert_eq!(
            kind(&with_header("{", ("type", b"OrderPaid"))),
            RejectionKind::Malformed
        );
        let not_utf8 = Record {
            payload: Some(b"\"\xff\"".to_vec()),
            ..with_header("{}", ("type", b"OrderPaid"))
        };
        assert_eq!(kind(&not_utf8), RejectionKind::Malformed);
        // A header naming an undeclared type: unknown, whatever the value says.
        assert_eq!(
            kind(&with_header(
                r#"{"event_type":"OrderPaid"}"#,
                ("type", b"Other")
            )),
            RejectionKind::UnknownType
        );

        let by_field = DeclaredTypes::any().with_source(TypeSource::Field("kind".into()));
        let e = by_field
            .decode(&record(r#"{"kind":"a.b","x":1}"#), false)
            .unwrap();
        assert_eq!(e.event_type, "a.b");
        assert_eq!(
            by_field
                .decode(&record(r#"{"event_type":"a.b"}"#), false)
                .unwrap_err()
                .kind,
            RejectionKind::Malformed
        );
    }

    #[test]
    fn an_object_naming_event_type_twice_is_malformed_on_every_path() {
        let twice = record(r#"{"event_type":"a","n":1,"event_type":"b"}"#);
        let types = DeclaredTypes::any();
        for body in [false, true] {
            let rejected = types.decode(&twice, body).unwrap_err();
            assert_eq!(rejected.kind, RejectionKind::Malformed, "body {body}");
            assert!(rejected.message.contains("more than once"));
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(tag = "event_type")]
        #[allow(dead_code)]
        enum Typed {
            #[serde(rename = "a")]
            A { n: u32 },
            #[serde(rename = "b")]
            B { n: u32 },
        }
        assert_eq!(
            decode_tagged::<Typed>(&twice).unwrap_err().kind,
            RejectionKind::Malformed
        );
    }

    #[test]
    fn raw_values_of_any_bytes_are_events_typed_by_their_header_or_the_raw_type() {
        let bytes = Record {
            payload: Some(vec![0xff, 0x00, b'{', 0x80]),
            ..record("")
        };
        let any = DeclaredTypes::any().with_raw(true);
        for body in [false, true] {
            let e = any.decode(&bytes, body).unwrap();
            assert_eq!(e.event_type, RAW_EVENT_TYPE);
            assert_eq!(e.body, None, "a raw value is never parsed");
        }
        assert!(any.decode(&record(""), false).is_ok(), "an empty value");
        let tombstone = Record {
            payload: None,
            ..record("")
        };
        assert_eq!(
            any.decode(&tombstone, false).unwrap_err().kind,
            RejectionKind::Malformed
        );

        let by_header = DeclaredTypes::names(["Paid".to_string()])
            .with_raw(true)
            .with_source(TypeSource::Header("type".into()));
        let typed = Record {
            headers: vec![("type".into(), Some(b"Paid".to_vec()))],
            ..bytes.clone()
        };
        assert_eq!(by_header.decode(&typed, false).unwrap().event_type, "Paid");
        let other = Record {
            headers: vec![("type".into(), Some(b"Other".to_vec()))],
            ..bytes.clone()
        };
        assert_eq!(
            by_header.decode(&other, false).unwrap_err().kind,
            RejectionKind::UnknownType
        );
        assert_eq!(
            by_header.decode(&bytes, false).unwrap_err().kind,
            RejectionKind::Malformed,
            "no type header"
        );
    }

    fn record(payload: &str) -> Record {
        Record {
            topic: "t".into(),
            partition: 0,
            offset: 1,
            key: None,
            payload: Some(payload.as_bytes().to_vec()),
            headers: vec![],
            timestamp_ms: None,
            trace: None,
        }
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(tag = "event_type")]
    enum Ev {
        A { n: u32 },
    }

    /// Found by the `event_decode` fuzz target: serde reads a derived struct from a JSON
    /// array too, so `["a"]` passed the fast path as an event of type "a"; and it skips a
    /// string without checking its UTF-8. The full parse refused both.
    #[test]
    fn a_json_array_or_invalid_utf8_is_not_an_event_on_any_path() {
        for payload in [r#"["a"]"#, r#" ["A", 1]"#, r#"["A",{"n":1}]"#] {
            let r = record(payload);
            for body in [false, true] {
                let rejected = DeclaredTypes::any().decode(&r, body).unwrap_err();
                assert_eq!(
                    rejected.kind,
                    RejectionKind::Malformed,
                    "{payload} body={body}"
                );
            }
            assert_eq!(
                decode_tagged::<Ev>(&r).unwrap_err().kind,
                RejectionKind::Malformed,
                "{payload}"
            );
        }
        // Invalid UTF-8 in a field the fast path skips is still invalid JSON.
        let mut bad = br#"{"event_type":"a","x":""#.to_vec();
        bad.extend_from_slice(&[0xE1, b'"', b'}']);
        let r = Record {
            payload: Some(bad),
            ..record("")
        };
        for body in [false, true] {
            let rejected = DeclaredTypes::any().decode(&r, body).unwrap_err();
            assert_eq!(rejected.kind, RejectionKind::Malformed, "body={body}");
        }
        // Whitespace before the object is still an object.
        let spaced = record(" \n\t{\"event_type\":\"a\"}");
        assert_eq!(
            DeclaredTypes::any()
                .decode(&spaced, false)
                .unwrap()
                .event_type,
            "a"
        );
    }

    #[test]
    fn typed_decoding_tells_malformed_unknown_and_invalid_apart() {
        assert_eq!(
            decode_tagged::<Ev>(&record(r#"{"event_type":"A","n":1}"#)),
            Ok(Ev::A { n: 1 })
        );
        let kind = |p: &str| decode_tagged::<Ev>(&record(p)).unwrap_err().kind;
        assert_eq!(kind("{not json"), RejectionKind::Malformed);
        assert_eq!(kind(r#"{"n":1}"#), RejectionKind::Malformed);
        assert_eq!(kind(r#"{"event_type":"B"}"#), RejectionKind::UnknownType);
        assert_eq!(
            kind(r#"{"event_type":"A","n":"x"}"#),
            RejectionKind::SchemaInvalid
        );
    }

    #[test]
    fn a_declared_schema_rejects_events_that_do_not_match_it() {
        let schema = serde_json::json!({
            "type": "object",
            "required": ["n"],
            "properties": {"n": {"type": "integer", "minimum": 0}}
        });
        let declared = DeclaredTypes::names(["a".to_string()])
            .with_schema("a", Box::new(JsonSchema::compile(&schema).unwrap()));
        assert!(
            declared
                .decode(&record(r#"{"event_type":"a","n":1}"#), true)
                .is_ok()
        );
        let r = declared
            .decode(&record(r#"{"event_type":"a","n":-1}"#), true)
            .unwrap_err();
        assert_eq!(r.kind, RejectionKind::SchemaInvalid);
        assert!(r.message.contains("/n"), "{}", r.message);
        assert!(JsonSchema::compile(&serde_json::json!({"type": 12})).is_err());
    }

    #[test]
    fn cloudevents_are_typed_by_their_type_attribute_and_a_schema_checks_their_data() {
        let schema = serde_json::json!({"type": "object", "required": ["order_id"]});
        let declared = DeclaredTypes::names(["order.placed".to_string()])
            .with_schema(
                "order.placed",
                Box::new(JsonSchema::compile(&schema).unwrap()),
            )
            .with_cloud_events(true);
        let ce = |ty: &str, data: &str| {
            record(&format!(
                r#"{{"specversion":"1.0","id":"1","source":"s","type":"{ty}","data":{data}}}"#
            ))
        };
        let event = declared
            .decode(&ce("order.placed", r#"{"order_id":"o-1"}"#), true)
            .unwrap();
        assert_eq!(event.event_type, "order.placed");
        assert_eq!(
            event.body,
            Some(serde_json::json!({"order_id": "o-1"})),
            "the body is the data"
        );
        assert_eq!(event.cloud_event.unwrap().text("id"), Some("1"));
        let r = declared
            .decode(&ce("order.placed", r#"{"other":1}"#), false)
            .unwrap_err();
        assert_eq!(r.kind, RejectionKind::SchemaInvalid, "{}", r.message);
        let r = declared.decode(&ce("order.paid", "{}"), false).unwrap_err();
        assert_eq!(r.kind, RejectionKind::UnknownType);
        let r = declared
            .decode(
                &record(r#"{"event_type":"order.placed","order_id":"o"}"#),
                false,
            )
            .unwrap_err();
        assert_eq!(
            r.kind,
            RejectionKind::Malformed,
            "not a CloudEvent: {}",
            r.message
        );
    }

    #[test]
    fn reading_only_the_type_accepts_and_rejects_exactly_what_the_full_parse_does() {
        let declared = DeclaredTypes::names(["a".to_string()]);
        for payload in [
            r#"{"event_type":"a","n":1,"nested":{"x":[1,2,{"y":null}]}}"#,
            r#"{"n":1,"event_type":"a"}"#,
            r#"{"event_type":"a\u0041"}"#,
            r#"{"event_type":"b"}"#,
            r#"{"event_type":1}"#,
            r#"{"event_type":"a","event_type":"b"}"#,
            r#"{"event_type":"a"} trailing"#,
            r#"{"event_type":"a","n":}"#,
            r#"["event_type","a"]"#,
            "not json",
            "",
        ] {
            let full = declared.decode(&record(payload), true);
            let fast = declared.decode(&record(payload), false);
            match (&full, &fast) {
                (Ok(f), Ok(q)) => {
                    assert_eq!(f.event_type, q.event_type, "{payload}");
                    assert!(q.body.is_none() && f.body.is_some(), "{payload}");
                }
                (Err(f), Err(q)) => assert_eq!(f, q, "{payload}"),
                _ => panic!("{payload}: full {full:?}, type only {fast:?}"),
            }
        }
    }

    #[test]
    fn declared_types_reject_undeclared_ones() {
        let declared = DeclaredTypes::names(["a".to_string()]);
        assert!(
            declared
                .decode(&record(r#"{"event_type":"a"}"#), true)
                .is_ok()
        );
        let r = declared
            .decode(&record(r#"{"event_type":"b"}"#), true)
            .unwrap_err();
        assert_eq!(r.kind, RejectionKind::UnknownType);
        assert!(
            DeclaredTypes::any()
                .decode(&record(r#"{"event_type":"b"}"#), true)
                .is_ok()
        );
    }
}
