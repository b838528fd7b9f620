//! mTLS identities: certificate files, tonic TLS configs, and SPIFFE ids read
//! from the peer's certificate. Every hop between components is mTLS; the
//! server side also checks that the caller's SPIFFE id is one allowed on that
//! hop ([`SpiffeAuthorizer`]), and records it in the request extensions as a
//! [`CallerId`].
use std::path::{Path, PathBuf};

use tonic::Request;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Default SPIFFE trust domain of a Bulkhead cluster.
pub const DEFAULT_TRUST_DOMAIN: &str = "bulkhead.local";

pub use crate::error::IdentityError;

/// A parsed `spiffe://<trust-domain>/<path>` id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub path: String,
}

impl SpiffeId {
    /// The id of a Bulkhead component: `spiffe://<td>/bulkhead/<component>`.
    pub fn component(trust_domain: &str, component: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            path: format!("/bulkhead/{component}"),
        }
    }

    /// The id of a worker dedicated to one tenant:
    /// `spiffe://<td>/bulkhead/worker/tenant/<tenant>`.
    pub fn tenant_worker(trust_domain: &str, tenant: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            path: format!("/bulkhead/worker/tenant/{tenant}"),
        }
    }

    /// The tenant a dedicated worker's id names, if it is one.
    pub fn worker_tenant(&self) -> Option<&str> {
        let t = self.path.strip_prefix("/bulkhead/worker/tenant/")?;
        (!t.contains('/')).then_some(t)
    }

    /// Whether this is exactly the id of `component` (`/bulkhead/<component>`).
    pub fn is_component(&self, component: &str) -> bool {
        self.path.strip_prefix("/bulkhead/") == Some(component)
    }

    /// The id of one replica of `component` with an identity of its own
    /// (router replicas: each may write only its own heartbeat in NATS):
    /// `spiffe://<td>/bulkhead/<component>/replica/<replica>`.
    pub fn replica(trust_domain: &str, component: &str, replica: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            path: format!("/bulkhead/{component}/replica/{replica}"),
        }
    }

    /// The replica of `component` this id names, if it is one.
    pub fn replica_of(&self, component: &str) -> Option<&str> {
        let rest = self.path.strip_prefix("/bulkhead/")?;
        let r = rest.strip_prefix(component)?.strip_prefix("/replica/")?;
        (!r.contains('/')).then_some(r)
    }

    /// Whether this is `component`'s shared id or one of its replicas'
    /// (what a hop that admits the component checks).
    pub fn is_component_or_replica(&self, component: &str) -> bool {
        self.is_component(component) || self.replica_of(component).is_some()
    }

    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        let bad = || IdentityError::BadSpiffeId(s.to_string());
        let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
        let (td, path) = rest.split_once('/').ok_or_else(bad)?;
        let td_ok = !td.is_empty()
            && td
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        let path_ok = !path.is_empty()
            && path.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            });
        if !td_ok || !path_ok {
            return Err(bad());
        }
        Ok(Self {
            trust_domain: td.to_string(),
            path: format!("/{path}"),
        })
    }

    /// The last path segment, which names the component (`router`, `worker`, ...).
    pub fn component_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or("")
    }
}

impl std::fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

/// The verified identity of the caller, put into the request extensions by
/// [`SpiffeAuthorizer`].
#[derive(Clone, Debug)]
pub struct CallerId(pub SpiffeId);

/// Where a component finds its certificate files: `<dir>/ca.pem`,
/// `<dir>/<component>.pem` and `<dir>/<component>.key`.
#[derive(Clone, Debug)]
pub struct CertPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertPaths {
    pub fn new(dir: &Path, component: &str) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{component}.pem")),
            key: dir.join(format!("{component}.key")),
        }
    }

    fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
        std::fs::read(path).map_err(|source| IdentityError::Read {
            path: path.to_path_buf(),
            source,
        })
    }

    fn identity(&self) -> Result<Identity, IdentityError> {
        Ok(Identity::from_pem(
            Self::read(&self.cert)?,
            Self::read(&self.key)?,
        ))
    }

    fn ca(&self) -> Result<Certificate, IdentityError> {
        Ok(Certificate::from_pem(Self::read(&self.ca)?))
    }

    /// Server side: present our certificate, require a client certificate
    /// signed by the cluster CA (static: read once).
    pub fn server_tls(&self) -> Result<ServerTlsConfig, IdentityError> {
        Ok(ServerTlsConfig::new()
            .identity(self.identity()?)
            .client_ca_root(self.ca()?))
    }

    /// Client side: trust only the cluster CA, present our certificate,
    /// and require the server's certificate to carry the DNS name of
    /// component `server` (certificates carry their component's name, not
    /// `localhost` or an address). Checks no CRL and no SPIFFE id: for tests
    /// and benches; services use [`crate::tls::ReloadingConnector`].
    pub fn client_tls(&self, server: &str) -> Result<ClientTlsConfig, IdentityError> {
        Ok(ClientTlsConfig::new()
            .ca_certificate(self.ca()?)
            .identity(self.identity()?)
            .domain_name(server))
    }
}

/// Installs ring as rustls' process-wide crypto provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The SPIFFE id in the URI SAN of the peer's leaf certificate, if any.
pub fn peer_spiffe_id<T>(req: &Request<T>) -> Option<SpiffeId> {
    let certs = req.peer_certs()?;
    let leaf = certs.first()?;
    spiffe_id_of_der(leaf.as_ref())
}

