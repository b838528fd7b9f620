//! Enqueue + dispatch throughput of the fair queue with 64 tenants.
//! Run: `cargo bench -p bulkhead-router --bench fair_queue`.
use std::hint::black_box;
use std::time::Instant;

use bulkhead_router::fair::FairQueue;

fn main() {
    const TENANTS: usize = 64;
    const OPS: usize = 2_000_000;
    let names: Vec<String> = (0..TENANTS).map(|i| format!("tenant-{i:02}")).collect();
    for backlog in [1usize, 16, 256] {
        let mut q: FairQueue<u64> = FairQueue::new();
        // Every tenant starts with `backlog` requests queued.
        for (i, n) in names.iter().enumerate() {
            for k in 0..backlog {
                q.push(n, 1 + (i % 4) as u32, k as u64);
            }
        }
        let start = Instant::now();
        let mut x = 0u64;
        for op in 0..OPS {
            let (tenant, _, item) = q.pop().expect("never empty");
            // Charge like a small request: 32 prompt + 16 output tokens.
            q.charge(&tenant, 32, 16);
            x = x.wrapping_add(item);
            let i = op % TENANTS;
            q.push(&names[i], 1 + (i % 4) as u32, op as u64);
        }
        let secs = start.elapsed().as_secs_f64();
        black_box(x);
        println!(
            "fair_queue: {TENANTS} tenants, backlog {backlog:>3}/tenant: {OPS} enqueue+dispatch(+charge) in {secs:.3} s = {:.2} M ops/s ({:.0} ns/op)",
            OPS as f64 / secs / 1e6,
            secs * 1e9 / OPS as f64
        );
    }
}
