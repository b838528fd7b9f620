//! Bulkhead's router: authenticates API keys against a watched copy of the
//! control-plane's KV buckets, validates requests, dispatches them to workers
//! over mTLS gRPC, streams tokens back over OpenAI-compatible HTTP or gRPC,
//! and publishes one audit event per request.
//!
//! Request path: `http`/`grpc` (edge) -> `directory` (auth) -> `validate`
//! (the only way to a `ValidRequest`) -> `pipeline` -> `dispatch` (an actor
//! owning the per-tenant `limits` and the weighted `fair` queue; a request
//! leaves only when a worker in `workers` has a free slot) -> stream,
//! `audit`. Errors are `error::ApiError`, classified once
//! into HTTP or gRPC status at the edge.
#![forbid(unsafe_code)]

pub mod affinity;
pub mod audit;
pub mod cluster;
pub mod directory;
pub mod discovery;
pub mod dispatch;
pub mod error;
pub mod fair;
pub mod forwarded;
pub mod grpc;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod openai;
pub mod peers;
pub mod pipeline;
pub mod replica;
pub mod serve;
pub mod slots;
pub mod spool;
pub mod usage;
pub mod usage_sync;
pub mod validate;
pub mod workers;
