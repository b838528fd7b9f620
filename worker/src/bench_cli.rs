//! Flags and output of `bulkhead-worker bench kv|decode` (the benches
//! themselves are in the library's `bench` module).
use bulkhead_worker::bench::decode::DecodeBenchConfig;
use bulkhead_worker::bench::kv::KvBenchConfig;
use bulkhead_worker::genmodel::GenShape;
use bulkhead_worker::kv::KvQuota;
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// KV pool operations per second (allocate/extend/fork/free/evict/guard
    /// across tenants) and consistency violations found (must be 0).
    Kv(KvArgs),
    /// Engine tokens/s at several batch sizes on a generated model, the
    /// isolation overhead (many tenants vs one) and the share of step time
    /// in KV guards and scrubbing.
    Decode(DecodeArgs),
}

#[derive(Args, Debug)]
pub struct KvArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value_t = 64)]
    tenants: usize,
    #[arg(long, default_value_t = 2_000_000)]
    ops: u64,
    /// Arena size; the default keeps the pool under pressure (about one
    /// allocation in five is refused by the quota or the pool).
    #[arg(long, default_value_t = 1536)]
    blocks: usize,
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    #[arg(long, default_value_t = 8)]
    guaranteed_blocks: usize,
    #[arg(long, default_value_t = 256)]
    burst_blocks: usize,
    /// Run the full consistency audit every N operations (and at the end).
    #[arg(long, default_value_t = 50_000)]
    audit_every: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args, Debug)]
pub struct DecodeArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// How the generated model's weights are stored: f32, bf16 or f16 (the
    /// CPU engine computes with them as stored), or int8 (stored as f32,
    /// quantized at load as `serve --weights int8` does).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16", "f16", "int8"])]
    dtype: String,
    /// Model size: hidden width.
    #[arg(long, default_value_t = 512)]
    hidden: usize,
    #[arg(long, default_value_t = 1536)]
    intermediate: usize,
    #[arg(long, default_value_t = 4)]
    layers: usize,
    #[arg(long, default_value_t = 8)]
    heads: usize,
    #[arg(long, default_value_t = 4)]
    kv_heads: usize,
    /// Batch sizes to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batches: Vec<usize>,
    #[arg(long, default_value_t = 16)]
    prompt_tokens: usize,
    /// Tokens generated per request (end-of-sequence is ignored).
    #[arg(long, default_value_t = 64)]
    gen_tokens: u32,
    /// Tenants of the many-tenant isolation run.
    #[arg(long, default_value_t = 64)]
    tenants: usize,
    /// Requests per isolation run, and how many run at once.
    #[arg(long, default_value_t = 64)]
    iso_requests: usize,
    #[arg(long, default_value_t = 64)]
    iso_batch: usize,
    /// Rounds of the one-tenant, many-tenant and control (one tenant again)
    /// runs, in rotating order; the best run of each is compared.
    #[arg(long, default_value_t = 8)]
    rounds: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Device: cpu, cuda, cuda:N or mig:<uuid> (auto means cpu here).
    #[arg(long, default_value = "cpu")]
    device: bulkhead_worker::device::DeviceArg,
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Kv(a) => {
            let cfg = KvBenchConfig {
                tenants: a.tenants,
                ops: a.ops,
                blocks: a.blocks,
                block_size: a.block_size,
                quota: KvQuota {
                    guaranteed: a.guaranteed_blocks,
                    burst: a.burst_blocks,
                },
                audit_every: a.audit_every,
                seed: a.seed,
                ..KvBenchConfig::default()
            };
            let r = bulkhead_worker::bench::kv::run(&cfg)?;
            print(a.json, &r)?;
            anyhow::ensure!(r.violations == 0, "{} violations", r.violations);
        }
        BenchCmd::Decode(a) => {
            let cfg = DecodeBenchConfig {
                shape: GenShape {
                    hidden: a.hidden,
                    intermediate: a.intermediate,
                    layers: a.layers,
                    heads: a.heads,
                    kv_heads: a.kv_heads,
                    max_pos: (a.prompt_tokens + a.gen_tokens as usize).max(64),
                },
                batches: a.batches,
                prompt_tokens: a.prompt_tokens,
                gen_tokens: a.gen_tokens,
                tenants: a.tenants,
                iso_requests: a.iso_requests,
                iso_batch: a.iso_batch,
                rounds: a.rounds,
                seed: a.seed,
                cuda: match bulkhead_worker::device::choose(&a.device)
                    .map_err(anyhow::Error::msg)?
                {
                    bulkhead_worker::device::Chosen::Cuda { ordinal, .. } => Some(ordinal),
                    bulkhead_worker::device::Chosen::Cpu => None,
                },
                int8: a.dtype == "int8",
                dtype: match a.dtype.as_str() {
                    "bf16" => safetensors::Dtype::BF16,
                    "f16" => safetensors::Dtype::F16,
                    _ => safetensors::Dtype::F32,
                },
                ..DecodeBenchConfig::default()
            };
            let dir = tempfile_dir()?;
            let r = bulkhead_worker::bench::decode::run(&cfg, &dir);
            let _ = std::fs::remove_dir_all(&dir);
            print(a.json, &r?)?;
        }
    }
    Ok(())
}

fn print<T: serde::Serialize + std::fmt::Display>(json: bool, r: &T) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        println!("{r}");
    }
    Ok(())
}

/// A fresh folder for the generated model (removed afterwards).
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "bulkhead-bench-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
