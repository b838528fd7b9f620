//! `bulkhead-audit`: the audit-service. See the crate docs.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bulkhead_audit::keys::{KeyWrapper, LocalMasterKey};
use bulkhead_audit::runtime::{self, LogFormat};
use bulkhead_audit::server::{self, ServeOptions};
use bulkhead_audit::store::AuditStore;
use bulkhead_proto::identity::DEFAULT_TRUST_DOMAIN;
use clap::{Args, Parser, Subcommand};

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
    /// Log format on stderr (RUST_LOG sets the filter, default "info").
    #[arg(long, env = "BULKHEAD_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    #[command(flatten)]
    keys: KeyArgs,
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
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
    let wrapper = master_key(&args.keys)?;
    let tdir = args.keys.data_dir.join("tenants");
    let tenants: Vec<String> = match args.tenant {
        Some(t) => vec![t],
        None => {
            let mut v: Vec<String> = std::fs::read_dir(&tdir)
                .with_context(|| format!("reading {}", tdir.display()))?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect();
            v.sort();
            v
        }
    };
    // Read-only: a store opened without loading (open() would refuse damage).
    let store = AuditStore::open_readonly(&args.keys.data_dir, wrapper);
    let mut ok = true;
    for t in tenants {
        let r = store.read(&t)?;
        match (&r.first_bad, r.torn_tail) {
            (Some((idx, why)), _) => {
                ok = false;
                println!(
                    "{t}: FAILED at record {idx}: {why} ({} records before it verify)",
                    r.frames.len()
                );
            }
            (None, Some(b)) => println!(
                "{t}: ok, {} records; a torn final frame of {b} bytes (crash mid-write) will be cut at start",
                r.frames.len()
            ),
            (None, None) => println!("{t}: ok, {} records, chain intact", r.frames.len()),
        }
    }
    Ok(ok)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    runtime::init_tracing(args.log_format);
    bulkhead_proto::identity::install_crypto_provider();
    let certs_dir = args
        .certs_dir
        .clone()
        .context("--certs-dir (or BULKHEAD_CERTS_DIR) is required")?;
    let wrapper = master_key(&args.keys)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let opts = ServeOptions {
        nats_url: args.nats_url,
        data_dir: args.keys.data_dir,
        certs_dir,
        trust_domain: args.trust_domain,
    };
    let ready_file = args.ready_file.clone();
    let on_ready = move || {
        if let Some(path) = &ready_file {
            runtime::write_ready_file(path, &serde_json::json!({"grpc": addr.to_string()}))
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
