//! The paged KV pool: one preallocated arena of fixed-size blocks, each owned
//! by at most one tenant at a time. Pure logic, no network code.
//!
//! Isolation rules enforced here:
//! - a block has at most one owner tenant (`owner[b]`);
//! - a block handed to a tenant other than its last owner is zeroed (K and V,
//!   every layer) before it is returned by [`KvPool::allocate`];
//! - [`KvPool::check_table`] is the ownership guard the engine runs before
//!   every forward step; each violation increments a counter.
//!
//! Prefix caching (sharing full blocks between requests of the SAME tenant,
//! keyed by chained hashes salted per tenant) is future work: it is not part of
//! this slice, so every request reports `cached_tokens = 0`.
use std::collections::HashMap;
use std::sync::Arc;

/// A tenant id (validated by the server before it reaches the pool).
pub type TenantId = Arc<str>;

/// Index of a block in the arena.
pub type BlockId = u32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("out of KV blocks: {requested} requested, {free} free of {total}")]
    OutOfBlocks {
        requested: usize,
        free: usize,
        total: usize,
    },
    #[error("KV guard violation: block {block} is not owned by tenant {tenant}")]
    GuardViolation { block: BlockId, tenant: String },
}

/// Geometry of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    pub num_layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl KvShape {
    /// Floats per token slot (all KV heads of one layer).
    pub fn slot_len(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
    /// Floats per block per layer (K or V).
    pub fn block_len(&self) -> usize {
        self.block_size * self.slot_len()
    }
}

/// The arena plus ownership bookkeeping.
#[derive(Debug)]
pub struct KvPool {
    shape: KvShape,
    /// Per layer: `num_blocks × block_size × num_kv_heads × head_dim`.
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    owner: Vec<Option<TenantId>>,
    last_owner: Vec<Option<TenantId>>,
    free: Vec<BlockId>,
    used_by_tenant: HashMap<TenantId, usize>,
    guard_violations: u64,
    scrubbed_blocks: u64,
}

impl KvPool {
    pub fn new(shape: KvShape) -> Self {
        let per_layer = shape.num_blocks * shape.block_len();
        Self {
            shape,
            k: (0..shape.num_layers)
                .map(|_| vec![0.0; per_layer])
                .collect(),
            v: (0..shape.num_layers)
                .map(|_| vec![0.0; per_layer])
                .collect(),
            owner: vec![None; shape.num_blocks],
            last_owner: vec![None; shape.num_blocks],
            // Reversed so that blocks are handed out in ascending order first.
            free: (0..shape.num_blocks as BlockId).rev().collect(),
            used_by_tenant: HashMap::new(),
            guard_violations: 0,
            scrubbed_blocks: 0,
        }
    }

