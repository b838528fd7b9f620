//! Bulkhead's control-plane service: the tenant and API-key registry in NATS
//! KV (`registry`), its operator gRPC API (`service`, served by `server`) and
//! its metrics (`metrics`). The operator CLI, the PKI, the dev stack, the
//! benches and the planners live in `bulkhead-cli`; this crate never links
//! them.
#![forbid(unsafe_code)]

pub mod metrics;
pub mod registry;
pub mod server;
pub mod service;
