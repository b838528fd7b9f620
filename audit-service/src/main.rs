//! `bulkhead-audit`: the audit-service. See the crate docs.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use bulkhead_audit::checkpoint;
use bulkhead_audit::keys::{KeyWrapper, LocalMasterKey};
use bulkhead_audit::server::{self, ServeOptions};
use bulkhead_audit::shred::Shredded;
use bulkhead_audit::store::AuditStore;
use bulkhead_identity::spiffe::DEFAULT_TRUST_DOMAIN;
use bulkhead_telemetry::{self as runtime, LogFormat};
use clap::{Args, Parser, Subcommand};

/// mimalloc: in `bench`, about 13% less CPU per event end to end (this
/// process and nats-server together) than glibc's allocator; each event is a
/// few dozen small allocations across the NATS client, decoding and sealing.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Bulkhead's audit-service: consumes audit events from NATS JetStream and
/// stores each exactly once, encrypted per tenant (AES-256-GCM) in
/// hash-chained append-only logs; serves tenant-scoped queries over mTLS.
#[derive(Parser, Debug)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Consume audit events and serve queries (the default when no
    /// subcommand is given).
    Serve(ServeArgs),
    /// Check every tenant's log (or one) and name the first bad record.
    Verify(VerifyArgs),
    /// Crypto-shred a tenant: destroy every epoch of its data key so its
    /// records can never be decrypted again (the chain still verifies).
    /// Offline: stop the audit-service first (while it runs, an operator
    /// uses `bulkhead audit shred --tenant T`). Irreversible.
    Shred(ShredArgs),
    /// Measure end-to-end throughput and publish → durable latency: publish
    /// audit events for several tenants to JetStream while the real consumer
    /// pipeline stores them (fsync, then ack) in a temporary folder.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// NATS server to publish to (use a dedicated one: an audit-service
    /// consuming from it would store the bench's events too). Default:
    /// start a local nats-server (BULKHEAD_NATS_SERVER, the project's
    /// .bulkhead/venv, or PATH) in a temporary folder.
    #[arg(long)]
    nats: Option<String>,
    /// Events to publish in all.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Tenants publishing at once.
    #[arg(long, default_value_t = 8)]
    tenants: usize,
    /// Publishes awaiting their JetStream ack, per tenant.
    #[arg(long, default_value_t = 1024)]
    in_flight: usize,
    /// Events published but not yet durable, at most (publishers wait for
    /// room); 0 = no bound, publish as fast as JetStream accepts (then the
    /// latency measures the backlog whenever publishing outruns storing).
    #[arg(long, default_value_t = 3072)]
    max_pending: usize,
    /// Records per segment file of the temporary store.
    #[arg(long, default_value_t = bulkhead_audit::store::DEFAULT_SEGMENT_RECORDS)]
    segment_records: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ShredArgs {
    /// Folder of the per-tenant logs.
    #[arg(
        long,
        env = "BULKHEAD_AUDIT_DATA_DIR",
        default_value = ".bulkhead/audit"
    )]
    data_dir: PathBuf,
    /// The tenant whose records to make unrecoverable.
    #[arg(long)]
    tenant: String,
}

