//! `bulkhead`: the operator CLI.
#![forbid(unsafe_code)]

use bulkhead_control::cli::{self, AuditCmd, CertsCmd, KeysCmd, Remote, TenantsCmd};
use bulkhead_control::dev::{self, DevArgs};
use clap::{Parser, Subcommand};

/// Operate a Bulkhead cluster: certificates, tenants, API keys, audit
/// records, and a complete local stack for development (`bulkhead dev`).
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The cluster PKI (a CA and SPIFFE-identity certificates).
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Tenants.
    #[command(subcommand)]
    Tenants(TenantsCmd),
    /// API keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Audit records.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Start the whole stack on loopback (Ctrl-C stops it).
    Dev(DevArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    bulkhead_proto::identity::install_crypto_provider();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Certs(c) => cli::certs(c),
        Cmd::Tenants(c) => cli::tenants(c, &cli.remote).await,
        Cmd::Keys(c) => cli::keys(c, &cli.remote).await,
        Cmd::Audit(c) => cli::audit(c, &cli.remote).await,
        Cmd::Dev(a) => dev::run(a).await,
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
