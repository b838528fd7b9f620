//! `bench decode`: tokens per second of the real engine on a generated model.
//!
//! - **Batch scaling**: `b` requests submitted at once (distinct random
//!   prompts, a fixed number of generated tokens each: end-of-sequence is
//!   ignored), for each batch size; tokens/s = generated tokens / wall time
//!   from submission to the last `Finished` (prefill of the short prompts
//!   included), best of `BATCH_REPEATS` runs.
//! - **Isolation overhead**: 64 tenants vs 1 on the same workload, with an
//!   A/A control ([`super::isolation`]).
//! - **Guard and scrub share**: the engine's own step timing
//!   ([`crate::engine::StepTiming`]) over the whole bench.
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::mpsc;

use super::isolation::IsolationFigure;
use super::{BenchError, rate};
use crate::LoadedModel;
use crate::engine::{EngineConfig, EngineEvent, EngineHandle, FinishReason, GenerateRequest};
use crate::genmodel::GenShape;
use crate::kv::PrefixSecret;
use crate::sampling::SamplingParams;

/// Runs per batch size (the fastest counts).
const BATCH_REPEATS: usize = 3;

#[derive(Debug, Clone)]
pub struct DecodeBenchConfig {
    pub shape: GenShape,
    pub batches: Vec<usize>,
    pub prompt_tokens: usize,
    pub gen_tokens: u32,
    pub tenants: usize,
    pub iso_requests: usize,
    /// Concurrent sequences in the isolation runs.
    pub iso_batch: usize,
    pub rounds: usize,
    pub block_size: usize,
    pub seed: u64,
    /// Run on this CUDA device instead of the CPU.
    pub cuda: Option<usize>,
    /// How the generated model's weights are stored (and so computed with).
    pub dtype: safetensors::Dtype,
    /// Quantize the linear layers to int8 after loading (`--weights int8`).
    pub int8: bool,
}

