//! `cluster.toml`: what `bulkhead deploy render` reads, and its validation.
//!
//! Parsing is two steps: serde reads the raw tables (unknown keys are
//! refused), then [`Cluster::from_raw`] checks the cross-field rules and
//! returns a [`ConfigError`] naming the pool or tenant at fault.
use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::mig::GpuModel;

/// A config that failed validation. Each message names what is wrong and
/// where; the variants are the documented errors of `bulkhead deploy render`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cluster.toml: {0}")]
    Parse(String),
    #[error(
        "[nats] url {0:?}: NATS must be reached over mutual TLS (a tls:// URL); a plaintext URL would send every tenant's records and keys in clear"
    )]
    PlaintextNats(String),
    #[error("cluster.toml: no [[pool]] is defined; at least one worker pool is needed")]
    NoPools,
    #[error(
        "pool {pool:?}: unknown isolation tier {tier:?} (expected shared, process, mig or dedicated)"
    )]
    UnknownTier { pool: String, tier: String },
    #[error(
        "{what} {name:?}: not a valid Kubernetes name (lowercase letters, digits and '-', starting and ending with a letter or digit, at most {max} characters)"
    )]
    InvalidName {
        what: &'static str,
        name: String,
        max: usize,
    },
    #[error("pool {0:?} is defined twice")]
    DuplicatePool(String),
    #[error("pool {0:?}: admits no tenant (set tenants = [...])")]
    NoTenants(String),
    #[error(
        "pool {pool:?}: isolation {tier} is tenant-dedicated and admits exactly one tenant, not {count}"
    )]
    DedicatedNeedsOneTenant {
        pool: String,
        tier: &'static str,
        count: usize,
    },
    #[error("tenant {tenant:?} is in two tenant-dedicated pools: {first:?} and {second:?}")]
    TenantInTwoDedicatedPools {
        tenant: String,
        first: String,
        second: String,
    },
    #[error(
        "tenant {tenant:?} has the dedicated pool {dedicated:?} and is also admitted by the shared pool {shared:?}"
    )]
    DedicatedTenantAlsoShared {
        tenant: String,
        dedicated: String,
        shared: String,
    },
    #[error("pool {0:?}: isolation mig needs mig_profile (e.g. \"1g.10gb\")")]
    MigWithoutProfile(String),
    #[error("pool {0:?}: mig_profile is only allowed with isolation = \"mig\"")]
    ProfileWithoutMig(String),
    #[error("pool {0:?}: a mig pool gets one MIG slice; remove gpus")]
    MigWithGpus(String),
    #[error("pool {pool:?}: unknown MIG profile {profile:?} for {gpu} (known: {known})")]
    UnknownMigProfile {
        pool: String,
        profile: String,
        gpu: String,
        known: String,
    },
    #[error("gpu_model {0:?} is unknown (expected a100-40gb, a100-80gb, h100-80gb or h200-141gb)")]
    UnknownGpuModel(String),
    #[error("pool {0:?}: gpus must be at least 1")]
    ZeroGpus(String),
    #[error("pool {0:?}: replicas must be at least 1")]
    ZeroReplicas(String),
    #[error(
        "[router] replicas must be 1 to 64 (each replica is a Deployment with its own certificate), got {0}"
    )]
    RouterReplicas(u32),
}

/// Isolation tier of a worker pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Several tenants share the workers.
    Shared,
    /// One tenant, its own worker processes (GPUs may be time-shared).
    Process,
    /// One tenant, one MIG slice per replica.
    Mig,
    /// One tenant, whole GPUs.
    Dedicated,
}

impl Tier {
    pub fn parse(s: &str) -> Option<Tier> {
        Some(match s {
            "shared" => Tier::Shared,
            "process" => Tier::Process,
            "mig" => Tier::Mig,
            "dedicated" => Tier::Dedicated,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Tier::Shared => "shared",
            Tier::Process => "process",
            Tier::Mig => "mig",
            Tier::Dedicated => "dedicated",
        }
    }
    /// Every tier but `shared` serves exactly one tenant.
    pub fn tenant_dedicated(self) -> bool {
        self != Tier::Shared
    }
}

/// The GPU resource each worker pod requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuResource {
    /// `nvidia.com/gpu: N`.
    Whole(u32),
    /// `nvidia.com/mig-<profile>: 1`.
    Mig(String),
}

impl GpuResource {
    pub fn resource_name(&self) -> String {
        match self {
            GpuResource::Whole(_) => "nvidia.com/gpu".into(),
            GpuResource::Mig(p) => format!("nvidia.com/mig-{p}"),
        }
    }
    pub fn count(&self) -> u32 {
        match self {
            GpuResource::Whole(n) => *n,
            GpuResource::Mig(_) => 1,
        }
    }
}

