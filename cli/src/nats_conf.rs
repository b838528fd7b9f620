//! The nats-server configuration Bulkhead runs NATS with (pure: no I/O
//! except [`pinned_from_certs`], which reads a certificates folder).
//!
//! Least privilege on NATS: mutual TLS with the cluster CA, and each client
//! certificate mapped by its SPIFFE id (a URI SAN; nats-server's
//! `verify_and_map`) to a user of its own with only the subjects its job
//! needs:
//!
//! | user | may |
//! |---|---|
//! | `control` | create the KV buckets, the audit stream and the audit-service's consumer; read and write the tenants and API-key buckets; read router heartbeats |
//! | `router` | read the tenants and API-key buckets; write and read heartbeats; publish `bulkhead.audit.*`; look the audit stream up |
//! | `audit` | read the tenants and API-key buckets; fetch from and ack on its own durable consumer of the audit stream |
//!
//! Every other certificate of the cluster (a worker's, the operator's) maps
//! to no user and is refused, and so is a certificate whose key is not
//! pinned: the `pinned_certs` list holds the public keys of the current,
//! unrevoked component certificates, so `bulkhead certs revoke` followed by
//! a reload (SIGHUP) shuts a revoked certificate out of NATS too. Replies
//! reach each user on an inbox prefix of its own (`_INBOX_<component>.`;
//! `bulkhead_directory::connect_nats` sets it), so no user can subscribe to
//! another's replies, and nobody may subscribe to the audit subjects.
//!
//! `bulkhead dev`, `bulkhead deploy render` and the Helm chart all take
//! their NATS authorization from [`render`].
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bulkhead_proto::names;

/// The components that talk to NATS, each as its own user.
pub const NATS_USERS: &[&str] = &["control", "router", "audit"];

/// The audit-service's durable consumer (as `bulkhead_directory` names it).
const AUDIT_CONSUMER: &str = "bulkhead-audit";

/// One NATS user: the SPIFFE id its certificate carries and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsUser {
    pub component: &'static str,
    pub spiffe_id: String,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// The subjects a reader of KV bucket `b` needs (get, keys, watch).
fn kv_read(b: &str) -> Vec<String> {
    let s = format!("KV_{b}");
    vec![
        format!("$JS.API.STREAM.INFO.{s}"),
        format!("$JS.API.STREAM.MSG.GET.{s}"),
        format!("$JS.API.DIRECT.GET.{s}"),
        format!("$JS.API.DIRECT.GET.{s}.>"),
        format!("$JS.API.CONSUMER.CREATE.{s}"),
        format!("$JS.API.CONSUMER.CREATE.{s}.>"),
        format!("$JS.API.CONSUMER.INFO.{s}.>"),
        format!("$JS.API.CONSUMER.DELETE.{s}.>"),
        format!("$JS.FC.{s}.>"),
    ]
}

/// Writing (put, create, update, delete) keys of bucket `b`.
fn kv_write(b: &str) -> Vec<String> {
    vec![format!("$KV.{b}.>")]
}

/// Creating bucket `b` (the control-plane only).
fn kv_create(b: &str) -> Vec<String> {
    vec![format!("$JS.API.STREAM.CREATE.KV_{b}")]
}

/// Looking up the audit stream and its consumer (whoever publishes or
/// consumes checks they exist).
fn audit_lookup() -> Vec<String> {
    let s = names::AUDIT_STREAM;
    vec![
        format!("$JS.API.STREAM.INFO.{s}"),
        format!("$JS.API.CONSUMER.INFO.{s}.{AUDIT_CONSUMER}"),
    ]
}

