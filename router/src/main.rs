//! `bulkhead-router`: the stateless front door. See the crate docs.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bulkhead_identity::spiffe::install_crypto_provider;
use bulkhead_proto::client::inference_server::InferenceServer;
use bulkhead_router::audit::{AuditPublisher, ContentHasher};
use bulkhead_router::cluster::ClusterView;
use bulkhead_router::directory::{self, Directory};
use bulkhead_router::grpc::InferenceService;
use bulkhead_router::http::{self, AppState};
use bulkhead_router::metrics::RouterMetrics;
use bulkhead_router::peers::{Identity, Membership};
use bulkhead_router::pipeline::Pipeline;
use bulkhead_router::spool::Spool;
use bulkhead_router::workers::WorkerPool;
use clap::Parser;
use tokio::net::TcpListener;

/// mimalloc: a request is a few hundred small allocations across two gRPC
/// streams (h2, prost) and the NATS publish; glibc's malloc/free were ~14 %
/// of the router's CPU under `bench overhead`, and with mimalloc the router
/// needs 17 % less CPU per routed request (82 → 68 µs at concurrency 256).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Bulkhead's router: authenticates tenants, validates their requests and
/// streams them to workers over mTLS gRPC. Serves the OpenAI-compatible HTTP
/// API and the Bulkhead gRPC API; publishes one audit event per request.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address of the OpenAI-compatible HTTP API (port 0 = any free port).
    #[arg(
        long,
        env = "BULKHEAD_ROUTER_HTTP_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    http_listen: SocketAddr,
    /// Address of the gRPC API (port 0 = any free port).
    #[arg(
        long,
        env = "BULKHEAD_ROUTER_GRPC_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    grpc_listen: SocketAddr,
    /// NATS server holding the tenant and key buckets and the audit stream.
    #[arg(
        long,
        env = "BULKHEAD_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// Folder with ca.pem, router.pem and router.key (see `bulkhead certs init`).
    #[arg(long, env = "BULKHEAD_CERTS_DIR")]
    certs_dir: PathBuf,
    /// Worker gRPC URLs, e.g. https://127.0.0.1:50061 (repeat or
    /// comma-separate). Each worker's certificate must carry a worker
    /// SPIFFE id, checked in the handshake; `https://host:port#tenant=T`
    /// accepts only tenant T's dedicated worker identity there.
    /// `dns+https://NAME:PORT` stands for every address NAME resolves to
    /// (a Kubernetes headless Service's ready pods), each its own worker,
    /// resolved again every --worker-resolve-ms.
    #[arg(
        long = "worker",
        env = "BULKHEAD_ROUTER_WORKERS",
        value_delimiter = ',',
        required = true
    )]
    workers: Vec<String>,
    /// How often `dns+https://` worker names are resolved again, in ms
    /// (workers joining and leaving are followed at this pace).
    #[arg(
        long,
        env = "BULKHEAD_ROUTER_WORKER_RESOLVE_MS",
        default_value_t = 5000
    )]
    worker_resolve_ms: u64,
    /// Names resolved from this file (lines `IP NAME…`, as in /etc/hosts;
    /// read again on every round) before DNS: for the dev stack and tests.
    #[arg(long, env = "BULKHEAD_ROUTER_HOSTS_FILE")]
    hosts_file: Option<PathBuf>,
    /// Accept a worker that reports a dedicated (process/mig) pool while it
    /// presents the shared worker certificate. By default such a worker is
    /// kept out of rotation until it presents its tenant's own identity
    /// (`bulkhead certs issue --component worker --tenant T`); a per-tenant
    /// certificate is always refused on any other pool.
    #[arg(
        long,
        env = "BULKHEAD_ROUTER_ALLOW_SHARED_WORKER_IDENTITY_ON_DEDICATED_POOLS"
    )]
    allow_shared_worker_identity_on_dedicated_pools: bool,
    /// File with the secret (64 hex characters) that keys the audit content
    /// hashes; every router replica must use the same one.
    #[arg(long, env = "BULKHEAD_ROUTER_HASH_SECRET_FILE")]
    hash_secret_file: PathBuf,
    /// How often to poll workers for health and capacity, in milliseconds.
    #[arg(long, env = "BULKHEAD_ROUTER_POLL_MS", default_value_t = 1000)]
    poll_ms: u64,
    /// What to do while NATS (the audit trail) is unreachable: `reject` fails
    /// closed (503, nothing served without an audit record); `spool` keeps
    /// serving while the events fit in a bounded local disk spool
    /// (--audit-spool-dir, fsynced per event), replays them in order when NATS
    /// returns, and fails closed once the spool is full.
    #[arg(long, env = "BULKHEAD_ROUTER_AUDIT_MODE", default_value = "reject", value_parser = ["reject", "spool"])]
    audit_mode: String,
    /// Folder of this replica's audit spool (one per replica; required with
    /// --audit-mode spool).
    #[arg(long, env = "BULKHEAD_ROUTER_AUDIT_SPOOL_DIR")]
    audit_spool_dir: Option<PathBuf>,
    /// Bound of the audit spool in bytes; beyond it new requests get 503.
    #[arg(
        long,
        env = "BULKHEAD_ROUTER_AUDIT_SPOOL_MAX_BYTES",
        default_value_t = 64 << 20
    )]
    audit_spool_max_bytes: u64,
    /// Scheduler: `fair` (weighted fair queuing on served tokens) or `fifo`
    /// (arrival order; a baseline for `bulkhead bench fairness` only).
    #[arg(long, env = "BULKHEAD_ROUTER_SCHEDULER", default_value = "fair", value_parser = ["fair", "fifo"])]
    scheduler: String,
    /// Serve Prometheus metrics at http://<addr>/metrics (port 0 = any free
    /// port). An internal address: the metrics name tenants and count their
    /// tokens and latencies, so they are never on the public HTTP port
    /// (which serves only the API and /healthz). Unset: no metrics served.
    #[arg(long, env = "BULKHEAD_ROUTER_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// A tenant's requests in flight (queued or running) when its record
    /// sets no `max_in_flight` (0): no tenant is unbounded by default.
    #[arg(long, env = "BULKHEAD_ROUTER_TENANT_MAX_IN_FLIGHT", default_value_t = bulkhead_router::limits::DEFAULT_MAX_IN_FLIGHT)]
    tenant_max_in_flight: u32,
    /// A tenant's requests waiting in the fair queue when its record sets no
    /// `max_queued` (0).
    #[arg(long, env = "BULKHEAD_ROUTER_TENANT_MAX_QUEUED", default_value_t = bulkhead_router::limits::DEFAULT_MAX_QUEUED)]
    tenant_max_queued: u32,
    /// Requests waiting in this router's queue, all tenants together; past
    /// it new requests get 503 with Retry-After.
    #[arg(long, env = "BULKHEAD_ROUTER_MAX_QUEUED", default_value_t = bulkhead_router::limits::DEFAULT_MAX_QUEUED_TOTAL)]
    max_queued: u32,
    /// Edge proxies (CIDRs or addresses, comma-separated) whose
    /// X-Forwarded-For header names the client: from these peers the
    /// client's address goes into the audit record; from any other peer the
    /// header is ignored. Default: none.
    #[arg(
        long = "trusted-proxy",
        env = "BULKHEAD_ROUTER_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<String>,
    /// Most connections open at once on the public HTTP port; the next waits
    /// in the kernel's backlog until one closes.
    #[arg(
        long,
        env = "BULKHEAD_ROUTER_HTTP_MAX_CONNECTIONS",
        default_value_t = 10_000
    )]
    http_max_connections: usize,
    /// Milliseconds a client has to send its request headers (slow clients
    /// holding connections with half a request are cut off).
    #[arg(
        long,
        env = "BULKHEAD_ROUTER_HTTP_HEADER_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    http_header_timeout_ms: u64,
    /// Milliseconds a client has to send its request body, once its key is
    /// accepted (the body is not read before): past it, 408.
    #[arg(
        long,
        env = "BULKHEAD_ROUTER_HTTP_BODY_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    http_body_timeout_ms: u64,
    /// Most concurrent gRPC streams per client connection.
    #[arg(long, env = "BULKHEAD_ROUTER_GRPC_MAX_STREAMS", default_value_t = 256)]
    grpc_max_concurrent_streams: u32,
    /// How long NATS may be unreachable before every API key is refused
    /// (503): revocations cannot arrive meanwhile, so the router fails
    /// closed rather than serve keys that may have been revoked. A KV watch
    /// that ends refuses keys at once, until it is restarted.
    #[arg(
        long,
        env = "BULKHEAD_ROUTER_DIRECTORY_MAX_STALENESS_S",
        default_value_t = 30
    )]
    directory_max_staleness_s: u32,
    /// Distinct tenants given their own metric labels; the rest share "other".
    #[arg(long, env = "BULKHEAD_METRICS_MAX_TENANTS", default_value_t = 100)]
    metrics_max_tenants: usize,
    /// Once serving, write the bound addresses here as JSON.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// This replica's id in the `bulkhead_routers` heartbeats: its
    /// certificate is `<certs-dir>/router.<id>.pem` (SPIFFE id
    /// .../bulkhead/router/replica/<id>; NATS lets it write only this
    /// heartbeat). Without it, the id in `router.pem`'s replica identity
    /// (with a NATS without TLS and the shared identity: a random one).
    #[arg(long, env = "BULKHEAD_ROUTER_ID")]
    router_id: Option<String>,
    /// Log format.
    #[arg(long, env = "BULKHEAD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn read_secret(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the hash secret {}", path.display()))?;
    let secret = hex::decode(text.trim()).context("the hash secret must be hex")?;
    anyhow::ensure!(
        secret.len() >= 32,
        "the hash secret must be at least 32 bytes"
    );
    Ok(secret)
}

