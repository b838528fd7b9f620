//! `bulkhead-audit`: the audit-service. See the crate docs.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bulkhead_audit::keys::{KeyWrapper, LocalMasterKey};
use bulkhead_audit::query::QueryService;
use bulkhead_audit::store::AuditStore;
use bulkhead_proto::audit::audit_query_server::AuditQueryServer;
use bulkhead_proto::identity::{CertPaths, DEFAULT_TRUST_DOMAIN, SpiffeAuthorizer};
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
    /// Once serving, write the bound address here as JSON.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "BULKHEAD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
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

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
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
    init_tracing(&args.log_format);
    bulkhead_proto::identity::install_crypto_provider();
    let certs_dir = args
        .certs_dir
        .clone()
        .context("--certs-dir (or BULKHEAD_CERTS_DIR) is required")?;
    let wrapper = master_key(&args.keys)?;
    let store = AuditStore::open(&args.keys.data_dir, wrapper).with_context(|| {
        format!(
            "opening the audit store in {}",
            args.keys.data_dir.display()
        )
    })?;
    let store = Arc::new(Mutex::new(store));
    let nats = async_nats::connect(&args.nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {}", args.nats_url))?;
    let js = async_nats::jetstream::new(nats);
    bulkhead_audit::consumer::ensure_stream(&js).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let consumer = tokio::spawn(bulkhead_audit::consumer::run(
        js,
        store.clone(),
        stop_rx.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let authz = SpiffeAuthorizer::new(
        "audit query API",
        &args.trust_domain,
        &["router", "control", "operator"],
    );
    let mut rx = stop_rx.clone();
    let server = tonic::transport::Server::builder()
        .tls_config(CertPaths::new(&certs_dir, "audit").server_tls()?)?
        .add_service(AuditQueryServer::with_interceptor(
            QueryService { store },
            authz,
        ))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        );
    tracing::info!(grpc = %addr, "audit-service serving");
    if let Some(path) = &args.ready_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::json!({"grpc": addr.to_string()}).to_string(),
        )?;
        std::fs::rename(&tmp, path)?;
    }
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down after the current batch");
        let _ = stop_tx.send(true);
    });
    server.await?;
    consumer.await??;
    tracing::info!("audit-service stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Some(Cmd::Verify(v)) => verify(v).map(|ok| if ok { 0 } else { 2 }),
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
