//! The CUDA forward pass: the same computation as the CPU one in
//! [`crate::model`], with the weights and the paged K/V arena in device
//! memory, cuBLAS for the matrix products and the NVRTC-compiled kernels of
//! `kernels.cu` for the rest.
//!
//! The arena belongs to the device, the bookkeeping to the host [`KvPool`]
//! (created without host storage): before each step the blocks the pool
//! handed to a new owner are zeroed on the device, and the attention kernel
//! receives each block's owner and each sequence's tenant and refuses to read
//! a block of another tenant (a second line behind the host guard).
//!
//! Not yet run on a GPU: no device was lent while this was written. The
//! kernels are compiled by NVRTC in `tests/cuda.rs` and their arithmetic is
//! checked on the CPU under an emulation of the CUDA grid in
//! `tests/cuda_emu.rs`; what only a device can check (cuBLAS, device
//! memory, this file's launch code) is `tests/cuda.rs`'s parity test, which
//! compares this forward pass with the CPU one when a device is present.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
};

use crate::kv::{KvPool, KvShape};
use crate::model::{Model, ModelError, SeqInput, flatten};

/// Every kernel of `kernels.cu`, by name.
pub const KERNEL_NAMES: [&str; 10] = [
    "embed_gather",
    "rms_norm",
    "rope",
    "kv_write",
    "zero_blocks",
    "paged_attention",
    "silu_mul",
    "add_inplace",
    "add_bias",
    "gather_rows",
];

fn dev(e: impl std::fmt::Display) -> ModelError {
    ModelError::Device(e.to_string())
}

struct DevLinear {
    w: CudaSlice<f32>,
    bias: Option<CudaSlice<f32>>,
    out_dim: usize,
    in_dim: usize,
}

struct DevLayer {
    attn_norm: CudaSlice<f32>,
    q: DevLinear,
    k: DevLinear,
    v: DevLinear,
    o: DevLinear,
    q_norm: Option<CudaSlice<f32>>,
    k_norm: Option<CudaSlice<f32>>,
    mlp_norm: CudaSlice<f32>,
    gate: DevLinear,
    up: DevLinear,
    down: DevLinear,
}

/// What a step mutates: the arena (one K and one V buffer per layer).
struct Arena {
    k: Vec<CudaSlice<f32>>,
    v: Vec<CudaSlice<f32>>,
}

/// A model resident on one CUDA device.
pub struct CudaModel {
    ordinal: usize,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: HashMap<&'static str, CudaFunction>,
    embed: CudaSlice<f32>,
    layers: Vec<DevLayer>,
    norm: CudaSlice<f32>,
    lm_head: Option<DevLinear>,
    inv_freq: CudaSlice<f32>,
    attn_scale: f32,
    shape: KvShape,
    arena: Mutex<Arena>,
    cfg: crate::config::ModelConfig,
}

impl std::fmt::Debug for CudaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaModel")
            .field("ordinal", &self.ordinal)
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