/// Pods selected in another namespace (gateway, NATS, operators, monitoring).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub namespace: String,
    /// Pod labels to match; empty = every pod of the namespace.
    #[serde(default)]
    pub pod_labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nats {
    /// URL every NATS client gets, e.g. tls://nats.nats.svc.cluster.local:4222.
    /// It must be `tls://`: every component connects with mutual TLS, using
    /// the cluster CA and its own certificate from its mounted certificates;
    /// the NATS server trusts the Bulkhead CA, maps each certificate to its
    /// user (`verify_and_map`) and includes the rendered
    /// `bulkhead-nats-auth` ConfigMap (see deploy/README.md).
    pub url: String,
    pub namespace: String,
    #[serde(default)]
    pub pod_labels: BTreeMap<String, String>,
    #[serde(default = "d_nats_port")]
    pub port: u16,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Images {
    /// Image names are `<prefix>/bulkhead-<component>:<tag>`.
    pub prefix: String,
    #[serde(default = "d_tag")]
    pub tag: String,
    #[serde(default = "d_pull")]
    pub pull_policy: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Router {
    pub replicas: u32,
    pub http_port: u16,
    pub grpc_port: u16,
    /// Internal port of `/metrics` (never the public HTTP port).
    pub metrics_port: u16,
    pub service_type: String,
}
impl Default for Router {
    fn default() -> Self {
        Router {
            replicas: 2,
            http_port: 8080,
            grpc_port: 50051,
            metrics_port: 9090,
            service_type: "ClusterIP".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Audit {
    pub port: u16,
    /// Port of the audit-service's Prometheus /metrics.
    pub metrics_port: u16,
    pub storage: String,
    pub storage_class: Option<String>,
}
impl Default for Audit {
    fn default() -> Self {
        Audit {
            port: 50081,
            metrics_port: 9092,
            storage: "20Gi".into(),
            storage_class: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Control {
    pub replicas: u32,
    pub port: u16,
}
impl Default for Control {
    fn default() -> Self {
        Control {
            replicas: 1,
            port: 50071,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workers {
    /// Existing PersistentVolumeClaim with the model directories, mounted
    /// read-only at /models in every worker.
    pub models_pvc: String,
    #[serde(default = "d_worker_port")]
    pub grpc_port: u16,
    #[serde(default = "d_metrics_port")]
    pub metrics_port: u16,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: String,
    isolation: String,
    #[serde(default)]
    tenants: Vec<String>,
    #[serde(default = "d_one")]
    replicas: u32,
    model: String,
    model_name: Option<String>,
    gpus: Option<u32>,
    mig_profile: Option<String>,
    kv_blocks: Option<u32>,
    #[serde(default)]
    node_selector: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default = "d_namespace")]
    namespace: String,
    #[serde(default = "d_trust_domain")]
    trust_domain: String,
    gpu_model: Option<String>,
    #[serde(default = "d_mig_config")]
    mig_config: String,
    images: Images,
    nats: Nats,
    gateway: Peer,
    operator: Peer,
    monitoring: Option<Peer>,
    #[serde(default)]
    router: Router,
    #[serde(default)]
    audit: Audit,
    #[serde(default)]
    control: Control,
    workers: Workers,
    #[serde(default, rename = "pool")]
    pools: Vec<RawPool>,
}

/// One validated worker pool.
#[derive(Clone, Debug)]
pub struct Pool {
    pub name: String,
    pub tier: Tier,
    pub tenants: Vec<String>,
    pub replicas: u32,
    /// Model directory relative to the models volume.
    pub model: String,
    pub model_name: Option<String>,
    pub gpu: GpuResource,
    pub kv_blocks: Option<u32>,
    pub node_selector: BTreeMap<String, String>,
}

/// A validated cluster config.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub namespace: String,
    pub trust_domain: String,
    pub images: Images,
    pub nats: Nats,
    pub gateway: Peer,
    pub operator: Peer,
    pub monitoring: Option<Peer>,
    pub router: Router,
    pub audit: Audit,
    pub control: Control,
    pub workers: Workers,
    pub pools: Vec<Pool>,
}

fn d_namespace() -> String {
    "bulkhead".into()
}
fn d_trust_domain() -> String {
    "bulkhead.local".into()
}
fn d_mig_config() -> String {
    "bulkhead".into()
}
fn d_tag() -> String {
    env!("CARGO_PKG_VERSION").into()
}
fn d_pull() -> String {
    "IfNotPresent".into()
}
fn d_nats_port() -> u16 {
    4222
}
fn d_worker_port() -> u16 {
    50061
}
fn d_metrics_port() -> u16 {
    9091
}
fn d_one() -> u32 {
    1
}

/// Longest pool name: Deployment, Service and NetworkPolicy names are
/// `bulkhead-worker-<pool>` and must stay within a 63-character DNS label.
pub const MAX_POOL_NAME: usize = 63 - "bulkhead-worker-".len();

fn check_name(what: &'static str, name: &str, max: usize) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::InvalidName {
            what,
            name: name.into(),
            max,
        })
    }
}

impl Cluster {
    /// Parses and validates `cluster.toml` text.
    pub fn parse(text: &str) -> Result<Cluster, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        Cluster::from_raw(raw)
    }

    fn from_raw(raw: Raw) -> Result<Cluster, ConfigError> {
        check_name("namespace", &raw.namespace, 63)?;
        if !raw.nats.url.starts_with("tls://") {
            return Err(ConfigError::PlaintextNats(raw.nats.url));
        }
        let gpu_model = match &raw.gpu_model {
            None => None,
            Some(g) => Some(
                *GpuModel::ALL
                    .iter()
                    .find(|m| m.name() == g)
                    .ok_or_else(|| ConfigError::UnknownGpuModel(g.clone()))?,
            ),
        };
        if raw.pools.is_empty() {
            return Err(ConfigError::NoPools);
        }
        if !(1..=64).contains(&raw.router.replicas) {
            return Err(ConfigError::RouterReplicas(raw.router.replicas));
        }
        let mut names = BTreeSet::new();
        let mut pools = Vec::new();
        for p in raw.pools {
            check_name("pool", &p.name, MAX_POOL_NAME)?;
            if !names.insert(p.name.clone()) {
                return Err(ConfigError::DuplicatePool(p.name));
            }
            let tier = Tier::parse(&p.isolation).ok_or_else(|| ConfigError::UnknownTier {
                pool: p.name.clone(),
                tier: p.isolation.clone(),
            })?;
            if p.tenants.is_empty() {
                return Err(ConfigError::NoTenants(p.name));
            }
            for t in &p.tenants {
                check_name("tenant", t, 63)?;
            }
            if tier.tenant_dedicated() && p.tenants.len() != 1 {
                return Err(ConfigError::DedicatedNeedsOneTenant {
                    pool: p.name,
                    tier: tier.name(),
                    count: p.tenants.len(),
                });
            }
            if p.replicas == 0 {
                return Err(ConfigError::ZeroReplicas(p.name));
            }
            let mut node_selector = p.node_selector;
            let gpu = if tier == Tier::Mig {
                if p.gpus.is_some() {
                    return Err(ConfigError::MigWithGpus(p.name));
                }
                let profile = p
                    .mig_profile
                    .ok_or_else(|| ConfigError::MigWithoutProfile(p.name.clone()))?;
                let models: Vec<GpuModel> = match gpu_model {
                    Some(m) => vec![m],
                    None => GpuModel::ALL.to_vec(),
                };
                if !models.iter().any(|m| m.profile(&profile).is_some()) {
                    let known: BTreeSet<&str> = models
                        .iter()
                        .flat_map(|m| m.profiles().iter().map(|p| p.name))
                        .collect();
                    return Err(ConfigError::UnknownMigProfile {
                        pool: p.name,
                        profile,
                        gpu: gpu_model.map_or("any supported GPU", |m| m.name()).into(),
                        known: known.into_iter().collect::<Vec<_>>().join(", "),
                    });
                }
                node_selector
                    .entry("nvidia.com/mig.config".into())
                    .or_insert_with(|| raw.mig_config.clone());
                GpuResource::Mig(profile)
            } else {
                if p.mig_profile.is_some() {
                    return Err(ConfigError::ProfileWithoutMig(p.name));
                }
                let n = p.gpus.unwrap_or(1);
                if n == 0 {
                    return Err(ConfigError::ZeroGpus(p.name));
                }
                GpuResource::Whole(n)
            };
            pools.push(Pool {
                name: p.name,
                tier,
                tenants: p.tenants,
                replicas: p.replicas,
                model: p.model,
                model_name: p.model_name,
                gpu,
                kv_blocks: p.kv_blocks,
                node_selector,
            });
        }
        check_tenants(&pools)?;
        Ok(Cluster {
            namespace: raw.namespace,
            trust_domain: raw.trust_domain,
            images: raw.images,
            nats: raw.nats,
            gateway: raw.gateway,
            operator: raw.operator,
            monitoring: raw.monitoring,
            router: raw.router,
            audit: raw.audit,
            control: raw.control,
            workers: raw.workers,
            pools,
        })
    }
}

/// A tenant has at most one tenant-dedicated pool, and a tenant that has one
/// is not also served by a shared pool.
fn check_tenants(pools: &[Pool]) -> Result<(), ConfigError> {
    let mut dedicated: BTreeMap<&str, &str> = BTreeMap::new();
    for p in pools.iter().filter(|p| p.tier.tenant_dedicated()) {
        let t = p.tenants[0].as_str();
        if let Some(first) = dedicated.insert(t, &p.name) {
            return Err(ConfigError::TenantInTwoDedicatedPools {
                tenant: t.into(),
                first: first.into(),
                second: p.name.clone(),
            });
        }
    }
    for p in pools.iter().filter(|p| !p.tier.tenant_dedicated()) {
        for t in &p.tenants {
            if let Some(d) = dedicated.get(t.as_str()) {
                return Err(ConfigError::DedicatedTenantAlsoShared {
                    tenant: t.clone(),
                    dedicated: (*d).into(),
                    shared: p.name.clone(),
                });
            }
        }
    }
    Ok(())
}
