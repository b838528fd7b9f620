//! The CPU forward pass of a Llama-family decoder reading and writing K/V
//! through the paged [`KvPool`]: weights in the checkpoint's precision,
//! activations and accumulation in f32. Matrix products are
//! [`crate::matmul`]'s (streaming dot products for decode steps,
//! `matrixmultiply` for prefill chunks; safe code, so this crate keeps
//! `forbid(unsafe_code)`).
use std::path::Path;

use crate::LoadError;
use crate::config::ModelConfig;
use crate::kv::{BlockId, KvPool, KvShape};
use crate::matmul::{Stored, matmul_t};
use crate::weights::Weights;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("token id {0} is outside the vocabulary of {1}")]
    BadToken(u32, usize),
    #[error("position {0} exceeds the model's context of {1} tokens")]
    BadPosition(usize, usize),
    #[error("block table too short: position {pos} needs block #{idx}, table has {len}")]
    ShortTable { pos: usize, idx: usize, len: usize },
    #[error("CUDA: {0}")]
    Device(String),
    /// The device attention kernel found a block not owned by the
    /// sequence's tenant (the host guard should have caught it first).
    #[error("KV ownership violation seen by the attention kernel in sequences {0:?}")]
    OwnershipViolation(Vec<usize>),
}

/// A linear layer stored as HF does: `[out, in]` row-major, in the
/// checkpoint's precision.
#[derive(Debug)]
pub struct Linear {
    pub(crate) w: Stored,
    pub(crate) bias: Option<Vec<f32>>,
    pub(crate) out_dim: usize,
    pub(crate) in_dim: usize,
}

impl Linear {
    fn load(w: &mut Weights, name: &str, out_dim: usize, in_dim: usize) -> Result<Self, LoadError> {
        let wt = w.take_stored(&format!("{name}.weight"), &[out_dim, in_dim])?;
        let bias = w.take_opt(&format!("{name}.bias"), &[out_dim])?;
        Ok(Self {
            w: wt,
            bias,
            out_dim,
            in_dim,
        })
    }

    /// `y[rows, out] = x[rows, in] · Wᵀ (+ b)`.
    fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut y = matmul_t(x, rows, &self.w, self.out_dim, self.in_dim);
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(self.out_dim) {
                row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
            }
        }
        y
    }
}

#[derive(Debug)]
pub(crate) struct Layer {
    pub(crate) attn_norm: Vec<f32>,
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) o: Linear,
    /// Qwen3: RMSNorm weights over each query / key head (`head_dim`).
    pub(crate) q_norm: Option<Vec<f32>>,
    pub(crate) k_norm: Option<Vec<f32>>,
    pub(crate) mlp_norm: Vec<f32>,
    pub(crate) gate: Linear,
    pub(crate) up: Linear,
    pub(crate) down: Linear,
}

/// A loaded model (weights only; the tokenizer lives in [`crate::tokenizer`]).
#[derive(Debug)]
pub struct Model {
    pub config: ModelConfig,
    pub(crate) embed: Stored,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: Vec<f32>,
    /// `None` when tied to the embeddings.
    pub(crate) lm_head: Option<Linear>,
    pub(crate) inv_freq: Vec<f32>,
    /// Attention logits' scale (`ModelConfig::attention_scale`), computed
    /// once at load.
    pub(crate) attn_scale: f32,
    /// Benchmark mode: replaces the arithmetic with a calibrated cost.
    synthetic: Option<Synthetic>,
    /// The copy of the weights on a CUDA device, when running there.
    cuda: Option<crate::cuda::engine::CudaModel>,
}

/// Benchmark mode (`--synthetic-us-per-token`, `--synthetic-us-per-step`):
/// a forward step is slept, not computed, for the roofline of a real step —
/// `max(per_step, per_token × tokens)`: reading the weights once bounds a
/// small batch (a GPU decode step of 1 or 30 sequences costs about the
/// same), the tokens' arithmetic a large one (a long prefill chunk). Its
/// logits always pick `token`. For scheduling experiments that need a worker
/// of known, repeatable capacity; the output text is meaningless.
#[derive(Debug, Clone, Copy)]
pub struct Synthetic {
    pub per_token: std::time::Duration,
    pub per_step: std::time::Duration,
    pub token: u32,
}