    pub fn shape(&self) -> KvShape {
        self.shape
    }
    pub fn block_size(&self) -> usize {
        self.shape.block_size
    }
    pub fn total_blocks(&self) -> usize {
        self.shape.num_blocks
    }
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }
    pub fn used_blocks(&self) -> usize {
        self.shape.num_blocks - self.free.len()
    }
    /// Blocks currently owned by `tenant`.
    pub fn used_by(&self, tenant: &str) -> usize {
        self.used_by_tenant.get(tenant).copied().unwrap_or(0)
    }
    /// Current owner of a block (None when free or out of range).
    pub fn owner(&self, block: BlockId) -> Option<&TenantId> {
        self.owner.get(block as usize).and_then(|o| o.as_ref())
    }
    /// How many times [`Self::check_table`] found a violation.
    pub fn guard_violations(&self) -> u64 {
        self.guard_violations
    }
    /// How many blocks were zeroed because they changed owner.
    pub fn scrubbed_blocks(&self) -> u64 {
        self.scrubbed_blocks
    }

    /// Blocks needed to hold `tokens` token slots.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.shape.block_size)
    }

    /// Hands `n` free blocks to `tenant`. A block whose last owner was another
    /// tenant is zeroed first. All or nothing.
    pub fn allocate(&mut self, tenant: &TenantId, n: usize) -> Result<Vec<BlockId>, KvError> {
        if n > self.free.len() {
            return Err(KvError::OutOfBlocks {
                requested: n,
                free: self.free.len(),
                total: self.shape.num_blocks,
            });
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let Some(b) = self.free.pop() else { break };
            let needs_scrub = match &self.last_owner[b as usize] {
                Some(prev) => prev != tenant,
                None => false,
            };
            if needs_scrub {
                self.zero_block(b);
                self.scrubbed_blocks += 1;
            }
            self.owner[b as usize] = Some(tenant.clone());
            self.last_owner[b as usize] = Some(tenant.clone());
            out.push(b);
        }
        *self.used_by_tenant.entry(tenant.clone()).or_insert(0) += out.len();
        Ok(out)
    }

    /// Returns `tenant`'s blocks to the free list (remembering the last owner).
    /// Blocks not owned by `tenant` are left untouched; their count is returned.
    pub fn free(&mut self, tenant: &TenantId, blocks: &[BlockId]) -> usize {
        let mut skipped = 0;
        for &b in blocks {
            let owned = self
                .owner
                .get(b as usize)
                .and_then(|o| o.as_ref())
                .is_some_and(|o| o == tenant);
            if !owned {
                skipped += 1;
                continue;
            }
            self.owner[b as usize] = None;
            self.free.push(b);
            if let Some(c) = self.used_by_tenant.get_mut(tenant) {
                *c -= 1;
                if *c == 0 {
                    self.used_by_tenant.remove(tenant);
                }
            }
        }
        skipped
    }

    /// The ownership guard: every block of `table` must be owned by `tenant`.
    pub fn check_table(&mut self, tenant: &str, table: &[BlockId]) -> Result<(), KvError> {
        for &b in table {
            let ok = self
                .owner
                .get(b as usize)
                .and_then(|o| o.as_ref())
                .is_some_and(|o| &**o == tenant);
            if !ok {
                self.guard_violations += 1;
                return Err(KvError::GuardViolation {
                    block: b,
                    tenant: tenant.to_string(),
                });
            }
        }
        Ok(())
    }

    fn zero_block(&mut self, b: BlockId) {
        let len = self.shape.block_len();
        let start = b as usize * len;
        for layer in 0..self.shape.num_layers {
            self.k[layer][start..start + len].fill(0.0);
            self.v[layer][start..start + len].fill(0.0);
        }
    }

    fn slot_range(&self, block: BlockId, offset: usize) -> std::ops::Range<usize> {
        let s = self.shape.slot_len();
        let start = block as usize * self.shape.block_len() + offset * s;
        start..start + s
    }

    /// Writes one token's K and V (all KV heads) of one layer.
    pub fn write(&mut self, layer: usize, block: BlockId, offset: usize, k: &[f32], v: &[f32]) {
        let r = self.slot_range(block, offset);
        self.k[layer][r.clone()].copy_from_slice(k);
        self.v[layer][r].copy_from_slice(v);
    }

    /// K of one token slot (all KV heads) of one layer.
    pub fn k_slot(&self, layer: usize, block: BlockId, offset: usize) -> &[f32] {
        &self.k[layer][self.slot_range(block, offset)]
    }

    /// V of one token slot (all KV heads) of one layer.
    pub fn v_slot(&self, layer: usize, block: BlockId, offset: usize) -> &[f32] {
        &self.v[layer][self.slot_range(block, offset)]
    }

    /// True when every K and V value of the block, all layers, is zero.
    pub fn block_is_zero(&self, block: BlockId) -> bool {
        let len = self.shape.block_len();
        let start = block as usize * len;
        (0..self.shape.num_layers).all(|l| {
            self.k[l][start..start + len].iter().all(|x| *x == 0.0)
                && self.v[l][start..start + len].iter().all(|x| *x == 0.0)
        })
    }
}

#[cfg(test)]
mod tests;
