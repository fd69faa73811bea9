//! `pipewright-worker`: the data plane.
//!
//! Two modes share this library: `consume` (issue #4: typed events, key-ordered bounded
//! pipeline, retries, dead letters, sinks) and `outbox` (issue #5: the transactional-outbox
//! poller). Neither is implemented yet; the crate exists so the workspace has its final shape.
