//! `bench kv`: operations per second of the pure KV pool on a seeded random
//! workload across many tenants — allocate a sequence (reusing the tenant's
//! cached prefix, registering its full blocks), extend, fork a prefix, free,
//! evict, and the ownership guard — with the full consistency audit
//! ([`KvPool::audit`]) run every `audit_every` operations and at the end, and
//! every live block table checked against its tenant. Violations must be 0.
//!
//! The arena has one layer, one KV head and `head_dim` 1: the figure is the
//! bookkeeping; zeroing cost at real sizes is in `bench decode`. Each
//! operation is timed on its own (`Instant`, ~20-40 ns of the figure).
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::{BenchError, rate};
use crate::kv::{BlockHash, BlockId, KvError, KvPool, KvQuota, KvShape, PrefixSecret, TenantId};

/// Workload size.
#[derive(Debug, Clone)]
pub struct KvBenchConfig {
    pub tenants: usize,
    pub ops: u64,
    pub blocks: usize,
    pub block_size: usize,
    pub quota: KvQuota,
    /// Live sequences at most (beyond it, an allocation becomes a free).
    pub max_seqs: usize,
    pub audit_every: u64,
    pub seed: u64,
}

impl Default for KvBenchConfig {
    fn default() -> Self {
        Self {
            tenants: 64,
            ops: 2_000_000,
            blocks: 1536,
            block_size: 16,
            quota: KvQuota {
                guaranteed: 8,
                burst: 256,
            },
            max_seqs: 512,
            audit_every: 50_000,
            seed: 1,
        }
    }
}

/// One kind of operation.
#[derive(Debug, Clone, Serialize)]
pub struct OpFigure {
    pub op: &'static str,
    pub count: u64,
    /// Of those, refused by the quota or for lack of blocks (a valid outcome).
    pub refused: u64,
    pub ops_per_sec: f64,
    pub mean_ns: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KvBenchReport {
    pub tenants: usize,
    pub blocks: usize,
    pub block_size: usize,
    pub ops: u64,
    /// Time inside pool operations (audits excluded).
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub per_op: Vec<OpFigure>,
    pub audits: u64,
    /// Audit failures + guard failures on valid tables + blocks of a live
    /// sequence owned by another tenant. Must be 0.
    pub violations: u64,
    /// The first few violation messages.
    pub violation_examples: Vec<String>,
    pub scrubbed_blocks: u64,
    pub evicted_blocks: u64,
    pub cache_hit_blocks: u64,
}

const OPS: [&str; 6] = ["allocate", "extend", "fork", "free", "evict", "guard"];
/// Relative frequency of each operation.
const WEIGHTS: [u32; 6] = [4, 3, 1, 4, 1, 3];
const PROMPTS_PER_TENANT: usize = 4;

struct Seq {
    tenant: usize,
    blocks: Vec<BlockId>,
}

struct Run {
    pool: KvPool,
    names: Vec<TenantId>,
    /// Per tenant, per prompt: its chained block hashes.
    prompts: Vec<Vec<Vec<BlockHash>>>,
    seqs: Vec<Seq>,
    rng: StdRng,
    time: [Duration; 6],
    count: [u64; 6],
    refused: [u64; 6],
    violations: Vec<String>,
    violation_count: u64,
}

impl Run {
    fn violation(&mut self, msg: String) {
        self.violation_count += 1;
        if self.violations.len() < 8 {
            self.violations.push(msg);
        }
    }

    fn timed<T>(&mut self, k: usize, f: impl FnOnce(&mut KvPool) -> T) -> T {
        let t = Instant::now();
        let out = f(&mut self.pool);
        self.time[k] += t.elapsed();
        self.count[k] += 1;
        out
    }

    fn pick_seq(&mut self) -> Option<usize> {
        (!self.seqs.is_empty()).then(|| self.rng.random_range(0..self.seqs.len()))
    }

