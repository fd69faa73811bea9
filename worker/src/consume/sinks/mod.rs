//! The sinks of the generic binary, behind one [`Handler`]: [`SinkHandler`] decodes records as
//! [`GenericEvent`]s of the declared types and delivers them to the configured sink.

pub mod discard;
pub mod http;
pub mod kafka;
pub mod log;
pub mod postgres;

use std::time::Duration;

use super::events::{DeclaredTypes, GenericEvent, Handler, HandlerError, Record, Rejection};
use super::offsets::Tp;

/// One configured sink.
#[derive(Debug)]
pub enum Sink {
    Log(log::LogSink),
    Http(Box<http::HttpSink>),
    Kafka(kafka::KafkaSink),
    Postgres(postgres::PostgresSink),
    /// Drops every event (benchmarks, dry runs): the cost of the pipeline alone, or of a slow
    /// handler when it has a delay.
    Discard(discard::DiscardSink),
}

impl Sink {
    /// The sinks that wait on the network deliver through a boxed future: inline, the largest
    /// of them (kilobytes of HTTP and PostgreSQL client state) would size every record's
    /// future, which is built and moved for every record, also by the sinks that never wait.
    async fn deliver(&self, event: &GenericEvent, record: &Record) -> Result<(), HandlerError> {
        match self {
            Sink::Log(s) => s.deliver(event, record),
            Sink::Http(s) => Box::pin(s.deliver(event, record)).await,
            Sink::Kafka(s) => Box::pin(s.deliver(event, record)).await,
            Sink::Postgres(s) => Box::pin(s.deliver(event, record)).await,
            Sink::Discard(s) => {
                s.deliver(record.partition, record.offset).await;
                Ok(())
            }
        }
    }

    /// A delivery that needs no waiting ([`Handler::handle_now`]).
    fn deliver_now(
        &self,
        event: &GenericEvent,
        record: &Record,
    ) -> Option<Result<(), HandlerError>> {
        match self {
            Sink::Log(s) => Some(s.deliver(event, record)),
            Sink::Kafka(s) => s.deliver_now(record),
            Sink::Discard(s) => s.deliver_now().then_some(Ok(())),
            Sink::Http(_) | Sink::Postgres(_) => None,
        }
    }

    async fn committed(&self, offsets: &[(Tp, i64)]) {
        if let Sink::Postgres(s) = self {
            s.prune(offsets).await;
        }
    }

    /// Whether deliveries need the whole event object (else only its type is read).
    fn needs_body(&self) -> bool {
        match self {
            Sink::Log(s) => s.payload,
            Sink::Postgres(_) => true,
            Sink::Http(_) | Sink::Kafka(_) | Sink::Discard(_) => false,
        }
    }

    fn outputs_sent(&self) -> u64 {
        match self {
            Sink::Kafka(s) => s.outputs_sent(),
            _ => 0,
        }
    }

    fn await_outputs(&self, mark: u64, timeout: Duration) -> Result<(), crate::Error> {
        match self {
            Sink::Kafka(s) => s.await_outputs(mark, timeout),
            _ => Ok(()),
        }
    }
}

/// The generic binary's handler: declared event types (with their schemas) and a sink.
#[derive(Debug)]
pub struct SinkHandler {
    pub types: DeclaredTypes,
    pub sink: Sink,
}

impl Handler for SinkHandler {
    type Event = GenericEvent;

    fn decode(&self, record: &Record) -> Result<GenericEvent, Rejection> {
        self.types.decode(record, self.sink.needs_body())
    }

    async fn handle(&self, event: &GenericEvent, record: &Record) -> Result<(), HandlerError> {
        self.sink.deliver(event, record).await
    }

    fn handle_now(
        &self,
        event: &GenericEvent,
        record: &Record,
    ) -> Option<Result<(), HandlerError>> {
        self.sink.deliver_now(event, record)
    }

    async fn committed(&self, offsets: &[(Tp, i64)]) {
        self.sink.committed(offsets).await
    }

    fn outputs_sent(&self) -> u64 {
        self.sink.outputs_sent()
    }

    fn await_outputs(&self, mark: u64, timeout: Duration) -> Result<(), crate::Error> {
        self.sink.await_outputs(mark, timeout)
    }
}