#[derive(Args, Debug)]
struct KeyArgs {
    /// Folder of the per-tenant logs.
    #[arg(
        long,
        env = "BULKHEAD_AUDIT_DATA_DIR",
        default_value = ".bulkhead/audit"
    )]
    data_dir: PathBuf,
    /// File with the 256-bit master key as 64 hex characters. The environment
    /// variable BULKHEAD_AUDIT_MASTER_KEY (hex) is used when this is unset.
    #[arg(long, env = "BULKHEAD_AUDIT_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// Create the master key file (mode 0600) if it does not exist.
    #[arg(long)]
    create_master_key: bool,
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    keys: KeyArgs,
    /// NATS server with the audit stream.
    #[arg(
        long,
        env = "BULKHEAD_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// Address of the query API (port 0 = any free port).
    #[arg(long, env = "BULKHEAD_AUDIT_LISTEN", default_value = "127.0.0.1:50081")]
    listen: SocketAddr,
    /// Folder with ca.pem, audit.pem and audit.key.
    #[arg(long, env = "BULKHEAD_CERTS_DIR")]
    certs_dir: Option<PathBuf>,
    /// SPIFFE trust domain of the cluster.
    #[arg(long, env = "BULKHEAD_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Once the listener is bound, write {"grpc":"<addr>"} here (atomically).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://<addr>/metrics (port 0 = any free port).
    #[arg(long, env = "BULKHEAD_AUDIT_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Distinct tenants given their own metric labels; the rest share "other".
    #[arg(long, env = "BULKHEAD_METRICS_MAX_TENANTS", default_value_t = 100)]
    metrics_max_tenants: usize,
    /// Log format on stderr (RUST_LOG sets the filter, default "info").
    #[arg(long, env = "BULKHEAD_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Explicit operator override: a caller with the `operator` certificate
    /// and no tenant-admin key may read any tenant's records. Off by default
    /// (then every read needs the tenant's own tenant-admin key).
    #[arg(long, env = "BULKHEAD_AUDIT_OPERATOR_READS_ANY_TENANT")]
    operator_reads_any_tenant: bool,
    /// Records between two Ed25519-signed checkpoints of a tenant's log (one
    /// is also written at every clean shutdown).
    #[arg(long, env = "BULKHEAD_AUDIT_CHECKPOINT_EVERY", default_value_t = bulkhead_audit::store::DEFAULT_CHECKPOINT_EVERY)]
    checkpoint_every: u64,
    /// Records in one segment file of a tenant's log; a full segment is
    /// closed with a signed checkpoint (as is the open one at a clean
    /// shutdown).
    #[arg(long, env = "BULKHEAD_AUDIT_SEGMENT_RECORDS", default_value_t = bulkhead_audit::store::DEFAULT_SEGMENT_RECORDS)]
    segment_records: u64,
    /// Records encrypted under one tenant data key before a new key epoch
    /// is started (AES-GCM random-nonce limit; capped at 2^28).
    #[arg(long, env = "BULKHEAD_AUDIT_MAX_RECORDS_PER_KEY", default_value_t = bulkhead_audit::store::keyring::DEFAULT_MAX_RECORDS_PER_KEY)]
    max_records_per_key: u64,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    #[command(flatten)]
    keys: KeyArgs,
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Checkpoint public key (64 hex characters); default: the
    /// checkpoint.pub file in the data folder. Pass the key kept elsewhere to
    /// detect a rewritten log together with re-signed checkpoints.
    #[arg(long)]
    checkpoint_public_key: Option<String>,
    /// Check the logs against signed heads exported earlier and kept off
    /// this host (`bulkhead audit heads --out FILE`, or the `head` of query
    /// answers; one JSON object per line): each log must still hold exactly
    /// what its head signed, neither rewritten nor truncated. Needs no
    /// master key (the chain is checked without decrypting).
    #[arg(long)]
    head: Option<PathBuf>,
}

fn master_key(k: &KeyArgs) -> anyhow::Result<Arc<dyn KeyWrapper>> {
    let key = match (
        &k.master_key_file,
        std::env::var("BULKHEAD_AUDIT_MASTER_KEY"),
    ) {
        (Some(path), _) => LocalMasterKey::from_file(path, k.create_master_key)?,
        (None, Ok(hex)) => LocalMasterKey::from_hex(&hex)?,
        (None, Err(_)) => {
            anyhow::bail!("no master key: pass --master-key-file or set BULKHEAD_AUDIT_MASTER_KEY")
        }
    };
    Ok(Arc::new(key))
}

fn verify(args: VerifyArgs) -> anyhow::Result<bool> {
    let root = &args.keys.data_dir;
    if let Some(file) = &args.head {
        return verify_heads(root, file, args.tenant.as_deref());
    }
    let tenants = match args.tenant {
        Some(t) => vec![t],
        None => bulkhead_audit::verify::tenants(root)?,
    };
    // A shredded tenant needs no master key; only ask for one if needed.
    let all_shredded = tenants
        .iter()
        .all(|t| bulkhead_audit::shred::is_shredded(root, t));
    let wrapper: Arc<dyn KeyWrapper> = if all_shredded {
        Arc::new(LocalMasterKey::from_bytes(&[0; 32]))
    } else {
        master_key(&args.keys)?
    };
    let vk = match &args.checkpoint_public_key {
        Some(hex) => Some(checkpoint::parse_public_key(hex).map_err(anyhow::Error::msg)?),
        None => checkpoint::load_public_key(root)?,
    };
    // Read-only: a store opened without loading (open() would refuse damage).
    let store = AuditStore::open_readonly(root, wrapper);
    let mut ok = true;
    for t in tenants {
        let v = bulkhead_audit::verify::tenant(&store, vk.as_ref(), &t)
            .with_context(|| format!("verifying {t}"))?;
        ok &= v.ok;
        println!("{}", v.line);
    }
    Ok(ok)
}

