//! The checks behind Bulkhead's fuzz targets. Each module has one
//! `run(&[u8])` that feeds the input through the real code path and panics
//! if an invariant breaks. The targets in `fuzz_targets/` call them under
//! libFuzzer; `router/tests/fuzz_corpus.rs` and `worker/tests/fuzz_corpus.rs`
//! include the same files (`#[path]`) and replay `fuzz/corpus/<target>/`
//! and `fuzz/artifacts/<target>/` in a plain `cargo test`.
#![forbid(unsafe_code)]

pub mod chat_tokenizer;
pub mod http_body;
pub mod worker_request;
