//! The operator CLI's commands. Everything that changes the cluster goes
//! through the control-plane's gRPC API over mTLS with the operator
//! certificate; nothing writes NATS directly.
use std::path::PathBuf;

use anyhow::Result;
use bulkhead_identity::spiffe::DEFAULT_TRUST_DOMAIN;
use bulkhead_proto::common::Isolation;
use bulkhead_proto::control::{CreateTenantRequest, KeyScope};
use clap::{Args, Subcommand, ValueEnum};

use crate::client::ControlClient;
pub use crate::remote::{IsolationArg, Remote, tenant_json};

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Create a CA and a certificate per component (SPIFFE ids).
    Init {
        /// Folder for ca.pem, ca.key and <component>.pem/.key.
        #[arg(long, default_value = ".bulkhead/dev/certs")]
        dir: PathBuf,
        /// SPIFFE trust domain of the cluster.
        #[arg(long, env = "BULKHEAD_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Components to issue certificates for.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "router,worker,audit,control,operator,nats"
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
        /// Folder with ca.pem and ca.key; the new files are written there.
        #[arg(long, default_value = ".bulkhead/dev/certs")]
        dir: PathBuf,
        /// Component name ([a-z0-9-]); its SPIFFE id is
        /// spiffe://<trust-domain>/bulkhead/<component>.
        #[arg(long)]
        component: String,
        /// Extra DNS names for the certificate (repeat), e.g. the in-cluster
        /// service name peers connect to: bulkhead-worker-shared.bulkhead.svc.
        #[arg(long = "dns-name")]
        dns_names: Vec<String>,
        /// SPIFFE trust domain of the cluster.
        #[arg(long, env = "BULKHEAD_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Validity in days (0 or less makes an already-expired certificate, for tests).
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// With --component worker: a worker dedicated to this tenant
        /// (worker.<tenant>.pem, SPIFFE id .../bulkhead/worker/tenant/<tenant>).
        #[arg(long, conflicts_with = "replica")]
        tenant: Option<String>,
        /// With --component router: one router replica (router.<replica>.pem,
        /// SPIFFE id .../bulkhead/router/replica/<replica>; NATS lets it
        /// write only its own heartbeat). Start it with --router-id <replica>.
        #[arg(long)]
        replica: Option<String>,
    },
    /// Revoke a certificate: add its serial to <dir>/crl.pem (signed by the
    /// CA). Running servers pick the CRL up within seconds, no restart.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["component", "serial"])))]
    Revoke {
        /// Folder with ca.pem, ca.key and the certificates.
        #[arg(long, default_value = ".bulkhead/dev/certs")]
        dir: PathBuf,
        /// Revoke the certificate now in <dir>/<component>.pem.
        #[arg(long)]
        component: Option<String>,
        /// With --component worker: the worker dedicated to this tenant.
        #[arg(long, requires = "component", conflicts_with = "replica")]
        tenant: Option<String>,
        /// With --component router: that router replica's certificate.
        #[arg(long, requires = "component")]
        replica: Option<String>,
        /// Revoke by serial number (hex, as `certs revoke` prints it).
        #[arg(long)]
        serial: Option<String>,
    },
}

/// A tenant's admission limits, enforced by every router (rates: 0 =
/// unlimited; counts: 0 = the router's default, 64 in flight and 256 queued
/// unless the router's flags say otherwise).
#[derive(Args, Debug, Clone, Default)]
pub struct LimitArgs {
    /// Requests per second (token bucket).
    #[arg(long, default_value_t = 0)]
    pub rps: u32,
    /// Requests allowed at once above the steady rate.
    #[arg(long, default_value_t = 0)]
    pub burst: u32,
    /// Tokens per minute (prompt + max_tokens reserved, unused refunded).
    #[arg(long, default_value_t = 0)]
    pub tokens_per_minute: u64,
    /// Requests admitted and not finished (queued or running); 0 = the
    /// router's default (--tenant-max-in-flight, 64).
    #[arg(long, default_value_t = 0)]
    pub max_in_flight: u32,
    /// Requests waiting in the router's fair queue; 0 = the router's
    /// default (--tenant-max-queued, 256).
    #[arg(long, default_value_t = 0)]
    pub max_queued: u32,
    /// Release the first token only at the next multiple of this many ms
    /// after arrival (0 = off): blunts timing side channels, costs about
    /// half the quantum of TTFT on average.
    #[arg(long, default_value_t = 0)]
    pub ttft_quantum_ms: u32,
    /// Never keep this tenant's prompts in a worker's prefix cache (no
    /// block reused or left cached; for regulated data).
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// Tokens (prompt + completion, every router together) per UTC day;
    /// past it requests get 429 until midnight UTC (0 = no budget).
    #[arg(long, default_value_t = 0)]
    pub daily_token_budget: u64,
    /// Tokens per calendar month (UTC); past it 429 until the month ends
    /// (0 = no budget).
    #[arg(long, default_value_t = 0)]
    pub monthly_token_budget: u64,
    /// Evict and zero this tenant's cached prefix blocks unused this many
    /// seconds (on top of each worker's --prefix-cache-ttl-s, the shorter
    /// wins; 0 = the workers' TTL only).
    #[arg(long, default_value_t = 0)]
    pub prefix_cache_ttl_s: u32,
}

