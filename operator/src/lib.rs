//! `pipewright-operator`: kube-runtime controllers for `EventConsumer` and `Outbox`.
//!
//! Each resource becomes a worker Deployment (plus its ConfigMap, ServiceAccount, Service and
//! PodDisruptionBudget), built by pure functions from the spec ([`workload`],
//! [`event_consumer::plan`], [`outbox::plan`]) and applied with server-side apply under one
//! field manager ([`MANAGER`]). The status carries conditions and figures measured from
//! ground truth: consumer lag from the Kafka cluster, outbox backlog from the table
//! ([`measure`]); counters, delivery rate and the `Delivering` condition from the workers'
//! own reports ([`report`]). See docs/operator.md.

pub mod autoscale;
pub mod children;
pub mod client;
pub mod context;
pub mod controller;
pub mod error;
pub mod event_consumer;
pub mod events;
pub mod handover;
pub mod http;
pub mod leader;
pub mod measure;
pub mod metrics;
pub mod outbox;
pub mod render;
pub mod report;
pub mod sink;
pub mod status;
pub mod telemetry;
pub mod workload;

pub use error::{Error, Result};

/// The field manager of every server-side apply, and the `app.kubernetes.io/managed-by` value.
pub const MANAGER: &str = "pipewright-operator";
