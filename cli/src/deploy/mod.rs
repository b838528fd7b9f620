//! `bulkhead deploy render --config cluster.toml --out DIR`: Kubernetes
//! manifests for one Bulkhead cluster, one YAML file per object plus a
//! `kustomization.yaml` listing them (so `kubectl apply -k DIR` works).
//!
//! Rendering is pure ([`render`]); only [`write`] touches the disk.
//!
//! What is rendered: the Namespace; one Deployment per router replica
//! (`bulkhead-router-<i>`, one pod each, its own certificate and NATS user)
//! and a Service over them all (HTTP and gRPC); one worker Deployment + Service per `[[pool]]`; the audit-service
//! StatefulSet (PersistentVolumeClaim template `data`) + Service; the
//! control-plane Deployment + Service; NetworkPolicies (default-deny, router,
//! audit, control, one per pool). NATS is deployed by its own chart; into
//! its namespace go the NATS users and permissions (ConfigMap
//! `bulkhead-nats-auth`, from `crate::nats_conf`) and an ingress
//! NetworkPolicy admitting only the router, audit-service and control-plane.
//! A `nats://` URL is refused.
//!
//! Secrets the manifests mount and the operator creates (names fixed):
//! - `bulkhead-audit-tls`, `bulkhead-control-tls`,
//!   `bulkhead-worker-<pool>-tls`: keys `ca.pem`, `<component>.pem`,
//!   `<component>.key` (component `audit`, `control`, `worker`), as
//!   `bulkhead certs init` writes them; mounted at `/etc/bulkhead/certs`.
//! - `bulkhead-router-<i>-tls`, one per router replica `router-<i>`: keys
//!   `ca.pem`, `router.router-<i>.pem`, `router.router-<i>.key`, as `bulkhead
//!   certs issue --component router --replica router-<i>` writes them (no
//!   replica holds another's key: NATS lets each write only its own
//!   heartbeat).
//! - `bulkhead-router-hash-secret`: key `hash-secret` (64 hex characters).
//! - `bulkhead-audit-master-key`: key `master-key` (64 hex characters).
//!
//! Config errors are [`ConfigError`]s (see its variants for the messages).
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

pub mod config;
pub mod policy;
pub mod render;

pub use config::{Cluster, ConfigError, GpuResource, Pool, Tier};

#[derive(Subcommand, Debug)]
pub enum DeployCmd {
    /// Render Kubernetes manifests from a cluster config.
    Render(RenderArgs),
    /// Print NATS's users and permissions (an `authorization` block for
    /// nats-server, with `tls { verify_and_map: true }`): each component's
    /// certificate maps by its SPIFFE id to a user with only its subjects.
    NatsAuth {
        /// SPIFFE trust domain of the cluster.
        #[arg(long, env = "BULKHEAD_TRUST_DOMAIN", default_value = bulkhead_identity::spiffe::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// The router replicas' ids, each a NATS user of its own (repeat,
        /// or comma-separated; `bulkhead deploy render` uses router-0 ..).
        #[arg(
            long = "router-id",
            value_delimiter = ',',
            required_unless_present = "helm_files"
        )]
        router_ids: Vec<String>,
        /// Instead, write the Helm chart's templates of the same
        /// (`nats-auth.conf`, `nats-router-user.conf`) into this folder.
        #[arg(long, conflicts_with_all = ["router_ids", "trust_domain"])]
        helm_files: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct RenderArgs {
    /// Cluster config (see deploy/examples/cluster.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Folder to write the manifests into (created if missing; files with
    /// the same names are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Pin NATS to the current, unrevoked certificates of its users in this
    /// folder (control.pem, audit.pem, router.router-<i>.pem): the
    /// bulkhead-nats-auth ConfigMap gains `bulkhead-pins.conf`, for the NATS
    /// chart's `tls { include "bulkhead-pins.conf" }`. After `bulkhead certs
    /// revoke` (or a renewal), render and apply again: NATS reloads and
    /// refuses the revoked certificate.
    #[arg(long)]
    pub pin_certs: Option<PathBuf>,
}

/// One rendered object: its file name (without `.yaml`) and its content.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub file: String,
    pub object: Value,
}

/// Every object of the cluster, in apply order (Namespace first).
pub fn render(c: &Cluster) -> Vec<Manifest> {
    render_with_pins(c, None)
}

