//! Rust clients of the operator APIs (control-plane and audit query), over
//! mTLS with a component certificate from the cluster PKI — `operator` for
//! the CLI and the dev stack.
use std::path::Path;

use bulkhead_identity::spiffe::{CertPaths, IdentityError};
use bulkhead_identity::tls::{ExpectedServer, ReloadingConnector, plain_scheme};
use bulkhead_proto::audit::audit_query_client::AuditQueryClient;
use bulkhead_proto::audit::{AuditQueryRequest, AuditQueryResponse};
use bulkhead_proto::control::control_client::ControlClient as RawControlClient;
use bulkhead_proto::control::{
    ClusterStatusRequest, ClusterStatusResponse, CreateTenantRequest, DeleteTenantRequest,
    IssueKeyRequest, IssueKeyResponse, KeyInfo, KeyScope, ListKeysRequest, ListTenantsRequest,
    RevokeKeyRequest, RotateKeyRequest, RotateKeyResponse, Tenant, UpdateTenantRequest,
};
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("loading the client certificate: {0}")]
    Identity(#[from] IdentityError),
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The server answered with an error status (code and message).
    #[error("{:?}: {}", .0.code(), .0.message())]
    Rpc(tonic::Status),
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        Self::Rpc(s)
    }
}

impl ClientError {
    /// The gRPC status code, when the server answered with an error.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Rpc(s) => Some(s.code()),
            _ => None,
        }
    }
}

