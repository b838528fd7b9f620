//! `bulkhead-worker`: serve a model over mTLS gRPC, or generate a test model.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use bulkhead_identity::authz::SpiffeAuthorizer;
use bulkhead_identity::spiffe::DEFAULT_TRUST_DOMAIN;
use bulkhead_proto::worker::worker_server::WorkerServer;
use bulkhead_worker::LoadedModel;
use bulkhead_worker::device::{Chosen, DeviceArg};
use bulkhead_worker::engine::{EngineConfig, EngineHandle};
use bulkhead_worker::kv::{KvQuota, PrefixSecret};
use bulkhead_worker::server::{MAX_REQUEST_BYTES, WorkerService};
use clap::{Parser, Subcommand, ValueEnum};

mod bench_cli;

#[derive(Parser, Debug)]
#[command(
    name = "bulkhead-worker",
    version,
    about = "Bulkhead worker: serves a Llama-family model (CPU backend) over mTLS gRPC with continuous batching and a tenant-namespaced paged KV cache."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve a model directory over mTLS gRPC (only router certificates are admitted).
    Serve(Box<ServeArgs>),
    /// Write a small deterministic random Llama model (Hugging Face layout) for tests.
    GenModel {
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Seed of the random weights; the same seed gives byte-identical files.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Benchmarks (text, or JSON with --json).
    Bench {
        #[command(subcommand)]
        which: bench_cli::BenchCmd,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long, env = "BULKHEAD_WORKER_MODEL")]
    model: PathBuf,
    /// Model name clients ask for [default: the model directory's name].
    #[arg(long, env = "BULKHEAD_WORKER_MODEL_NAME")]
    model_name: Option<String>,
    /// gRPC listen address (port 0 picks a free port; see --ready-file).
    #[arg(
        long,
        env = "BULKHEAD_WORKER_LISTEN",
        default_value = "127.0.0.1:50061"
    )]
    listen: SocketAddr,
    /// Directory with ca.pem, worker.pem and worker.key.
    #[arg(long, env = "BULKHEAD_CERTS_DIR")]
    certs_dir: PathBuf,
    /// SPIFFE trust domain of the cluster.
    #[arg(long, env = "BULKHEAD_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Worker id reported by ModelInfo [default: worker-<hostname or random>].
    #[arg(long, env = "BULKHEAD_WORKER_ID")]
    worker_id: Option<String>,
    /// Number of KV cache blocks.
    #[arg(long, env = "BULKHEAD_WORKER_KV_BLOCKS", default_value_t = 1024)]
    kv_blocks: usize,
    /// Tokens per KV cache block.
    #[arg(long, env = "BULKHEAD_WORKER_BLOCK_SIZE", default_value_t = 16)]
    block_size: usize,
    /// KV blocks kept available for each active tenant, so a tenant that
    /// fills the pool cannot starve the next one [default: a fair share,
    /// --kv-blocks / --max-seqs (at most that many tenants are active at
    /// once); 0 turns the guarantee off].
    #[arg(long, env = "BULKHEAD_WORKER_KV_GUARANTEED_BLOCKS")]
    kv_guaranteed_blocks: Option<usize>,
    /// The most KV blocks one tenant may hold [default: all of them].
    #[arg(long, env = "BULKHEAD_WORKER_KV_BURST_BLOCKS")]
    kv_burst_blocks: Option<usize>,
    /// File with the prefix-cache secret (>= 16 bytes) that per-tenant salts
    /// are derived from [default: random per process].
    #[arg(long, env = "BULKHEAD_WORKER_PREFIX_CACHE_SECRET_FILE")]
    prefix_cache_secret_file: Option<PathBuf>,
    /// Seconds a cached prefix block may stay unused before it is evicted
    /// (0 = until its space is needed): bounds how long a prompt stays in
    /// this worker's memory as a reusable prefix.
    #[arg(
        long,
        env = "BULKHEAD_WORKER_PREFIX_CACHE_TTL_S",
        default_value_t = 3600
    )]
    prefix_cache_ttl_s: u64,
    /// Maximum concurrently running sequences.
    #[arg(long, env = "BULKHEAD_WORKER_MAX_SEQS", default_value_t = 16)]
    max_seqs: usize,
    /// Token budget per step for prompt prefill (chunked prefill).
    #[arg(long, env = "BULKHEAD_WORKER_PREFILL_CHUNK", default_value_t = 256)]
    prefill_chunk: usize,
    /// The pool this worker belongs to (a name, for routers and operators).
    #[arg(long, env = "BULKHEAD_WORKER_POOL", default_value = "shared")]
    pool: String,
    /// The pool's isolation tier: shared (any shared-tier tenant), or
    /// process / mig / dedicated (only the --admit tenants).
    #[arg(
        long,
        env = "BULKHEAD_WORKER_ISOLATION",
        value_enum,
        default_value = "shared"
    )]
    isolation: IsolationArg,
    /// Tenants this worker admits (required for non-shared tiers; comma-separated).
    #[arg(long = "admit", env = "BULKHEAD_WORKER_ADMIT", value_delimiter = ',')]
    admit: Vec<String>,
    /// Device: auto, cpu, cuda, cuda:N or mig:<MIG-uuid>. `auto` runs on the
    /// CPU (saying whether a GPU was seen): the CUDA engine is used only when
    /// named, and then starts or refuses with the reason.
    #[arg(long, env = "BULKHEAD_WORKER_DEVICE", default_value = "auto")]
    device: DeviceArg,
    /// Weights: `stored` computes with them in the checkpoint's precision
    /// (f32, bf16, f16); `int8` quantizes every linear layer to int8 with a
    /// scale per output channel at load (a quarter of f32's memory and
    /// bytes read per token; CPU deployments; its logprob error against the
    /// stored weights is measured in worker/tests/reference.rs).
    #[arg(long, env = "BULKHEAD_WORKER_WEIGHTS", default_value = "stored", value_parser = ["stored", "int8"])]
    weights: String,
    /// Serve Prometheus metrics at http://<addr>/metrics (port 0 = any free port).
    #[arg(long, env = "BULKHEAD_WORKER_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Distinct tenants given their own metric labels; the rest share "other".
    #[arg(long, env = "BULKHEAD_METRICS_MAX_TENANTS", default_value_t = 100)]
    metrics_max_tenants: usize,
    /// After binding, write {"grpc","worker_id","model"} JSON here (atomically).
    #[arg(long, env = "BULKHEAD_WORKER_READY_FILE")]
    ready_file: Option<PathBuf>,
    /// Benchmarks only: replace the model's arithmetic with a sleep of this
    /// many microseconds per processed token (a worker of known, repeatable
    /// capacity for scheduling experiments; answers are meaningless).
    #[arg(long, env = "BULKHEAD_WORKER_SYNTHETIC_US_PER_TOKEN")]
    synthetic_us_per_token: Option<u64>,
    /// Benchmarks only, with --synthetic-us-per-token: the least a step
    /// takes, however few tokens it carries (the time to read the weights
    /// once: a GPU step is memory-bound until its tokens' arithmetic takes
    /// longer). A step then sleeps max(this, tokens × us-per-token).
    #[arg(
        long,
        env = "BULKHEAD_WORKER_SYNTHETIC_US_PER_STEP",
        default_value_t = 0,
        requires = "synthetic_us_per_token"
    )]
    synthetic_us_per_step: u64,
    /// Log format (filter from RUST_LOG, default info).
    #[arg(
        long,
        env = "BULKHEAD_WORKER_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum IsolationArg {
    Shared,
    Process,
    Mig,
    Dedicated,
}