/// The SPIFFE id in the URI SAN of a DER certificate, if it has exactly one.
pub fn spiffe_id_of_der(der: &[u8]) -> Option<SpiffeId> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut ids = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) if u.starts_with("spiffe://") => SpiffeId::parse(u).ok(),
        _ => None,
    });
    let id = ids.next()?;
    // A certificate with several SPIFFE ids is ambiguous: refuse it.
    ids.next().is_none().then_some(id)
}

/// Whether a worker presenting `id` may serve the pool it reports (`shared`,
/// `admitted` tenants): a per-tenant identity only for a non-shared pool
/// admitting exactly that tenant; the plain worker identity for a shared
/// pool, and for a dedicated one unless `require_tenant_id`. Returns why not.
pub fn check_worker_identity(
    id: Option<&SpiffeId>,
    shared: bool,
    admitted: &[String],
    require_tenant_id: bool,
) -> Result<(), String> {
    let Some(id) = id else {
        return Err("the worker's certificate carries no SPIFFE id".into());
    };
    if let Some(t) = id.worker_tenant() {
        if shared || admitted != [t] {
            return Err(format!(
                "{id} is the identity of tenant {t}'s dedicated worker, but the worker reports a {} pool admitting {admitted:?}",
                if shared { "shared" } else { "dedicated" }
            ));
        }
        return Ok(());
    }
    if !id.is_component("worker") {
        return Err(format!("{id} is not a worker's identity"));
    }
    if !shared && require_tenant_id {
        return Err(format!(
            "a dedicated pool's worker must present its tenant's identity (.../bulkhead/worker/tenant/<tenant>), not {id}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_spiffe_ids() {
        let id = SpiffeId::parse("spiffe://bulkhead.local/bulkhead/router").unwrap();
        assert_eq!(id.trust_domain, "bulkhead.local");
        assert_eq!(id.component_name(), "router");
        assert_eq!(id.to_string(), "spiffe://bulkhead.local/bulkhead/router");
        assert_eq!(SpiffeId::component("bulkhead.local", "router"), id);
        assert!(id.is_component("router") && !id.is_component("worker"));
        assert_eq!(id.worker_tenant(), None);
        // A tenant named like a component is not that component.
        let t = SpiffeId::tenant_worker("bulkhead.local", "router");
        assert_eq!(SpiffeId::parse(&t.to_string()).unwrap(), t);
        assert_eq!(t.worker_tenant(), Some("router"));
        assert!(!t.is_component("router") && !t.is_component("worker"));
    }

    #[test]
    fn replica_ids() {
        let td = "bulkhead.local";
        let r = SpiffeId::replica(td, "router", "router-0");
        assert_eq!(
            r.to_string(),
            "spiffe://bulkhead.local/bulkhead/router/replica/router-0"
        );
        assert_eq!(SpiffeId::parse(&r.to_string()).unwrap(), r);
        assert_eq!(r.replica_of("router"), Some("router-0"));
        assert_eq!(r.replica_of("worker"), None);
        assert!(!r.is_component("router"));
        assert!(r.is_component_or_replica("router") && !r.is_component_or_replica("worker"));
        assert!(SpiffeId::component(td, "router").is_component_or_replica("router"));
        // Neither a deeper path nor a component merely starting with the
        // name is a replica.
        for other in [
            "spiffe://td/bulkhead/router/replica/a/b",
            "spiffe://td/bulkhead/routerx/replica/a",
            "spiffe://td/bulkhead/router/replicas/a",
            "spiffe://td/bulkhead/worker/tenant/router",
        ] {
            let id = SpiffeId::parse(other).unwrap();
            assert!(!id.is_component_or_replica("router"), "{other}");
        }
    }

    #[test]
    fn worker_identities_match_their_pools() {
        let td = "bulkhead.local";
        let acme = SpiffeId::tenant_worker(td, "acme");
        let plain = SpiffeId::component(td, "worker");
        let router = SpiffeId::component(td, "router");
        let a = vec!["acme".to_string()];
        let ab = vec!["acme".to_string(), "beta".to_string()];
        let b = vec!["beta".to_string()];
        assert!(check_worker_identity(Some(&acme), false, &a, true).is_ok());
        assert!(check_worker_identity(Some(&acme), false, &b, false).is_err());
        assert!(check_worker_identity(Some(&acme), false, &ab, false).is_err());
        assert!(check_worker_identity(Some(&acme), true, &[], false).is_err());
        assert!(check_worker_identity(Some(&plain), true, &[], true).is_ok());
        assert!(check_worker_identity(Some(&plain), false, &a, false).is_ok());
        let e = check_worker_identity(Some(&plain), false, &a, true).unwrap_err();
        assert!(e.contains("must present its tenant's identity"), "{e}");
        assert!(check_worker_identity(Some(&router), true, &[], false).is_err());
        assert!(check_worker_identity(None, true, &[], false).is_err());
        for bad in [
            "http://x/y",
            "spiffe://",
            "spiffe://td",
            "spiffe://td/",
            "spiffe://TD/a",
            "spiffe://td/a//b",
            "spiffe://td/../a",
            "spiffe://td/a b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
