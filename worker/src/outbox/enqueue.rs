//! Writing events into the outbox, inside the application's own transaction.
//!
//! The row commits or rolls back with the application's business rows: an event is published
//! if and only if its transaction committed (the poller's guarantees are in the parent module).

use serde::Serialize;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::Table;
use crate::Error;

/// A typed event that belongs to an aggregate. Derive `Serialize` with
/// `#[serde(tag = "event_type")]`: the tag becomes the row's `type` (and the record's `type`
/// header), the whole serialized object its `payload`.
pub trait OutboxEvent: Serialize {
    /// The aggregate's type, e.g. `order` (`aggregatetype`; selects the topic of a template).
    fn aggregate_type(&self) -> &str;
    /// The aggregate's id (`aggregateid`; the Kafka record key, so it keeps the order).
    fn aggregate_id(&self) -> String;
    /// Extra record headers (`headers` column). Default: none.
    fn headers(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        None
    }
}

/// Inserts `event` into the table `outbox` (resolved through the `search_path`) inside `tx`,
/// and returns the row's id (a UUIDv7). Nothing is visible to the poller until `tx` commits.
///
/// The caller's current trace context — its current `tracing` span's when that span is an
/// OpenTelemetry span (`tracing-opentelemetry`), else OpenTelemetry's current context — goes
/// into the row's `headers` as `traceparent`/`tracestate` (W3C), unless the event's own
/// [`OutboxEvent::headers`] set them: the relay and every consumer continue that trace
/// ([`crate::traces`]). Nothing is added when the caller has no span.
pub async fn enqueue<E: OutboxEvent>(
    tx: &mut Transaction<'_, Postgres>,
    event: &E,
) -> Result<Uuid, Error> {
    enqueue_into(tx, &Table::parse("outbox")?, event).await
}

/// Like [`enqueue`], into another outbox table.
pub async fn enqueue_into<E: OutboxEvent>(
    tx: &mut Transaction<'_, Postgres>,
    table: &Table,
    event: &E,
) -> Result<Uuid, Error> {
    let payload = serde_json::to_value(event).map_err(Error::Serialize)?;
    let event_type = payload
        .get("event_type")
        .and_then(|t| t.as_str())
        .ok_or(Error::MissingEventType)?
        .to_string();
    let id = Uuid::now_v7();
    let mut headers = event.headers();
    // The caller's trace context, so the event's trace starts in the caller's transaction.
    // Headers the event sets itself win.
    let trace = crate::traces::headers_of(&current_context());
    if !trace.is_empty() {
        let map = headers.get_or_insert_with(serde_json::Map::new);
        for (name, value) in trace {
            map.entry(name).or_insert(serde_json::Value::String(value));
        }
    }
    let headers = headers.map(serde_json::Value::Object);
    // The table name is validated and quoted; every value is a bind parameter.
    let sql = format!(
        "INSERT INTO {} (id, aggregatetype, aggregateid, type, payload, headers) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        table.quoted()
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(event.aggregate_type())
        .bind(event.aggregate_id())
        .bind(event_type)
        .bind(sqlx::types::Json(payload))
        .bind(headers.map(sqlx::types::Json))
        .execute(&mut **tx)
        .await
        .map_err(Error::Database)?;
    Ok(id)
}

/// The caller's current OpenTelemetry context: its current `tracing` span's, else the one
/// attached with the OpenTelemetry API.
fn current_context() -> opentelemetry::Context {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        cx
    } else {
        opentelemetry::Context::current()
    }
}
