//! Bulkhead's control-plane: the tenant and API-key registry in NATS KV
//! (`registry`), its operator gRPC API (`service`, served by `server`), Rust
//! clients of the operator APIs (`client`), the PKI (`pki`), the operator
//! CLI's commands (`cli`), and the loopback
//! dev stack (`dev`).
#![forbid(unsafe_code)]

pub mod audit_cli;
pub mod bench;
pub mod cli;
pub mod client;
pub mod deploy;
pub mod dev;
pub mod lifecycle_cli;
pub mod metrics;
pub mod mig;
pub mod mig_cli;
pub mod mig_discover;
pub mod pki;
pub mod registry;
pub mod server;
pub mod service;
pub mod status;

pub use client::{AuditClient, ClientError, ControlClient};
