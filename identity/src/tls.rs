//! Server-side mTLS that follows the files on disk: [`ServerTls`] serves
//! the component's certificate and checks clients against the CA and the
//! CRL (`<certs>/crl.pem`, when present) as they are *now*. A background
//! task polls the files' metadata every few seconds and swaps in the new
//! material, so short-lived certificates can be renewed, and a revocation
//! takes effect, without restarting the server:
//!
//! - new connections get the new server certificate and are verified against
//!   the new CA and CRL;
//! - requests on connections already open are refused once their client
//!   certificate is revoked ([`SpiffeAuthorizer::with_revocation`]).
//!
//! Every refused handshake is logged with its reason (no certificate, not
//! from our CA, expired, revoked, not TLS at all). tonic's `ServerTlsConfig`
//! is static, so servers accept with [`ServerTls::incoming`] (tokio-rustls)
//! and hand the streams to `serve_with_incoming*`; tonic's `Connected` impl
//! for tokio-rustls streams keeps `Request::peer_certs` working.
//!
//! [`SpiffeAuthorizer::with_revocation`]: crate::authz::SpiffeAuthorizer::with_revocation
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::error::IdentityError;
use crate::spiffe::CertPaths;

pub mod client;
mod client_config;
pub mod verify;
pub use client::{ReloadingConnector, plain_scheme};
pub use client_config::{anonymous_client_config, client_config, client_config_expecting};
pub use verify::ExpectedServer;

/// How often servers look at their certificate files.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub use crate::error::TlsError;

impl CertPaths {
    /// Server side, following the files on disk: our certificate, the CA
    /// and the CRL are reloaded when they change (see [`crate::tls`]). Call
    /// inside a Tokio runtime.
    pub fn reloading_server_tls(&self, hop: &'static str) -> Result<ServerTls, IdentityError> {
        Ok(ServerTls::load(self.clone(), hop)?)
    }
}

/// The CRL next to the CA: `<certs>/crl.pem`.
pub fn crl_path(paths: &CertPaths) -> PathBuf {
    crl_path_in(paths.ca.parent().unwrap_or(Path::new(".")))
}

/// The CRL of the certificates folder `dir`.
pub fn crl_path_in(dir: &Path) -> PathBuf {
    dir.join("crl.pem")
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn pem_err(path: &Path) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |e| TlsError::Pem {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Reads every certificate in a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err(path))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            reason: "no certificate in the file".into(),
        });
    }
    Ok(certs)
}

/// The CRLs in `path`, or none when the file does not exist.
pub fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(TlsError::Read {
            path: path.to_path_buf(),
            source,
        }),
        Ok(bytes) => CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_err(path)),
    }
}

/// A certificate's serial number as lowercase hex without leading zeros.
pub fn serial_hex(raw: &[u8]) -> String {
    let trimmed: &[u8] = match raw.iter().position(|b| *b != 0) {
        Some(i) => &raw[i..],
        None => &[0],
    };
    hex::encode(trimmed)
}

/// Serial (hex) and not-after (Unix seconds) of a DER certificate.
pub fn serial_and_not_after(der: &[u8]) -> Option<(String, i64)> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some((
        serial_hex(cert.raw_serial()),
        cert.validity().not_after.timestamp(),
    ))
}

