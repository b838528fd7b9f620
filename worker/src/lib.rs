//! Bulkhead worker: a Llama-family model on the CPU with continuous batching
//! over a tenant-namespaced paged KV pool, served over mTLS gRPC.
#![deny(unsafe_code)]

use std::path::PathBuf;

pub mod bench;
pub mod certs;
pub mod config;
pub mod cuda;
pub mod device;
pub mod engine;
pub mod genmodel;
pub mod kv;
pub mod logprobs;
pub mod matmul;
pub mod metrics;
pub mod model;
pub mod sampling;
pub mod server;
pub mod tokenizer;
pub mod weights;

/// Errors while loading a model directory.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("invalid JSON in {0}: {1}")]
    Json(PathBuf, serde_json::Error),
    #[error("bad model config: {0}")]
    Config(String),
    #[error("cannot read safetensors file {0}: {1}")]
    Safetensors(PathBuf, String),
    #[error("missing tensor {0}")]
    MissingTensor(String),
    #[error("tensor {name}: {msg}")]
    Tensor { name: String, msg: String },
    #[error("cannot load tokenizer {0}: {1}")]
    Tokenizer(PathBuf, String),
}

/// A model plus its tokenizer, loaded from a Hugging Face directory.
#[derive(Debug)]
pub struct LoadedModel {
    pub model: model::Model,
    pub tokenizer: tokenizer::TextTokenizer,
}

impl LoadedModel {
    pub fn load(dir: &std::path::Path) -> Result<Self, LoadError> {
        let model = model::Model::load(dir)?;
        let eos = model
            .config
            .eos_token_id
            .as_ref()
            .map(|e| e.to_vec())
            .unwrap_or_default();
        let tokenizer = tokenizer::TextTokenizer::load(dir, &eos)?;
        Ok(Self { model, tokenizer })
    }
}