/// `verify --head FILE`: every head in the file (of `only`, when given).
fn verify_heads(root: &Path, file: &Path, only: Option<&str>) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the heads in {}", file.display()))?;
    let store = AuditStore::open_readonly(root, Arc::new(LocalMasterKey::from_bytes(&[0; 32])));
    let mut ok = true;
    let mut checked = 0;
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let head = bulkhead_proto::head_text::from_json(line)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", file.display(), i + 1))?;
        if only.is_some_and(|t| t != head.tenant_id) {
            continue;
        }
        checked += 1;
        match bulkhead_audit::heads::verify(root, &store, &head) {
            Ok(()) => println!(
                "{}: ok, the log still holds the {} records its head signed",
                head.tenant_id, head.count
            ),
            Err(why) => {
                ok = false;
                println!("{}: FAILED against its signed head: {why}", head.tenant_id);
            }
        }
    }
    anyhow::ensure!(checked > 0, "no head to check in {}", file.display());
    Ok(ok)
}

fn shred(args: ShredArgs) -> anyhow::Result<()> {
    match bulkhead_audit::shred::shred(&args.data_dir, &args.tenant)? {
        Shredded::Now(n) => println!(
            "{}: {n} data key(s) destroyed (every key epoch); its audit records are now unrecoverable (the chain still verifies)",
            args.tenant
        ),
        Shredded::Already => println!("{}: already shredded", args.tenant),
    }
    Ok(())
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .try_init();
    }
    let cfg = bulkhead_audit::bench::BenchConfig {
        nats_url: args.nats,
        events: args.events,
        tenants: args.tenants,
        in_flight: args.in_flight,
        max_pending: args.max_pending,
        store: bulkhead_audit::store::StoreOptions {
            segment_records: args.segment_records,
            ..Default::default()
        },
        timeout: std::time::Duration::from_secs(args.timeout_secs),
    };
    let report = bulkhead_audit::bench::run(&cfg).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.text());
    }
    anyhow::ensure!(
        report.verified,
        "the stored logs did not verify after the bench"
    );
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let _telemetry = runtime::init("bulkhead-audit", args.log_format);
    bulkhead_identity::spiffe::install_crypto_provider();
    let certs_dir = args
        .certs_dir
        .clone()
        .context("--certs-dir (or BULKHEAD_CERTS_DIR) is required")?;
    anyhow::ensure!(
        args.max_records_per_key <= bulkhead_audit::store::keyring::MAX_RECORDS_PER_KEY_CAP,
        "--max-records-per-key {} is above the hard cap of {} records per data key",
        args.max_records_per_key,
        bulkhead_audit::store::keyring::MAX_RECORDS_PER_KEY_CAP
    );
    let wrapper = master_key(&args.keys)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mut metrics_addr = None;
    let metrics = match args.metrics_listen {
        Some(a) => {
            let mut registry =
                bulkhead_telemetry::metrics::prometheus_client::registry::Registry::default();
            let m = std::sync::Arc::new(bulkhead_audit::metrics::AuditMetrics::new(
                &mut registry,
                args.metrics_max_tenants,
            ));
            let l = tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding the metrics address {a}"))?;
            metrics_addr = Some(l.local_addr()?.to_string());
            tokio::spawn(bulkhead_telemetry::metrics::serve(
                l,
                std::sync::Arc::new(registry),
                runtime::shutdown_signal(),
            ));
            Some(m)
        }
        None => None,
    };
    let opts = ServeOptions {
        metrics,
        operator_reads_any_tenant: args.operator_reads_any_tenant,
        store: bulkhead_audit::store::StoreOptions {
            checkpoint_every: args.checkpoint_every,
            segment_records: args.segment_records,
            max_records_per_key: args.max_records_per_key,
        },
        ..ServeOptions::new(
            &args.nats_url,
            args.keys.data_dir,
            certs_dir,
            &args.trust_domain,
        )
    };
    let ready_file = args.ready_file.clone();
    let on_ready = move || {
        if let Some(path) = &ready_file {
            runtime::write_ready_file(
                path,
                &serde_json::json!({"grpc": addr.to_string(), "metrics": metrics_addr}),
            )
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        tracing::info!(grpc = %addr, "audit-service serving");
        Ok(())
    };
    server::serve_with_ready(
        &opts,
        wrapper,
        listener,
        runtime::shutdown_signal(),
        on_ready,
    )
    .await?;
    tracing::info!("audit-service stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Some(Cmd::Verify(v)) => verify(v).map(|ok| if ok { 0 } else { 2 }),
        Some(Cmd::Shred(a)) => shred(a).map(|_| 0),
        Some(Cmd::Bench(a)) => bench(a).await.map(|_| 0),
        Some(Cmd::Serve(s)) => serve(s).await.map(|_| 0),
        None => serve(cli.serve).await.map(|_| 0),
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
