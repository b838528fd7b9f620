//! The control-plane server as a library: the operator gRPC API over mTLS on
//! a listener the caller has bound (so `127.0.0.1:0` works and tests can run
//! it in-process). Only the SPIFFE component `operator` is admitted. The
//! certificate, CA and CRL are reloaded from disk while serving.
use std::future::Future;
use std::path::{Path, PathBuf};

use bulkhead_identity::authz::SpiffeAuthorizer;
use bulkhead_identity::spiffe::{CertPaths, IdentityError};
use bulkhead_proto::control::control_server::ControlServer;
use tokio::net::TcpListener;

use crate::registry::{ControlError, Registry};
use crate::service::ControlService;

/// SPIFFE components allowed to call the control API.
pub const ALLOWED_CALLERS: &[&str] = &["operator"];
/// The component name whose certificate the control-plane presents.
pub const COMPONENT: &str = "control";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("NATS at {url}")]
    Nats {
        url: String,
        #[source]
        source: bulkhead_directory::NatsError,
    },
    #[error(transparent)]
    Registry(#[from] ControlError),
    #[error("TLS set-up: {0}")]
    Identity(#[from] IdentityError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Where the server finds its certificate and which trust domain it admits.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub certs_dir: PathBuf,
    pub trust_domain: String,
    /// Where to count operator calls, if anywhere.
    pub metrics: Option<std::sync::Arc<crate::metrics::ControlMetrics>>,
}

/// Connects to NATS (over mTLS as `control` from `certs_dir` when the URL
/// is `tls://`) and opens (creating if missing) the KV buckets, the audit
/// stream and the audit-service's consumer.
pub async fn open_registry(
    nats_url: &str,
    certs_dir: &std::path::Path,
) -> Result<Registry, ServeError> {
    let nats = bulkhead_directory::connect_nats(nats_url, certs_dir, COMPONENT)
        .await
        .map_err(|source| ServeError::Nats {
            url: nats_url.to_string(),
            source,
        })?;
    let js = async_nats::jetstream::new(nats);
    let registry = Registry::open(&js).await?;
    // The control-plane lays NATS out: on a NATS configured by Bulkhead
    // routers and the audit-service may only look the audit stream and its
    // consumer up, not create them.
    bulkhead_directory::ensure_audit_stream(&js)
        .await
        .map_err(|source| ServeError::Nats {
            url: nats_url.to_string(),
            source,
        })?;
    Ok(registry)
}

/// Serves the Control API on `listener` until `shutdown` resolves.
pub async fn serve(
    registry: Registry,
    listener: TcpListener,
    opts: &ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let tls = CertPaths::new(Path::new(&opts.certs_dir), COMPONENT)
        .reloading_server_tls("control-plane")?;
    let authz = SpiffeAuthorizer::new("control-plane", &opts.trust_domain, ALLOWED_CALLERS)
        .with_revocation(&tls);
    tonic::transport::Server::builder()
        .add_service(ControlServer::with_interceptor(
            ControlService {
                registry,
                metrics: opts.metrics.clone(),
            },
            authz,
        ))
        .serve_with_incoming_shutdown(tls.incoming(listener), shutdown)
        .await?;
    Ok(())
}
