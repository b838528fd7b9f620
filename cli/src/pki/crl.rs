//! Revocation: `<dir>/crl.pem`, a CRL signed by the CA listing every revoked
//! serial. Each revocation re-signs the whole list with the next CRL number
//! and replaces the file atomically, so a server polling it never reads half
//! a CRL. Servers load it when present (`bulkhead_identity::tls`).
use std::path::Path;

use bulkhead_identity::tls::{crl_path_in, serial_and_not_after, serial_hex};
use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::{PkiError, io, write};

/// How long a CRL stays valid without a new revocation.
const CRL_DAYS: i64 = 365;

/// What [`revoke`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Serial number (hex) now on the CRL.
    pub serial: String,
    /// False when it already was.
    pub newly: bool,
    /// Serials on the CRL in all.
    pub total: usize,
}

/// The serial (hex) of the certificate in a PEM file.
pub fn serial_of(pem_path: &Path) -> Result<String, PkiError> {
    let certs = bulkhead_identity::tls::read_certs(pem_path).map_err(|e| PkiError::Cert {
        path: pem_path.display().to_string(),
        reason: e.to_string(),
    })?;
    serial_and_not_after(certs[0].as_ref())
        .map(|(s, _)| s)
        .ok_or_else(|| PkiError::Cert {
            path: pem_path.display().to_string(),
            reason: "not an X.509 certificate".into(),
        })
}

/// One revoked serial (bytes) and when it was revoked.
type Entry = (Vec<u8>, OffsetDateTime);

/// The entries and number of the CRL in `dir`.
fn existing(dir: &Path) -> Result<(Vec<Entry>, u64), PkiError> {
    use x509_parser::prelude::*;
    let path = crl_path_in(dir);
    let crls = bulkhead_identity::tls::read_crls(&path).map_err(|e| PkiError::Cert {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut entries = Vec::new();
    let mut number = 0u64;
    for der in &crls {
        let (_, crl) =
            CertificateRevocationList::from_der(der.as_ref()).map_err(|e| PkiError::Cert {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        if let Some(n) = crl.crl_number().and_then(|n| u64::try_from(n).ok()) {
            number = number.max(n);
        }
        for r in crl.iter_revoked_certificates() {
            let when = OffsetDateTime::from_unix_timestamp(r.revocation_date.timestamp())
                .unwrap_or_else(|_| OffsetDateTime::now_utc());
            entries.push((r.raw_serial().to_vec(), when));
        }
    }
    Ok((entries, number))
}

/// Puts `serial_hex_in` (hex, as `bulkhead certs` prints it) on the CRL in
/// `dir`, signed with the CA there.
pub fn revoke(dir: &Path, serial_hex_in: &str) -> Result<Revoked, PkiError> {
    let wanted = hex::decode(
        serial_hex_in
            .trim()
            .trim_start_matches("0x")
            .replace(':', ""),
    )
    .map_err(|_| PkiError::BadSerial(serial_hex_in.to_string()))?;
    if wanted.is_empty() || wanted.len() > 20 {
        return Err(PkiError::BadSerial(serial_hex_in.to_string()));
    }
    let wanted = serial_hex(&wanted);
    let (mut entries, number) = existing(dir)?;
    let newly = !entries.iter().any(|(s, _)| serial_hex(s) == wanted);
    let now = OffsetDateTime::now_utc();
    if newly {
        entries.push((hex::decode(&wanted).unwrap_or_default(), now));
    }
    let ca_key_path = dir.join("ca.key");
    let ca_pem_path = dir.join("ca.pem");
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?)?;
    let ca_pem = std::fs::read_to_string(&ca_pem_path).map_err(io(&ca_pem_path))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let params = CertificateRevocationListParams {
        this_update: now - Duration::minutes(1),
        next_update: now + Duration::days(CRL_DAYS),
        crl_number: SerialNumber::from(number + 1),
        issuing_distribution_point: None,
        revoked_certs: entries
            .iter()
            .map(|(serial, when)| RevokedCertParams {
                serial_number: SerialNumber::from_slice(serial),
                revocation_time: *when,
                reason_code: Some(RevocationReason::Superseded),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer)?;
    write(&crl_path_in(dir), &crl.pem()?, false)?;
    Ok(Revoked {
        serial: wanted,
        newly,
        total: entries.len(),
    })
}
