//! The audit-service as a library: the consumer and the query API together,
//! on a listener the caller has bound, until a shutdown future resolves or
//! the consumer fails.
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bulkhead_identity::authz::SpiffeAuthorizer;
use bulkhead_identity::spiffe::{CertPaths, IdentityError};
use bulkhead_proto::audit::audit_admin_server::AuditAdminServer;
use bulkhead_proto::audit::audit_query_server::AuditQueryServer;
use tokio::net::TcpListener;

use crate::StoreError;
use crate::access::{self, AccessDirectory};
use crate::consumer::{self, ConsumerError};
use crate::keys::KeyWrapper;
use crate::query::QueryService;
use crate::store::{AuditStore, StoreOptions};

/// SPIFFE components allowed to call the query API at all. Each tenant read
/// then also needs that tenant's tenant-admin key (see `query`).
pub const ALLOWED_CALLERS: &[&str] = &["router", "control", "operator"];
/// The component name whose certificate the audit-service presents.
pub const COMPONENT: &str = "audit";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("NATS at {url}")]
    Nats {
        url: String,
        #[source]
        source: bulkhead_directory::NatsError,
    },
    #[error("opening the audit store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    #[error("TLS set-up: {0}")]
    Identity(#[from] IdentityError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("announcing readiness: {0}")]
    Ready(String),
    #[error("internal: {0}")]
    Task(String),
}

/// Everything `serve` needs besides the master key and the listener.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub nats_url: String,
    pub data_dir: PathBuf,
    pub certs_dir: PathBuf,
    pub trust_domain: String,
    /// Explicit operator override: an `operator`-certificate caller without
    /// a key may read any tenant. Off unless asked for.
    pub operator_reads_any_tenant: bool,
    /// Checkpoint interval, segment size and key rotation.
    pub store: StoreOptions,
    /// Where to record Prometheus metrics, if anywhere.
    pub metrics: Option<Arc<crate::metrics::AuditMetrics>>,
}

impl ServeOptions {
    /// Options with the defaults (no operator override, default store
    /// tunables).
    pub fn new(nats_url: &str, data_dir: PathBuf, certs_dir: PathBuf, trust_domain: &str) -> Self {
        Self {
            nats_url: nats_url.to_string(),
            data_dir,
            certs_dir,
            trust_domain: trust_domain.to_string(),
            operator_reads_any_tenant: false,
            store: StoreOptions::default(),
            metrics: None,
        }
    }
}

/// Opens the store (verifying every log, cutting torn tails), connects to
/// NATS, then consumes audit events and serves queries on `listener` until
/// `shutdown` resolves (the batch in hand is finished first). Returns an
/// error if the consumer stops on a storage failure.
pub async fn serve(
    opts: &ServeOptions,
    wrapper: Arc<dyn KeyWrapper>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_with_ready(opts, wrapper, listener, shutdown, || Ok(())).await
}

/// [`serve`], calling `on_ready` once the store is open, NATS is reachable
/// and the consumer exists (e.g. to write a `--ready-file`); an error from
/// it stops the service.
pub async fn serve_with_ready(
    opts: &ServeOptions,
    wrapper: Arc<dyn KeyWrapper>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    on_ready: impl FnOnce() -> Result<(), String> + Send,
) -> Result<(), ServeError> {
    bulkhead_identity::spiffe::install_crypto_provider();
    let tls = CertPaths::new(&opts.certs_dir, COMPONENT).reloading_server_tls("audit")?;
    let data_dir = opts.data_dir.clone();
    let store_opts = opts.store;
    let store =
        tokio::task::spawn_blocking(move || AuditStore::open_with(&data_dir, wrapper, store_opts))
            .await
            .map_err(|e| ServeError::Task(e.to_string()))??;
    let store = Arc::new(Mutex::new(store));
    let nats = bulkhead_directory::connect_nats(&opts.nats_url, &opts.certs_dir, COMPONENT)
        .await
        .map_err(|source| ServeError::Nats {
            url: opts.nats_url.clone(),
            source,
        })?;
    let js = async_nats::jetstream::new(nats);
    consumer::ensure_consumer(&js).await?;
    let access = Arc::new(AccessDirectory::default());
    access::sync(&js, access.clone())
        .await
        .map_err(|source| ServeError::Nats {
            url: opts.nats_url.clone(),
            source,
        })?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut consumer_task = tokio::spawn(consumer::run(
        js,
        store.clone(),
        stop_rx.clone(),
        opts.metrics.clone(),
    ));
    let authz = SpiffeAuthorizer::new("audit query API", &opts.trust_domain, ALLOWED_CALLERS)
        .with_revocation(&tls);
    let admin_authz = SpiffeAuthorizer::new(
        "audit admin API",
        &opts.trust_domain,
        crate::admin::ALLOWED_CALLERS,
    )
    .with_revocation(&tls);
    let mut rx = stop_rx;
    let server = tonic::transport::Server::builder()
        .add_service(AuditQueryServer::with_interceptor(
            QueryService {
                reader: Arc::new(store.lock().unwrap_or_else(|e| e.into_inner()).reader()),
                store: store.clone(),
                access,
                operator_reads_any_tenant: opts.operator_reads_any_tenant,
            },
            authz,
        ))
        .add_service(AuditAdminServer::with_interceptor(
            crate::admin::AdminService {
                store: store.clone(),
            },
            admin_authz,
        ))
        .serve_with_incoming_shutdown(tls.incoming(listener), async move {
            let _ = rx.wait_for(|s| *s).await;
        });
    let mut server_task = tokio::spawn(server);
    if let Err(e) = on_ready() {
        let _ = stop_tx.send(true);
        let _ = consumer_task.await;
        let _ = server_task.await;
        return Err(ServeError::Ready(e));
    }
    tokio::pin!(shutdown);
    let consumer_result = tokio::select! {
        _ = &mut shutdown => {
            tracing::info!("shutting down after the current batch");
            let _ = stop_tx.send(true);
            consumer_task.await
        }
        r = &mut consumer_task => {
            let _ = stop_tx.send(true);
            r
        }
        r = &mut server_task => {
            // The gRPC server ended on its own: stop consuming too.
            let _ = stop_tx.send(true);
            let _ = consumer_task.await;
            r.map_err(|e| ServeError::Task(e.to_string()))??;
            return Ok(());
        }
    };
    let server_result = server_task.await;
    consumer_result.map_err(|e| ServeError::Task(e.to_string()))??;
    server_result.map_err(|e| ServeError::Task(e.to_string()))??;
    // Clean shutdown: a final signed checkpoint of every log.
    tokio::task::spawn_blocking(move || store.lock().unwrap_or_else(|e| e.into_inner()).close())
        .await
        .map_err(|e| ServeError::Task(e.to_string()))??;
    Ok(())
}