fn placement(args: &ServeArgs) -> anyhow::Result<bulkhead_worker::server::Placement> {
    use bulkhead_proto::common::Isolation;
    let isolation = match args.isolation {
        IsolationArg::Shared => Isolation::Shared,
        IsolationArg::Process => Isolation::Process,
        IsolationArg::Mig => Isolation::Mig,
        IsolationArg::Dedicated => Isolation::Dedicated,
    };
    if let Some(bad) = args
        .admit
        .iter()
        .find(|t| !bulkhead_proto::names::valid_tenant_id(t))
    {
        anyhow::bail!("--admit: invalid tenant id {bad:?}");
    }
    match isolation {
        Isolation::Shared => anyhow::ensure!(
            args.admit.is_empty(),
            "--admit is for non-shared pools; a shared worker serves every shared-tier tenant"
        ),
        _ => anyhow::ensure!(
            !args.admit.is_empty(),
            "--isolation {:?} needs --admit <tenant,...>: a dedicated pool serves only its tenants",
            args.isolation
        ),
    }
    Ok(bulkhead_worker::server::Placement {
        pool: args.pool.clone(),
        isolation: isolation as i32,
        admitted: args.admit.clone(),
    })
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()));
    match host {
        Some(h) => format!("worker-{h}"),
        None => format!("worker-{:08x}", rand::random::<u32>()),
    }
}

