//! The operator CLI's commands. Everything that changes the cluster goes
//! through the control-plane's gRPC API over mTLS with the operator
//! certificate; nothing writes NATS directly.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bulkhead_proto::audit::AuditQueryRequest;
use bulkhead_proto::audit::audit_query_client::AuditQueryClient;
use bulkhead_proto::common::Isolation;
use bulkhead_proto::control::control_client::ControlClient;
use bulkhead_proto::control::{
    CreateTenantRequest, IssueKeyRequest, KeyScope, ListTenantsRequest, Tenant,
};
use bulkhead_proto::identity::{CertPaths, DEFAULT_TRUST_DOMAIN};
use clap::{Args, Subcommand, ValueEnum};
use tonic::transport::{Channel, Endpoint};

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

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Create a CA and a certificate per component (SPIFFE ids).
    Init {
        #[arg(long, default_value = ".bulkhead/dev/certs")]
        dir: PathBuf,
        #[arg(long, env = "BULKHEAD_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Components to issue certificates for.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "router,worker,audit,control,operator"
        )]
        components: Vec<String>,
        /// Validity of component certificates, in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Replace an existing CA (every old certificate stops being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Issue (or re-issue) one component's certificate from the existing CA.
    Issue {
        #[arg(long, default_value = ".bulkhead/dev/certs")]
        dir: PathBuf,
        #[arg(long)]
        component: String,
        #[arg(long, env = "BULKHEAD_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum IsolationArg {
    Shared,
    Process,
    Mig,
    Dedicated,
}

#[derive(Subcommand, Debug)]
pub enum TenantsCmd {
    /// Create a tenant.
    Create {
        #[arg(long)]
        id: String,
        /// Share of the fleet under contention (weighted fair queuing).
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Models the tenant may use.
        #[arg(long, value_delimiter = ',', required = true)]
        models: Vec<String>,
        /// Largest max_tokens a request may ask for.
        #[arg(long, default_value_t = 256)]
        max_tokens: u32,
        #[arg(long, value_enum, default_value = "shared")]
        isolation: IsolationArg,
    },
    /// List tenants.
    List,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ScopeArg {
    Inference,
    TenantAdmin,
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Issue an API key; it is printed once and cannot be shown again.
    Issue {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum, default_value = "inference")]
        scope: ScopeArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// A tenant's audit records (hashes and figures, never content).
    Query {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value_t = 0)]
        from_ms: i64,
        #[arg(long, default_value_t = 0)]
        to_ms: i64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

