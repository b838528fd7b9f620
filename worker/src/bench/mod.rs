//! `bulkhead-worker bench kv|decode`: throughput figures of the KV pool and
//! of the engine, human-readable or JSON. Pure library code: the binary only
//! parses flags and prints.
pub mod decode;
pub mod isolation;
pub mod kv;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid bench parameter: {0}")]
    Param(String),
    #[error("generating the bench model: {0}")]
    Gen(#[from] crate::genmodel::GenError),
    #[error("loading the bench model: {0}")]
    Load(#[from] crate::LoadError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("engine: {0}")]
    Engine(String),
}

/// `n` per second of `secs` (0 when nothing was timed).
pub(crate) fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}