    fn allocate(&mut self) {
        let t = self.rng.random_range(0..self.names.len());
        let p = self.rng.random_range(0..PROMPTS_PER_TENANT);
        let name = self.names[t].clone();
        let hashes = self.prompts[t][p].clone();
        let got = self.timed(0, |pool| {
            let cached = pool.acquire_prefix(&name, &hashes);
            match pool.allocate(&name, hashes.len() + 1 - cached.len()) {
                Ok(fresh) => {
                    let mut blocks = cached;
                    let done = blocks.len();
                    blocks.extend(fresh);
                    // The prompt's full blocks are computed: cache them.
                    for (b, h) in blocks[done..].iter().zip(&hashes[done..]) {
                        pool.register(&name, *b, *h);
                    }
                    Some(blocks)
                }
                Err(_) => {
                    pool.free(&name, &cached);
                    None
                }
            }
        });
        match got {
            Some(blocks) => self.seqs.push(Seq { tenant: t, blocks }),
            None => self.refused[0] += 1,
        }
    }

    fn extend(&mut self, i: usize) {
        let name = self.names[self.seqs[i].tenant].clone();
        match self.timed(1, |pool| pool.allocate(&name, 1)) {
            Ok(b) => self.seqs[i].blocks.extend(b),
            Err(_) => self.refused[1] += 1,
        }
    }

    fn fork(&mut self, i: usize) {
        let t = self.seqs[i].tenant;
        let name = self.names[t].clone();
        let k = self.rng.random_range(1..=self.seqs[i].blocks.len());
        let prefix = self.seqs[i].blocks[..k].to_vec();
        let got = self.timed(2, |pool| -> Result<Option<Vec<BlockId>>, KvError> {
            pool.fork(&name, &prefix)?;
            match pool.allocate(&name, 1) {
                Ok(b) => Ok(Some(b)),
                Err(_) => {
                    pool.free(&name, &prefix);
                    Ok(None)
                }
            }
        });
        match got {
            Ok(Some(fresh)) => {
                let mut blocks = prefix;
                blocks.extend(fresh);
                self.seqs.push(Seq { tenant: t, blocks });
            }
            Ok(None) => self.refused[2] += 1,
            Err(e) => self.violation(format!("fork of a live prefix refused: {e}")),
        }
    }

    fn free(&mut self, i: usize) {
        let s = self.seqs.swap_remove(i);
        let name = self.names[s.tenant].clone();
        let skipped = self.timed(3, |pool| pool.free(&name, &s.blocks));
        if skipped > 0 {
            self.violation(format!("free skipped {skipped} blocks of a live sequence"));
        }
    }

    fn guard(&mut self, i: usize) {
        let name = self.names[self.seqs[i].tenant].clone();
        let blocks = std::mem::take(&mut self.seqs[i].blocks);
        let r = self.timed(5, |pool| pool.check_table(&name, &blocks));
        if let Err(e) = r {
            self.violation(format!("guard refused a valid table: {e}"));
        }
        self.seqs[i].blocks = blocks;
    }

