//! `pipewright-operator`: kube-runtime controllers for `EventConsumer` and `Outbox`.
//!
//! The controllers arrive with issue #6 ("Operator: reconcile both kinds into worker
//! Deployments"); the crate exists now so the workspace has its final shape.
