//! Who is who in a Bulkhead cluster: SPIFFE ids as pure data and the
//! certificate files that carry them (`spiffe`), the servers' mTLS that
//! follows those files on disk and the router's client connector (`tls`), and
//! the per-hop authorizer that admits only the SPIFFE ids a hop allows.
//! Every service and the operator CLI take their TLS from here; `proto` holds
//! the contracts only.
#![forbid(unsafe_code)]

pub mod authz;
pub mod error;
pub mod spiffe;
pub mod tls;