/// The users and their permissions for trust domain `td`.
pub fn users(td: &str) -> Vec<NatsUser> {
    let id = |c: &str| format!("spiffe://{td}/bulkhead/{c}");
    let inbox = |c: &str| vec![format!("_INBOX_{c}.>")];
    let (tenants, keys, routers) = (
        names::TENANTS_BUCKET,
        names::API_KEYS_BUCKET,
        names::ROUTERS_BUCKET,
    );
    let s = names::AUDIT_STREAM;
    let mut control = vec!["$JS.API.INFO".to_string()];
    for b in [tenants, keys, routers] {
        control.extend(kv_create(b));
        control.extend(kv_read(b));
    }
    control.extend(kv_write(tenants));
    control.extend(kv_write(keys));
    control.extend(audit_lookup());
    control.extend([
        format!("$JS.API.STREAM.CREATE.{s}"),
        format!("$JS.API.STREAM.UPDATE.{s}"),
        format!("$JS.API.CONSUMER.CREATE.{s}.{AUDIT_CONSUMER}"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{s}.{AUDIT_CONSUMER}"),
    ]);

    let mut router = vec!["$JS.API.INFO".to_string()];
    for b in [tenants, keys, routers] {
        router.extend(kv_read(b));
    }
    router.extend(kv_write(routers));
    router.extend(audit_lookup());
    router.push(format!("{}.*", names::AUDIT_SUBJECT_PREFIX));

    let mut audit = vec!["$JS.API.INFO".to_string()];
    for b in [tenants, keys] {
        audit.extend(kv_read(b));
    }
    audit.extend(audit_lookup());
    audit.extend([
        format!("$JS.API.CONSUMER.MSG.NEXT.{s}.{AUDIT_CONSUMER}"),
        format!("$JS.ACK.{s}.{AUDIT_CONSUMER}.>"),
    ]);

    vec![
        NatsUser {
            component: "control",
            spiffe_id: id("control"),
            publish: control,
            subscribe: inbox("control"),
        },
        NatsUser {
            component: "router",
            spiffe_id: id("router"),
            publish: router,
            subscribe: inbox("router"),
        },
        NatsUser {
            component: "audit",
            spiffe_id: id("audit"),
            publish: audit,
            subscribe: inbox("audit"),
        },
    ]
}

/// Where the server's own files are.
#[derive(Clone, Debug)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// What [`render`] needs.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// `host:port` to listen on (`None`: as the command line says).
    pub listen: Option<String>,
    /// JetStream's store folder (`None`: as the command line says).
    pub store_dir: Option<PathBuf>,
    pub tls: ServerFiles,
    pub trust_domain: String,
    /// Hex SHA-256 of the public keys admitted (`None`: any key the CA
    /// signed; a deployment whose certificates rotate often, see
    /// `deploy/README.md`).
    pub pinned: Option<Vec<String>>,
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn list(items: &[String]) -> String {
    let q: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", q.join(", "))
}

/// The authorization block alone (the Helm chart's `nats-auth.conf`).
pub fn render_authorization(trust_domain: &str) -> String {
    let mut out = String::from(
        "# Generated by Bulkhead (cli/src/nats_conf.rs): each component's\n\
         # certificate maps by its SPIFFE id to a user with only its subjects.\n\
         authorization {\n  users = [\n",
    );
    for u in users(trust_domain) {
        let _ = writeln!(
            out,
            "    {{\n      # {}\n      user: {}\n      permissions: {{\n        publish: {{ allow: {} }}\n        subscribe: {{ allow: {} }}\n      }}\n    }}",
            u.component,
            quote(&u.spiffe_id),
            list(&u.publish),
            list(&u.subscribe),
        );
    }
    out.push_str("  ]\n}\n");
    out
}

/// A whole nats-server configuration file.
pub fn render(c: &NatsConfig) -> String {
    let p = |p: &Path| quote(&p.to_string_lossy());
    let mut out = String::new();
    if let Some(l) = &c.listen {
        let _ = writeln!(out, "listen: {}", quote(l));
    }
    if let Some(d) = &c.store_dir {
        let _ = writeln!(out, "jetstream {{ store_dir: {} }}", p(d));
    }
    let _ = writeln!(out, "tls {{");
    let _ = writeln!(out, "  cert_file: {}", p(&c.tls.cert));
    let _ = writeln!(out, "  key_file: {}", p(&c.tls.key));
    let _ = writeln!(out, "  ca_file: {}", p(&c.tls.ca));
    let _ = writeln!(out, "  verify_and_map: true");
    if let Some(pins) = &c.pinned {
        let _ = writeln!(out, "  pinned_certs: {}", list(pins));
    }
    let _ = writeln!(out, "}}");
    out.push_str(&render_authorization(&c.trust_domain));
    out
}

/// The pins of the NATS users' certificates in `certs_dir` that the CRL
/// there does not revoke: hex SHA-256 of each certificate's
/// SubjectPublicKeyInfo (what nats-server's `pinned_certs` compares).
pub fn pinned_from_certs(certs_dir: &Path) -> Result<Vec<String>, String> {
    use sha2::{Digest, Sha256};
    use x509_parser::prelude::*;
    let crl = bulkhead_identity::tls::crl_path_in(certs_dir);
    let crls = bulkhead_identity::tls::read_crls(&crl).map_err(|e| e.to_string())?;
    let revoked = bulkhead_identity::tls::revoked_serials(&crls);
    let mut pins = vec![];
    for c in NATS_USERS {
        let path = certs_dir.join(format!("{c}.pem"));
        let certs = bulkhead_identity::tls::read_certs(&path).map_err(|e| e.to_string())?;
        let Some(der) = certs.first() else {
            return Err(format!("{} holds no certificate", path.display()));
        };
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| format!("{}: not a certificate: {e}", path.display()))?;
        if revoked.contains(&bulkhead_identity::tls::serial_hex(cert.raw_serial())) {
            continue;
        }
        pins.push(hex::encode(Sha256::digest(cert.public_key().raw)));
    }
    Ok(pins)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user<'a>(us: &'a [NatsUser], c: &str) -> &'a NatsUser {
        us.iter().find(|u| u.component == c).unwrap()
    }

    #[test]
    fn only_the_control_plane_writes_tenants_and_keys() {
        let us = users("bulkhead.local");
        for u in &us {
            let writes = u.publish.iter().any(|s| {
                s.starts_with("$KV.bulkhead_tenants") || s.starts_with("$KV.bulkhead_api_keys")
            });
            assert_eq!(writes, u.component == "control", "{}", u.component);
        }
    }

    #[test]
    fn only_the_audit_service_consumes_and_nobody_subscribes_to_audit_events() {
        let us = users("bulkhead.local");
        for u in &us {
            let consumes = u.publish.iter().any(|s| {
                s.contains("MSG.NEXT.BULKHEAD_AUDIT") || s.starts_with("$JS.ACK.BULKHEAD_AUDIT")
            });
            assert_eq!(consumes, u.component == "audit", "{}", u.component);
            assert_eq!(u.subscribe, vec![format!("_INBOX_{}.>", u.component)]);
        }
        assert!(
            user(&us, "router")
                .publish
                .contains(&"bulkhead.audit.*".to_string())
        );
        assert!(
            !user(&us, "audit")
                .publish
                .iter()
                .any(|s| s.starts_with("bulkhead.audit"))
        );
    }

    #[test]
    fn users_are_spiffe_ids_of_the_trust_domain_and_workers_have_none() {
        let us = users("example.org");
        let ids: Vec<_> = us.iter().map(|u| u.spiffe_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "spiffe://example.org/bulkhead/control",
                "spiffe://example.org/bulkhead/router",
                "spiffe://example.org/bulkhead/audit"
            ]
        );
        let text = render_authorization("example.org");
        assert!(!text.contains("worker") && !text.contains("operator"));
    }

    #[test]
    fn render_pins_and_maps() {
        let c = NatsConfig {
            listen: Some("0.0.0.0:4222".into()),
            store_dir: Some("/tmp/js".into()),
            tls: ServerFiles {
                cert: "/c/nats.pem".into(),
                key: "/c/nats.key".into(),
                ca: "/c/ca.pem".into(),
            },
            trust_domain: "bulkhead.local".into(),
            pinned: Some(vec!["ab".repeat(32)]),
        };
        let t = render(&c);
        assert!(t.contains("verify_and_map: true"), "{t}");
        assert!(
            t.contains(&format!("pinned_certs: [\"{}\"]", "ab".repeat(32))),
            "{t}"
        );
        assert!(
            t.contains("user: \"spiffe://bulkhead.local/bulkhead/router\""),
            "{t}"
        );
        let unpinned = render(&NatsConfig { pinned: None, ..c });
        assert!(!unpinned.contains("pinned_certs"));
    }
}
