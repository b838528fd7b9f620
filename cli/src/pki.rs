//! The cluster PKI: a CA and one certificate per component, each with a
//! SPIFFE URI SAN (`spiffe://<trust-domain>/bulkhead/<component>`) and the
//! component's name as a DNS SAN (plus any `--dns-name` given), usable as
//! both TLS server and client. No certificate carries `localhost` or a
//! loopback address: clients check a server by the component they expect
//! (its DNS name and SPIFFE id), whatever address they dialled, so one
//! component's certificate cannot pass for another's on a shared host.
//!
//! Files: `<dir>/ca.pem`, `<dir>/ca.key` (0600), `<dir>/<component>.pem`,
//! `<dir>/<component>.key` (0600); a worker dedicated to one tenant gets
//! `<dir>/worker.<tenant>.pem/.key` with the SPIFFE id
//! `spiffe://<td>/bulkhead/worker/tenant/<tenant>` ([`issue_for_tenant`]);
//! a router replica gets `<dir>/router.<replica>.pem/.key` with the SPIFFE
//! id `spiffe://<td>/bulkhead/router/replica/<replica>`
//! ([`issue_for_replica`]: NATS lets it write only its own heartbeat);
//! revoked serials are listed in `<dir>/crl.pem` ([`revoke`]). Files are
//! replaced atomically, since servers reload them while running.
use std::path::Path;

use bulkhead_identity::spiffe::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

mod crl;
pub use crl::{Revoked, revoke, serial_of};

/// Components that get a certificate from `bulkhead certs init` by default.
pub const DEFAULT_COMPONENTS: &[&str] =
    &["router", "worker", "audit", "control", "operator", "nats"];
/// How long the CA is valid.
const CA_DAYS: i64 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0} already exists; pass --force to replace the CA and every certificate")]
    Exists(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid component name {0:?}: use [a-z0-9-]")]
    BadName(String),
    #[error("invalid tenant id {0:?}")]
    BadTenant(String),
    #[error("invalid replica id {0:?}: 1-63 of [a-z0-9-], starting with a letter or digit")]
    BadReplica(String),
    #[error("not a certificate serial number (hex, at most 20 bytes): {0:?}")]
    BadSerial(String),
    #[error("{path}: {reason}")]
    Cert { path: String, reason: String },
}

