//! What every remote command shares: the flags that say where the cluster
//! is and how to print (`Remote`), and the tenant's rendering. The command
//! modules (`commands`, `lifecycle_cli`, `audit_cli`, `mig_cli`, `status`)
//! all depend on this one; it depends on none of them.
use std::path::PathBuf;

use bulkhead_proto::common::Isolation;
use bulkhead_proto::control::Tenant;
use clap::{Args, ValueEnum};

/// Flags every remote command shares.
#[derive(Args, Debug, Clone)]
pub struct Remote {
    /// Control-plane gRPC URL.
    #[arg(
        long,
        global = true,
        env = "BULKHEAD_CONTROL",
        default_value = "https://127.0.0.1:50071"
    )]
    pub control: String,
    /// Audit-service gRPC URL.
    #[arg(
        long,
        global = true,
        env = "BULKHEAD_AUDIT",
        default_value = "https://127.0.0.1:50081"
    )]
    pub audit: String,
    /// Folder with ca.pem, operator.pem and operator.key.
    #[arg(
        long,
        global = true,
        env = "BULKHEAD_CERTS_DIR",
        default_value = ".bulkhead/dev/certs"
    )]
    pub certs_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum IsolationArg {
    Shared,
    Process,
    Mig,
    Dedicated,
}

pub fn tenant_json(t: &Tenant) -> serde_json::Value {
    serde_json::json!({
        "id": t.id, "uid": t.uid, "weight": t.weight, "allowed_models": t.allowed_models,
        "max_tokens_per_request": t.max_tokens_per_request,
        "isolation": Isolation::try_from(t.isolation).map(|i| i.as_str_name()).unwrap_or("?"),
        "created_unix_ms": t.created_unix_ms,
        "limits": {
            "requests_per_second": t.requests_per_second, "burst": t.burst,
            "tokens_per_minute": t.tokens_per_minute, "max_in_flight": t.max_in_flight,
            "max_queued": t.max_queued,
        },
        "ttft_quantum_ms": t.ttft_quantum_ms,
        "no_prefix_cache": t.no_prefix_cache,
        "daily_token_budget": t.daily_token_budget,
        "monthly_token_budget": t.monthly_token_budget,
        "prefix_cache_ttl_s": t.prefix_cache_ttl_s,
    })
}
