//! Which certificate this router replica presents, and its id among the
//! replicas (its key in the `bulkhead_routers` heartbeats), decided once at
//! start-up from the certificate itself.
//!
//! Each replica has an identity of its own,
//! `spiffe://<td>/bulkhead/router/replica/<id>`, in `<certs>/router.<id>.pem`
//! (`bulkhead certs issue --component router --replica <id>`). NATS maps it
//! to a user that may write only heartbeat key `<id>`, so the replica's id
//! is its certificate's, never a flag's alone: `--router-id` picks the
//! certificate, and a certificate naming another replica is refused here,
//! before NATS would refuse its heartbeats.
//!
//! The shared router identity (`.../bulkhead/router`, `<certs>/router.pem`)
//! is no NATS user. It still serves with a NATS reached without TLS (tests
//! that run nats-server bare); with `tls://` it is refused here with the
//! command that issues a replica identity.
use std::path::Path;

use bulkhead_identity::spiffe::{CertPaths, SpiffeId, spiffe_id_of_der};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplicaError {
    #[error("--router-id {0:?}: use 1-63 of [a-z0-9-], starting with a letter or digit")]
    BadId(String),
    #[error("{path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path} carries no SPIFFE id")]
    NoSpiffeId { path: String },
    #[error("{path} is the certificate of {id}, not of a router")]
    NotARouter { path: String, id: String },
    #[error(
        "{path} is router replica {cert:?}'s identity, but this router was started as --router-id {flag:?}; refusing to speak for another replica"
    )]
    OtherReplica {
        path: String,
        cert: String,
        flag: String,
    },
    #[error(
        "{path} carries the shared router identity {id}, which NATS does not admit (one router could write every replica's heartbeat); issue this replica its own: `bulkhead certs issue --component router --replica <id>`, then start with --router-id <id>"
    )]
    SharedOverTls { path: String, id: String },
}

/// This replica: its certificate files and its id.
#[derive(Clone, Debug)]
pub struct Replica {
    pub paths: CertPaths,
    pub id: String,
    /// Whether the certificate is the replica's own (not the shared one).
    pub own_identity: bool,
}

impl Replica {
    /// Its NATS user's name, which names its reply inbox
    /// (`bulkhead_directory::connect_nats_as`): `router.<id>`.
    pub fn nats_user(&self) -> String {
        if self.own_identity {
            format!("router.{}", self.id)
        } else {
            "router".to_string()
        }
    }
}

/// Picks the certificate (`router.<id>.pem` when `--router-id` names one
/// that exists, else `router.pem`) and the replica id it grants.
/// `nats_tls`: NATS is reached over mutual TLS (only replica identities
/// are NATS users). `random_id` makes the id of a router with the shared
/// identity and no `--router-id`.
pub fn resolve(
    certs_dir: &Path,
    router_id: Option<&str>,
    nats_tls: bool,
    random_id: impl FnOnce() -> String,
) -> Result<Replica, ReplicaError> {
    if let Some(r) = router_id
        && !bulkhead_proto::names::valid_replica_id(r)
    {
        return Err(ReplicaError::BadId(r.to_string()));
    }
    let own = router_id.map(|r| CertPaths::new(certs_dir, &format!("router.{r}")));
    let paths = match own {
        Some(p) if p.cert.exists() => p,
        _ => CertPaths::new(certs_dir, "router"),
    };
    let path = paths.cert.display().to_string();
    let id = cert_id(&paths.cert)?;
    if let Some(cert) = id.replica_of("router") {
        if let Some(flag) = router_id.filter(|f| *f != cert) {
            return Err(ReplicaError::OtherReplica {
                path,
                cert: cert.to_string(),
                flag: flag.to_string(),
            });
        }
        return Ok(Replica {
            id: cert.to_string(),
            paths,
            own_identity: true,
        });
    }
    if !id.is_component("router") {
        return Err(ReplicaError::NotARouter {
            path,
            id: id.to_string(),
        });
    }
    if nats_tls {
        return Err(ReplicaError::SharedOverTls {
            path,
            id: id.to_string(),
        });
    }
    Ok(Replica {
        id: router_id.map_or_else(random_id, str::to_string),
        paths,
        own_identity: false,
    })
}

