//! `pipewright-worker`: the data plane, a library first with a thin binary on top.
//!
//! - [`outbox`]: the transactional outbox (issue #5): the migration, [`outbox::enqueue`] for
//!   the application's transaction, and the [`outbox::Poller`] that publishes to Kafka. Its
//!   guarantees are stated in its module documentation.
//! - Reusable by every mode (`outbox` now, `consume` later): [`config`] (settings from the
//!   environment, the database URL from a Secret), [`kafka`] (librdkafka settings, credentials
//!   from a mounted Secret), [`http`] (`/metrics`, `/healthz`,
//!   `/readyz`), [`shutdown`] (one cancellation token from SIGTERM/SIGINT), [`telemetry`]
//!   (tracing).

pub mod config;
mod error;
pub mod http;
pub mod kafka;
pub mod outbox;
pub mod shutdown;
pub mod telemetry;

pub use error::{Chain, Error};
pub use http::Health;