    /// The full audit plus every live table against its owner.
    fn audit(&mut self) {
        if let Err(e) = self.pool.audit() {
            self.violation(format!("audit: {e}"));
        }
        let mut bad = Vec::new();
        for s in &self.seqs {
            for &b in &s.blocks {
                if self.pool.owner(b) != Some(&self.names[s.tenant]) {
                    bad.push(format!(
                        "block {b} of a sequence of {} owned by {:?}",
                        self.names[s.tenant],
                        self.pool.owner(b)
                    ));
                }
            }
        }
        for m in bad {
            self.violation(m);
        }
    }
}

/// Runs the workload.
pub fn run(cfg: &KvBenchConfig) -> Result<KvBenchReport, BenchError> {
    if cfg.tenants == 0 || cfg.blocks == 0 || cfg.block_size == 0 || cfg.max_seqs == 0 {
        return Err(BenchError::Param(
            "tenants, blocks, block size and max sequences must be positive".into(),
        ));
    }
    if cfg.quota.burst == 0 || cfg.quota.guaranteed > cfg.quota.burst {
        return Err(BenchError::Param(
            "need 0 <= guaranteed <= burst, burst > 0".into(),
        ));
    }
    let shape = KvShape {
        num_layers: 1,
        num_blocks: cfg.blocks,
        block_size: cfg.block_size,
        num_kv_heads: 1,
        head_dim: 1,
    };
    let secret = PrefixSecret::from_bytes([7; 32]);
    let names: Vec<TenantId> = (0..cfg.tenants)
        .map(|i| Arc::from(format!("tenant-{i}")))
        .collect();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let prompts = names
        .iter()
        .map(|n| {
            let salt = secret.tenant_salt(n);
            (0..PROMPTS_PER_TENANT)
                .map(|_| {
                    let len = rng.random_range(1..=8) * cfg.block_size;
                    let toks: Vec<u32> = (0..len).map(|_| rng.random_range(2..400)).collect();
                    salt.block_hashes(&toks, cfg.block_size)
                })
                .collect()
        })
        .collect();
    let mut r = Run {
        pool: KvPool::with_quota(shape, cfg.quota),
        names,
        prompts,
        seqs: Vec::new(),
        rng,
        time: [Duration::ZERO; 6],
        count: [0; 6],
        refused: [0; 6],
        violations: Vec::new(),
        violation_count: 0,
    };
    let total_weight: u32 = WEIGHTS.iter().sum();
    let mut audits = 0;
    for n in 1..=cfg.ops {
        let mut x = r.rng.random_range(0..total_weight);
        let mut op = 0;
        while x >= WEIGHTS[op] {
            x -= WEIGHTS[op];
            op += 1;
        }
        if op == 0 && r.seqs.len() >= cfg.max_seqs {
            op = 3;
        }
        match (op, r.pick_seq()) {
            (0, _) => r.allocate(),
            (4, _) => {
                let k = r.rng.random_range(1..8);
                r.timed(4, |pool| pool.evict_cached(k));
            }
            (_, None) => r.allocate(),
            (1, Some(i)) => r.extend(i),
            (2, Some(i)) if r.seqs.len() < cfg.max_seqs => r.fork(i),
            (2 | 3, Some(i)) => r.free(i),
            (_, Some(i)) => r.guard(i),
        }
        if n % cfg.audit_every.max(1) == 0 {
            r.audit();
            audits += 1;
        }
    }
    r.audit();
    audits += 1;
    let total: Duration = r.time.iter().sum();
    let ops: u64 = r.count.iter().sum();
    let per_op = (0..OPS.len())
        .map(|k| {
            let secs = r.time[k].as_secs_f64();
            OpFigure {
                op: OPS[k],
                count: r.count[k],
                refused: r.refused[k],
                ops_per_sec: rate(r.count[k], secs),
                mean_ns: if r.count[k] > 0 {
                    secs * 1e9 / r.count[k] as f64
                } else {
                    0.0
                },
            }
        })
        .collect();
    Ok(KvBenchReport {
        tenants: cfg.tenants,
        blocks: cfg.blocks,
        block_size: cfg.block_size,
        ops,
        seconds: total.as_secs_f64(),
        ops_per_sec: rate(ops, total.as_secs_f64()),
        per_op,
        audits,
        violations: r.violation_count + r.pool.guard_violations(),
        violation_examples: r.violations,
        scrubbed_blocks: r.pool.scrubbed_blocks(),
        evicted_blocks: r.pool.evicted_blocks(),
        cache_hit_blocks: r.pool.cache_hit_blocks(),
    })
}

impl std::fmt::Display for KvBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "KV pool: {} tenants, {} blocks of {} tokens, {} operations",
            self.tenants, self.blocks, self.block_size, self.ops
        )?;
        writeln!(
            f,
            "  all            {:>12.0} ops/s  ({:.3} s in the pool)",
            self.ops_per_sec, self.seconds
        )?;
        for o in &self.per_op {
            writeln!(
                f,
                "  {:<14} {:>12.0} ops/s  {:>8.0} ns  ({} ops, {} refused)",
                o.op, o.ops_per_sec, o.mean_ns, o.count, o.refused
            )?;
        }
        writeln!(
            f,
            "  scrubbed {} blocks, evicted {}, prefix-cache hits {}",
            self.scrubbed_blocks, self.evicted_blocks, self.cache_hit_blocks
        )?;
        write!(
            f,
            "  consistency audits: {}, violations: {}",
            self.audits, self.violations
        )?;
        for v in &self.violation_examples {
            write!(f, "\n    {v}")?;
        }
        Ok(())
    }
}
