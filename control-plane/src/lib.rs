//! Bulkhead's control-plane: the tenant and API-key registry in NATS KV
//! (`registry`), its operator gRPC API (`service`), the PKI (`pki`), the
//! operator CLI's commands (`cli`), and the loopback dev stack (`dev`).
#![forbid(unsafe_code)]

pub mod cli;
pub mod dev;
pub mod pki;
pub mod registry;
pub mod service;
