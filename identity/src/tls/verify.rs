//! The client's check of the server's identity, inside the TLS handshake:
//! a server whose certificate chains to our CA and is not revoked is still
//! refused unless it carries the DNS name of the component expected
//! ([`ExpectedServer::dns_name`], not the address dialled: certificates carry
//! only their component's names, never `localhost` or an IP) and its SPIFFE
//! id is the one expected. Every certificate of the cluster chains to the
//! same CA, so without this a router's or an audit-service's certificate
//! could front a worker, and a shared worker's a tenant's dedicated pool.
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

use crate::spiffe::{SpiffeId, spiffe_id_of_der};

/// Which SPIFFE id a server must present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpectedServer {
    /// A worker: the shared identity or a tenant's (which pool it may serve
    /// is then checked against what it reports, see
    /// [`crate::spiffe::check_worker_identity`]).
    AnyWorker,
    /// The worker dedicated to this tenant, and no other.
    TenantWorker(String),
    /// A component (`control`, `audit`).
    Component(String),
}

impl ExpectedServer {
    /// Whether `id` (of the server's leaf certificate) is acceptable in
    /// `trust_domain`; why not otherwise.
    pub fn check(&self, trust_domain: &str, id: Option<&SpiffeId>) -> Result<(), String> {
        let Some(id) = id else {
            return Err("the server's certificate carries no SPIFFE id".into());
        };
        if id.trust_domain != trust_domain {
            return Err(format!(
                "the server is {id}, of another trust domain than {trust_domain}"
            ));
        }
        let ok = match self {
            Self::AnyWorker => id.is_component("worker") || id.worker_tenant().is_some(),
            Self::TenantWorker(t) => id.worker_tenant() == Some(t.as_str()),
            Self::Component(c) => id.is_component(c),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("the server is {id}, expected {}", self.describe()))
        }
    }

    /// The DNS name a server of this kind carries (its component's name,
    /// see `bulkhead certs`): what the certificate's names are checked
    /// against, whatever address the client dialled.
    pub fn dns_name(&self) -> &str {
        match self {
            Self::AnyWorker | Self::TenantWorker(_) => "worker",
            Self::Component(c) => c,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::AnyWorker => "a worker".into(),
            Self::TenantWorker(t) => format!("tenant {t}'s dedicated worker"),
            Self::Component(c) => format!("the {c}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("SPIFFE id refused: {0}")]
struct SpiffeMismatch(String);

/// WebPKI verification (chain, CRL, the expected component's DNS name),
/// then the SPIFFE id.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    trust_domain: String,
    expected: ExpectedServer,
}

impl SpiffeServerVerifier {
    pub fn new(
        inner: Arc<WebPkiServerVerifier>,
        trust_domain: String,
        expected: ExpectedServer,
    ) -> Self {
        Self {
            inner,
            trust_domain,
            expected,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name checked is the expected component's, not the address
        // dialled (an IP, a Service name, a pod's): a cluster certificate is
        // issued for a component, wherever it runs.
        let name = ServerName::try_from(self.expected.dns_name().to_string())
            .map_err(|e| rustls::Error::General(format!("expected server name: {e}")))?;
        let verified =
            self.inner
                .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)?;
        let id = spiffe_id_of_der(end_entity.as_ref());
        self.expected
            .check(&self.trust_domain, id.as_ref())
            .map_err(|why| {
                tracing::warn!(reason = %why, "refused a server at the handshake");
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                    SpiffeMismatch(why),
                ))))
            })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn only_the_expected_identity_passes() {
        let td = "bulkhead.local";
        let worker = id("spiffe://bulkhead.local/bulkhead/worker");
        let acme = id("spiffe://bulkhead.local/bulkhead/worker/tenant/acme");
        let router = id("spiffe://bulkhead.local/bulkhead/router");
        let foreign = id("spiffe://other.org/bulkhead/worker");
        let any = ExpectedServer::AnyWorker;
        assert!(any.check(td, Some(&worker)).is_ok());
        assert!(any.check(td, Some(&acme)).is_ok());
        assert!(
            any.check(td, Some(&router))
                .unwrap_err()
                .contains("expected a worker")
        );
        assert!(
            any.check(td, Some(&foreign))
                .unwrap_err()
                .contains("another trust domain")
        );
        assert!(any.check(td, None).is_err());
        let t = ExpectedServer::TenantWorker("acme".into());
        assert!(t.check(td, Some(&acme)).is_ok());
        assert!(
            t.check(td, Some(&worker)).is_err(),
            "the shared identity fronts a tenant's pool"
        );
        let globex = id("spiffe://bulkhead.local/bulkhead/worker/tenant/globex");
        assert!(t.check(td, Some(&globex)).is_err());
        let c = ExpectedServer::Component("control".into());
        assert!(
            c.check(td, Some(&id("spiffe://bulkhead.local/bulkhead/control")))
                .is_ok()
        );
        assert!(c.check(td, Some(&worker)).is_err());
    }
}
