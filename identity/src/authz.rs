//! The per-hop authorizer: a tonic interceptor that admits only callers
//! whose certificate carries an allowed SPIFFE id, and (with the server's
//! reloading TLS) refuses requests on connections whose certificate was
//! revoked or expired since the handshake.
use tonic::{Request, Status};

use crate::spiffe::{CallerId, SpiffeId, peer_spiffe_id};

/// A tonic interceptor that admits only callers whose certificate carries a
/// SPIFFE id of our trust domain naming one of the allowed components (its
/// shared id, or one of its replicas': `.../bulkhead/router/replica/<id>`).
#[derive(Clone, Debug)]
pub struct SpiffeAuthorizer {
    trust_domain: String,
    allowed: Vec<String>,
    hop: &'static str,
    revocation: Option<crate::tls::ServerTls>,
}

impl SpiffeAuthorizer {
    /// `hop` names the server in log lines (e.g. "worker").
    pub fn new(hop: &'static str, trust_domain: &str, allowed_components: &[&str]) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            allowed: allowed_components.iter().map(|s| s.to_string()).collect(),
            hop,
            revocation: None,
        }
    }

    /// Also refuses requests whose client certificate the server's current
    /// CRL revokes, or that has expired — on connections opened before too
    /// (HTTP/2 connections between components live long).
    pub fn with_revocation(mut self, tls: &crate::tls::ServerTls) -> Self {
        self.revocation = Some(tls.clone());
        self
    }

    /// Checks one request; returns the caller's id when allowed.
    pub fn check<T>(&self, req: &Request<T>) -> Result<SpiffeId, Status> {
        let Some(id) = peer_spiffe_id(req) else {
            tracing::warn!(
                hop = self.hop,
                "refused a caller without a SPIFFE certificate"
            );
            return Err(Status::unauthenticated(
                "a client certificate with a SPIFFE id is required",
            ));
        };
        if id.trust_domain != self.trust_domain
            || !self.allowed.iter().any(|c| id.is_component_or_replica(c))
        {
            tracing::warn!(hop = self.hop, caller = %id, "refused a caller whose SPIFFE id is not allowed on this hop");
            return Err(Status::permission_denied(format!(
                "SPIFFE id {id} may not call the {}",
                self.hop
            )));
        }
        if let Some(tls) = &self.revocation {
            use crate::tls::Stale;
            let leaf = req.peer_certs().and_then(|c| c.first().cloned());
            match leaf.and_then(|l| tls.no_longer_valid(l.as_ref())) {
                Some(Stale::Revoked) => {
                    tracing::warn!(hop = self.hop, caller = %id,
                        "refused a caller whose certificate has been revoked (connection opened before the revocation)");
                    return Err(Status::unauthenticated("client certificate revoked"));
                }
                Some(Stale::Expired) => {
                    tracing::warn!(hop = self.hop, caller = %id,
                        "refused a caller whose certificate has expired (connection opened before it expired)");
                    return Err(Status::unauthenticated("client certificate expired"));
                }
                None => {}
            }
        }
        Ok(id)
    }
}

impl tonic::service::Interceptor for SpiffeAuthorizer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let id = self.check(&req)?;
        req.extensions_mut().insert(CallerId(id));
        Ok(req)
    }
}