fn cert_id(cert: &Path) -> Result<SpiffeId, ReplicaError> {
    let path = cert.display().to_string();
    let certs = bulkhead_identity::tls::read_certs(cert).map_err(|e| ReplicaError::Unreadable {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let leaf = certs.first().ok_or_else(|| ReplicaError::Unreadable {
        path: path.clone(),
        reason: "no certificate in the file".into(),
    })?;
    spiffe_id_of_der(leaf.as_ref()).ok_or(ReplicaError::NoSpiffeId { path })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `<dir>/<name>.pem` with `spiffe` as its URI SAN (self-signed:
    /// only the names matter here).
    fn cert(dir: &Path, name: &str, spiffe: &str) {
        let mut p = rcgen::CertificateParams::default();
        p.subject_alt_names = vec![rcgen::SanType::URI(spiffe.try_into().unwrap())];
        let key = rcgen::KeyPair::generate().unwrap();
        let c = p.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), c.pem()).unwrap();
    }

    fn random() -> String {
        "router-random".into()
    }

    #[test]
    fn a_replica_is_what_its_certificate_says() {
        let d = tempfile::tempdir().unwrap();
        let td = "spiffe://bulkhead.local/bulkhead";
        cert(d.path(), "router.r-1", &format!("{td}/router/replica/r-1"));
        cert(d.path(), "router.r-2", &format!("{td}/router/replica/r-1"));
        cert(d.path(), "router", &format!("{td}/router"));
        let r = resolve(d.path(), Some("r-1"), true, random).unwrap();
        assert_eq!((r.id.as_str(), r.own_identity), ("r-1", true));
        assert!(r.paths.cert.ends_with("router.r-1.pem"));
        assert_eq!(r.nats_user(), "router.r-1");
        // A certificate of another replica under this replica's name.
        let e = resolve(d.path(), Some("r-2"), true, random).unwrap_err();
        assert!(matches!(e, ReplicaError::OtherReplica { .. }), "{e}");
        // No certificate of its own: the shared one, refused over TLS with
        // the command that fixes it, allowed with a bare NATS.
        let e = resolve(d.path(), Some("r-3"), true, random).unwrap_err();
        assert!(e.to_string().contains("--replica <id>"), "{e}");
        let r = resolve(d.path(), Some("r-3"), false, random).unwrap();
        assert_eq!((r.id.as_str(), r.own_identity), ("r-3", false));
        let r = resolve(d.path(), None, false, random).unwrap();
        assert_eq!(r.id, "router-random");
        // Bad ids never reach a file name.
        for bad in ["../x", "R", "a.b", ""] {
            assert_eq!(
                resolve(d.path(), Some(bad), false, random).unwrap_err(),
                ReplicaError::BadId(bad.into())
            );
        }
    }

    #[test]
    fn router_pem_holding_a_replica_identity_names_the_replica() {
        let d = tempfile::tempdir().unwrap();
        let td = "spiffe://bulkhead.local/bulkhead";
        cert(d.path(), "router", &format!("{td}/router/replica/r-7"));
        let r = resolve(d.path(), None, true, random).unwrap();
        assert_eq!(
            (r.id.as_str(), r.nats_user().as_str()),
            ("r-7", "router.r-7")
        );
        let e = resolve(d.path(), Some("r-8"), true, random).unwrap_err();
        assert!(matches!(e, ReplicaError::OtherReplica { .. }), "{e}");
        // Another component's certificate is no router's.
        cert(d.path(), "router", &format!("{td}/worker"));
        let e = resolve(d.path(), None, false, random).unwrap_err();
        assert!(matches!(e, ReplicaError::NotARouter { .. }), "{e}");
        std::fs::write(d.path().join("router.pem"), "not a pem").unwrap();
        assert!(resolve(d.path(), None, false, random).is_err());
    }
}