/// The serials (hex) revoked by the CRLs (signatures not checked: the
/// CRL file is as trusted as the certificates folder it sits in).
pub fn revoked_serials(crls: &[CertificateRevocationListDer<'_>]) -> HashSet<String> {
    use x509_parser::prelude::*;
    crls.iter()
        .filter_map(|c| CertificateRevocationList::from_der(c.as_ref()).ok())
        .flat_map(|(_, crl)| {
            crl.iter_revoked_certificates()
                .map(|r| serial_hex(r.raw_serial()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Why a certificate that passed the handshake is no longer good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    Revoked,
    Expired,
}

/// [`Stale`] for a DER certificate given the revoked serials and the time
/// (Unix seconds); None while it is good (or cannot be parsed: the
/// handshake already verified it).
pub fn stale(der: &[u8], revoked: &HashSet<String>, now: i64) -> Option<Stale> {
    let (serial, not_after) = serial_and_not_after(der)?;
    if revoked.contains(&serial) {
        Some(Stale::Revoked)
    } else if not_after < now {
        Some(Stale::Expired)
    } else {
        None
    }
}

/// One consistent set of material read from disk.
#[derive(Debug)]
struct Material {
    key: Arc<CertifiedKey>,
    verifier: Arc<dyn ClientCertVerifier>,
    revoked: HashSet<String>,
    serial: String,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Material {
    fn load(paths: &CertPaths, crl: &Path) -> Result<Self, TlsError> {
        let provider = provider();
        let chain = read_certs(&paths.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&read(&paths.key)?).map_err(pem_err(&paths.key))?;
        // Fails when the certificate and key do not belong together (e.g.
        // read halfway through a renewal): the previous material stays.
        let serial = serial_and_not_after(chain[0].as_ref())
            .map(|(s, _)| s)
            .unwrap_or_default();
        let key = Arc::new(CertifiedKey::from_der(chain, key, &provider)?);
        let mut roots = RootCertStore::empty();
        for ca in read_certs(&paths.ca)? {
            roots.add(ca)?;
        }
        let crls = read_crls(crl)?;
        let revoked = revoked_serials(&crls);
        let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        if !crls.is_empty() {
            builder = builder.with_crls(crls).only_check_end_entity_revocation();
        }
        Ok(Self {
            key,
            verifier: builder.build()?,
            revoked,
            serial,
        })
    }
}

/// What the files looked like when last loaded (modified time, length, inode).
pub(crate) type Stamp = Vec<Option<(std::time::SystemTime, u64, u64)>>;

pub(crate) fn stamp(files: &[&Path]) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len(), m.ino()))
        })
        .collect()
}

#[derive(Debug)]
struct Shared {
    paths: CertPaths,
    crl: PathBuf,
    hop: &'static str,
    current: RwLock<Arc<Material>>,
    stamp: Mutex<(Stamp, Option<String>)>,
}

impl Shared {
    fn files(&self) -> [&Path; 4] {
        [&self.paths.ca, &self.paths.cert, &self.paths.key, &self.crl]
    }

    fn current(&self) -> Arc<Material> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn reload(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.files());
        let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if last.0 == now {
            return Ok(false);
        }
        let material = Material::load(&self.paths, &self.crl)?;
        tracing::info!(hop = self.hop, serial = %material.serial, revoked = material.revoked.len(),
            "reloaded TLS certificates, CA and CRL from disk");
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(material);
        *last = (now, None);
        Ok(true)
    }
}

/// A component's reloading server-side TLS (see the module docs).
#[derive(Clone, Debug)]
pub struct ServerTls {
    shared: Arc<Shared>,
    config: Arc<ServerConfig>,
}

impl ServerTls {
    /// Loads the material (failing on anything unreadable) and starts
    /// polling the files every [`RELOAD_EVERY`]. Call inside a Tokio runtime.
    pub fn load(paths: CertPaths, hop: &'static str) -> Result<Self, TlsError> {
        let tls = Self::load_static(paths, hop)?;
        tls.spawn_reloader(RELOAD_EVERY);
        Ok(tls)
    }

