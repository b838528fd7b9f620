//! The paged KV pool: one preallocated arena of fixed-size blocks, each owned
//! by at most one tenant at a time. Pure logic, no network code.
//!
//! A block is in exactly one of three states:
//! - **free**: no owner, on the free list;
//! - **in use**: owned by one tenant and referenced by `refs > 0` of that
//!   tenant's sequences (sharing is read-only and only within the tenant);
//! - **cached**: owned by one tenant, unreferenced, registered in the prefix
//!   cache under a chained hash salted with the tenant's salt (see
//!   [`prefix`]); it can be reused by the same tenant or evicted.
//!
//! `free + in use + cached = total` at all times ([`KvPool::audit`]).
//!
//! Isolation rules enforced here:
//! - a block has at most one owner tenant; the prefix cache only hands a
//!   block to the tenant that owns it;
//! - a block handed to a tenant other than its last owner is zeroed (K and V,
//!   every layer) before it is returned by [`KvPool::allocate`];
//! - [`KvPool::check_table`] is the ownership guard the engine runs before
//!   every forward step; each violation increments a counter.
//!
//! ## Quota and eviction rule (what [`KvPool::allocate`] does)
//! Every tenant has the same [`KvQuota`]: `guaranteed` and `burst` blocks.
//! `held(t)` = blocks `t` owns (in use + cached); `in_use(t)` = referenced.
//! A tenant is *active* while `in_use(t) > 0`; its *deficit* is
//! `max(0, guaranteed - held(t))` (idle tenants have none).
//! Allocating `n` blocks for tenant `t`:
//! 1. If `in_use(t) + n > burst`: refused with [`KvError::QuotaExceeded`].
//!    Nothing is ever taken from another tenant to serve `t` past its burst.
//! 2. If `held(t) + n > burst`, the excess comes from `t`'s own cached blocks
//!    (LRU first), so `held(t) <= burst` always holds.
//! 3. Then free blocks, but only as many as leave `free >= Σ deficit(u)` over
//!    every other active tenant `u` (their guarantee stays available).
//! 4. Then `t`'s own remaining cached blocks, least recently used first.
//! 5. Then, in global LRU order, cached blocks of other tenants `u` that are
//!    above their guarantee (taken only while `held(u) > guaranteed`) or idle
//!    (no block in use: an idle tenant's cache is not "needed").
//! 6. Otherwise [`KvError::OutOfBlocks`]. All or nothing: a refusal changes
//!    nothing.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

mod audit;
mod cache;
pub mod prefix;
mod scrub;
pub use prefix::{BlockHash, PrefixSecret, TenantSalt};

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
    #[error(
        "tenant {tenant} is over its KV quota: {requested} more blocks requested, \
         {in_use} in use, at most {max} allowed"
    )]
    QuotaExceeded {
        tenant: String,
        requested: usize,
        in_use: usize,
        max: usize,
    },
    #[error("KV guard violation: block {block} is not owned by tenant {tenant}")]
    GuardViolation { block: BlockId, tenant: String },
}

/// Per-tenant quota (the same for every tenant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvQuota {
    /// Blocks kept available for an active tenant.
    pub guaranteed: usize,
    /// The most blocks a tenant may hold.
    pub burst: usize,
}

impl KvQuota {
    pub const UNLIMITED: KvQuota = KvQuota {
        guaranteed: 0,
        burst: usize::MAX,
    };

    /// The worker's default: each active tenant is guaranteed a fair share
    /// of the pool, `blocks / max_seqs` (at most `max_seqs` tenants can be
    /// active at once, so every guarantee can be honoured together), capped
    /// at `burst`.
    pub fn fair_share(blocks: usize, max_seqs: usize, burst: usize) -> KvQuota {
        KvQuota {
            guaranteed: (blocks / max_seqs.max(1)).min(burst),
            burst,
        }
    }
}