/// An mTLS channel to `url` presenting `<certs_dir>/<component>.pem`.
/// An mTLS channel to `url` as `component` (certificate from
/// `certs_dir`). The server must present `server`'s SPIFFE id, checked in
/// the handshake, and a certificate not on the CRL (`<certs>/crl.pem`):
/// the operator's tools trust what the services trust, no more.
pub async fn mtls_channel(
    url: &str,
    certs_dir: &Path,
    component: &str,
    server: &str,
) -> Result<Channel, ClientError> {
    bulkhead_identity::spiffe::install_crypto_provider();
    let connector = ReloadingConnector::expecting(
        CertPaths::new(certs_dir, component),
        ExpectedServer::Component(server.to_string()),
    )
    .map_err(|e| ClientError::Identity(e.into()))?;
    let connect_err = |e: tonic::transport::Error| ClientError::Connect {
        url: url.to_string(),
        reason: error_chain(&e),
    };
    if !url.starts_with("https://") {
        return Err(ClientError::BadUrl {
            url: url.to_string(),
            reason: "must be https:// (mTLS)".into(),
        });
    }
    Endpoint::from_shared(plain_scheme(url))
        .map_err(|e| ClientError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?
        .connect_timeout(std::time::Duration::from_secs(10))
        .connect_with_connector(connector)
        .await
        .map_err(connect_err)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The control-plane's operator API.
#[derive(Clone, Debug)]
pub struct ControlClient {
    inner: RawControlClient<Channel>,
}

impl ControlClient {
    /// Connects with the `operator` certificate from `certs_dir`.
    pub async fn connect(url: &str, certs_dir: &Path) -> Result<Self, ClientError> {
        Self::connect_as(url, certs_dir, "operator").await
    }

    /// Connects with another component's certificate (tests of the
    /// authorization: only `operator` is admitted).
    pub async fn connect_as(
        url: &str,
        certs_dir: &Path,
        component: &str,
    ) -> Result<Self, ClientError> {
        Ok(Self::from_channel(
            mtls_channel(url, certs_dir, component, "control").await?,
        ))
    }

    pub fn from_channel(channel: Channel) -> Self {
        Self {
            inner: RawControlClient::new(channel),
        }
    }

    pub async fn create_tenant(&mut self, req: CreateTenantRequest) -> Result<Tenant, ClientError> {
        Ok(self.inner.create_tenant(req).await?.into_inner())
    }

    /// Live routers (with their view of the workers) and the tenants.
    pub async fn cluster_status(&mut self) -> Result<ClusterStatusResponse, ClientError> {
        Ok(self
            .inner
            .cluster_status(ClusterStatusRequest {})
            .await?
            .into_inner())
    }

    pub async fn list_tenants(&mut self) -> Result<Vec<Tenant>, ClientError> {
        Ok(self
            .inner
            .list_tenants(ListTenantsRequest {})
            .await?
            .into_inner()
            .tenants)
    }

    /// Issues a key. The reply is the only place its text ever appears.
    pub async fn issue_key(
        &mut self,
        tenant_id: &str,
        scope: KeyScope,
    ) -> Result<IssueKeyResponse, ClientError> {
        Ok(self
            .inner
            .issue_key(IssueKeyRequest {
                tenant_id: tenant_id.to_string(),
                scope: scope as i32,
                ..Default::default()
            })
            .await?
            .into_inner())
    }

    /// Issues a key as `req` says (expiry, its own token budgets).
    pub async fn issue_key_with(
        &mut self,
        req: IssueKeyRequest,
    ) -> Result<IssueKeyResponse, ClientError> {
        Ok(self.inner.issue_key(req).await?.into_inner())
    }

    /// Requests and tokens per tenant, day, hour and key.
    pub async fn get_usage(
        &mut self,
        req: bulkhead_proto::control::GetUsageRequest,
    ) -> Result<Vec<bulkhead_proto::control::DayUsage>, ClientError> {
        Ok(self.inner.get_usage(req).await?.into_inner().days)
    }

    /// Issues a key expiring after `expires_in_days` (0 = never).
    pub async fn issue_key_expiring(
        &mut self,
        tenant_id: &str,
        scope: KeyScope,
        expires_in_days: u32,
    ) -> Result<IssueKeyResponse, ClientError> {
        Ok(self
            .inner
            .issue_key(IssueKeyRequest {
                tenant_id: tenant_id.to_string(),
                scope: scope as i32,
                expires_in_days,
                ..Default::default()
            })
            .await?
            .into_inner())
    }

    pub async fn update_tenant(&mut self, req: UpdateTenantRequest) -> Result<Tenant, ClientError> {
        Ok(self.inner.update_tenant(req).await?.into_inner())
    }

    /// Deletes a tenant (revoking its keys); returns how many keys were revoked.
    pub async fn delete_tenant(&mut self, id: &str) -> Result<u32, ClientError> {
        Ok(self
            .inner
            .delete_tenant(DeleteTenantRequest { id: id.to_string() })
            .await?
            .into_inner()
            .keys_revoked)
    }

    /// Keys of one tenant (all tenants when empty): prefixes, never keys.
    pub async fn list_keys(&mut self, tenant_id: &str) -> Result<Vec<KeyInfo>, ClientError> {
        Ok(self
            .inner
            .list_keys(ListKeysRequest {
                tenant_id: tenant_id.to_string(),
            })
            .await?
            .into_inner()
            .keys)
    }

    pub async fn revoke_key(
        &mut self,
        prefix: &str,
        tenant_id: &str,
    ) -> Result<KeyInfo, ClientError> {
        Ok(self
            .inner
            .revoke_key(RevokeKeyRequest {
                prefix: prefix.to_string(),
                tenant_id: tenant_id.to_string(),
            })
            .await?
            .into_inner())
    }

    pub async fn rotate_key(
        &mut self,
        req: RotateKeyRequest,
    ) -> Result<RotateKeyResponse, ClientError> {
        Ok(self.inner.rotate_key(req).await?.into_inner())
    }
}

/// The audit-service's query API.
#[derive(Clone, Debug)]
pub struct AuditClient {
    inner: AuditQueryClient<Channel>,
}

impl AuditClient {
    /// Connects with the `operator` certificate from `certs_dir`.
    pub async fn connect(url: &str, certs_dir: &Path) -> Result<Self, ClientError> {
        Ok(Self {
            inner: AuditQueryClient::new(mtls_channel(url, certs_dir, "operator", "audit").await?),
        })
    }

    pub async fn query(
        &mut self,
        req: AuditQueryRequest,
    ) -> Result<AuditQueryResponse, ClientError> {
        Ok(self.inner.query(req).await?.into_inner())
    }
}