/// Compiles `kernels.cu` to PTX with NVRTC (no device needed).
pub fn compile_kernels() -> Result<cudarc::nvrtc::Ptx, String> {
    if !super::nvrtc_present() {
        return Err("the NVRTC library (libnvrtc.so.12) could not be loaded".into());
    }
    cudarc::nvrtc::compile_ptx_with_opts(
        super::KERNELS,
        cudarc::nvrtc::CompileOptions {
            name: Some("bulkhead_kernels.cu".into()),
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())
}

fn grid(n: usize) -> LaunchConfig {
    LaunchConfig::for_num_elems(n as u32)
}

impl CudaModel {
    /// Uploads `model`'s weights to device `ordinal` and allocates a zeroed
    /// arena of `shape`.
    pub fn upload(model: &Model, ordinal: usize, shape: KvShape) -> Result<Self, ModelError> {
        super::probe(ordinal).map_err(dev)?;
        let c = &model.config;
        if c.head_dim() > 256 || !c.head_dim().is_multiple_of(2) {
            return Err(dev(format!(
                "head_dim {} is not supported by the attention kernel (even, at most 256)",
                c.head_dim()
            )));
        }
        if !c.num_attention_heads.is_multiple_of(c.num_kv_heads()) {
            return Err(dev("attention heads must be a multiple of the KV heads"));
        }
        if !super::cublas_present() {
            return Err(dev(
                "the cuBLAS library (libcublas.so.12) could not be loaded",
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(dev)?;
        let stream = ctx.default_stream();
        let module = ctx
            .load_module(compile_kernels().map_err(dev)?)
            .map_err(dev)?;
        let mut kernels = HashMap::new();
        for name in KERNEL_NAMES {
            kernels.insert(name, module.load_function(name).map_err(dev)?);
        }
        let up = |v: &[f32]| stream.clone_htod(v).map_err(dev);
        let lin = |l: &crate::model::Linear| -> Result<DevLinear, ModelError> {
            Ok(DevLinear {
                // The device computes in f32: 16-bit weights are widened
                // once, on upload.
                w: up(&l.w.to_f32())?,
                bias: l.bias.as_deref().map(up).transpose()?,
                out_dim: l.out_dim,
                in_dim: l.in_dim,
            })
        };
        let mut layers = Vec::with_capacity(model.layers.len());
        for l in &model.layers {
            layers.push(DevLayer {
                attn_norm: up(&l.attn_norm)?,
                q: lin(&l.q)?,
                k: lin(&l.k)?,
                v: lin(&l.v)?,
                o: lin(&l.o)?,
                q_norm: l.q_norm.as_deref().map(up).transpose()?,
                k_norm: l.k_norm.as_deref().map(up).transpose()?,
                mlp_norm: up(&l.mlp_norm)?,
                gate: lin(&l.gate)?,
                up: lin(&l.up)?,
                down: lin(&l.down)?,
            });
        }
        let per_layer = shape.num_blocks * shape.block_len();
        let mut arena = Arena {
            k: Vec::new(),
            v: Vec::new(),
        };
        for _ in 0..shape.num_layers {
            arena.k.push(stream.alloc_zeros(per_layer).map_err(dev)?);
            arena.v.push(stream.alloc_zeros(per_layer).map_err(dev)?);
        }
        let lm_head = model.lm_head.as_ref().map(lin).transpose()?;
        Ok(Self {
            ordinal,
            blas: CudaBlas::new(stream.clone()).map_err(dev)?,
            kernels,
            embed: up(&model.embed.to_f32())?,
            layers,
            norm: up(&model.norm)?,
            lm_head,
            inv_freq: up(&model.inv_freq)?,
            attn_scale: model.attn_scale,
            shape,
            arena: Mutex::new(arena),
            cfg: model.config.clone(),
            stream,
        })
    }

    fn k(&self, name: &str) -> &CudaFunction {
        &self.kernels[name]
    }

    fn zeros<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, ModelError> {
        self.stream.alloc_zeros(n.max(1)).map_err(dev)
    }

    /// `y[rows, out] = x[rows, in] · Wᵀ (+ b)` with row-major matrices: in
    /// cuBLAS's column-major terms, `yᵀ = W · xᵀ` with W read transposed.
    fn linear(
        &self,
        l: &DevLinear,
        x: &CudaSlice<f32>,
        rows: usize,
        w: Option<&CudaSlice<f32>>,
    ) -> Result<CudaSlice<f32>, ModelError> {
        let mut y = self.zeros::<f32>(rows * l.out_dim)?;
        self.gemm(w.unwrap_or(&l.w), l.out_dim, l.in_dim, x, rows, &mut y)?;
        if let Some(b) = &l.bias {
            let (r, c) = (rows as i32, l.out_dim as i32);
            let mut a = self.stream.launch_builder(self.k("add_bias"));
            a.arg(&mut y).arg(b).arg(&r).arg(&c);
            // SAFETY: add_bias(float* y, const float* b, int rows, int cols);
            // y holds rows × cols floats and b cols, as passed.
            unsafe { a.launch(grid(rows * l.out_dim)) }.map_err(dev)?;
        }
        Ok(y)
    }

    fn gemm(
        &self,
        w: &CudaSlice<f32>,
        out_dim: usize,
        in_dim: usize,
        x: &CudaSlice<f32>,
        rows: usize,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), ModelError> {
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: out_dim as i32,
            n: rows as i32,
            k: in_dim as i32,
            alpha: 1.0f32,
            lda: in_dim as i32,
            ldb: in_dim as i32,
            beta: 0.0f32,
            ldc: out_dim as i32,
        };
        // SAFETY: w holds out_dim × in_dim floats, x rows × in_dim and y
        // rows × out_dim (all allocated with those sizes), matching m, n, k
        // and the leading dimensions above.
        unsafe { self.blas.gemm(cfg, w, x, y) }.map_err(dev)
    }

    fn rms_norm(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        rows: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), ModelError> {
        self.rms_norm_rows(x, w, rows, self.cfg.hidden_size, out)
    }

    /// RMSNorm of `rows` rows of `cols` floats each (`w`: `cols` floats).
    fn rms_norm_rows(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        rows: usize,
        cols: usize,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), ModelError> {
        let (r, h, eps) = (rows as i32, cols as i32, self.cfg.rms_norm_eps);
        let threads = 256u32;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: threads * 4,
        };
        let mut a = self.stream.launch_builder(self.k("rms_norm"));
        a.arg(x).arg(w).arg(out).arg(&r).arg(&h).arg(&eps);
        // SAFETY: rms_norm(x, w, out, rows, h, eps) with x and out rows × h
        // floats (h = cols), w h floats; one block per row, shared memory one
        // float per thread, blockDim a power of two as the kernel requires.
        unsafe { a.launch(cfg) }.map_err(dev).map(drop)
    }

    fn elementwise(
        &self,
        name: &str,
        x: &mut CudaSlice<f32>,
        y: &CudaSlice<f32>,
        n: usize,
    ) -> Result<(), ModelError> {
        let len = n as i64;
        let mut a = self.stream.launch_builder(self.k(name));
        a.arg(x).arg(y).arg(&len);
        // SAFETY: silu_mul / add_inplace(float* x, const float* y, long n)
        // with x and y both n floats.
        unsafe { a.launch(grid(n)) }.map_err(dev).map(drop)
    }

    /// One forward step over a batch; see [`Model::forward`].
    pub fn forward(
        &self,
        pool: &mut KvPool,
        batch: &[SeqInput<'_>],
    ) -> Result<Vec<Option<Vec<f32>>>, ModelError> {
        if pool.has_host_storage() {
            // Its zeroing would happen on the host, never in this arena.
            return Err(dev(
                "the KV pool keeps host storage; a CUDA model needs KvPool::with_storage(.., false)",
            ));
        }
        let cfg = &self.cfg;
        let bs = pool.block_size();
        let (toks, meta) = flatten(cfg, bs, batch)?;
        let n = toks.len();
        let mut out: Vec<Option<Vec<f32>>> = vec![None; batch.len()];
        let mut guard = self.arena.lock().unwrap_or_else(|e| e.into_inner());
        let arena = &mut *guard;
        let scrub = pool.take_scrub_list();
        if !scrub.is_empty() {
            self.zero_blocks(arena, &scrub)?;
        }
        if n == 0 {
            return Ok(out);
        }
        let (h, hd, nh, nkv) = (
            cfg.hidden_size,
            cfg.head_dim(),
            cfg.num_attention_heads,
            cfg.num_kv_heads(),
        );
        let st = &self.stream;
        // Per token: position, sequence, arena slot. Per sequence: tenant
        // index and block table. Per block: owner index (-1 free or cached
        // without owner, -2 a tenant outside this batch).
        let mut tenants: HashMap<&str, i32> = HashMap::new();
        let seq_tenant: Vec<i32> = batch
            .iter()
            .map(|s| {
                let next = tenants.len() as i32;
                *tenants.entry(s.tenant).or_insert(next)
            })
            .collect();
        let max_blocks = batch.iter().map(|s| s.blocks.len()).max().unwrap_or(1);
        let mut tables = vec![0i32; batch.len() * max_blocks];
        let mut owner = vec![-1i32; self.shape.num_blocks];
        for (si, s) in batch.iter().enumerate() {
            for (j, &b) in s.blocks.iter().enumerate() {
                tables[si * max_blocks + j] = b as i32;
                owner[b as usize] = match pool.owner(b) {
                    Some(t) => tenants.get(&**t).copied().unwrap_or(-2),
                    None => -1,
                };
            }
        }
        let pos: Vec<i32> = meta.iter().map(|&(_, p)| p as i32).collect();
        let seq: Vec<i32> = meta.iter().map(|&(s, _)| s as i32).collect();
        let slots: Vec<i32> = meta
            .iter()
            .map(|&(s, p)| (batch[s].blocks[p / bs] as usize * bs + p % bs) as i32)
            .collect();
        let d_toks = st.clone_htod(&toks).map_err(dev)?;
        let d_pos = st.clone_htod(&pos).map_err(dev)?;
        let d_seq = st.clone_htod(&seq).map_err(dev)?;
        let d_slots = st.clone_htod(&slots).map_err(dev)?;
        let d_tables = st.clone_htod(&tables).map_err(dev)?;
        let d_seq_tenant = st.clone_htod(&seq_tenant).map_err(dev)?;
        let d_owner = st.clone_htod(&owner).map_err(dev)?;
        let mut d_viol = self.zeros::<i32>(batch.len())?;

        let mut x = self.zeros::<f32>(n * h)?;
        {
            let (ni, hi) = (n as i32, h as i32);
            let mut a = st.launch_builder(self.k("embed_gather"));
            a.arg(&self.embed)
                .arg(&d_toks)
                .arg(&mut x)
                .arg(&ni)
                .arg(&hi);
            // SAFETY: embed_gather(embed, tokens, x, n, h): embed is vocab × h,
            // every token id was checked < vocab by `flatten`, x is n × h.
            unsafe { a.launch(grid(n * h)) }.map_err(dev)?;
        }
        let mut normed = self.zeros::<f32>(n * h)?;
        let mut attn = self.zeros::<f32>(n * nh * hd)?;
        // 1/sqrt(head_dim), times the square of YaRN's attention factor.
        let scale = self.attn_scale;
        for (li, layer) in self.layers.iter().enumerate() {
            self.rms_norm(&x, &layer.attn_norm, n, &mut normed)?;
            let mut q = self.linear(&layer.q, &normed, n, None)?;
            let mut k = self.linear(&layer.k, &normed, n, None)?;
            let v = self.linear(&layer.v, &normed, n, None)?;
            // Qwen3: RMSNorm over each query and key head, before the rotary
            // embedding.
            if let Some(w) = &layer.q_norm {
                let mut out = self.zeros::<f32>(n * nh * hd)?;
                self.rms_norm_rows(&q, w, n * nh, hd, &mut out)?;
                q = out;
            }
            if let Some(w) = &layer.k_norm {
                let mut out = self.zeros::<f32>(n * nkv * hd)?;
                self.rms_norm_rows(&k, w, n * nkv, hd, &mut out)?;
                k = out;
            }
            for (buf, heads) in [(&mut q, nh), (&mut k, nkv)] {
                let (ni, hs, hdi) = (n as i32, heads as i32, hd as i32);
                let mut a = st.launch_builder(self.k("rope"));
                a.arg(buf)
                    .arg(&d_pos)
                    .arg(&self.inv_freq)
                    .arg(&ni)
                    .arg(&hs)
                    .arg(&hdi);
                // SAFETY: rope(x, pos, inv_freq, n, heads, hd): x is
                // n × heads × hd, pos n ints, inv_freq hd/2 floats.
                unsafe { a.launch(grid(n * heads * hd / 2)) }.map_err(dev)?;
            }
            let slot_len = (nkv * hd) as i32;
            {
                let ni = n as i32;
                let (ka, va) = (&mut arena.k[li], &mut arena.v[li]);
                let mut a = st.launch_builder(self.k("kv_write"));
                a.arg(&k)
                    .arg(&v)
                    .arg(ka)
                    .arg(va)
                    .arg(&d_slots)
                    .arg(&ni)
                    .arg(&slot_len);
                // SAFETY: kv_write(k, v, k_arena, v_arena, slots, n, slot_len):
                // k, v are n × slot_len; every slot is block × block_size +
                // offset of a block of the table (< num_blocks), and the
                // arenas hold num_blocks × block_size × slot_len floats.
                unsafe { a.launch(grid(n * nkv * hd)) }.map_err(dev)?;
            }
            {
                let (ni, nhi, nkvi, hdi, bsi, mb) = (
                    n as i32,
                    nh as i32,
                    nkv as i32,
                    hd as i32,
                    bs as i32,
                    max_blocks as i32,
                );
                let (ka, va) = (&arena.k[li], &arena.v[li]);
                let mut a = st.launch_builder(self.k("paged_attention"));
                a.arg(&q)
                    .arg(ka)
                    .arg(va)
                    .arg(&mut attn)
                    .arg(&d_seq)
                    .arg(&d_pos)
                    .arg(&d_tables)
                    .arg(&mb)
                    .arg(&d_seq_tenant)
                    .arg(&d_owner)
                    .arg(&mut d_viol)
                    .arg(&ni)
                    .arg(&nhi)
                    .arg(&nkvi)
                    .arg(&hdi)
                    .arg(&bsi)
                    .arg(&scale);
                // SAFETY: paged_attention's arguments in its order; q and
                // attn are n × nh × hd, tables nseq × max_blocks with every
                // position's block present (checked by `flatten`), owner
                // num_blocks ints, violations nseq ints; hd ≤ 256 (checked
                // at upload), one warp per (token, head).
                unsafe { a.launch(grid(n * nh * 32)) }.map_err(dev)?;
            }
            let o = self.linear(&layer.o, &attn, n, None)?;
            self.elementwise("add_inplace", &mut x, &o, n * h)?;
            self.rms_norm(&x, &layer.mlp_norm, n, &mut normed)?;
            let mut g = self.linear(&layer.gate, &normed, n, None)?;
            let u = self.linear(&layer.up, &normed, n, None)?;
            self.elementwise("silu_mul", &mut g, &u, n * cfg.intermediate_size)?;
            let d = self.linear(&layer.down, &g, n, None)?;
            self.elementwise("add_inplace", &mut x, &d, n * h)?;
        }
        drop(guard);
        let violations = st.clone_dtoh(&d_viol).map_err(dev)?;
        let bad: Vec<usize> = (0..batch.len()).filter(|&s| violations[s] != 0).collect();
        if !bad.is_empty() {
            return Err(ModelError::OwnershipViolation(bad));
        }
        // Logits of the last token of each sequence that wants them.
        let mut rows = Vec::new();
        let mut wanted = Vec::new();
        let mut offset = 0;
        for (si, s) in batch.iter().enumerate() {
            offset += s.tokens.len();
            if s.want_logits && !s.tokens.is_empty() {
                rows.push((offset - 1) as i32);
                wanted.push(si);
            }
        }
        if rows.is_empty() {
            return Ok(out);
        }
        let m = rows.len();
        let d_rows = st.clone_htod(&rows).map_err(dev)?;
        let mut last = self.zeros::<f32>(m * h)?;
        {
            let (mi, hi) = (m as i32, h as i32);
            let mut a = st.launch_builder(self.k("gather_rows"));
            a.arg(&x).arg(&d_rows).arg(&mut last).arg(&mi).arg(&hi);
            // SAFETY: gather_rows(x, rows, out, n, h): every row index < n
            // (the flattened token count), out is m × h.
            unsafe { a.launch(grid(m * h)) }.map_err(dev)?;
        }
        let mut lnorm = self.zeros::<f32>(m * h)?;
        self.rms_norm(&last, &self.norm, m, &mut lnorm)?;
        let vocab = cfg.vocab_size;
        let logits = match &self.lm_head {
            Some(l) => self.linear(l, &lnorm, m, None)?,
            None => {
                let mut y = self.zeros::<f32>(m * vocab)?;
                self.gemm(&self.embed, vocab, h, &lnorm, m, &mut y)?;
                y
            }
        };
        let host = st.clone_dtoh(&logits).map_err(dev)?;
        for (r, si) in wanted.into_iter().enumerate() {
            out[si] = Some(host[r * vocab..(r + 1) * vocab].to_vec());
        }
        Ok(out)
    }

    fn zero_blocks(&self, arena: &mut Arena, blocks: &[u32]) -> Result<(), ModelError> {
        let ids: Vec<i32> = blocks.iter().map(|&b| b as i32).collect();
        let d_ids = self.stream.clone_htod(&ids).map_err(dev)?;
        let (nb, bl) = (ids.len() as i32, self.shape.block_len() as i32);
        let (one, stride) = (1i32, 0i64);
        for buf in arena.k.iter_mut().chain(arena.v.iter_mut()) {
            let mut a = self.stream.launch_builder(self.k("zero_blocks"));
            a.arg(buf)
                .arg(&d_ids)
                .arg(&nb)
                .arg(&bl)
                .arg(&one)
                .arg(&stride);
            // SAFETY: zero_blocks(arena, blocks, nblocks, block_len, layers=1,
            // stride): every id is a block of the pool (< num_blocks) and the
            // buffer is one layer of num_blocks × block_len floats.
            unsafe { a.launch(grid(ids.len() * self.shape.block_len())) }.map_err(dev)?;
        }
        Ok(())
    }
}