impl Default for KvQuota {
    fn default() -> Self {
        Self::UNLIMITED
    }
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

/// A block's state as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState<'a> {
    Free,
    InUse { owner: &'a TenantId, refs: u32 },
    Cached { owner: &'a TenantId },
}

#[derive(Debug, Clone, Default)]
struct Meta {
    owner: Option<TenantId>,
    last_owner: Option<TenantId>,
    refs: u32,
    hash: Option<BlockHash>,
    /// LRU stamp while cached.
    stamp: u64,
}

#[derive(Debug, Default)]
struct Tenant {
    in_use: usize,
    /// Unreferenced cached blocks by LRU stamp.
    cached: BTreeMap<u64, BlockId>,
}

impl Tenant {
    fn held(&self) -> usize {
        self.in_use + self.cached.len()
    }
    fn deficit(&self, guaranteed: usize) -> usize {
        if self.in_use > 0 {
            guaranteed.saturating_sub(self.held())
        } else {
            0
        }
    }
}

/// The arena plus ownership bookkeeping.
#[derive(Debug)]
pub struct KvPool {
    shape: KvShape,
    quota: KvQuota,
    /// Per layer: `num_blocks × block_size × num_kv_heads × head_dim`.
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    meta: Vec<Meta>,
    free: Vec<BlockId>,
    tenants: HashMap<TenantId, Tenant>,
    /// Every cached block by LRU stamp.
    lru: BTreeMap<u64, BlockId>,
    cache: HashMap<BlockHash, BlockId>,
    clock: u64,
    total_deficit: usize,
    guard_violations: u64,
    scrubbed_blocks: u64,
    scrub_time: std::time::Duration,
    evicted_blocks: u64,
    cache_hit_blocks: u64,
    /// False when the K/V values live elsewhere (the CUDA arena): `k`/`v`
    /// are then empty and blocks to zero are queued in `to_scrub`.
    host_storage: bool,
    to_scrub: Vec<BlockId>,
}

impl KvPool {
    /// A pool without quotas.
    pub fn new(shape: KvShape) -> Self {
        Self::with_quota(shape, KvQuota::UNLIMITED)
    }

    pub fn with_quota(shape: KvShape, quota: KvQuota) -> Self {
        Self::with_storage(shape, quota, true)
    }

    /// A pool whose K/V values live in device memory (`host_storage` false):
    /// it keeps only the bookkeeping, and the blocks that must be zeroed
    /// before their new owner's next step are taken with
    /// [`take_scrub_list`](Self::take_scrub_list) by the device engine.
    pub fn with_storage(shape: KvShape, quota: KvQuota, host_storage: bool) -> Self {
        let per_layer = if host_storage {
            shape.num_blocks * shape.block_len()
        } else {
            0
        };
        Self {
            shape,
            quota,
            k: (0..shape.num_layers)
                .map(|_| vec![0.0; per_layer])
                .collect(),
            v: (0..shape.num_layers)
                .map(|_| vec![0.0; per_layer])
                .collect(),
            meta: vec![Meta::default(); shape.num_blocks],
            // Reversed so that blocks are handed out in ascending order first.
            free: (0..shape.num_blocks as BlockId).rev().collect(),
            tenants: HashMap::new(),
            lru: BTreeMap::new(),
            cache: HashMap::new(),
            clock: 0,
            total_deficit: 0,
            guard_violations: 0,
            scrubbed_blocks: 0,
            scrub_time: std::time::Duration::ZERO,
            evicted_blocks: 0,
            cache_hit_blocks: 0,
            host_storage,
            to_scrub: Vec::new(),
        }
    }

    /// Whether the K/V values are in this pool (else in a device arena).
    pub fn has_host_storage(&self) -> bool {
        self.host_storage
    }

    /// Device storage: the blocks that changed owner since the last call;
    /// the device engine zeroes them before it runs the next step.
    pub fn take_scrub_list(&mut self) -> Vec<BlockId> {
        std::mem::take(&mut self.to_scrub)
    }

    pub fn shape(&self) -> KvShape {
        self.shape
    }
    pub fn quota(&self) -> KvQuota {
        self.quota
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
    /// Unreferenced blocks kept for the prefix cache.
    pub fn cached_blocks(&self) -> usize {
        self.lru.len()
    }
    /// Blocks referenced by at least one sequence.
    pub fn used_blocks(&self) -> usize {
        self.shape.num_blocks - self.free.len() - self.lru.len()
    }
    /// Blocks currently owned by `tenant` (in use + cached).
    pub fn used_by(&self, tenant: &str) -> usize {
        self.tenants.get(tenant).map_or(0, Tenant::held)
    }
    /// Blocks of `tenant` referenced by at least one sequence.
    pub fn in_use_by(&self, tenant: &str) -> usize {
        self.tenants.get(tenant).map_or(0, |t| t.in_use)
    }
    /// Unreferenced cached blocks of `tenant`.
    pub fn cached_by(&self, tenant: &str) -> usize {
        self.tenants.get(tenant).map_or(0, |t| t.cached.len())
    }
    /// Current owner of a block (None when free or out of range).
    pub fn owner(&self, block: BlockId) -> Option<&TenantId> {
        self.meta.get(block as usize).and_then(|m| m.owner.as_ref())
    }
    pub fn state(&self, block: BlockId) -> Option<BlockState<'_>> {
        let m = self.meta.get(block as usize)?;
        Some(match &m.owner {
            None => BlockState::Free,
            Some(owner) if m.refs > 0 => BlockState::InUse {
                owner,
                refs: m.refs,
            },
            Some(owner) => BlockState::Cached { owner },
        })
    }
    /// How many times [`Self::check_table`] found a violation.
    pub fn guard_violations(&self) -> u64 {
        self.guard_violations
    }
    /// How many blocks were zeroed: handed to another owner, released by a
    /// tenant without prefix cache, or expired.
    pub fn scrubbed_blocks(&self) -> u64 {
        self.scrubbed_blocks
    }
    /// How many cached blocks were evicted.
    /// Time spent zeroing blocks that changed owner.
    pub fn scrub_time(&self) -> std::time::Duration {
        self.scrub_time
    }
    pub fn evicted_blocks(&self) -> u64 {
        self.evicted_blocks
    }
    /// How many blocks were reused from the prefix cache.
    pub fn cache_hit_blocks(&self) -> u64 {
        self.cache_hit_blocks
    }
    /// Σ deficit of active tenants other than `tenant` (see the module docs).
    pub fn reserved_for_others(&self, tenant: &str) -> usize {
        let own = self
            .tenants
            .get(tenant)
            .map_or(0, |t| t.deficit(self.quota.guaranteed));
        self.total_deficit - own
    }

    /// Blocks needed to hold `tokens` token slots.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.shape.block_size)
    }

    /// Applies `f` to `tenant`'s counters, keeping the deficit sum exact and
    /// dropping tenants that hold nothing.
    fn with_tenant(&mut self, tenant: &TenantId, f: impl FnOnce(&mut Tenant)) {
        let g = self.quota.guaranteed;
        if !self.tenants.contains_key(&**tenant) {
            self.tenants.insert(tenant.clone(), Tenant::default());
        }
        let Some(e) = self.tenants.get_mut(&**tenant) else {
            return;
        };
        let before = e.deficit(g);
        f(e);
        let after = e.deficit(g);
        let empty = e.held() == 0;
        self.total_deficit = self.total_deficit + after - before;
        if empty {
            self.tenants.remove(&**tenant);
        }
    }

    /// Cached blocks of other tenants that rule 5 allows taking, oldest
    /// first, at most `n`.
    fn pick_foreign(&self, tenant: &str, n: usize) -> Vec<BlockId> {
        let g = self.quota.guaranteed;
        let mut taken: Vec<(&str, usize)> = Vec::new();
        let mut out = Vec::new();
        for &b in self.lru.values() {
            if out.len() == n {
                break;
            }
            let Some(owner) = self.meta[b as usize].owner.as_deref() else {
                continue;
            };
            if owner == tenant {
                continue;
            }
            let Some(st) = self.tenants.get(owner) else {
                continue;
            };
            let i = match taken.iter().position(|(o, _)| *o == owner) {
                Some(i) => i,
                None => {
                    taken.push((owner, 0));
                    taken.len() - 1
                }
            };
            if st.in_use == 0 || st.held() - taken[i].1 > g {
                taken[i].1 += 1;
                out.push(b);
            }
        }
        out
    }

    /// Takes a cached block out of the cache: no owner, no hash (its last
    /// owner is kept so that a new owner gets it zeroed).
    fn uncache(&mut self, b: BlockId) {
        let m = &mut self.meta[b as usize];
        let owner = m.owner.take();
        if let Some(h) = m.hash.take() {
            self.cache.remove(&h);
        }
        let stamp = m.stamp;
        self.lru.remove(&stamp);
        if let Some(o) = owner {
            self.with_tenant(&o, |t| {
                t.cached.remove(&stamp);
            });
        }
        self.evicted_blocks += 1;
    }

    /// Hands `n` blocks to `tenant` following the quota and eviction rule of
    /// the module docs. A block whose last owner was another tenant is zeroed
    /// first. All or nothing.
    pub fn allocate(&mut self, tenant: &TenantId, n: usize) -> Result<Vec<BlockId>, KvError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let max = self.quota.burst;
        let (in_use, cached) = self
            .tenants
            .get(&**tenant)
            .map_or((0, 0), |t| (t.in_use, t.cached.len()));
        if in_use.saturating_add(n) > max {
            return Err(KvError::QuotaExceeded {
                tenant: tenant.to_string(),
                requested: n,
                in_use,
                max,
            });
        }
        let must_own = (in_use + cached + n).saturating_sub(max);
        let headroom = self
            .free
            .len()
            .saturating_sub(self.reserved_for_others(tenant));
        let from_free = (n - must_own).min(headroom);
        let own = must_own + (n - must_own - from_free).min(cached - must_own);
        let rest = n - from_free - own;
        let foreign = if rest > 0 {
            self.pick_foreign(tenant, rest)
        } else {
            Vec::new()
        };
        if foreign.len() < rest {
            return Err(KvError::OutOfBlocks {
                requested: n,
                free: self.free.len(),
                total: self.shape.num_blocks,
            });
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..own {
            let b = self
                .tenants
                .get(&**tenant)
                .and_then(|t| t.cached.values().next().copied());
            let Some(b) = b else { break };
            self.uncache(b);
            out.push(b);
        }
        for _ in 0..from_free {
            let Some(b) = self.free.pop() else { break };
            out.push(b);
        }
        for b in foreign {
            self.uncache(b);
            out.push(b);
        }
        for &b in &out {
            let prev = self.meta[b as usize].last_owner.as_ref();
            if prev.is_some_and(|prev| prev != tenant) {
                self.scrub_now(b);
            }
            let m = &mut self.meta[b as usize];
            m.owner = Some(tenant.clone());
            m.last_owner = Some(tenant.clone());
            m.refs = 1;
        }
        let got = out.len();
        self.with_tenant(tenant, |t| t.in_use += got);
        Ok(out)
    }

    /// Drops one reference of `tenant` to each block. A block nobody
    /// references any more becomes cached when it is registered in the
    /// prefix cache, free otherwise. Blocks not in use by `tenant` are left
    /// untouched; their count is returned.
    pub fn free(&mut self, tenant: &TenantId, blocks: &[BlockId]) -> usize {
        self.free_inner(tenant, blocks, false)
    }

    /// [`Self::free`], zeroing every block that becomes free at once (a
    /// tenant whose prompts must not stay in memory: `no_prefix_cache`).
    pub fn free_scrubbed(&mut self, tenant: &TenantId, blocks: &[BlockId]) -> usize {
        self.free_inner(tenant, blocks, true)
    }

    fn free_inner(&mut self, tenant: &TenantId, blocks: &[BlockId], scrub: bool) -> usize {
        let mut skipped = 0;
        for &b in blocks {
            let Some(m) = self.meta.get_mut(b as usize) else {
                skipped += 1;
                continue;
            };
            if m.refs == 0 || m.owner.as_ref() != Some(tenant) {
                skipped += 1;
                continue;
            }
            m.refs -= 1;
            if m.refs > 0 {
                continue;
            }
            if m.hash.is_some() {
                self.clock += 1;
                let stamp = self.clock;
                m.stamp = stamp;
                self.lru.insert(stamp, b);
                self.with_tenant(tenant, |t| {
                    t.in_use -= 1;
                    t.cached.insert(stamp, b);
                });
            } else {
                m.owner = None;
                if scrub {
                    self.scrub_now(b);
                }
                self.free.push(b);
                self.with_tenant(tenant, |t| t.in_use -= 1);
            }
        }
        skipped
    }

    /// The ownership guard: every block of `table` must be in use and owned
    /// by `tenant`.
    pub fn check_table(&mut self, tenant: &str, table: &[BlockId]) -> Result<(), KvError> {
        for &b in table {
            let ok = self
                .meta
                .get(b as usize)
                .is_some_and(|m| m.refs > 0 && m.owner.as_deref() == Some(tenant));
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
mod proptests;
#[cfg(test)]
mod tests;
