//! The dev stack's nats-server: its configuration from
//! [`crate::nats_conf`] (each component its own user; only the current,
//! unrevoked component certificates pinned), rewritten and reloaded
//! (SIGHUP) whenever the CRL or a component certificate changes on disk,
//! so `bulkhead certs revoke` shuts the certificate out of NATS too.
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use crate::nats_conf::{self, NatsConfig, ServerFiles};

/// How often the certificates folder is looked at.
const POLL: Duration = Duration::from_secs(1);

/// The dev stack's nats-server files and who its users are.
#[derive(Clone, Debug)]
pub struct DevNats {
    /// The configuration file written and reloaded.
    pub conf: PathBuf,
    pub certs: PathBuf,
    pub store_dir: PathBuf,
    pub trust_domain: String,
    /// The router replicas' ids (one NATS user each).
    pub routers: Vec<String>,
}

impl DevNats {
    fn config(&self) -> Result<NatsConfig> {
        let pinned = nats_conf::pinned_from_certs(&self.certs, &self.routers)
            .map_err(anyhow::Error::msg)
            .context("pinning the component certificates for NATS")?;
        Ok(NatsConfig {
            // The command line picks the port (-p -1: any free one).
            listen: None,
            store_dir: Some(self.store_dir.clone()),
            tls: ServerFiles {
                cert: self.certs.join("nats.pem"),
                key: self.certs.join("nats.key"),
                ca: self.certs.join("ca.pem"),
            },
            trust_domain: self.trust_domain.clone(),
            routers: self.routers.clone(),
            pinned: Some(pinned),
        })
    }

    /// Writes the server's configuration; returns how many certificates it
    /// pins.
    pub fn write_config(&self) -> Result<usize> {
        let c = self.config()?;
        let n = c.pinned.as_ref().map_or(0, Vec::len);
        write_atomic(&self.conf, &nats_conf::render(&c))?;
        Ok(n)
    }

    /// What, when it changes, changes the pins.
    fn stamp(&self) -> Vec<Option<SystemTime>> {
        let mut files = nats_conf::user_cert_files(&self.certs, &self.routers);
        files.push(bulkhead_identity::tls::crl_path_in(&self.certs));
        files
            .iter()
            .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// Keeps the configuration current and makes nats-server (`pid`)
    /// reload it on change.
    pub fn spawn_reloader(self, pid: u32) {
        tokio::spawn(async move {
            let mut last = self.stamp();
            loop {
                tokio::time::sleep(POLL).await;
                let now = self.stamp();
                if now == last {
                    continue;
                }
                last = now;
                match self.write_config() {
                    Ok(n) => {
                        let st = tokio::process::Command::new("kill")
                            .args(["-HUP", &pid.to_string()])
                            .status()
                            .await;
                        match st {
                            Ok(s) if s.success() => println!(
                                "nats-server      certificates changed: reloaded with {n} pinned"
                            ),
                            other => eprintln!(
                                "nats-server      could not signal a reload (pid {pid}): {other:?}"
                            ),
                        }
                    }
                    Err(e) => eprintln!("nats-server      configuration not rewritten: {e:#}"),
                }
            }
        });
    }
}

/// The trust domain of the cluster the certificates in `certs` belong to
/// (from the control-plane's SPIFFE id).
pub fn trust_domain(certs: &Path) -> Result<String> {
    let path = certs.join("control.pem");
    let der = bulkhead_identity::tls::read_certs(&path)?;
    let id = bulkhead_identity::spiffe::spiffe_id_of_der(der[0].as_ref())
        .with_context(|| format!("{} carries no SPIFFE id", path.display()))?;
    Ok(id.trust_domain)
}

/// Writes `path` whole or not at all (a reload never reads half a file).
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("conf.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}
