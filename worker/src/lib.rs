//! `pipewright-worker`: the data plane, a library first with a thin binary on top.
//!
//! - [`outbox`]: the transactional outbox (issue #5): the migration, [`outbox::enqueue`] for
//!   the application's transaction, and the [`outbox::Poller`] that publishes to Kafka. Its
//!   guarantees are stated in its module documentation.
//! - [`consume`]: the Kafka consumer pipeline (issue #4): typed events ([`consume::Handler`]),
//!   a bounded, key-ordered pipeline with gap-free offset commits, retries, a dead-letter
//!   topic and sinks. Its guarantees are stated in its module documentation.
//! - [`app`]: what a binary does around a mode (endpoints, signals, exit codes), also for a
//!   custom worker image: `app::consume_with(listen, args, MyHandler)`.
//! - Reusable by every mode: [`config`] (settings from the
//!   environment, the database URL from a Secret), [`kafka`] (librdkafka settings, credentials
//!   from a mounted Secret), [`http`] (`/metrics`, `/healthz`,
//!   `/readyz`), [`shutdown`] (one cancellation token from SIGTERM/SIGINT), [`telemetry`]
//!   (tracing).

pub mod app;
pub mod config;
pub mod consume;
mod error;
pub mod http;
pub mod kafka;
pub mod outbox;
pub mod report;
pub mod shutdown;
pub mod telemetry;
pub mod traces;

pub use error::{Chain, Error};
pub use http::Health;
