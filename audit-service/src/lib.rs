//! Bulkhead's audit-service: a durable JetStream consumer that stores each
//! audit event exactly once in its tenant's append-only log, encrypted with
//! the tenant's own AES-256-GCM data key and hash-chained; fsync, then ack.
//! Serves tenant-scoped queries over mTLS.
//!
//! `store` and `keys` are pure storage (no network); `consumer` is the NATS
//! side; `query` is the gRPC side; `server::serve` runs both (the entry the
//! binary and in-process tests use).
#![forbid(unsafe_code)]

use std::path::Path;

pub mod access;
pub mod admin;
pub mod bench;
pub mod checkpoint;
pub mod consumer;
pub mod heads;
pub mod keys;
pub mod metrics;
pub mod query;
pub mod report;
pub mod server;
pub mod shred;
pub mod store;
pub mod verify;

pub use server::{ServeError, ServeOptions, serve};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("master key: {0}")]
    MasterKey(String),
    #[error("{0}")]
    Crypto(String),
    #[error("audit log damaged: {0}")]
    Corrupt(String),
    #[error("invalid event: {0}")]
    Invalid(String),
    #[error("the audit records of tenant {0} were crypto-shredded (data key destroyed)")]
    Shredded(String),
    #[error("no audit data for tenant {0} (no data key)")]
    UnknownTenant(String),
}

impl StoreError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