impl Default for DecodeBenchConfig {
    fn default() -> Self {
        Self {
            // ~13M parameters (52 MB of f32 weights): big enough that batching
            // matters on a CPU, small enough to run in seconds.
            shape: GenShape {
                hidden: 512,
                intermediate: 1536,
                layers: 4,
                heads: 8,
                kv_heads: 4,
                max_pos: 1024,
            },
            batches: vec![1, 8, 32],
            prompt_tokens: 16,
            gen_tokens: 64,
            tenants: 64,
            iso_requests: 64,
            iso_batch: 64,
            rounds: 8,
            block_size: 16,
            seed: 1,
            cuda: None,
            dtype: safetensors::Dtype::F32,
            int8: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchFigure {
    pub batch: usize,
    pub tokens: u64,
    pub seconds: f64,
    pub tokens_per_sec: f64,
    /// Relative to batch 1 (when measured).
    pub speedup_vs_batch1: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepShare {
    pub steps: u64,
    pub step_seconds: f64,
    pub guard_seconds: f64,
    pub scrub_seconds: f64,
    pub guard_percent: f64,
    pub scrub_percent: f64,
    pub guard_and_scrub_percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecodeBenchReport {
    pub model: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub parameters: u64,
    pub prompt_tokens: usize,
    pub gen_tokens: u32,
    pub threads: usize,
    pub batches: Vec<BatchFigure>,
    pub batch32_over_batch1: Option<f64>,
    /// The weights' dtype as stored (`F32`, `BF16`, `F16`).
    pub dtype: String,
    /// Bytes of weights the forward pass reads per step.
    pub weight_bytes: u64,
    /// Batch 1: weight bytes read per second (one step per token).
    pub batch1_weight_read_gb_per_s: Option<f64>,
    /// The floor, measured in the same run: every core summing a buffer of
    /// as many bytes as the weights (best of twenty).
    pub read_floor_gb_per_s: f64,
    /// Batch 1's weight reads over the floor (target >= 0.7 on the CPU).
    pub batch1_over_floor: Option<f64>,
    pub roofline_target_met: Option<bool>,
    pub isolation: IsolationFigure,
    /// Target: <= 1 % (CPU-time figure where available, else wall time).
    pub isolation_target_met: bool,
    pub step_share: StepShare,
}

fn parameters(s: &GenShape, vocab: usize) -> u64 {
    let hd = s.hidden / s.heads.max(1);
    let attn = 2 * s.hidden * s.heads * hd + 2 * s.hidden * s.kv_heads * hd;
    let mlp = 3 * s.hidden * s.intermediate;
    ((attn + mlp + 2 * s.hidden) * s.layers + 2 * vocab * s.hidden + s.hidden) as u64
}

pub(super) struct Bench {
    model: Arc<LoadedModel>,
    engine: EngineHandle,
    cfg: DecodeBenchConfig,
    rng: StdRng,
    next_id: u64,
}

impl Bench {
    fn prompt(&mut self) -> Vec<u32> {
        let vocab = self.model.model.vocab_size() as u32;
        let eos = self.model.tokenizer.eos_ids().to_vec();
        (0..self.cfg.prompt_tokens)
            .map(|_| {
                loop {
                    let t = self.rng.random_range(0..vocab);
                    if !eos.contains(&t) {
                        break t;
                    }
                }
            })
            .collect()
    }

    /// Submits one request per tenant name (all at once); returns
    /// (generated tokens, seconds) once every request finished.
    pub(super) fn run(&mut self, tenants: &[Arc<str>]) -> Result<(u64, f64), BenchError> {
        let mut rxs = Vec::with_capacity(tenants.len());
        let reqs: Vec<GenerateRequest> = tenants
            .iter()
            .map(|t| {
                let (tx, rx) = mpsc::channel(self.cfg.gen_tokens as usize + 8);
                rxs.push(rx);
                self.next_id += 1;
                GenerateRequest {
                    request_id: format!("bench-{}", self.next_id),
                    tenant: t.clone(),
                    prompt: self.prompt(),
                    params: SamplingParams::default(),
                    stop: vec![],
                    max_tokens: self.cfg.gen_tokens,
                    logprobs: None,
                    ignore_eos: true,
                    no_prefix_cache: false,
                    prefix_cache_ttl: None,
                    weight: 1,
                    events: tx,
                }
            })
            .collect();
        let t0 = Instant::now();
        for r in reqs {
            self.engine
                .submit(r)
                .map_err(|e| BenchError::Engine(e.to_string()))?;
        }
        let mut tokens = 0u64;
        for mut rx in rxs {
            loop {
                match rx.blocking_recv() {
                    Some(EngineEvent::Token { .. }) => tokens += 1,
                    Some(EngineEvent::Finished {
                        reason: FinishReason::Error,
                        error,
                        ..
                    }) => return Err(BenchError::Engine(error.unwrap_or_default())),
                    Some(EngineEvent::Finished { .. }) | None => break,
                    Some(EngineEvent::Started { .. }) => {}
                }
            }
        }
        Ok((tokens, t0.elapsed().as_secs_f64()))
    }
}

/// Generates the model under `dir`, then runs every measurement.
pub fn run(cfg: &DecodeBenchConfig, dir: &Path) -> Result<DecodeBenchReport, BenchError> {
    if cfg.batches.is_empty() || cfg.batches.contains(&0) || cfg.gen_tokens == 0 {
        return Err(BenchError::Param(
            "batch sizes and generated tokens must be positive".into(),
        ));
    }
    if cfg.prompt_tokens == 0 || cfg.tenants == 0 || cfg.iso_requests == 0 || cfg.rounds == 0 {
        return Err(BenchError::Param(
            "prompt tokens, tenants, isolation requests and rounds must be positive".into(),
        ));
    }
    if cfg.prompt_tokens + cfg.gen_tokens as usize > cfg.shape.max_pos {
        return Err(BenchError::Param(format!(
            "prompt + generated tokens exceed the model's context of {}",
            cfg.shape.max_pos
        )));
    }
    crate::genmodel::generate_with(dir, cfg.seed, cfg.shape)?;
    crate::genmodel::store_as(dir, cfg.dtype)?;
    let mut loaded = LoadedModel::load(dir)?;
    if cfg.int8 {
        loaded.model.quantize_int8();
    }
    let max_batch = cfg
        .batches
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(cfg.iso_batch.max(1));
    let per_seq = (cfg.prompt_tokens + cfg.gen_tokens as usize).div_ceil(cfg.block_size) + 1;
    if let Some(ordinal) = cfg.cuda {
        loaded
            .model
            .use_cuda(ordinal, 2 * max_batch * per_seq, cfg.block_size)
            .map_err(|e| BenchError::Engine(e.to_string()))?;
    }
    let model = Arc::new(loaded);
    let engine = EngineHandle::start(
        model.clone(),
        EngineConfig {
            max_seqs: max_batch,
            // Every prompt of the largest batch in one step.
            prefill_chunk: (max_batch * cfg.prompt_tokens).max(256),
            // Room for every sequence, plus as much again for cached blocks.
            kv_blocks: 2 * max_batch * per_seq,
            block_size: cfg.block_size,
            prefix_secret: PrefixSecret::from_bytes([9; 32]),
            ..EngineConfig::default()
        },
        None,
    )?;
    let mut b = Bench {
        model: model.clone(),
        engine,
        cfg: cfg.clone(),
        rng: StdRng::seed_from_u64(cfg.seed),
        next_id: 0,
    };
    let one: Arc<str> = Arc::from("bench-tenant-0");
    let many: Vec<Arc<str>> = (0..cfg.tenants)
        .map(|i| Arc::from(format!("bench-tenant-{i}")))
        .collect();
    // Warm-up (allocator, caches, thread pool).
    b.run(&vec![one.clone(); max_batch.min(4)])?;

    let mut batches: Vec<BatchFigure> = Vec::new();
    for &n in &cfg.batches {
        let names: Vec<Arc<str>> = (0..n).map(|i| many[i % many.len()].clone()).collect();
        let mut runs = Vec::with_capacity(BATCH_REPEATS);
        for _ in 0..BATCH_REPEATS {
            runs.push(b.run(&names)?);
        }
        let (tokens, secs) = runs
            .into_iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, 0.0));
        batches.push(BatchFigure {
            batch: n,
            tokens,
            seconds: secs,
            tokens_per_sec: rate(tokens, secs),
            speedup_vs_batch1: None,
        });
    }
    let base = batches
        .iter()
        .find(|f| f.batch == 1)
        .map(|f| f.tokens_per_sec);
    for f in &mut batches {
        f.speedup_vs_batch1 = base.filter(|b| *b > 0.0).map(|b| f.tokens_per_sec / b);
    }
    let batch32_over_batch1 = batches
        .iter()
        .find(|f| f.batch == 32)
        .and_then(|f| f.speedup_vs_batch1);

    let weight_bytes = model.model.weight_bytes() as u64;
    let floor = read_floor_gb_per_s(weight_bytes as usize);
    let batch1_read = base.map(|tps| weight_bytes as f64 * tps / 1e9);
    let batch1_over_floor = batch1_read.filter(|_| floor > 0.0).map(|r| r / floor);
    let isolation = super::isolation::measure(&mut b, cfg, &one, &many)?;
    let t = b.engine.step_timing();
    let step = t.step.as_secs_f64();
    let pct = |d: std::time::Duration| {
        if step > 0.0 {
            d.as_secs_f64() / step * 100.0
        } else {
            0.0
        }
    };
    let s = cfg.shape;
    Ok(DecodeBenchReport {
        model: format!(
            "generated llama: hidden {}, intermediate {}, {} layers, {} heads ({} KV), vocab {}",
            s.hidden,
            s.intermediate,
            s.layers,
            s.heads,
            s.kv_heads,
            model.model.vocab_size()
        ),
        device: cfg.cuda.map_or("cpu".into(), |o| format!("cuda:{o}")),
        parameters: parameters(&s, model.model.vocab_size()),
        prompt_tokens: cfg.prompt_tokens,
        gen_tokens: cfg.gen_tokens,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        batch32_over_batch1,
        dtype: if cfg.int8 {
            format!("{:?} as int8", cfg.dtype)
        } else {
            format!("{:?}", cfg.dtype)
        },
        weight_bytes,
        batch1_weight_read_gb_per_s: batch1_read,
        read_floor_gb_per_s: floor,
        batch1_over_floor,
        roofline_target_met: if cfg.cuda.is_some() {
            None
        } else {
            batch1_over_floor.map(|r| r >= 0.7)
        },
        batches,
        isolation_target_met: isolation.target_met,
        isolation,
        step_share: StepShare {
            steps: t.steps,
            step_seconds: step,
            guard_seconds: t.guard.as_secs_f64(),
            scrub_seconds: t.scrub.as_secs_f64(),
            guard_percent: pct(t.guard),
            scrub_percent: pct(t.scrub),
            guard_and_scrub_percent: pct(t.guard + t.scrub),
        },
    })
}

/// The memory-read floor: every core summing its share of a buffer of
/// `bytes` (at least 1 MB), best of twenty passes, in GB/s.
pub fn read_floor_gb_per_s(bytes: usize) -> f64 {
    use rayon::prelude::*;
    let buf = vec![1.0f32; bytes.max(1 << 20) / 4];
    let mut best = f64::MAX;
    let mut sink = 0.0f32;
    for _ in 0..20 {
        let t = std::time::Instant::now();
        sink += buf
            .par_chunks(16 * 1024)
            .map(|c| crate::matmul::dot(c, c))
            .sum::<f32>();
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    (buf.len() * 4) as f64 / best / 1e9
}

impl std::fmt::Display for DecodeBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "decode: {} ({:.1}M parameters) on {}, {} prompt + {} generated tokens per request, {} CPU threads",
            self.model,
            self.parameters as f64 / 1e6,
            self.device,
            self.prompt_tokens,
            self.gen_tokens,
            self.threads
        )?;
        for b in &self.batches {
            writeln!(
                f,
                "  batch {:>3}: {:>10.1} tokens/s  ({} tokens in {:.3} s){}",
                b.batch,
                b.tokens_per_sec,
                b.tokens,
                b.seconds,
                b.speedup_vs_batch1
                    .map(|x| format!(", {x:.2}x batch 1"))
                    .unwrap_or_default()
            )?;
        }
        if let Some(r) = self.batch32_over_batch1 {
            writeln!(f, "  batch 32 / batch 1 = {r:.2}x")?;
        }
        if let (Some(read), Some(ratio)) =
            (self.batch1_weight_read_gb_per_s, self.batch1_over_floor)
        {
            writeln!(
                f,
                "  batch 1 reads {:.1} MB of {} weights per token: {read:.1} GB/s; a bare read of as many bytes on every core: {:.1} GB/s ({ratio:.2}x{})",
                self.weight_bytes as f64 / 1e6,
                self.dtype,
                self.read_floor_gb_per_s,
                match self.roofline_target_met {
                    Some(true) => ", target >= 0.7x: met",
                    Some(false) => ", target >= 0.7x: NOT met",
                    None => "",
                }
            )?;
        }
        writeln!(f, "{}", self.isolation)?;
        let s = &self.step_share;
        write!(
            f,
            "  step time: {} steps, {:.3} s; guard {:.4}%, scrubbing {:.4}%, together {:.4}%",
            s.steps, s.step_seconds, s.guard_percent, s.scrub_percent, s.guard_and_scrub_percent
        )
    }
}
