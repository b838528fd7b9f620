//! `bulkhead`, the operator CLI, as a library its binary and the tests use:
//! the commands (`commands`: certs, tenants, keys, audit; `lifecycle_cli`,
//! `audit_cli`, `mig_cli`, `status`), the Rust clients of the operator APIs
//! (`client`), the PKI (`pki`), the pure planners (`mig`: MIG layouts;
//! `deploy`: Kubernetes manifests; `nats_conf`: NATS users and permissions), NVML discovery (`mig_discover`), the
//! loopback dev stack (`dev`) and the benches (`bench`). No service links
//! this crate.
#![forbid(unsafe_code)]

pub mod audit_cli;
pub mod bench;
pub mod client;
pub mod commands;
pub mod deploy;
pub mod dev;
pub mod lifecycle_cli;
pub mod mig;
pub mod mig_cli;
pub mod mig_discover;
pub mod nats_conf;
pub mod pki;
pub mod remote;
pub mod status;
pub mod usage_cli;

pub use client::{AuditClient, ClientError, ControlClient};
