//! `bulkhead-control`: the control-plane server.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use bulkhead_control::registry::Registry;
use bulkhead_control::service::ControlService;
use bulkhead_proto::control::control_server::ControlServer;
use bulkhead_proto::identity::{CertPaths, DEFAULT_TRUST_DOMAIN, SpiffeAuthorizer};
use clap::Parser;

/// Bulkhead's control-plane: keeps tenants and API keys in NATS JetStream KV
/// (which routers watch) and serves the operator API over mTLS; only callers
/// with the operator SPIFFE id are admitted.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[arg(
        long,
        env = "BULKHEAD_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// gRPC listen address (port 0 = any free port).
    #[arg(
        long,
        env = "BULKHEAD_CONTROL_LISTEN",
        default_value = "127.0.0.1:50071"
    )]
    listen: SocketAddr,
    /// Folder with ca.pem, control.pem and control.key.
    #[arg(long, env = "BULKHEAD_CERTS_DIR")]
    certs_dir: PathBuf,
    #[arg(long, env = "BULKHEAD_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Once serving, write the bound address here as JSON.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    #[arg(long, env = "BULKHEAD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_format == "json" {
        fmt.json().init();
    } else {
        fmt.init();
    }
    bulkhead_proto::identity::install_crypto_provider();
    let nats = async_nats::connect(&args.nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {}", args.nats_url))?;
    let registry = Registry::open(&async_nats::jetstream::new(nats)).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let authz = SpiffeAuthorizer::new("control-plane", &args.trust_domain, &["operator"]);
    let server = tonic::transport::Server::builder()
        .tls_config(CertPaths::new(&args.certs_dir, "control").server_tls()?)?
        .add_service(ControlServer::with_interceptor(
            ControlService { registry },
            authz,
        ))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("installing a SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                tracing::info!("shutting down");
            },
        );
    tracing::info!(grpc = %addr, "control-plane serving");
    if let Some(path) = &args.ready_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::json!({"grpc": addr.to_string()}).to_string(),
        )?;
        std::fs::rename(&tmp, path)?;
    }
    server.await?;
    tracing::info!("control-plane stopped");
    Ok(())
}
