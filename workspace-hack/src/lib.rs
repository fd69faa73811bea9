//! No code: see this crate's `Cargo.toml`. The operator and the worker depend on it so that
//! their separate release builds resolve the same features for every dependency they share.
