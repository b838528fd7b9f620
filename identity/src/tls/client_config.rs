//! Client-side rustls configurations read from the certificate files: the
//! CA and CRL every client checks a server against, this client's own
//! certificate, and the expected server ([`ExpectedServer`]).
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

use super::{
    ExpectedServer, TlsError, crl_path, pem_err, provider, read, read_certs, read_crls, verify,
};
use crate::spiffe::CertPaths;

/// Client side, read from disk now: trust the CA, refuse server
/// certificates on the CRL (when present), present our certificate; ALPN h2.
pub fn client_config(paths: &CertPaths) -> Result<rustls::ClientConfig, TlsError> {
    client_config_expecting(paths, None)
}

/// [`client_config`]; with `expected`, the server's SPIFFE id and
/// component name are also checked in the handshake
/// ([`verify::SpiffeServerVerifier`]), in the trust domain of this client's
/// own certificate.
pub fn client_config_expecting(
    paths: &CertPaths,
    expected: Option<&ExpectedServer>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let webpki = webpki_verifier(paths)?;
    let chain = read_certs(&paths.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&read(&paths.key)?).map_err(pem_err(&paths.key))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?;
    let mut config = match expected {
        None => builder
            .with_webpki_verifier(webpki)
            .with_client_auth_cert(chain, key)?,
        Some(e) => {
            let td = crate::spiffe::spiffe_id_of_der(chain[0].as_ref())
                .ok_or_else(|| TlsError::Pem {
                    path: paths.cert.clone(),
                    reason: "this certificate carries no SPIFFE id, so the trust domain its peers must be in is unknown".into(),
                })?
                .trust_domain;
            let v = verify::SpiffeServerVerifier::new(webpki, td, e.clone());
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(v))
                .with_client_auth_cert(chain, key)?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A client that presents no certificate but checks the server as
/// [`client_config_expecting`] does (CA and CRL of `paths`, which needs no
/// client certificate or key): to check that a server refuses it.
pub fn anonymous_client_config(
    paths: &CertPaths,
    trust_domain: &str,
    expected: &ExpectedServer,
) -> Result<rustls::ClientConfig, TlsError> {
    let v = verify::SpiffeServerVerifier::new(
        webpki_verifier(paths)?,
        trust_domain.to_string(),
        expected.clone(),
    );
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(v))
        .with_no_client_auth())
}

/// Chain to the CA of `paths`, and not on its CRL (when there is one).
fn webpki_verifier(
    paths: &CertPaths,
) -> Result<Arc<rustls::client::WebPkiServerVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&paths.ca)? {
        roots.add(ca)?;
    }
    let crls = read_crls(&crl_path(paths))?;
    let mut verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider());
    if !crls.is_empty() {
        verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
    }
    verifier.build().map_err(|e| TlsError::Pem {
        path: paths.ca.clone(),
        reason: e.to_string(),
    })
}