#[derive(Subcommand, Debug)]
pub enum TenantsCmd {
    /// Create a tenant.
    Create {
        /// Tenant id: 1-64 of [a-z0-9-_], starting with a letter or digit.
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
        /// Isolation tier (see DESIGN.md).
        #[arg(long, value_enum, default_value = "shared")]
        isolation: IsolationArg,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// List tenants.
    List,
    /// Change a tenant's weight, models, max tokens or isolation.
    Update(crate::lifecycle_cli::UpdateTenantArgs),
    /// Delete a tenant (its keys are revoked and stop working at routers).
    Delete(crate::lifecycle_cli::DeleteTenantArgs),
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
        /// The tenant the key belongs to.
        #[arg(long)]
        tenant: String,
        /// What the key may do.
        #[arg(long, value_enum, default_value = "inference")]
        scope: ScopeArg,
        /// Lifetime in days (0 = never expires).
        #[arg(long, default_value_t = 0)]
        expires_in_days: u32,
        /// This key's own token budget per UTC day (0 = none; the
        /// tenant's budgets apply as well).
        #[arg(long, default_value_t = 0)]
        daily_token_budget: u64,
        /// This key's own token budget per calendar month, UTC (0 = none).
        #[arg(long, default_value_t = 0)]
        monthly_token_budget: u64,
    },
    /// Replace a key: a new key (printed once) with the same tenant and scope;
    /// the old one is revoked (or expires after --grace-seconds).
    Rotate(crate::lifecycle_cli::RotateKeyArgs),
    /// Revoke a key by its prefix.
    Revoke(crate::lifecycle_cli::RevokeKeyArgs),
    /// List keys: prefix, tenant, scope, created, expiry, state (never the key).
    List(crate::lifecycle_cli::ListKeysArgs),
}

pub use crate::audit_cli::AuditCmd;

/// The qualifier of a certificate's file name: a dedicated worker's tenant
/// or a router replica's id, each only with its component.
fn qualifier<'a>(
    component: &str,
    tenant: Option<&'a str>,
    replica: Option<&'a str>,
) -> Result<Option<&'a str>> {
    anyhow::ensure!(
        tenant.is_none() || component == "worker",
        "--tenant is only for --component worker"
    );
    anyhow::ensure!(
        replica.is_none() || component == "router",
        "--replica is only for --component router"
    );
    Ok(tenant.or(replica))
}

pub fn certs(cmd: CertsCmd, r: &Remote) -> Result<()> {
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
            if r.json {
                println!(
                    "{}",
                    serde_json::json!({"dir": dir, "trust_domain": trust_domain, "components": components})
                );
            } else {
                println!(
                    "CA and certificates for {} written to {}",
                    components.join(", "),
                    dir.display()
                );
            }
        }
        CertsCmd::Issue {
            dir,
            component,
            dns_names,
            trust_domain,
            days,
            tenant,
            replica,
        } => {
            let qualifier = qualifier(&component, tenant.as_deref(), replica.as_deref())?;
            match (&tenant, &replica) {
                (Some(t), _) => {
                    crate::pki::issue_for_tenant(&dir, &trust_domain, t, days, &dns_names)?
                }
                (None, Some(r)) => {
                    crate::pki::issue_for_replica(&dir, &trust_domain, r, days, &dns_names)?
                }
                (None, None) => {
                    crate::pki::issue_with_names(&dir, &trust_domain, &component, days, &dns_names)?
                }
            }
            let component = crate::pki::cert_name(&component, qualifier);
            if r.json {
                println!(
                    "{}",
                    serde_json::json!({"dir": dir, "trust_domain": trust_domain, "component": component})
                );
            } else {
                println!("certificate for {component} written to {}", dir.display());
            }
        }
        CertsCmd::Revoke {
            dir,
            component,
            tenant,
            replica,
            serial,
        } => {
            let serial = match (serial, component) {
                (Some(s), _) => s,
                (None, Some(c)) => {
                    let q = qualifier(&c, tenant.as_deref(), replica.as_deref())?;
                    let name = crate::pki::cert_name(&c, q);
                    crate::pki::serial_of(&dir.join(format!("{name}.pem")))?
                }
                (None, None) => anyhow::bail!("pass --component or --serial"),
            };
            let done = crate::pki::revoke(&dir, &serial)?;
            if r.json {
                println!(
                    "{}",
                    serde_json::json!({"serial": done.serial, "newly_revoked": done.newly, "revoked_total": done.total})
                );
            } else {
                let what = if done.newly {
                    "revoked"
                } else {
                    "was already revoked"
                };
                println!(
                    "serial {} {what}; {} holds {} revoked serial(s)",
                    done.serial,
                    dir.join("crl.pem").display(),
                    done.total
                );
            }
        }
    }
    Ok(())
}

