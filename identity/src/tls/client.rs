//! Client side that follows the files on disk: [`ReloadingConnector`] is a
//! connector for `Endpoint::connect_with_connector_lazy` that, for every new
//! connection, uses the client certificate, CA and CRL as they are on disk
//! then (re-read only when a file changed). A renewed client certificate is
//! therefore presented from the next (re)connection on, and a server whose
//! certificate is on the CRL is refused. Connections already open keep the
//! certificate they were made with.
//!
//! tonic refuses `https://` URLs without its own TLS config, so endpoints
//! using this connector are given `http://` URLs ([`plain_scheme`]); TLS is
//! done here. The server is known by what it is, not where it is: its
//! certificate must carry the expected component's DNS name and SPIFFE id
//! ([`ExpectedServer`]), whatever host the URL names.
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;

use super::{ExpectedServer, Stamp, TlsError, client_config_expecting, crl_path, stamp};
use crate::spiffe::{CertPaths, SpiffeId, spiffe_id_of_der};

type Cached = Option<(Stamp, Arc<rustls::ClientConfig>)>;

#[derive(Debug)]
struct Inner {
    paths: CertPaths,
    expected: ExpectedServer,
    config: Mutex<Cached>,
    peer: Mutex<Option<SpiffeId>>,
}

/// See the module docs. Clones share the cache and the last peer id; use
/// one connector per server to read that server's id with [`Self::peer_id`].
#[derive(Clone, Debug)]
pub struct ReloadingConnector {
    inner: Arc<Inner>,
}

/// `https://host:port` → `http://host:port` (TLS is the connector's job).
pub fn plain_scheme(url: &str) -> String {
    match url.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => url.to_string(),
    }
}

impl ReloadingConnector {
    /// Reads the files once, so that a missing or bad file fails now. The
    /// server must be `expected` (checked in the handshake: a wrong one
    /// never gets a request).
    pub fn expecting(paths: CertPaths, expected: ExpectedServer) -> Result<Self, TlsError> {
        let c = Self {
            inner: Arc::new(Inner {
                paths,
                expected,
                config: Mutex::new(None),
                peer: Mutex::new(None),
            }),
        };
        c.config()?;
        Ok(c)
    }

    /// The SPIFFE id of the server's certificate on the latest connection.
    pub fn peer_id(&self) -> Option<SpiffeId> {
        self.inner
            .peer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let p = &self.inner.paths;
        let crl = crl_path(p);
        let now = stamp(&[&p.ca, &p.cert, &p.key, &crl]);
        let mut cached = self.inner.config.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, c)) = cached.as_ref()
            && *s == now
        {
            return Ok(c.clone());
        }
        match client_config_expecting(p, Some(&self.inner.expected)) {
            Ok(c) => {
                if cached.is_some() {
                    tracing::info!(cert = %p.cert.display(), "client TLS material changed on disk; new connections use it");
                }
                let c = Arc::new(c);
                *cached = Some((now, c.clone()));
                Ok(c)
            }
            // Halfway through a renewal: keep what worked.
            Err(e) => match cached.as_ref() {
                Some((_, c)) => {
                    tracing::warn!(error = %e, "cannot reload client TLS material; keeping the previous one");
                    Ok(c.clone())
                }
                None => Err(e),
            },
        }
    }
}

impl tonic::codegen::Service<Uri> for ReloadingConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other(format!("no host in {uri}")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let config = this.config().map_err(std::io::Error::other)?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(std::io::Error::other)?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            let id = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| spiffe_id_of_der(c.as_ref()));
            *this.inner.peer.lock().unwrap_or_else(|e| e.into_inner()) = id;
            Ok(TokioIo::new(tls))
        })
    }
}
