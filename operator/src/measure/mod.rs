//! Ground-truth measurements written into status: consumer lag from the Kafka cluster and the
//! outbox backlog from the database. Neither is cached: each reconcile measures again.

pub mod kafka;
pub mod postgres;