pub async fn tenants(cmd: TenantsCmd, r: &Remote) -> Result<()> {
    let mut c = ControlClient::connect(&r.control, &r.certs_dir).await?;
    match cmd {
        TenantsCmd::Update(a) => crate::lifecycle_cli::update_tenant(a, &mut c, r).await?,
        TenantsCmd::Delete(a) => crate::lifecycle_cli::delete_tenant(a, &mut c, r).await?,
        TenantsCmd::Create {
            id,
            weight,
            models,
            max_tokens,
            isolation,
            limits,
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
                    requests_per_second: limits.rps,
                    burst: limits.burst,
                    tokens_per_minute: limits.tokens_per_minute,
                    max_in_flight: limits.max_in_flight,
                    max_queued: limits.max_queued,
                    ttft_quantum_ms: limits.ttft_quantum_ms,
                    no_prefix_cache: limits.no_prefix_cache,
                    daily_token_budget: limits.daily_token_budget,
                    monthly_token_budget: limits.monthly_token_budget,
                    prefix_cache_ttl_s: limits.prefix_cache_ttl_s,
                })
                .await?;
            if r.json {
                println!("{}", tenant_json(&t));
            } else {
                println!("tenant {} created", t.id);
            }
        }
        TenantsCmd::List => {
            let ts = c.list_tenants().await?;
            if r.json {
                println!(
                    "{}",
                    serde_json::Value::Array(ts.iter().map(tenant_json).collect())
                );
            } else {
                println!(
                    "{:<24} {:>6} {:>10}  {:<10} models",
                    "tenant", "weight", "max_tokens", "isolation"
                );
                for t in ts {
                    let iso = Isolation::try_from(t.isolation)
                        .map(|i| {
                            i.as_str_name()
                                .trim_start_matches("ISOLATION_")
                                .to_lowercase()
                        })
                        .unwrap_or_else(|_| "?".into());
                    println!(
                        "{:<24} {:>6} {:>10}  {:<10} {}",
                        t.id,
                        t.weight,
                        t.max_tokens_per_request,
                        iso,
                        t.allowed_models.join(",")
                    );
                }
            }
        }
    }
    Ok(())
}

pub async fn keys(cmd: KeysCmd, r: &Remote) -> Result<()> {
    let (tenant, scope, expires_in_days, budgets) = match cmd {
        KeysCmd::Issue {
            tenant,
            scope,
            expires_in_days,
            daily_token_budget,
            monthly_token_budget,
        } => (
            tenant,
            scope,
            expires_in_days,
            (daily_token_budget, monthly_token_budget),
        ),
        KeysCmd::Rotate(a) => return crate::lifecycle_cli::rotate_key(a, r).await,
        KeysCmd::Revoke(a) => return crate::lifecycle_cli::revoke_key(a, r).await,
        KeysCmd::List(a) => return crate::lifecycle_cli::list_keys(a, r).await,
    };
    let mut c = ControlClient::connect(&r.control, &r.certs_dir).await?;
    let scope = match scope {
        ScopeArg::Inference => KeyScope::Inference,
        ScopeArg::TenantAdmin => KeyScope::TenantAdmin,
    };
    let k = c
        .issue_key_with(bulkhead_proto::control::IssueKeyRequest {
            tenant_id: tenant.clone(),
            scope: scope as i32,
            expires_in_days,
            daily_token_budget: budgets.0,
            monthly_token_budget: budgets.1,
        })
        .await?;
    if r.json {
        println!(
            "{}",
            serde_json::json!({"tenant": tenant, "prefix": k.prefix, "api_key": k.api_key,
                "note": "shown once; Bulkhead keeps only its hash"})
        );
    } else {
        println!("{}", k.api_key);
        eprintln!(
            "(key {}… for {tenant}; store it now — Bulkhead keeps only its hash and cannot show it again)",
            k.prefix
        );
    }
    Ok(())
}

pub async fn audit(cmd: AuditCmd, r: &Remote) -> Result<()> {
    crate::audit_cli::run(cmd, r).await
}
