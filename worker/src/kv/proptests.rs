//! Property test of the KV pool: 250 cases × 4,000 random operations
//! (1,000,000 in total) across 64 tenants, with every invariant checked after
//! every operation. The arena is tiny (1 layer, 1 head, head_dim 1): only
//! the bookkeeping matters here.
use std::sync::Arc;

use proptest::prelude::*;

use super::*;

const TENANTS: usize = 64;
const BLOCKS: usize = 96;
const BS: usize = 2;
const QUOTA: KvQuota = KvQuota {
    guaranteed: 1,
    burst: 8,
};
const MAX_SEQS: usize = 32;
const CASES: u32 = 250;
const OPS: usize = 4_000;

#[derive(Debug, Clone)]
enum Op {
    /// A new sequence of `tenant` with prompt `prompt` of `blocks` blocks,
    /// reusing whatever prefix the tenant has cached.
    Alloc {
        tenant: usize,
        prompt: u32,
        blocks: usize,
    },
    Extend(usize, usize),
    Fork(usize, usize),
    Free(usize),
    Cancel(usize),
    Evict(usize),
    Check(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..TENANTS, 0..3u32, 1..5usize)
            .prop_map(|(tenant, prompt, blocks)| Op::Alloc { tenant, prompt, blocks }),
        2 => (any::<usize>(), 1..3usize).prop_map(|(s, n)| Op::Extend(s, n)),
        1 => (any::<usize>(), 1..4usize).prop_map(|(s, k)| Op::Fork(s, k)),
        2 => any::<usize>().prop_map(Op::Free),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => (1..6usize).prop_map(Op::Evict),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(s, o)| Op::Check(s, o)),
    ]
}

struct Seq {
    tenant: usize,
    blocks: Vec<BlockId>,
    hashes: Vec<BlockHash>,
}

struct World {
    pool: KvPool,
    names: Vec<TenantId>,
    salts: Vec<TenantSalt>,
    seqs: Vec<Seq>,
    /// Tenant whose marker is in each block (None: never written).
    writer: Vec<Option<usize>>,
}

fn marker(tenant: usize) -> f32 {
    (tenant + 1) as f32
}

impl World {
    fn new() -> Self {
        let shape = KvShape {
            num_layers: 1,
            num_blocks: BLOCKS,
            block_size: BS,
            num_kv_heads: 1,
            head_dim: 1,
        };
        let secret = PrefixSecret::from_bytes([3; 32]);
        let names: Vec<TenantId> = (0..TENANTS).map(|i| Arc::from(format!("t{i}"))).collect();
        Self {
            pool: KvPool::with_quota(shape, QUOTA),
            salts: names.iter().map(|n| secret.tenant_salt(n)).collect(),
            names,
            seqs: Vec::new(),
            writer: vec![None; BLOCKS],
        }
    }

    /// What rule 1-6 says `tenant` can get right now.
    fn available(&self, t: usize) -> usize {
        let p = &self.pool;
        let name = &self.names[t];
        let headroom = p.free_blocks().saturating_sub(p.reserved_for_others(name));
        let foreign: usize = (0..TENANTS)
            .filter(|&u| u != t)
            .map(|u| {
                let n = &*self.names[u];
                if p.in_use_by(n) == 0 {
                    p.cached_by(n)
                } else {
                    p.cached_by(n)
                        .min(p.used_by(n).saturating_sub(QUOTA.guaranteed))
                }
            })
            .sum();
        headroom + p.cached_by(name) + foreign
    }