    /// Loads the material without starting the reloader (see [`Self::reload`]).
    pub fn load_static(paths: CertPaths, hop: &'static str) -> Result<Self, TlsError> {
        let crl = crl_path(&paths);
        let files = [&paths.ca, &paths.cert, &paths.key, &crl].map(|p| p.as_path());
        let before = stamp(&files);
        let material = Material::load(&paths, &crl)?;
        let shared = Arc::new(Shared {
            paths,
            crl,
            hop,
            current: RwLock::new(Arc::new(material)),
            stamp: Mutex::new((before, None)),
        });
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(CurrentVerifier(shared.clone())))
            .with_cert_resolver(Arc::new(CurrentCert(shared.clone())));
        config.alpn_protocols = vec![b"h2".to_vec()];
        // A resumed session would skip the client certificate check, and
        // with it a revocation: every connection does a full handshake.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Self {
            shared,
            config: Arc::new(config),
        })
    }

    /// Re-reads the files if any changed since the last successful load.
    /// Returns whether new material is in use; on error the previous
    /// material stays in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        self.shared.reload()
    }

    fn spawn_reloader(&self, every: Duration) {
        // Only a weak reference: the task ends once the server (and with it
        // every config, resolver and verifier holding `Shared`) is gone.
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(shared) = weak.upgrade() else { return };
                if let Err(e) = shared.reload() {
                    let msg = e.to_string();
                    let mut last = shared.stamp.lock().unwrap_or_else(|e| e.into_inner());
                    if last.1.as_deref() != Some(msg.as_str()) {
                        tracing::error!(hop = shared.hop, error = %msg,
                            "cannot reload TLS material; keeping the previous one");
                        last.1 = Some(msg);
                    }
                }
            }
        });
    }

    /// The rustls configuration (certificate and verifier follow reloads).
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The serial (hex) of the certificate served now.
    pub fn serial(&self) -> String {
        self.shared.current().serial.clone()
    }

    /// Whether the current CRL revokes this DER certificate.
    pub fn is_revoked(&self, der: &[u8]) -> bool {
        self.no_longer_valid(der) == Some(Stale::Revoked)
    }

    /// Why a client certificate accepted at the handshake is no longer
    /// good now (revoked by the current CRL, or past its not-after), if so.
    pub fn no_longer_valid(&self, der: &[u8]) -> Option<Stale> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        stale(der, &self.shared.current().revoked, now)
    }

    /// Accepts TCP connections on `listener` (Nagle off) and yields those
    /// whose TLS handshake succeeded; each refused one is logged with its
    /// reason. Handshakes run concurrently; the accept loop ends when the
    /// stream is dropped.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = TlsAcceptor::from(self.config.clone());
        let hop = self.shared.hop;
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    _ = tx.closed() => return,
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(hop, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let (tx, acceptor) = (tx.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => {
                            let reason = refusal_reason(&e);
                            tracing::warn!(hop, %peer, %reason, "refused a TLS connection: {reason}");
                        }
                        Err(_) => {
                            tracing::warn!(hop, %peer, "refused a TLS connection: handshake timed out")
                        }
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// Connects to `addr`, completes an mTLS handshake as `paths` and returns the
/// server's leaf certificate (e.g. to see which certificate a server is
/// serving now).
pub async fn server_certificate(
    addr: &str,
    server_name: &str,
    paths: &CertPaths,
) -> std::io::Result<CertificateDer<'static>> {
    let config = client_config(paths).map_err(std::io::Error::other)?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or_else(|| std::io::Error::other("the server sent no certificate"))
}

/// A plain-words reason for a failed server-side handshake.
pub fn refusal_reason(e: &std::io::Error) -> String {
    use rustls::{CertificateError as C, Error as E};
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) else {
        return format!("connection failed during the handshake ({e})");
    };
    match tls {
        E::NoCertificatesPresented => "no client certificate".into(),
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "client certificate not issued by this cluster's CA".into()
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "client certificate expired".into()
        }
        E::InvalidCertificate(C::Revoked) => "client certificate revoked".into(),
        E::InvalidCertificate(c) => format!("client certificate rejected ({c:?})"),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            format!("not a TLS client hello (plaintext?): {tls}")
        }
        E::AlertReceived(a) => format!("the client aborted the handshake ({a:?})"),
        other => format!("handshake failed ({other})"),
    }
}

#[derive(Debug)]
struct CurrentCert(Arc<Shared>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }
}

/// Delegates to the verifier built from the CA and CRL loaded last.
#[derive(Debug)]
struct CurrentVerifier(Arc<Shared>);

impl ClientCertVerifier for CurrentVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would borrow from the current material; clients present
        // their one certificate anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .current()
            .verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.current().verifier.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_go_stale_when_revoked_or_expired() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x00, 0xab, 0xcd]));
        params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let (serial, not_after) = serial_and_not_after(&der).unwrap();
        assert_eq!(serial, "abcd");
        let mut revoked = HashSet::new();
        assert_eq!(stale(&der, &revoked, not_after - 1), None);
        assert_eq!(stale(&der, &revoked, not_after + 1), Some(Stale::Expired));
        revoked.insert("abcd".to_string());
        assert_eq!(stale(&der, &revoked, not_after - 1), Some(Stale::Revoked));
        assert_eq!(stale(b"not a certificate", &revoked, 0), None);
        assert_eq!(serial_hex(&[0, 0]), "00");
    }
}