/// The file stem of a component's certificate: `<component>`, or
/// `worker.<tenant>` for a worker dedicated to one tenant, or
/// `router.<replica>` for one router replica.
pub fn cert_name(component: &str, qualifier: Option<&str>) -> String {
    match qualifier {
        Some(t) => format!("{component}.{t}"),
        None => component.to_string(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes a temporary file beside `path`, then renames it over `path`.
fn write(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn validity(params: &mut CertificateParams, days: i64) {
    // A non-positive `days` makes a certificate that has already expired
    // (for tests of expiry handling).
    let now = OffsetDateTime::now_utc();
    params.not_after = now + Duration::days(days);
    params.not_before = (now - Duration::minutes(5)).min(params.not_after - Duration::hours(1));
}

fn ca_params(trust_domain: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("Bulkhead CA ({trust_domain})"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// Creates the CA and a certificate for each component. Refuses to replace
/// an existing CA unless `force`.
pub fn init(
    dir: &Path,
    trust_domain: &str,
    components: &[&str],
    days: i64,
    force: bool,
) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let ca_pem = dir.join("ca.pem");
    if ca_pem.exists() && !force {
        return Err(PkiError::Exists(ca_pem.display().to_string()));
    }
    let key = KeyPair::generate()?;
    let mut params = ca_params(trust_domain);
    validity(&mut params, CA_DAYS);
    let cert = params.self_signed(&key)?;
    write(&dir.join("ca.key"), &key.serialize_pem(), true)?;
    write(&ca_pem, &cert.pem(), false)?;
    for c in components {
        issue(dir, trust_domain, c, days)?;
    }
    Ok(())
}

/// Issues (or re-issues) one component's certificate from the CA in `dir`.
pub fn issue(dir: &Path, trust_domain: &str, component: &str, days: i64) -> Result<(), PkiError> {
    issue_with_names(dir, trust_domain, component, days, &[])
}

/// Like [`issue`], with extra DNS names in the certificate (e.g. the
/// component's in-cluster service name, which peers verify).
pub fn issue_with_names(
    dir: &Path,
    trust_domain: &str,
    component: &str,
    days: i64,
    dns_names: &[String],
) -> Result<(), PkiError> {
    let id = SpiffeId::component(trust_domain, component);
    issue_inner(dir, component, None, &id, days, dns_names)
}

/// Issues a worker certificate for a pool dedicated to `tenant`:
/// `<dir>/worker.<tenant>.pem/.key`, SPIFFE id
/// `spiffe://<td>/bulkhead/worker/tenant/<tenant>`. Routers still verify it
/// as a worker of the cluster; the id says which tenant it may serve.
pub fn issue_for_tenant(
    dir: &Path,
    trust_domain: &str,
    tenant: &str,
    days: i64,
    dns_names: &[String],
) -> Result<(), PkiError> {
    if !bulkhead_proto::names::valid_tenant_id(tenant) {
        return Err(PkiError::BadTenant(tenant.to_string()));
    }
    let id = SpiffeId::tenant_worker(trust_domain, tenant);
    issue_inner(dir, "worker", Some(tenant), &id, days, dns_names)
}

/// Issues the certificate of one router replica:
/// `<dir>/router.<replica>.pem/.key`, SPIFFE id
/// `spiffe://<td>/bulkhead/router/replica/<replica>`. Every hop that admits
/// routers admits it; NATS maps it to a user of its own that may write only
/// the heartbeat key `<replica>`, so one router cannot speak for another.
pub fn issue_for_replica(
    dir: &Path,
    trust_domain: &str,
    replica: &str,
    days: i64,
    dns_names: &[String],
) -> Result<(), PkiError> {
    if !bulkhead_proto::names::valid_replica_id(replica) {
        return Err(PkiError::BadReplica(replica.to_string()));
    }
    let id = SpiffeId::replica(trust_domain, "router", replica);
    issue_inner(dir, "router", Some(replica), &id, days, dns_names)
}

/// Writes `<dir>/<cert_name(component, qualifier)>.pem/.key` for `id`.
fn issue_inner(
    dir: &Path,
    component: &str,
    qualifier: Option<&str>,
    id: &SpiffeId,
    days: i64,
    dns_names: &[String],
) -> Result<(), PkiError> {
    if component.is_empty()
        || !component
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(PkiError::BadName(component.to_string()));
    }
    let ca_key_path = dir.join("ca.key");
    let ca_pem_path = dir.join("ca.pem");
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?)?;
    let ca_pem = std::fs::read_to_string(&ca_pem_path).map_err(io(&ca_pem_path))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;

    let spiffe = id.to_string();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("bulkhead-{component}"));
    params.distinguished_name = dn;
    params.subject_alt_names = vec![
        SanType::URI(spiffe.as_str().try_into()?),
        SanType::DnsName(component.try_into()?),
    ];
    for name in dns_names {
        params
            .subject_alt_names
            .push(SanType::DnsName(name.as_str().try_into()?));
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let name = cert_name(component, qualifier);
    write(&dir.join(format!("{name}.key")), &key.serialize_pem(), true)?;
    write(&dir.join(format!("{name}.pem")), &cert.pem(), false)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem_path: &Path) -> Vec<u8> {
        let text = std::fs::read(pem_path).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&text).unwrap();
        pem.contents
    }

    #[test]
    fn certificates_carry_spiffe_ids() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "example.org", DEFAULT_COMPONENTS, 30, false).unwrap();
        for c in DEFAULT_COMPONENTS {
            let id = bulkhead_identity::spiffe::spiffe_id_of_der(&der(&dir
                .path()
                .join(format!("{c}.pem"))))
            .expect("a SPIFFE id");
            assert_eq!(id, SpiffeId::component("example.org", c));
        }
        assert!(matches!(
            init(dir.path(), "example.org", &["router"], 30, false),
            Err(PkiError::Exists(_))
        ));
        assert!(issue(dir.path(), "example.org", "../x", 30).is_err());
        issue_with_names(
            dir.path(),
            "example.org",
            "worker",
            30,
            &["bulkhead-worker-a.ns.svc".into()],
        )
        .unwrap();
        let pem = std::fs::read(dir.path().join("worker.pem")).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = pem.parse_x509().unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(san.value.general_names.iter().any(|n| matches!(n,
            x509_parser::extensions::GeneralName::DNSName(d) if *d == "bulkhead-worker-a.ns.svc")));
        // Only the component's own names: no localhost, no address, so no
        // other component's certificate passes a client's name check.
        use x509_parser::extensions::GeneralName;
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => format!("dns:{d}"),
                GeneralName::URI(u) => format!("uri:{u}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                "uri:spiffe://example.org/bulkhead/worker",
                "dns:worker",
                "dns:bulkhead-worker-a.ns.svc"
            ]
        );
        issue(dir.path(), "example.org", "extra-1", 30).unwrap();
        assert_eq!(
            bulkhead_identity::spiffe::spiffe_id_of_der(&der(&dir.path().join("extra-1.pem"))),
            Some(SpiffeId::component("example.org", "extra-1"))
        );
        // issue() without a CA is a clear error, not a panic.
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            issue(empty.path(), "example.org", "router", 30),
            Err(PkiError::Io { .. })
        ));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "private key readable by others");
    }

    #[test]
    fn tenant_workers_and_revocation() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "example.org", &["router", "worker"], 30, false).unwrap();
        issue_for_tenant(dir.path(), "example.org", "acme", 30, &[]).unwrap();
        let id =
            bulkhead_identity::spiffe::spiffe_id_of_der(&der(&dir.path().join("worker.acme.pem")))
                .unwrap();
        assert_eq!(id, SpiffeId::tenant_worker("example.org", "acme"));
        assert_eq!(id.worker_tenant(), Some("acme"));
        assert!(issue_for_tenant(dir.path(), "example.org", "Bad/Tenant", 30, &[]).is_err());
        issue_for_replica(dir.path(), "example.org", "router-1", 30, &[]).unwrap();
        let id = bulkhead_identity::spiffe::spiffe_id_of_der(&der(&dir
            .path()
            .join("router.router-1.pem")))
        .unwrap();
        assert_eq!(id, SpiffeId::replica("example.org", "router", "router-1"));
        for bad in ["", "Router", "r/1", "r.1", "../r"] {
            assert!(
                matches!(
                    issue_for_replica(dir.path(), "example.org", bad, 30, &[]),
                    Err(PkiError::BadReplica(_))
                ),
                "{bad:?}"
            );
        }

        let crl_path = dir.path().join("crl.pem");
        assert!(!crl_path.exists());
        let router = serial_of(&dir.path().join("router.pem")).unwrap();
        let r = revoke(dir.path(), &router).unwrap();
        assert_eq!(
            (r.serial.as_str(), r.newly, r.total),
            (router.as_str(), true, 1)
        );
        let again = revoke(dir.path(), &router).unwrap();
        assert_eq!((again.newly, again.total), (false, 1));
        let worker = serial_of(&dir.path().join("worker.acme.pem")).unwrap();
        assert_eq!(revoke(dir.path(), &worker).unwrap().total, 2);
        assert!(matches!(
            revoke(dir.path(), "zz"),
            Err(PkiError::BadSerial(_))
        ));
        // The CRL lists both serials (rustls checks its signature: tests/mtls.rs).
        let crls = bulkhead_identity::tls::read_crls(&crl_path).unwrap();
        assert_eq!(crls.len(), 1);
        use x509_parser::prelude::*;
        let (_, crl) = CertificateRevocationList::from_der(crls[0].as_ref()).unwrap();
        let listed: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|r| bulkhead_identity::tls::serial_hex(r.raw_serial()))
            .collect();
        assert_eq!(listed, vec![router, worker]);
        assert_eq!(crl.crl_number().map(|n| n.to_string()), Some("3".into()));
    }
}