    /// Allocates `n` fresh blocks for tenant `t` and checks the outcome
    /// against the rule; writes the tenant's marker into each new block.
    fn alloc(&mut self, t: usize, n: usize) -> Result<Option<Vec<BlockId>>, TestCaseError> {
        let name = self.names[t].clone();
        let in_use = self.pool.in_use_by(&name);
        let avail = self.available(t);
        let free_before = self.pool.free_blocks();
        let headroom = free_before.saturating_sub(self.pool.reserved_for_others(&name));
        let held_before: Vec<(usize, usize)> = self
            .names
            .iter()
            .map(|u| (self.pool.used_by(u), self.pool.in_use_by(u)))
            .collect();
        match self.pool.allocate(&name, n) {
            Ok(bs) => {
                prop_assert!(in_use + n <= QUOTA.burst, "burst exceeded");
                prop_assert_eq!(bs.len(), n);
                prop_assert!(
                    free_before - self.pool.free_blocks() <= headroom,
                    "took reserved free blocks"
                );
                for (u, &(held, used)) in held_before.iter().enumerate() {
                    let now = self.pool.used_by(&self.names[u]);
                    if u != t && now < held && used > 0 {
                        prop_assert!(
                            now >= QUOTA.guaranteed,
                            "tenant {} pushed below its guarantee",
                            u
                        );
                    }
                }
                for &b in &bs {
                    if self.writer[b as usize].is_some_and(|w| w != t) {
                        prop_assert!(
                            self.pool.block_is_zero(b),
                            "block {} changed owner unzeroed",
                            b
                        );
                    }
                    let v = [marker(t)];
                    for o in 0..BS {
                        self.pool.write(0, b, o, &v, &v);
                    }
                    self.writer[b as usize] = Some(t);
                }
                Ok(Some(bs))
            }
            Err(KvError::QuotaExceeded { .. }) => {
                prop_assert!(in_use + n > QUOTA.burst, "refused within quota");
                Ok(None)
            }
            Err(KvError::OutOfBlocks { .. }) => {
                prop_assert!(n > avail, "refused {} with {} available", n, avail);
                Ok(None)
            }
            Err(e) => Err(TestCaseError::fail(format!("unexpected {e}"))),
        }
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        let nseq = self.seqs.len();
        match op {
            Op::Alloc {
                tenant,
                prompt,
                blocks,
            } => {
                if nseq >= MAX_SEQS {
                    return Ok(());
                }
                let toks: Vec<u32> = (0..(blocks * BS) as u32)
                    .map(|i| prompt * 1000 + i)
                    .collect();
                let hashes = self.salts[tenant].block_hashes(&toks, BS);
                let name = self.names[tenant].clone();
                let reused = self.pool.acquire_prefix(&name, &hashes);
                for &b in &reused {
                    prop_assert_eq!(self.pool.owner(b), Some(&name));
                    prop_assert_eq!(self.writer[b as usize], Some(tenant));
                    prop_assert_eq!(self.pool.k_slot(0, b, 0)[0], marker(tenant));
                }
                match self.alloc(tenant, blocks - reused.len())? {
                    Some(fresh) => {
                        let mut table = reused;
                        table.extend(fresh);
                        self.seqs.push(Seq {
                            tenant,
                            blocks: table,
                            hashes,
                        });
                    }
                    None => {
                        prop_assert_eq!(self.pool.free(&name, &reused), 0);
                    }
                }
            }
            Op::Extend(s, n) if nseq > 0 => {
                let t = self.seqs[s % nseq].tenant;
                if let Some(bs) = self.alloc(t, n)? {
                    self.seqs[s % nseq].blocks.extend(bs);
                }
            }
            Op::Fork(s, k) if nseq > 0 && nseq < MAX_SEQS => {
                let src = &self.seqs[s % nseq];
                let (t, k) = (src.tenant, k.min(src.blocks.len()));
                let prefix = src.blocks[..k].to_vec();
                let hashes = src.hashes[..k.min(src.hashes.len())].to_vec();
                let other = &self.names[(t + 1) % TENANTS];
                prop_assert!(
                    self.pool.fork(other, &prefix).is_err(),
                    "cross-tenant fork allowed"
                );
                self.pool
                    .fork(&self.names[t], &prefix)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                self.seqs.push(Seq {
                    tenant: t,
                    blocks: prefix,
                    hashes,
                });
            }
            Op::Free(s) | Op::Cancel(s) if nseq > 0 => {
                let seq = self.seqs.swap_remove(s % nseq);
                let name = &self.names[seq.tenant];
                if matches!(op, Op::Free(_)) {
                    // Finished: its full prompt blocks go to the prefix cache.
                    for (b, h) in seq.blocks.iter().zip(&seq.hashes) {
                        self.pool.register(name, *b, *h);
                    }
                }
                prop_assert_eq!(self.pool.free(name, &seq.blocks), 0);
            }
            Op::Evict(n) => {
                let before = self.pool.cached_blocks();
                prop_assert_eq!(self.pool.evict_cached(n), n.min(before));
            }
            Op::Check(s, o) if nseq > 0 => {
                let seq = &self.seqs[s % nseq];
                let name = self.names[seq.tenant].clone();
                let mut table = seq.blocks.clone();
                prop_assert!(self.pool.check_table(&name, &table).is_ok());
                let other = &self.seqs[o % nseq];
                if other.tenant != seq.tenant && !other.blocks.is_empty() {
                    table.push(other.blocks[0]);
                    let before = self.pool.guard_violations();
                    prop_assert!(self.pool.check_table(&name, &table).is_err());
                    prop_assert_eq!(self.pool.guard_violations(), before + 1);
                }
            }
            _ => {}
        }
        self.invariants()
    }

    fn invariants(&self) -> Result<(), TestCaseError> {
        // free + in use + cached = total, counters, LRU, cache map, burst.
        self.pool.audit().map_err(TestCaseError::fail)?;
        let mut refs = [0u32; BLOCKS];
        let mut owner = [usize::MAX; BLOCKS];
        for s in &self.seqs {
            for &b in &s.blocks {
                let i = b as usize;
                prop_assert!(
                    owner[i] == usize::MAX || owner[i] == s.tenant,
                    "block {} in two tenants' tables",
                    b
                );
                owner[i] = s.tenant;
                refs[i] += 1;
            }
        }
        let mut in_use = 0;
        for b in 0..BLOCKS {
            match self.pool.state(b as BlockId) {
                Some(BlockState::InUse { owner: o, refs: r }) => {
                    in_use += 1;
                    prop_assert_eq!(r, refs[b], "refcount of block {}", b);
                    prop_assert!(
                        owner[b] < TENANTS && *o == self.names[owner[b]],
                        "block {} owner",
                        b
                    );
                }
                _ => prop_assert_eq!(refs[b], 0, "table references unheld block {}", b),
            }
        }
        prop_assert_eq!(in_use, self.pool.used_blocks());
        let mut per_tenant = [0usize; TENANTS];
        for b in 0..BLOCKS {
            if refs[b] > 0 {
                per_tenant[owner[b]] += 1;
            }
        }
        for (t, &n) in per_tenant.iter().enumerate() {
            prop_assert_eq!(
                self.pool.in_use_by(&self.names[t]),
                n,
                "in-use count of tenant {}",
                t
            );
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, max_shrink_iters: 200, ..ProptestConfig::default() })]
    #[test]
    fn pool_invariants_hold_over_a_million_ops(ops in proptest::collection::vec(op(), OPS)) {
        let mut w = World::new();
        for op in ops {
            w.apply(op)?;
        }
        // Everything released: nothing leaks.
        for s in std::mem::take(&mut w.seqs) {
            prop_assert_eq!(w.pool.free(&w.names[s.tenant], &s.blocks), 0);
        }
        w.pool.evict_cached(BLOCKS);
        prop_assert_eq!(w.pool.free_blocks(), BLOCKS);
        w.pool.audit().map_err(TestCaseError::fail)?;
    }
}
