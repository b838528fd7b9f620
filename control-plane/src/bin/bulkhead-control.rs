//! `bulkhead-control`: the control-plane server.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use bulkhead_control::server::{self, ServeOptions};
use bulkhead_identity::spiffe::DEFAULT_TRUST_DOMAIN;
use bulkhead_telemetry::{self as runtime, LogFormat};
use clap::Parser;

/// Bulkhead's control-plane: keeps tenants and API keys in NATS JetStream KV
/// (which routers watch) and serves the operator API over mTLS; only callers
/// with the operator SPIFFE id are admitted.
///
/// Logging: RUST_LOG sets the filter (default "info").
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// NATS server with JetStream (holds the tenant and key buckets).
    #[arg(
        long,
        env = "BULKHEAD_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// gRPC listen address (port 0 = any free port; see --ready-file).
    #[arg(
        long,
        env = "BULKHEAD_CONTROL_LISTEN",
        default_value = "127.0.0.1:50071"
    )]
    listen: SocketAddr,
    /// Folder with ca.pem, control.pem and control.key (`bulkhead certs init`).
    #[arg(long, env = "BULKHEAD_CERTS_DIR")]
    certs_dir: PathBuf,
    /// SPIFFE trust domain whose operator certificates are admitted.
    #[arg(long, env = "BULKHEAD_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Serve Prometheus metrics at http://<addr>/metrics (port 0 = any).
    #[arg(long, env = "BULKHEAD_CONTROL_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Once the listener is bound, write {"grpc":"<addr>"} here (atomically).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, env = "BULKHEAD_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let _telemetry = runtime::init("bulkhead-control", args.log_format);
    bulkhead_identity::spiffe::install_crypto_provider();
    let registry = server::open_registry(&args.nats_url, &args.certs_dir).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mut metrics_addr = None;
    let metrics = match args.metrics_listen {
        Some(a) => {
            let mut reg =
                bulkhead_telemetry::metrics::prometheus_client::registry::Registry::default();
            let m = std::sync::Arc::new(bulkhead_control::metrics::ControlMetrics::new(&mut reg));
            m.spawn_refresh(registry.clone(), std::time::Duration::from_secs(5));
            let l = tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding the metrics address {a}"))?;
            metrics_addr = Some(l.local_addr()?.to_string());
            tokio::spawn(bulkhead_telemetry::metrics::serve(
                l,
                std::sync::Arc::new(reg),
                runtime::shutdown_signal(),
            ));
            Some(m)
        }
        None => None,
    };
    let opts = ServeOptions {
        certs_dir: args.certs_dir,
        trust_domain: args.trust_domain,
        metrics,
    };
    // Fail on bad certificates before announcing readiness.
    bulkhead_identity::spiffe::CertPaths::new(&opts.certs_dir, server::COMPONENT).server_tls()?;
    if let Some(path) = &args.ready_file {
        runtime::write_ready_file(
            path,
            &serde_json::json!({"grpc": addr.to_string(), "metrics": metrics_addr}),
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    tracing::info!(grpc = %addr, "control-plane serving");
    server::serve(registry, listener, &opts, runtime::shutdown_signal()).await?;
    tracing::info!("control-plane stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
