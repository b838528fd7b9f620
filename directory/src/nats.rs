//! Connecting to NATS the same way in every service.
//!
//! A `tls://` URL means mutual TLS: the server must present the `nats`
//! certificate issued by the cluster CA (`ca.pem` of the certificates
//! folder; checked against its CRL and SPIFFE id too) and this
//! process presents its own component certificate (`<component>.pem` and
//! `.key`), which a nats-server started with `--tlsverify` demands
//! (`bulkhead dev` starts it that way). A `nats://` URL connects in plain
//! text (a NATS that only listens on loopback, or tests).
//!
//! Replies (JetStream API answers, KV watches, acks of publishes) come to
//! an inbox prefix of the component's own, `_INBOX_<component>`: on a NATS
//! configured by Bulkhead each component may subscribe only there, so none
//! can read another's replies.
use std::path::Path;

use crate::NatsError;

/// The inbox prefix of `component`'s replies.
pub fn inbox_prefix(component: &str) -> String {
    format!("_INBOX_{component}")
}

/// Connects to `url`; with `tls://`, as `component` from `certs_dir`.
pub async fn connect_nats(
    url: &str,
    certs_dir: &Path,
    component: &str,
) -> Result<async_nats::Client, NatsError> {
    let paths = bulkhead_identity::spiffe::CertPaths::new(certs_dir, component);
    connect_nats_as(url, &paths, component).await
}

/// Connects to `url`; with `tls://`, presenting the certificate in `paths`,
/// with replies on `inbox_prefix(user)` (a router replica `R`'s user is
/// `router.R`: see `bulkhead_cli::nats_conf`).
pub async fn connect_nats_as(
    url: &str,
    paths: &bulkhead_identity::spiffe::CertPaths,
    user: &str,
) -> Result<async_nats::Client, NatsError> {
    let mut opts = async_nats::ConnectOptions::new().custom_inbox_prefix(inbox_prefix(user));
    if url.starts_with("tls://") {
        for p in [&paths.ca, &paths.cert, &paths.key] {
            if !p.exists() {
                return Err(NatsError::MissingTlsFile {
                    url: url.to_string(),
                    missing: p.display().to_string(),
                });
            }
        }
        // The server must be the cluster's NATS: its certificate chains to
        // the CA, is not on the CRL and carries the `nats` component's DNS
        // name and SPIFFE id (whatever address the URL names).
        let expected = bulkhead_identity::tls::ExpectedServer::Component("nats".into());
        let mut tls = bulkhead_identity::tls::client_config_expecting(paths, Some(&expected))
            .map_err(|e| NatsError::Tls {
                url: url.to_string(),
                source: e.into(),
            })?;
        tls.alpn_protocols.clear();
        opts = opts.require_tls(true).tls_client_config(tls);
    }
    opts.connect(url).await.map_err(|e| NatsError::Connect {
        url: url.to_string(),
        source: e.into(),
    })
}