async fn shutdown_signal(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let format = args
        .log_format
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let _telemetry = bulkhead_telemetry::init("bulkhead-router", format);
    install_crypto_provider();
    let secret = read_secret(&args.hash_secret_file)?;

    // This replica's certificate and id (its heartbeat key): the id is the
    // certificate's, so NATS lets it write only its own heartbeat.
    let me = bulkhead_router::replica::resolve(
        &args.certs_dir,
        args.router_id.as_deref(),
        args.nats_url.starts_with("tls://"),
        || {
            format!(
                "router-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            )
        },
    )?;
    if !me.own_identity {
        tracing::warn!(cert = %me.paths.cert.display(), "serving with the shared router identity: fine with a NATS without TLS (tests), refused by a TLS NATS; issue each replica its own (bulkhead certs issue --component router --replica <id>)");
    }
    let nats =
        bulkhead_directory::connect_nats_as(&args.nats_url, &me.paths, &me.nats_user()).await?;
    let js = async_nats::jetstream::new(nats.clone());
    let dir = Arc::new(Directory::default());
    dir.set_max_staleness_ms(i64::from(args.directory_max_staleness_s) * 1000);
    directory::sync(&js, dir.clone())
        .await
        .context("loading tenants and keys from NATS KV")?;
    tracing::info!(
        tenants = dir.tenant_count(),
        "tenant directory loaded; watching for changes"
    );
    let mut audit = AuditPublisher::new(nats)
        .await
        .context("opening the audit stream")?;
    if args.audit_mode == "spool" {
        let dir = args
            .audit_spool_dir
            .as_ref()
            .context("--audit-mode spool needs --audit-spool-dir (one folder per replica)")?;
        let spool = Spool::open(dir, args.audit_spool_max_bytes)?;
        tracing::info!(dir = %dir.display(), max_bytes = args.audit_spool_max_bytes, "audit mode: spool");
        audit = audit.with_spool(spool);
    } else {
        tracing::info!("audit mode: reject (fail closed while NATS is unreachable)");
    }

    let workers = Arc::new(
        WorkerPool::with_identity_rule(
            &args.workers,
            &me.paths,
            !args.allow_shared_worker_identity_on_dedicated_pools,
        )?
        .with_hosts_file(args.hosts_file.clone()),
    );
    workers.rediscover().await;
    workers.poll_all().await;
    workers.spawn_poller(Duration::from_millis(args.poll_ms.max(50)));
    workers.spawn_resolver(Duration::from_millis(args.worker_resolve_ms.max(50)));
    let mut registry =
        bulkhead_telemetry::metrics::prometheus_client::registry::Registry::default();
    let metrics = Arc::new(RouterMetrics::new(&mut registry, args.metrics_max_tenants));
    let cluster = Arc::new(ClusterView::default());
    let usage = Arc::new(bulkhead_router::usage_sync::Usage::new(&me.id));
    // Carries on from this replica's usage records before serving, so a
    // restart does not reset the budgets it enforces.
    let usage_sync = bulkhead_router::usage_sync::UsageSync::start(&js, usage.clone())
        .await
        .context("opening the usage records (the control-plane creates their bucket)")?;
    let pipeline = Arc::new(Pipeline::new(
        workers,
        audit,
        ContentHasher::new(secret),
        metrics,
        cluster.clone(),
        usage,
    ));
    pipeline
        .dispatcher()
        .set_admission(bulkhead_router::limits::Admission {
            default_max_in_flight: args.tenant_max_in_flight.max(1),
            default_max_queued: args.tenant_max_queued.max(1),
            max_queued_total: args.max_queued.max(1),
        });
    if args.scheduler == "fifo" {
        tracing::warn!("scheduler: FIFO (a baseline for experiments: no fairness between tenants)");
        pipeline.dispatcher().set_fifo(true);
    }
    let state = AppState {
        directory: dir,
        pipeline: pipeline.clone(),
        body_timeout: Duration::from_millis(args.http_body_timeout_ms.max(1)),
        trusted_proxies: bulkhead_router::forwarded::parse_trusted(&args.trusted_proxies)
            .map_err(anyhow::Error::msg)?
            .into(),
    };

    let http_l = TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("binding {}", args.http_listen))?;
    let grpc_l = TcpListener::bind(args.grpc_listen)
        .await
        .with_context(|| format!("binding {}", args.grpc_listen))?;
    let (http_addr, grpc_addr) = (http_l.local_addr()?, grpc_l.local_addr()?);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics_addr = match args.metrics_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics listener {addr}"))?;
            let bound = l.local_addr()?;
            let stop = shutdown_signal(stop_rx.clone());
            let registry = Arc::new(registry);
            tokio::spawn(async move {
                if let Err(e) = bulkhead_telemetry::metrics::serve(l, registry, stop).await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            });
            Some(bound)
        }
        None => None,
    };
    let http_srv = bulkhead_router::serve::serve_http(
        http_l,
        http::router(state.clone()),
        bulkhead_router::serve::EdgeLimits {
            max_connections: args.http_max_connections,
            header_timeout: Duration::from_millis(args.http_header_timeout_ms.max(1)),
        },
        shutdown_signal(stop_rx.clone()),
    );
    let grpc_srv = tonic::transport::Server::builder()
        // Hardened edge: bounded streams per connection, a deadline on the
        // handshake-to-headers phase, and dead peers found by keepalive.
        .max_concurrent_streams(Some(args.grpc_max_concurrent_streams.max(1)))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .add_service(
            InferenceServer::new(InferenceService { state })
                .max_decoding_message_size(http::MAX_BODY_BYTES),
        )
        .serve_with_incoming_shutdown(
            bulkhead_telemetry::incoming_nodelay(grpc_l),
            shutdown_signal(stop_rx),
        );
    let router_id = me.id.clone();
    let membership = Membership::join(
        &js,
        Identity {
            router_id: router_id.clone(),
            http_addr: http_addr.to_string(),
            grpc_addr: grpc_addr.to_string(),
            started_unix_ms: bulkhead_directory::now_ms(),
        },
        pipeline,
        cluster,
    )
    .await
    .context("joining the router replicas")?;
    tracing::info!(http = %http_addr, grpc = %grpc_addr, metrics = ?metrics_addr, router.id = %router_id, "router serving");
    if let Some(path) = &args.ready_file {
        let json = serde_json::json!({
            "http": http_addr.to_string(),
            "grpc": grpc_addr.to_string(),
            "metrics": metrics_addr.map(|a| a.to_string()),
        });
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json.to_string())?;
        std::fs::rename(&tmp, path)?;
    }
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing open streams");
        membership.leave().await;
        let _ = stop_tx.send(true);
    });
    let (h, g) = tokio::join!(http_srv, grpc_srv);
    usage_sync.stop().await;
    h?;
    g?;
    tracing::info!("router stopped");
    Ok(())
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