async fn channel(url: &str, certs: &Path) -> Result<Channel> {
    Endpoint::from_shared(url.to_string())
        .with_context(|| format!("bad URL {url:?}"))?
        .tls_config(CertPaths::new(certs, "operator").client_tls()?)?
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

pub fn certs(cmd: CertsCmd) -> Result<()> {
    match cmd {
        CertsCmd::Init {
            dir,
            trust_domain,
            components,
            days,
            force,
        } => {
            let comps: Vec<&str> = components.iter().map(String::as_str).collect();
            crate::pki::init(&dir, &trust_domain, &comps, days, force)?;
            println!(
                "CA and certificates for {} written to {}",
                components.join(", "),
                dir.display()
            );
        }
        CertsCmd::Issue {
            dir,
            component,
            trust_domain,
            days,
        } => {
            crate::pki::issue(&dir, &trust_domain, &component, days)?;
            println!("certificate for {component} written to {}", dir.display());
        }
    }
    Ok(())
}

fn tenant_json(t: &Tenant) -> serde_json::Value {
    serde_json::json!({
        "id": t.id, "weight": t.weight, "allowed_models": t.allowed_models,
        "max_tokens_per_request": t.max_tokens_per_request,
        "isolation": Isolation::try_from(t.isolation).map(|i| i.as_str_name()).unwrap_or("?"),
        "created_unix_ms": t.created_unix_ms,
    })
}

pub async fn tenants(cmd: TenantsCmd, r: &Remote) -> Result<()> {
    let mut c = ControlClient::new(channel(&r.control, &r.certs_dir).await?);
    match cmd {
        TenantsCmd::Create {
            id,
            weight,
            models,
            max_tokens,
            isolation,
        } => {
            let isolation = match isolation {
                IsolationArg::Shared => Isolation::Shared,
                IsolationArg::Process => Isolation::Process,
                IsolationArg::Mig => Isolation::Mig,
                IsolationArg::Dedicated => Isolation::Dedicated,
            } as i32;
            let t = c
                .create_tenant(CreateTenantRequest {
                    id,
                    weight,
                    allowed_models: models,
                    max_tokens_per_request: max_tokens,
                    isolation,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            if r.json {
                println!("{}", tenant_json(&t));
            } else {
                println!("tenant {} created", t.id);
            }
        }
        TenantsCmd::List => {
            let ts = c
                .list_tenants(ListTenantsRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner()
                .tenants;
            if r.json {
                println!(
                    "{}",
                    serde_json::Value::Array(ts.iter().map(tenant_json).collect())
                );
            } else {
                println!(
                    "{:<24} {:>6} {:>10}  models",
                    "tenant", "weight", "max_tokens"
                );
                for t in ts {
                    println!(
                        "{:<24} {:>6} {:>10}  {}",
                        t.id,
                        t.weight,
                        t.max_tokens_per_request,
                        t.allowed_models.join(",")
                    );
                }
            }
        }
    }
    Ok(())
}

pub async fn keys(cmd: KeysCmd, r: &Remote) -> Result<()> {
    let mut c = ControlClient::new(channel(&r.control, &r.certs_dir).await?);
    match cmd {
        KeysCmd::Issue { tenant, scope } => {
            let scope = match scope {
                ScopeArg::Inference => KeyScope::Inference,
                ScopeArg::TenantAdmin => KeyScope::TenantAdmin,
            };
            let k = c
                .issue_key(IssueKeyRequest {
                    tenant_id: tenant.clone(),
                    scope: scope as i32,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            if r.json {
                println!(
                    "{}",
                    serde_json::json!({"tenant": tenant, "prefix": k.prefix, "api_key": k.api_key})
                );
            } else {
                println!("{}", k.api_key);
                eprintln!(
                    "(key {}… for {tenant}; store it now — Bulkhead keeps only its hash and cannot show it again)",
                    k.prefix
                );
            }
        }
    }
    Ok(())
}

pub async fn audit(cmd: AuditCmd, r: &Remote) -> Result<()> {
    let mut c = AuditQueryClient::new(channel(&r.audit, &r.certs_dir).await?);
    match cmd {
        AuditCmd::Query {
            tenant,
            from_ms,
            to_ms,
            limit,
        } => {
            let recs = c
                .query(AuditQueryRequest {
                    tenant_id: tenant,
                    from_unix_ms: from_ms,
                    to_unix_ms: to_ms,
                    page_size: limit,
                    page_token: String::new(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner()
                .records;
            for e in recs {
                if r.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "request_id": e.request_id, "tenant_id": e.tenant_id, "model": e.model,
                            "timestamp_unix_ms": e.timestamp_unix_ms, "status": e.status, "error_code": e.error_code,
                            "prompt_tokens": e.prompt_tokens, "completion_tokens": e.completion_tokens,
                            "ttft_us": e.ttft_us, "latency_us": e.latency_us, "worker_id": e.worker_id,
                            "prompt_hash": e.prompt_hash, "response_hash": e.response_hash, "api_key_prefix": e.api_key_prefix,
                        })
                    );
                } else {
                    println!(
                        "{} {} {:<8} {:>5}+{:<5} ttft {:>7}us  {}",
                        e.timestamp_unix_ms,
                        e.request_id,
                        e.status,
                        e.prompt_tokens,
                        e.completion_tokens,
                        e.ttft_us,
                        e.model
                    );
                }
            }
        }
    }
    Ok(())
}
