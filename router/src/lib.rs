//! Bulkhead's router: authenticates API keys against a watched copy of the
//! control-plane's KV buckets, validates requests, dispatches them to workers
//! over mTLS gRPC, streams tokens back over OpenAI-compatible HTTP or gRPC,
//! and publishes one audit event per request.
//!
//! Request path: `http`/`grpc` (edge) -> `directory` (auth) -> `validate`
//! (the only way to a `ValidRequest`) -> `pipeline` (worker choice in
//! `workers`, stream, `audit`). Errors are `error::ApiError`, classified once
//! into HTTP or gRPC status at the edge.
#![forbid(unsafe_code)]

pub mod audit;
pub mod directory;
pub mod error;
pub mod grpc;
pub mod http;
pub mod openai;
pub mod pipeline;
pub mod validate;
pub mod workers;
