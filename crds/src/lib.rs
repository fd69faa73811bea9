//! pipewright API types: the `EventConsumer` and `Outbox` custom resources in
//! `pipewright.io/v1alpha1`, and the `crdgen` binary that renders their CRD YAML.
//!
//! This crate holds types only, no client code. The types themselves arrive with issue #3
//! ("API: EventConsumer and Outbox CRDs"); until then the crate is an empty member of the
//! workspace so that the layout, lints and CI are in place.