/// [`render`]; with `pins` (see [`pins_for`]), NATS admits only the
/// certificates with those public keys.
pub fn render_with_pins(c: &Cluster, pins: Option<&[String]>) -> Vec<Manifest> {
    let mut v: Vec<(String, Value)> = vec![("namespace".into(), render::namespace(c))];
    v.push(("networkpolicy-default-deny".into(), policy::default_deny(c)));
    v.extend(render::router(c));
    v.push(("networkpolicy-router".into(), policy::router(c)));
    for p in &c.pools {
        v.extend(render::worker(c, p));
        v.push((
            format!("networkpolicy-worker-{}", p.name),
            policy::worker(c, p),
        ));
    }
    v.extend(render::audit(c));
    v.push(("networkpolicy-audit".into(), policy::audit(c)));
    v.extend(render::control(c));
    v.push(("networkpolicy-control".into(), policy::control(c)));
    v.push(("nats-auth".into(), render::nats_auth(c, pins)));
    v.push(("networkpolicy-nats".into(), policy::nats_ingress(c)));
    v.into_iter()
        .map(|(file, object)| Manifest { file, object })
        .collect()
}

/// The pins of the NATS users' current, unrevoked certificates in
/// `certs_dir` (`control.pem`, `audit.pem`, `router.router-<i>.pem`).
pub fn pins_for(c: &Cluster, certs_dir: &Path) -> Result<Vec<String>> {
    crate::nats_conf::pinned_from_certs(certs_dir, &render::router_replica_ids(c))
        .map_err(anyhow::Error::msg)
        .with_context(|| {
            format!(
                "pinning the NATS users' certificates in {}",
                certs_dir.display()
            )
        })
}

/// The `kustomization.yaml` listing the files.
pub fn kustomization(ms: &[Manifest]) -> Value {
    let files: Vec<String> = ms.iter().map(|m| format!("{}.yaml", m.file)).collect();
    json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": files,
    })
}

/// YAML text of one object.
pub fn to_yaml(v: &Value) -> Result<String> {
    serde_norway::to_string(v).context("serializing YAML")
}

/// Writes the manifests and `kustomization.yaml` into `out`; returns the paths.
pub fn write(out: &Path, ms: &[Manifest]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = Vec::new();
    let all = ms
        .iter()
        .map(|m| (format!("{}.yaml", m.file), &m.object))
        .collect::<Vec<_>>();
    let k = kustomization(ms);
    for (name, obj) in all
        .into_iter()
        .chain(std::iter::once(("kustomization.yaml".to_string(), &k)))
    {
        let path = out.join(&name);
        let header = "# Rendered by `bulkhead deploy render`; edit cluster.toml, not this file.\n";
        std::fs::write(&path, format!("{header}{}", to_yaml(obj)?))
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

pub fn run(cmd: DeployCmd) -> Result<()> {
    match cmd {
        DeployCmd::Render(a) => {
            let text = std::fs::read_to_string(&a.config)
                .with_context(|| format!("reading {}", a.config.display()))?;
            let cluster = Cluster::parse(&text)?;
            let pins = match &a.pin_certs {
                Some(dir) => Some(pins_for(&cluster, dir)?),
                None => None,
            };
            let ms = render_with_pins(&cluster, pins.as_deref());
            let paths = write(&a.out, &ms)?;
            for p in &paths {
                println!("{}", p.display());
            }
            eprintln!(
                "rendered {} objects into {} (namespace {}, {} worker pools)",
                ms.len(),
                a.out.display(),
                cluster.namespace,
                cluster.pools.len()
            );
            Ok(())
        }
        DeployCmd::NatsAuth {
            trust_domain,
            router_ids,
            helm_files,
        } => {
            if let Some(dir) = helm_files {
                for (name, text) in crate::nats_conf::helm_files() {
                    let path = dir.join(name);
                    std::fs::write(&path, text)
                        .with_context(|| format!("writing {}", path.display()))?;
                    println!("{}", path.display());
                }
                return Ok(());
            }
            for r in &router_ids {
                anyhow::ensure!(
                    bulkhead_proto::names::valid_replica_id(r),
                    "--router-id {r:?}: 1-63 of [a-z0-9-], starting with a letter or digit"
                );
            }
            print!(
                "{}",
                crate::nats_conf::render_authorization(&trust_domain, &router_ids)
            );
            Ok(())
        }
    }
}