fn write_ready(path: &Path, json: &serde_json::Value) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json.to_string()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    bulkhead_identity::spiffe::install_crypto_provider();
    let device = bulkhead_worker::device::choose(&args.device).map_err(anyhow::Error::msg)?;
    let placement = placement(&args)?;
    tracing::info!(pool = %placement.pool, isolation = ?args.isolation,
        tenants = ?placement.admitted, "pool");
    anyhow::ensure!(args.block_size > 0, "--block-size must be positive");
    anyhow::ensure!(args.kv_blocks > 0, "--kv-blocks must be positive");
    anyhow::ensure!(args.max_seqs > 0, "--max-seqs must be positive");
    anyhow::ensure!(args.prefill_chunk > 0, "--prefill-chunk must be positive");
    let burst = args.kv_burst_blocks.unwrap_or(args.kv_blocks);
    anyhow::ensure!(
        burst > 0 && burst <= args.kv_blocks,
        "--kv-burst-blocks must be between 1 and --kv-blocks ({})",
        args.kv_blocks
    );
    let guaranteed = args
        .kv_guaranteed_blocks
        .unwrap_or(KvQuota::fair_share(args.kv_blocks, args.max_seqs, burst).guaranteed);
    tracing::info!(
        kv.blocks = args.kv_blocks,
        kv.guaranteed = guaranteed,
        kv.burst = burst,
        "KV quota per tenant"
    );
    anyhow::ensure!(
        guaranteed <= burst,
        "--kv-guaranteed-blocks must not exceed --kv-burst-blocks ({burst})"
    );
    let prefix_secret = match &args.prefix_cache_secret_file {
        Some(p) => PrefixSecret::from_file(p).map_err(anyhow::Error::msg)?,
        None => PrefixSecret::random(),
    };
    let model_name = match &args.model_name {
        Some(n) => n.clone(),
        None => args
            .model
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
            .context("cannot derive a model name from --model; pass --model-name")?,
    };
    let worker_id = args.worker_id.clone().unwrap_or_else(default_worker_id);
    let tls = bulkhead_worker::certs::worker_cert(
        &args.certs_dir,
        matches!(args.isolation, IsolationArg::Shared),
        &args.admit,
    )?
    .reloading_server_tls("worker")
    .context("loading the worker's TLS certificates")?;
    let dir = args.model.clone();
    let mut loaded = tokio::task::spawn_blocking(move || LoadedModel::load(&dir))
        .await?
        .with_context(|| format!("loading model from {}", args.model.display()))?;
    if args.weights == "int8" {
        let before = loaded.model.weight_bytes();
        loaded.model.quantize_int8();
        tracing::info!(
            before_bytes = before,
            after_bytes = loaded.model.weight_bytes(),
            "weights quantized to int8 (per output channel)"
        );
    }
    if let Some(us) = args.synthetic_us_per_token {
        let token = loaded
            .tokenizer
            .encode("hello", false)
            .ok()
            .and_then(|t| t.first().copied())
            .unwrap_or(0);
        loaded
            .model
            .set_synthetic(Some(bulkhead_worker::model::Synthetic {
                per_token: std::time::Duration::from_micros(us),
                per_step: std::time::Duration::from_micros(args.synthetic_us_per_step),
                token,
            }));
        tracing::warn!(
            us_per_token = us,
            us_per_step = args.synthetic_us_per_step,
            "SYNTHETIC MODE: the model's arithmetic is replaced by a calibrated cost per step and token; answers are meaningless (benchmarks only)"
        );
    }
    if let Chosen::Cuda { ordinal, .. } = &device {
        let (ordinal, blocks, bs) = (*ordinal, args.kv_blocks, args.block_size);
        loaded = tokio::task::spawn_blocking(move || {
            loaded.model.use_cuda(ordinal, blocks, bs).map(|()| loaded)
        })
        .await?
        .context("moving the model to the CUDA device")?;
    }
    let loaded = Arc::new(loaded);
    tracing::info!(model = %model_name, layers = loaded.model.config.num_hidden_layers,
        vocab = loaded.model.vocab_size(), max_context = loaded.model.max_context(), "model loaded");
    let mut registry =
        bulkhead_telemetry::metrics::prometheus_client::registry::Registry::default();
    let metrics =
        bulkhead_worker::metrics::WorkerMetrics::new(&mut registry, args.metrics_max_tenants);
    let metrics_addr = match args.metrics_listen {
        Some(a) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding the metrics address {a}"))?;
            let addr = l.local_addr()?;
            tokio::spawn(bulkhead_telemetry::metrics::serve(
                l,
                Arc::new(registry),
                bulkhead_telemetry::shutdown_signal(),
            ));
            tracing::info!(%addr, "serving /metrics");
            Some(addr.to_string())
        }
        None => None,
    };
    let cfg = EngineConfig {
        max_seqs: args.max_seqs,
        prefill_chunk: args.prefill_chunk,
        kv_blocks: args.kv_blocks,
        block_size: args.block_size,
        kv_quota: KvQuota { guaranteed, burst },
        prefix_secret,
        metrics: Some(metrics.clone()),
        prefix_cache_ttl: (args.prefix_cache_ttl_s > 0)
            .then(|| std::time::Duration::from_secs(args.prefix_cache_ttl_s)),
    };
    let engine = Arc::new(EngineHandle::start(loaded.clone(), cfg, None)?);
    {
        // Counters the engine keeps itself, copied into the gauges.
        let (engine, metrics) = (engine.clone(), metrics.clone());
        tokio::spawn(async move {
            loop {
                metrics
                    .guard_violations
                    .set(engine.guard_violations() as i64);
                metrics.preemptions.set(engine.preemptions() as i64);
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }
    let service = WorkerService {
        engine: engine.clone(),
        model: loaded,
        model_name: model_name.clone(),
        worker_id: worker_id.clone(),
        block_size: args.block_size as u32,
        device: device.label(),
        placement: Arc::new(placement),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, worker_id = %worker_id, "listening (mTLS)");
    if let Some(p) = &args.ready_file {
        write_ready(
            p,
            &serde_json::json!({"grpc": addr.to_string(), "worker_id": worker_id, "model": model_name, "metrics": metrics_addr}),
        )?;
    }
    let authorizer =
        SpiffeAuthorizer::new("worker", &args.trust_domain, &["router"]).with_revocation(&tls);
    let svc = tonic::service::interceptor::InterceptedService::new(
        WorkerServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES),
        authorizer,
    );
    let shutdown_engine = engine.clone();
    let signal = async move {
        shutdown_signal().await;
        tracing::info!("shutting down: cancelling running requests");
        // Cancel everything so open streams end promptly.
        let e = shutdown_engine.clone();
        let _ = tokio::task::spawn_blocking(move || e.shutdown()).await;
    };
    tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming_shutdown(tls.incoming(listener), signal)
        .await?;
    engine.shutdown();
    tracing::info!("stopped");
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::GenModel { out, seed } => bulkhead_worker::genmodel::generate(&out, seed)
            .map_err(anyhow::Error::from)
            .map(|_| println!("wrote model to {}", out.display())),
        Cmd::Bench { which } => bench_cli::run(which),
        Cmd::Serve(args) => {
            let format = match args.log_format {
                LogFormat::Text => bulkhead_telemetry::LogFormat::Text,
                LogFormat::Json => bulkhead_telemetry::LogFormat::Json,
            };
            match tokio::runtime::Runtime::new() {
                Ok(rt) => rt.block_on(async {
                    let _telemetry = bulkhead_telemetry::init("bulkhead-worker", format);
                    serve(*args).await
                }),
                Err(e) => Err(e.into()),
            }
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
