//! The cluster PKI: a CA and one certificate per component, each with a
//! SPIFFE URI SAN (`spiffe://<trust-domain>/bulkhead/<component>`) plus
//! `localhost`/loopback names, usable as both TLS server and client.
//!
//! Files: `<dir>/ca.pem`, `<dir>/ca.key` (0600), `<dir>/<component>.pem`,
//! `<dir>/<component>.key` (0600).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use bulkhead_proto::identity::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// Components that get a certificate from `bulkhead certs init` by default.
pub const DEFAULT_COMPONENTS: &[&str] = &["router", "worker", "audit", "control", "operator"];
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
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io(path))?;
    f.write_all(contents.as_bytes()).map_err(io(path))
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

    let spiffe = SpiffeId::component(trust_domain, component).to_string();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("bulkhead-{component}"));
    params.distinguished_name = dn;
    params.subject_alt_names = vec![
        SanType::URI(spiffe.as_str().try_into()?),
        SanType::DnsName("localhost".try_into()?),
        SanType::DnsName(component.try_into()?),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
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
    write(
        &dir.join(format!("{component}.key")),
        &key.serialize_pem(),
        true,
    )?;
    write(&dir.join(format!("{component}.pem")), &cert.pem(), false)?;
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
            let id = bulkhead_proto::identity::spiffe_id_of_der(&der(&dir
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
        issue(dir.path(), "example.org", "extra-1", 30).unwrap();
        assert_eq!(
            bulkhead_proto::identity::spiffe_id_of_der(&der(&dir.path().join("extra-1.pem"))),
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
}
