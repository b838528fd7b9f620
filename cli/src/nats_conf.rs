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
//! | `control` | create the KV buckets, the audit stream and the audit-service's consumer; read and write the tenants and API-key buckets; read router heartbeats and usage records |
//! | `audit` | read the tenants and API-key buckets; fetch from and ack on its own durable consumer of the audit stream |
//! | `router.<R>`, one per router replica | read the tenants and API-key buckets; read heartbeats and write only its own (key `<R>`); read usage records and write only its own (keys `*.*.<R>.*`); publish `bulkhead.audit.*`; look the audit stream up |
//!
//! Each router replica has an identity of its own
//! (`.../bulkhead/router/replica/<R>`, `bulkhead certs issue --component
//! router --replica <R>`), so one router cannot write another's heartbeat
//! (claim its service, or fake replicas that divide every limit). The shared
//! router id (`.../bulkhead/router`), a worker's and the operator's
//! certificates map to no user and are refused, and so is a certificate
//! whose key is not pinned: the `pinned_certs` list holds the public keys of
//! the current, unrevoked certificates of the users, so `bulkhead certs
//! revoke` followed by a reload (SIGHUP) shuts a revoked certificate out of
//! NATS too. Replies reach each user on an inbox prefix of its own
//! (`_INBOX_<certificate name>.`: `_INBOX_control.`, `_INBOX_router.<R>.`;
//! `bulkhead_directory::connect_nats` sets it), so no user can subscribe to
//! another's replies, and nobody may subscribe to the audit subjects.
//!
//! `bulkhead dev`, `bulkhead deploy render` and the Helm chart all take
//! their NATS authorization from [`render`].
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bulkhead_proto::names;

/// The components that talk to NATS (routers as one user per replica).
pub const NATS_COMPONENTS: &[&str] = &["control", "router", "audit"];

/// The audit-service's durable consumer (as `bulkhead_directory` names it).
const AUDIT_CONSUMER: &str = "bulkhead-audit";

/// One NATS user: the SPIFFE id its certificate carries and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsUser {
    pub component: &'static str,
    /// The stem of its certificate's file name: the component, or
    /// `router.<R>` for router replica `R` (see `crate::pki::cert_name`).
    pub cert_name: String,
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

