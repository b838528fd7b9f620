//! Which certificate a worker presents, and whether it may present it.
//!
//! A worker dedicated to one tenant (`--isolation` other than shared,
//! `--admit T`) presents `<certs>/worker.<T>.pem` when it exists (issued by
//! `bulkhead certs issue --component worker --tenant T`, SPIFFE id
//! `.../bulkhead/worker/tenant/T`), else the shared `worker.pem`. A
//! certificate naming a tenant is only ever served by a non-shared worker
//! admitting exactly that tenant: the worker refuses to start otherwise, so
//! a per-tenant identity cannot front another pool.
use std::path::Path;

use bulkhead_identity::spiffe::{CertPaths, spiffe_id_of_der};

#[derive(Debug, thiserror::Error)]
pub enum CertChoiceError {
    #[error("{path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path} carries no SPIFFE id")]
    NoSpiffeId { path: String },
    #[error("{path} is the certificate of {id}, not of a worker")]
    NotAWorker { path: String, id: String },
    #[error(
        "{path} is the identity of a worker dedicated to tenant {cert_tenant:?}, but this worker {serves}; refusing to start"
    )]
    TenantMismatch {
        path: String,
        cert_tenant: String,
        serves: String,
    },
}

/// Picks the worker's certificate files and checks them against its
/// placement (`shared`, and the `--admit` tenants).
pub fn worker_cert(
    certs_dir: &Path,
    shared: bool,
    admitted: &[String],
) -> Result<CertPaths, CertChoiceError> {
    let tenant_paths = match admitted {
        [t] if !shared => Some(CertPaths::new(certs_dir, &format!("worker.{t}"))),
        _ => None,
    };
    let paths = match tenant_paths {
        Some(p) if p.cert.exists() => p,
        _ => CertPaths::new(certs_dir, "worker"),
    };
    let path = paths.cert.display().to_string();
    let certs = bulkhead_identity::tls::read_certs(&paths.cert).map_err(|e| {
        CertChoiceError::Unreadable {
            path: path.clone(),
            reason: e.to_string(),
        }
    })?;
    let id = spiffe_id_of_der(certs[0].as_ref())
        .ok_or_else(|| CertChoiceError::NoSpiffeId { path: path.clone() })?;
    if let Some(t) = id.worker_tenant() {
        if shared || admitted != [t] {
            let serves = if shared {
                "is a shared worker".to_string()
            } else {
                format!("admits {admitted:?}")
            };
            return Err(CertChoiceError::TenantMismatch {
                path,
                cert_tenant: t.to_string(),
                serves,
            });
        }
        tracing::info!(tenant = t, id = %id, "serving with a per-tenant worker identity");
    } else if !id.is_component("worker") {
        return Err(CertChoiceError::NotAWorker {
            path,
            id: id.to_string(),
        });
    } else if !shared {
        tracing::warn!(id = %id, "a dedicated worker without a per-tenant identity (bulkhead certs issue --component worker --tenant T)");
    }
    Ok(paths)
}
