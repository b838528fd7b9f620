//! `bulkhead`: the operator CLI.
#![forbid(unsafe_code)]

use bulkhead_cli::commands::{self as cli, AuditCmd, CertsCmd, KeysCmd, Remote, TenantsCmd};
use bulkhead_cli::dev::{self, DevArgs};
use bulkhead_telemetry::{self as runtime, LogFormat};
use clap::{Parser, Subcommand};

/// Operate a Bulkhead cluster: certificates, tenants, API keys, audit
/// records, and a complete local stack for development (`bulkhead dev`).
///
/// Remote commands connect over mTLS with <certs-dir>/operator.pem.
/// Logging: RUST_LOG sets the filter (default "info"), on stderr.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    remote: Remote,
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        env = "BULKHEAD_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
}

/// Top-level subcommands. To add one, add a variant here and one match arm in
/// `main`; keep its arguments and code in its own module (as `Dev` does with
/// `cli/src/dev/`), so the other commands stay untouched.
#[derive(Subcommand, Debug)]
enum Cmd {
    /// The cluster PKI (a CA and SPIFFE-identity certificates).
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Tenants (through the control-plane).
    #[command(subcommand)]
    Tenants(TenantsCmd),
    /// API keys (through the control-plane).
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Audit records (through the audit-service).
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Requests and tokens per tenant (and key) by UTC day or hour, as the
    /// routers counted them (through the control-plane).
    Usage(bulkhead_cli::usage_cli::UsageArgs),
    // Other engineers' subcommands go below, each backed by its own module.
    /// Start the whole stack on loopback (Ctrl-C stops it).
    Dev(DevArgs),
    /// Benchmarks against a running stack.
    #[command(subcommand)]
    Bench(bulkhead_cli::bench::BenchCmd),
    /// MIG planning: profiles, placement rules, nvidia-mig-parted configs.
    #[command(subcommand)]
    Mig(bulkhead_cli::mig_cli::MigCmd),
    /// Kubernetes manifests rendered from a cluster config.
    #[command(subcommand)]
    Deploy(bulkhead_cli::deploy::DeployCmd),
    /// The cluster at a glance: live routers, workers (pool, device, load)
    /// and tenants (queue depth, usage), from the routers' heartbeats.
    Status,
    /// `status`, refreshed live in the terminal.
    Top(bulkhead_cli::status::TopArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let _telemetry = runtime::init("bulkhead", cli.log_format);
    bulkhead_identity::spiffe::install_crypto_provider();
    let r = match cli.cmd {
        Cmd::Certs(c) => cli::certs(c, &cli.remote),
        Cmd::Tenants(c) => cli::tenants(c, &cli.remote).await,
        Cmd::Keys(c) => cli::keys(c, &cli.remote).await,
        Cmd::Audit(c) => cli::audit(c, &cli.remote).await,
        Cmd::Usage(a) => bulkhead_cli::usage_cli::run(a, &cli.remote).await,
        Cmd::Dev(a) => dev::run(a).await,
        Cmd::Bench(b) => bulkhead_cli::bench::run(b).await,
        Cmd::Mig(c) => bulkhead_cli::mig_cli::run(c, &cli.remote),
        Cmd::Deploy(c) => bulkhead_cli::deploy::run(c),
        Cmd::Status => bulkhead_cli::status::status(&cli.remote).await,
        Cmd::Top(a) => bulkhead_cli::status::top(a, &cli.remote).await,
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