/// Creating bucket `b` and updating its settings (the control-plane only:
/// it forbids rollups on the buckets routers write).
fn kv_create(b: &str) -> Vec<String> {
    vec![
        format!("$JS.API.STREAM.CREATE.KV_{b}"),
        format!("$JS.API.STREAM.UPDATE.KV_{b}"),
    ]
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

/// The users and their permissions for trust domain `td`, with one router
/// user per replica id in `routers`.
pub fn users(td: &str, routers: &[String]) -> Vec<NatsUser> {
    let id = |c: &str| format!("spiffe://{td}/bulkhead/{c}");
    let inbox = |c: &str| vec![format!("_INBOX_{c}.>")];
    let (tenants, keys) = (names::TENANTS_BUCKET, names::API_KEYS_BUCKET);
    let s = names::AUDIT_STREAM;
    let mut control = vec!["$JS.API.INFO".to_string()];
    for b in [tenants, keys, names::ROUTERS_BUCKET, names::USAGE_BUCKET] {
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

    let mut audit = vec!["$JS.API.INFO".to_string()];
    for b in [tenants, keys] {
        audit.extend(kv_read(b));
    }
    audit.extend(audit_lookup());
    audit.extend([
        format!("$JS.API.CONSUMER.MSG.NEXT.{s}.{AUDIT_CONSUMER}"),
        format!("$JS.ACK.{s}.{AUDIT_CONSUMER}.>"),
    ]);

    let mut users = vec![
        NatsUser {
            component: "control",
            cert_name: "control".into(),
            spiffe_id: id("control"),
            publish: control,
            subscribe: inbox("control"),
        },
        NatsUser {
            component: "audit",
            cert_name: "audit".into(),
            spiffe_id: id("audit"),
            publish: audit,
            subscribe: inbox("audit"),
        },
    ];
    users.extend(routers.iter().map(|r| router_user(td, r)));
    users
}

/// Router replica `r`: reads tenants, keys and heartbeats, writes only its
/// own heartbeat key, publishes audit events.
fn router_user(td: &str, r: &str) -> NatsUser {
    let (tenants, keys, routers) = (
        names::TENANTS_BUCKET,
        names::API_KEYS_BUCKET,
        names::ROUTERS_BUCKET,
    );
    let mut publish = vec!["$JS.API.INFO".to_string()];
    for b in [tenants, keys, routers, names::USAGE_BUCKET] {
        publish.extend(kv_read(b));
    }
    publish.push(format!("$KV.{routers}.{r}"));
    // Its own usage records only (`names::usage_key`: month.day.router.tenant).
    publish.push(format!("$KV.{}.*.*.{r}.*", names::USAGE_BUCKET));
    publish.extend(audit_lookup());
    publish.push(format!("{}.*", names::AUDIT_SUBJECT_PREFIX));
    let cert_name = format!("router.{r}");
    NatsUser {
        component: "router",
        spiffe_id: format!("spiffe://{td}/bulkhead/router/replica/{r}"),
        publish,
        subscribe: vec![format!("_INBOX_{cert_name}.>")],
        cert_name,
    }
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
    /// The router replicas' ids (one NATS user each).
    pub routers: Vec<String>,
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

const AUTH_HEAD: &str = "# Generated by Bulkhead (cli/src/nats_conf.rs): each component's\n\
     # certificate maps by its SPIFFE id to a user with only its subjects\n\
     # (each router replica its own).\n\
     authorization {\n  users = [\n";
const AUTH_TAIL: &str = "  ]\n}\n";

fn user_block(u: &NatsUser) -> String {
    format!(
        "    {{\n      # {}\n      user: {}\n      permissions: {{\n        publish: {{ allow: {} }}\n        subscribe: {{ allow: {} }}\n      }}\n    }}\n",
        u.cert_name,
        quote(&u.spiffe_id),
        list(&u.publish),
        list(&u.subscribe),
    )
}

/// The authorization block alone (the rendered `bulkhead-nats-auth`
/// ConfigMap), with a user for each router replica in `routers`.
pub fn render_authorization(trust_domain: &str, routers: &[String]) -> String {
    let mut out = String::from(AUTH_HEAD);
    for u in users(trust_domain, routers) {
        out.push_str(&user_block(&u));
    }
    out.push_str(AUTH_TAIL);
    out
}

/// The Helm chart's copies (`files/<name>`): the authorization with
/// `@TRUST_DOMAIN@` for the trust domain and `@ROUTER_USERS@` where the
/// router users go, and one router user with `@ROUTER_ID@` for its replica
/// id, which the chart repeats per replica. Filled in, they give exactly
/// [`render_authorization`] (a test checks).
pub fn helm_files() -> [(&'static str, String); 2] {
    const TD: &str = "@TRUST_DOMAIN@";
    let mut auth = String::from(AUTH_HEAD);
    for u in users(TD, &[]) {
        auth.push_str(&user_block(&u));
    }
    auth.push_str("@ROUTER_USERS@");
    auth.push_str(AUTH_TAIL);
    let router = user_block(&router_user(TD, "@ROUTER_ID@"));
    [("nats-auth.conf", auth), ("nats-router-user.conf", router)]
}

fn pins_line(pins: &[String]) -> String {
    format!("pinned_certs: {}\n", list(pins))
}

/// The pins alone, for a nats-server `tls { include "bulkhead-pins.conf" }`
/// (the rendered ConfigMap's `bulkhead-pins.conf`, from [`pinned_from_certs`]).
pub fn render_pins(pins: &[String]) -> String {
    format!(
        "# Generated by Bulkhead (cli/src/nats_conf.rs): the public keys of the\n\
         # current, unrevoked NATS users' certificates; include it in the tls block.\n{}",
        pins_line(pins)
    )
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
        let _ = write!(out, "  {}", pins_line(pins));
    }
    let _ = writeln!(out, "}}");
    out.push_str(&render_authorization(&c.trust_domain, &c.routers));
    out
}

/// The certificate files of the NATS users (router replicas `routers`).
pub fn user_cert_files(certs_dir: &Path, routers: &[String]) -> Vec<PathBuf> {
    users("-", routers)
        .iter()
        .map(|u| certs_dir.join(format!("{}.pem", u.cert_name)))
        .collect()
}

/// The pins of the NATS users' certificates in `certs_dir` (router
/// replicas `routers`) that the CRL there does not revoke: hex SHA-256 of
/// each certificate's SubjectPublicKeyInfo (what nats-server's
/// `pinned_certs` compares).
pub fn pinned_from_certs(certs_dir: &Path, routers: &[String]) -> Result<Vec<String>, String> {
    use sha2::{Digest, Sha256};
    use x509_parser::prelude::*;
    let crl = bulkhead_identity::tls::crl_path_in(certs_dir);
    let crls = bulkhead_identity::tls::read_crls(&crl).map_err(|e| e.to_string())?;
    let revoked = bulkhead_identity::tls::revoked_serials(&crls);
    let mut pins = vec![];
    for path in user_cert_files(certs_dir, routers) {
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

    fn two() -> Vec<String> {
        vec!["r-0".into(), "r-1".into()]
    }

    fn user<'a>(us: &'a [NatsUser], name: &str) -> &'a NatsUser {
        us.iter().find(|u| u.cert_name == name).unwrap()
    }

    #[test]
    fn only_the_control_plane_writes_tenants_and_keys() {
        let us = users("bulkhead.local", &two());
        for u in &us {
            let writes = u.publish.iter().any(|s| {
                s.starts_with("$KV.bulkhead_tenants") || s.starts_with("$KV.bulkhead_api_keys")
            });
            assert_eq!(writes, u.component == "control", "{}", u.cert_name);
        }
    }

    #[test]
    fn each_router_writes_only_its_own_heartbeat_and_usage() {
        let us = users("bulkhead.local", &two());
        for u in &us {
            let beats: Vec<&String> = u
                .publish
                .iter()
                .filter(|s| s.starts_with("$KV.bulkhead_routers"))
                .collect();
            match u.cert_name.strip_prefix("router.") {
                Some(r) => assert_eq!(beats, [&format!("$KV.bulkhead_routers.{r}")]),
                None => assert!(beats.is_empty(), "{}", u.cert_name),
            }
            // No wildcard anywhere in a router's KV writes but in its own
            // usage records' month, day and tenant tokens (its id fixed).
            if let Some(r) = u.cert_name.strip_prefix("router.") {
                let own_usage = format!("$KV.bulkhead_usage.*.*.{r}.*");
                for p in &u.publish {
                    assert!(
                        !p.starts_with("$KV.") || !p.contains(['*', '>']) || *p == own_usage,
                        "{p}"
                    );
                }
                assert!(u.publish.contains(&own_usage), "{}", u.cert_name);
            }
        }
    }

    #[test]
    fn only_the_audit_service_consumes_and_nobody_subscribes_to_audit_events() {
        let us = users("bulkhead.local", &two());
        for u in &us {
            let consumes = u.publish.iter().any(|s| {
                s.contains("MSG.NEXT.BULKHEAD_AUDIT") || s.starts_with("$JS.ACK.BULKHEAD_AUDIT")
            });
            assert_eq!(consumes, u.component == "audit", "{}", u.cert_name);
            assert_eq!(u.subscribe, vec![format!("_INBOX_{}.>", u.cert_name)]);
        }
        assert!(
            user(&us, "router.r-1")
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
        let us = users("example.org", &two());
        let ids: Vec<_> = us.iter().map(|u| u.spiffe_id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "spiffe://example.org/bulkhead/control",
                "spiffe://example.org/bulkhead/audit",
                "spiffe://example.org/bulkhead/router/replica/r-0",
                "spiffe://example.org/bulkhead/router/replica/r-1",
            ]
        );
        let text = render_authorization("example.org", &two());
        assert!(!text.contains("worker") && !text.contains("operator"));
        // The shared router id is no user: it could speak for any replica.
        assert!(!text.contains("\"spiffe://example.org/bulkhead/router\""));
    }

    #[test]
    fn the_helm_files_filled_in_are_the_rendered_authorization() {
        let [(_, auth), (_, router)] = helm_files();
        let routers = two();
        let users: String = routers
            .iter()
            .map(|r| router.replace("@ROUTER_ID@", r))
            .collect();
        let filled = auth
            .replace("@ROUTER_USERS@", &users)
            .replace("@TRUST_DOMAIN@", "example.org");
        assert_eq!(filled, render_authorization("example.org", &routers));
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
            routers: two(),
            pinned: Some(vec!["ab".repeat(32)]),
        };
        let t = render(&c);
        assert!(t.contains("verify_and_map: true"), "{t}");
        assert!(
            t.contains(&format!("pinned_certs: [\"{}\"]", "ab".repeat(32))),
            "{t}"
        );
        assert!(
            t.contains("user: \"spiffe://bulkhead.local/bulkhead/router/replica/r-1\""),
            "{t}"
        );
        let unpinned = render(&NatsConfig { pinned: None, ..c });
        assert!(!unpinned.contains("pinned_certs"));
    }

    #[test]
    fn pins_cover_each_replica_and_skip_the_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        crate::pki::init(d, "bulkhead.local", &["control", "audit"], 30, false).unwrap();
        for r in two() {
            crate::pki::issue_for_replica(d, "bulkhead.local", &r, 30, &[]).unwrap();
        }
        assert_eq!(pinned_from_certs(d, &two()).unwrap().len(), 4);
        let serial = crate::pki::serial_of(&d.join("router.r-1.pem")).unwrap();
        crate::pki::revoke(d, &serial).unwrap();
        assert_eq!(pinned_from_certs(d, &two()).unwrap().len(), 3);
        // A replica without a certificate is a clear error.
        let e = pinned_from_certs(d, &["r-9".into()]).unwrap_err();
        assert!(e.contains("router.r-9.pem"), "{e}");
    }
}
