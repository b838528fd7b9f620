//! Bulkhead's contracts: the generated gRPC/protobuf types and the small shared
//! pieces both ends of a hop agree on (NATS names, API-key hashing). Only
//! these types cross a process boundary. TLS and SPIFFE identities live in
//! `bulkhead-identity`.
#![forbid(unsafe_code)]

pub mod head_text;
pub mod keys;
pub mod names;

/// Generated code, nested as the protobuf packages are (`bulkhead.worker.v1`
/// -> `bulkhead::worker::v1`) so cross-package references resolve.
#[allow(clippy::all, missing_docs)]
pub mod bulkhead {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("bulkhead.common.v1");
        }
    }
    pub mod v1 {
        tonic::include_proto!("bulkhead.v1");
    }
    pub mod worker {
        pub mod v1 {
            tonic::include_proto!("bulkhead.worker.v1");
        }
    }
    pub mod control {
        pub mod v1 {
            tonic::include_proto!("bulkhead.control.v1");
        }
    }
    pub mod audit {
        pub mod v1 {
            tonic::include_proto!("bulkhead.audit.v1");
        }
    }
}

/// Audit events and the audit query API.
pub use bulkhead::audit::v1 as audit;
/// Types shared by several APIs.
pub use bulkhead::common::v1 as common;
/// The control-plane API and the records it keeps in NATS KV.
pub use bulkhead::control::v1 as control;
/// The client API served by the router.
pub use bulkhead::v1 as client;
/// The router -> worker API.
pub use bulkhead::worker::v1 as worker;

pub use prost::Message;
