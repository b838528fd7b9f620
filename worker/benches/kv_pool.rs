//! KV pool throughput for 64 tenants: allocate / free / prefix lookup ops/s.
//! Run: `cargo bench -p bulkhead-worker --bench kv_pool`.
use std::sync::Arc;
use std::time::Instant;

use bulkhead_worker::kv::{KvPool, KvQuota, KvShape, PrefixSecret, TenantId};

const TENANTS: usize = 64;
const ROUNDS: usize = 2_000;

fn main() {
    let shape = KvShape {
        num_layers: 1,
        num_blocks: 4096,
        block_size: 16,
        num_kv_heads: 1,
        head_dim: 1,
    };
    let quota = KvQuota {
        guaranteed: 16,
        burst: 256,
    };
    let mut pool = KvPool::with_quota(shape, quota);
    let names: Vec<TenantId> = (0..TENANTS).map(|i| Arc::from(format!("t{i}"))).collect();
    let secret = PrefixSecret::random();
    let prompt: Vec<u32> = (0..256).collect();
    let hashes: Vec<_> = names
        .iter()
        .map(|n| secret.tenant_salt(n).block_hashes(&prompt, 16))
        .collect();
    // Each tenant caches its prompt's 16 blocks once.
    for (n, h) in names.iter().zip(&hashes) {
        let bs = pool.allocate(n, h.len()).expect("warm-up allocation");
        for (b, k) in bs.iter().zip(h) {
            pool.register(n, *b, *k);
        }
        pool.free(n, &bs);
    }
    let (mut allocs, mut frees, mut lookups) = (0u64, 0u64, 0u64);
    let (mut t_alloc, mut t_free, mut t_lookup) = (0f64, 0f64, 0f64);
    let mut held: Vec<Vec<u32>> = vec![Vec::new(); TENANTS];
    for round in 0..ROUNDS {
        let t0 = Instant::now();
        for (i, n) in names.iter().enumerate() {
            if let Ok(b) = pool.allocate(n, 1 + (round + i) % 4) {
                held[i].extend(b);
            }
            allocs += 1;
        }
        t_alloc += t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        for (n, h) in names.iter().zip(&hashes) {
            std::hint::black_box(pool.lookup_prefix(n, h));
            lookups += 1;
        }
        t_lookup += t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        for (i, n) in names.iter().enumerate() {
            let b = std::mem::take(&mut held[i]);
            pool.free(n, &b);
            frees += 1;
        }
        t_free += t0.elapsed().as_secs_f64();
    }
    pool.audit().expect("pool consistent after the bench");
    println!(
        "kv_pool bench: {TENANTS} tenants, {} blocks",
        shape.num_blocks
    );
    println!(
        "  allocate       {:>12.0} ops/s ({allocs} ops)",
        allocs as f64 / t_alloc
    );
    println!(
        "  free           {:>12.0} ops/s ({frees} ops)",
        frees as f64 / t_free
    );
    println!(
        "  prefix lookup  {:>12.0} ops/s ({lookups} ops of 16 blocks)",
        lookups as f64 / t_lookup
    );
    println!("  guard violations: {}", pool.guard_violations());
}