impl Synthetic {
    /// How long a step over `tokens` tokens takes.
    pub fn step_time(&self, tokens: usize) -> std::time::Duration {
        self.per_step.max(
            self.per_token
                .saturating_mul(tokens.min(u32::MAX as usize) as u32),
        )
    }
}

/// One sequence's share of a forward step.
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    /// Tokens to process (a prefill chunk, or the one token to decode).
    pub tokens: &'a [u32],
    /// Position of `tokens[0]`; positions before it are already in the cache.
    pub start_pos: usize,
    /// The sequence's tenant (the device attention kernel checks that every
    /// block it reads belongs to it).
    pub tenant: &'a str,
    /// The sequence's block table (must cover `start_pos + tokens.len()`).
    pub blocks: &'a [BlockId],
    /// Whether to return logits of the last token.
    pub want_logits: bool,
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let s = 1.0 / (ms + eps).sqrt();
        for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * s * g;
        }
    }
}

/// Flattens a batch and checks it: per token, the token id and (sequence
/// index, position); every id in the vocabulary, every position within the
/// context and covered by the sequence's block table.
#[allow(clippy::type_complexity)]
pub(crate) fn flatten(
    cfg: &ModelConfig,
    block_size: usize,
    batch: &[SeqInput<'_>],
) -> Result<(Vec<u32>, Vec<(usize, usize)>), ModelError> {
    let mut toks = Vec::new();
    let mut meta = Vec::new();
    for (si, s) in batch.iter().enumerate() {
        for (j, &t) in s.tokens.iter().enumerate() {
            let pos = s.start_pos + j;
            if t as usize >= cfg.vocab_size {
                return Err(ModelError::BadToken(t, cfg.vocab_size));
            }
            if pos >= cfg.max_position_embeddings {
                return Err(ModelError::BadPosition(pos, cfg.max_position_embeddings));
            }
            let idx = pos / block_size;
            if idx >= s.blocks.len() {
                return Err(ModelError::ShortTable {
                    pos,
                    idx,
                    len: s.blocks.len(),
                });
            }
            toks.push(t);
            meta.push((si, pos));
        }
    }
    Ok((toks, meta))
}

impl Model {
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let config = ModelConfig::load(dir)?;
        let weights = Weights::load(dir)?;
        Self::from_weights(config, weights)
    }

    pub fn from_weights(config: ModelConfig, mut w: Weights) -> Result<Self, LoadError> {
        let h = config.hidden_size;
        let hd = config.head_dim();
        let nh = config.num_attention_heads;
        let nkv = config.num_kv_heads();
        let inter = config.intermediate_size;
        let vocab = config.vocab_size;
        let embed = w.take_stored("model.embed_tokens.weight", &[vocab, h])?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        let qk_norm = config.qk_norm();
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            // Qwen3's head norms are part of the architecture: a checkpoint
            // without them is refused (missing tensor), one of another
            // architecture that carries them too (a tensor nobody reads).
            let head_norm = |w: &mut Weights, which: &str| -> Result<Option<Vec<f32>>, LoadError> {
                if qk_norm {
                    w.take(&format!("{p}.self_attn.{which}.weight"), &[hd])
                        .map(Some)
                } else {
                    Ok(None)
                }
            };
            let (q_norm, k_norm) = (head_norm(&mut w, "q_norm")?, head_norm(&mut w, "k_norm")?);
            layers.push(Layer {
                q_norm,
                k_norm,
                attn_norm: w.take(&format!("{p}.input_layernorm.weight"), &[h])?,
                q: Linear::load(&mut w, &format!("{p}.self_attn.q_proj"), nh * hd, h)?,
                k: Linear::load(&mut w, &format!("{p}.self_attn.k_proj"), nkv * hd, h)?,
                v: Linear::load(&mut w, &format!("{p}.self_attn.v_proj"), nkv * hd, h)?,
                o: Linear::load(&mut w, &format!("{p}.self_attn.o_proj"), h, nh * hd)?,
                mlp_norm: w.take(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate: Linear::load(&mut w, &format!("{p}.mlp.gate_proj"), inter, h)?,
                up: Linear::load(&mut w, &format!("{p}.mlp.up_proj"), inter, h)?,
                down: Linear::load(&mut w, &format!("{p}.mlp.down_proj"), h, inter)?,
            });
        }
        if config.attention_bias == Some(true) {
            for (i, l) in layers.iter().enumerate() {
                for (name, lin) in [("q", &l.q), ("k", &l.k), ("v", &l.v), ("o", &l.o)] {
                    if lin.bias.is_none() {
                        return Err(LoadError::MissingTensor(format!(
                            "model.layers.{i}.self_attn.{name}_proj.bias (attention_bias is true)"
                        )));
                    }
                }
            }
        }
        let norm = w.take("model.norm.weight", &[h])?;
        let lm_head = if w.contains("lm_head.weight") {
            Some(Linear::load(&mut w, "lm_head", vocab, h)?)
        } else if config.tie_word_embeddings {
            None
        } else {
            return Err(LoadError::MissingTensor("lm_head.weight".into()));
        };
        let inv_freq = config.inv_freq().map_err(LoadError::Config)?;
        let attn_scale = config.attention_scale();
        // A tensor the forward pass does not read means the checkpoint
        // computes something this engine does not: refuse it by name
        // (rotary inverse-frequency buffers some checkpoints carry are
        // recomputed from the config, so they are no such thing).
        let unused: Vec<String> = w
            .remaining()
            .into_iter()
            .filter(|n| !n.ends_with("rotary_emb.inv_freq"))
            .collect();
        if !unused.is_empty() {
            return Err(LoadError::Config(format!(
                "tensors the engine does not compute with: {}{}; refusing rather than ignoring them",
                unused
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                if unused.len() > 5 {
                    format!(" and {} more", unused.len() - 5)
                } else {
                    String::new()
                }
            )));
        }
        Ok(Self {
            config,
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
            attn_scale,
            synthetic: None,
            cuda: None,
        })
    }

    /// Moves the forward pass to CUDA device `ordinal`: uploads the weights
    /// and allocates the K/V arena of `kv_blocks` blocks in device memory.
    /// The engine's pool must then be created without host storage
    /// ([`kv_on_device`](Self::kv_on_device)).
    pub fn use_cuda(
        &mut self,
        ordinal: usize,
        kv_blocks: usize,
        block_size: usize,
    ) -> Result<(), ModelError> {
        let shape = self.kv_shape(kv_blocks, block_size);
        self.cuda = Some(crate::cuda::engine::CudaModel::upload(
            self, ordinal, shape,
        )?);
        Ok(())
    }

    /// True when K/V values live in a device arena, not in the [`KvPool`].
    pub fn kv_on_device(&self) -> bool {
        self.cuda.is_some()
    }

    /// Switches to benchmark mode (see [`Synthetic`]).
    pub fn set_synthetic(&mut self, s: Option<Synthetic>) {
        self.synthetic = s;
    }

    /// The KV pool geometry this model needs.
    pub fn kv_shape(&self, num_blocks: usize, block_size: usize) -> KvShape {
        KvShape {
            num_layers: self.config.num_hidden_layers,
            num_blocks,
            block_size,
            num_kv_heads: self.config.num_kv_heads(),
            head_dim: self.config.head_dim(),
        }
    }

    /// Quantizes every linear layer's weights to int8, one scale per
    /// output channel (`--weights int8`: a quarter of f32's bytes, a half of
    /// bf16's; the embeddings, and a head tied to them, stay as stored).
    /// Its cost in quality is measured in `tests/reference.rs`.
    pub fn quantize_int8(&mut self) {
        let q = |l: &mut Linear| l.w = l.w.quantize_i8(l.in_dim);
        for l in &mut self.layers {
            for lin in [
                &mut l.q,
                &mut l.k,
                &mut l.v,
                &mut l.o,
                &mut l.gate,
                &mut l.up,
                &mut l.down,
            ] {
                q(lin);
            }
        }
        if let Some(h) = &mut self.lm_head {
            q(h);
        }
    }

    /// Bytes of weights held for the CPU forward pass (matrices as the
    /// checkpoint stores them, norms and biases as f32).
    pub fn weight_bytes(&self) -> usize {
        let lin = |l: &Linear| l.w.bytes() + l.bias.as_ref().map_or(0, |b| b.len() * 4);
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
                    .into_iter()
                    .map(lin)
                    .sum::<usize>()
                    + 4 * (l.attn_norm.len() + l.mlp_norm.len())
                    + 4 * l.q_norm.as_ref().map_or(0, Vec::len)
                    + 4 * l.k_norm.as_ref().map_or(0, Vec::len)
            })
            .sum();
        layers + self.embed.bytes() + self.lm_head.as_ref().map_or(0, lin) + 4 * self.norm.len()
    }

    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// The longest context served exactly (see `ModelConfig::served_context`).
    pub fn max_context(&self) -> usize {
        self.config.served_context()
    }

    fn rope(&self, x: &mut [f32], pos: usize) {
        let hd = self.config.head_dim();
        let half = hd / 2;
        for head in x.chunks_exact_mut(hd) {
            for i in 0..half {
                let a = pos as f32 * self.inv_freq[i];
                let (s, c) = a.sin_cos();
                let (x1, x2) = (head[i], head[i + half]);
                head[i] = x1 * c - x2 * s;
                head[i + half] = x2 * c + x1 * s;
            }
        }
    }

    /// One forward step over a batch. Writes K/V of every processed token into
    /// the pool and returns, per sequence, the logits of its last token when
    /// asked for. The caller must have run the ownership guard on each table.
    pub fn forward(
        &self,
        pool: &mut KvPool,
        batch: &[SeqInput<'_>],
    ) -> Result<Vec<Option<Vec<f32>>>, ModelError> {
        if let Some(s) = self.synthetic {
            let tokens: usize = batch.iter().map(|b| b.tokens.len()).sum();
            std::thread::sleep(s.step_time(tokens));
            let vocab = self.config.vocab_size;
            return Ok(batch
                .iter()
                .map(|b| {
                    b.want_logits.then(|| {
                        let mut l = vec![-30.0f32; vocab];
                        l[(s.token as usize).min(vocab - 1)] = 30.0;
                        l
                    })
                })
                .collect());
        }
        if let Some(cuda) = &self.cuda {
            return cuda.forward(pool, batch);
        }
        if !pool.has_host_storage() {
            return Err(ModelError::Device(
                "the KV pool has no host storage but the model runs on the CPU".into(),
            ));
        }
        let cfg = &self.config;
        let (h, hd, nh, nkv) = (
            cfg.hidden_size,
            cfg.head_dim(),
            cfg.num_attention_heads,
            cfg.num_kv_heads(),
        );
        let bs = pool.block_size();
        let (toks, meta) = flatten(cfg, bs, batch)?;
        let n = toks.len();
        let mut x = vec![0.0f32; n * h];
        for (row, &t) in x.chunks_exact_mut(h).zip(&toks) {
            self.embed.widen_into(t as usize * h, row);
        }
        let mut normed = vec![0.0f32; n * h];
        let group = nh / nkv;
        // 1/sqrt(head_dim), times the square of YaRN's attention factor.
        let scale = self.attn_scale;
        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, cfg.rms_norm_eps, &mut normed);
            // The three projections of one input run as one parallel
            // region (each also splits its rows), not three in a row.
            let ((mut q, mut k), v) = rayon::join(
                || {
                    rayon::join(
                        || layer.q.forward(&normed, n),
                        || layer.k.forward(&normed, n),
                    )
                },
                || layer.v.forward(&normed, n),
            );
            if let Some(w) = &layer.q_norm {
                let src = q.clone();
                rms_norm(&src, w, cfg.rms_norm_eps, &mut q);
            }
            if let Some(w) = &layer.k_norm {
                let src = k.clone();
                rms_norm(&src, w, cfg.rms_norm_eps, &mut k);
            }
            for (ti, &(si, pos)) in meta.iter().enumerate() {
                self.rope(&mut q[ti * nh * hd..(ti + 1) * nh * hd], pos);
                self.rope(&mut k[ti * nkv * hd..(ti + 1) * nkv * hd], pos);
                let blocks = batch[si].blocks;
                pool.write(
                    li,
                    blocks[pos / bs],
                    pos % bs,
                    &k[ti * nkv * hd..(ti + 1) * nkv * hd],
                    &v[ti * nkv * hd..(ti + 1) * nkv * hd],
                );
            }
            // Attention: each token attends to positions 0..=pos of its sequence.
            let mut attn = vec![0.0f32; n * nh * hd];
            let mut scores = Vec::new();
            for (ti, &(si, pos)) in meta.iter().enumerate() {
                let blocks = batch[si].blocks;
                for head in 0..nh {
                    let kvh = head / group;
                    let qh = &q[(ti * nh + head) * hd..(ti * nh + head + 1) * hd];
                    scores.clear();
                    for p in 0..=pos {
                        let ks = &pool.k_slot(li, blocks[p / bs], p % bs)[kvh * hd..(kvh + 1) * hd];
                        scores.push(qh.iter().zip(ks).map(|(a, b)| a * b).sum::<f32>() * scale);
                    }
                    let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for s in scores.iter_mut() {
                        *s = (*s - m).exp();
                        sum += *s;
                    }
                    let out = &mut attn[(ti * nh + head) * hd..(ti * nh + head + 1) * hd];
                    for (p, s) in scores.iter().enumerate() {
                        let vs = &pool.v_slot(li, blocks[p / bs], p % bs)[kvh * hd..(kvh + 1) * hd];
                        let w = s / sum;
                        out.iter_mut().zip(vs).for_each(|(o, v)| *o += w * v);
                    }
                }
            }
            let o = layer.o.forward(&attn, n);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            rms_norm(&x, &layer.mlp_norm, cfg.rms_norm_eps, &mut normed);
            let (mut g, u) = rayon::join(
                || layer.gate.forward(&normed, n),
                || layer.up.forward(&normed, n),
            );
            g.iter_mut()
                .zip(&u)
                .for_each(|(g, u)| *g = *g / (1.0 + (-*g).exp()) * u);
            let d = layer.down.forward(&g, n);
            x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        }
        // Logits of the last token of each sequence that wants them.
        let mut out = Vec::with_capacity(batch.len());
        let mut offset = 0;
        for s in batch {
            offset += s.tokens.len();
            if !s.want_logits || s.tokens.is_empty() {
                out.push(None);
                continue;
            }
            let row = &x[(offset - 1) * h..offset * h];
            let mut nrow = vec![0.0f32; h];
            rms_norm(row, &self.norm, cfg.rms_norm_eps, &mut nrow);
            let logits = match &self.lm_head {
                Some(l) => l.forward(&nrow, 1),
                None => matmul_t(&nrow, 1, &self.embed, cfg.vocab_size, h),
            };
            out.push(Some(logits));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::Synthetic;
    use std::time::Duration;

    #[test]
    fn a_synthetic_step_follows_the_roofline() {
        let s = Synthetic {
            per_token: Duration::from_micros(50),
            per_step: Duration::from_micros(5000),
            token: 0,
        };
        // Memory-bound: one decode or a hundred tokens cost one weight read.
        assert_eq!(s.step_time(1), Duration::from_micros(5000));
        assert_eq!(s.step_time(100), Duration::from_micros(5000));
        // Compute-bound past the crossover.
        assert_eq!(s.step_time(256), Duration::from_micros(12_800));
        let linear = Synthetic {
            per_step: Duration::ZERO,
            ..s
        };
        assert_eq!(linear.step_time(3), Duration::from_micros(150));
    }
}
