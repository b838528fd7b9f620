//! NATS pinned to the current certificates in Kubernetes too: `bulkhead
//! deploy render --pin-certs DIR` puts the public keys of the NATS users'
//! unrevoked certificates into the `bulkhead-nats-auth` ConfigMap
//! (`bulkhead-pins.conf`), the chart renders the same from `nats.pins`, and a
//! real nats-server reads it inside its `tls` block.
use std::path::Path;
use std::process::Command;

use bulkhead_cli::{nats_conf, pki};
use serde_json::Value;

use super::render_example_into;

fn render_with(certs: &Path) -> Value {
    let out = tempfile::tempdir().unwrap();
    let st = render_example_into(out.path(), &["--pin-certs".as_ref(), certs.as_os_str()]);
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let text = std::fs::read_to_string(out.path().join("nats-auth.yaml")).unwrap();
    serde_norway::from_str(&text).unwrap()
}

#[test]
fn render_pins_the_unrevoked_nats_users_and_nats_server_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path();
    let td = "bulkhead.local";
    pki::init(certs, td, &["control", "audit", "nats"], 30, false).unwrap();
    for r in ["router-0", "router-1"] {
        pki::issue_for_replica(certs, td, r, 30, &[]).unwrap();
    }
    let routers = vec!["router-0".to_string(), "router-1".to_string()];
    let all = nats_conf::pinned_from_certs(certs, &routers).unwrap();
    assert_eq!(all.len(), 4);
    let before = render_with(certs);
    let conf = before["data"]["bulkhead-pins.conf"].as_str().unwrap();
    assert_eq!(conf, nats_conf::render_pins(&all));

    // Revoked: gone from the pins at the next render.
    let serial = pki::serial_of(&certs.join("router.router-1.pem")).unwrap();
    pki::revoke(certs, &serial).unwrap();
    let after = render_with(certs);
    let conf = after["data"]["bulkhead-pins.conf"].as_str().unwrap();
    let kept = nats_conf::pinned_from_certs(certs, &routers).unwrap();
    assert_eq!(kept.len(), 3);
    assert!(
        all.iter()
            .all(|p| kept.contains(p) == conf.contains(p.as_str()))
    );

    // A replica without a certificate is a clear error, not a silent gap.
    let missing = dir.path().join("missing");
    let e = render_example_into(
        &dir.path().join("out"),
        &["--pin-certs".as_ref(), missing.as_os_str()],
    );
    assert!(!e.status.success());
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("pinning the NATS users' certificates"),
        "{}",
        String::from_utf8_lossy(&e.stderr)
    );

    // The chart, given the same pins, renders the same file.
    let values = dir.path().join("pins.yaml");
    let list: Vec<String> = kept.iter().map(|p| format!("\"{p}\"")).collect();
    std::fs::write(&values, format!("nats:\n  pins: [{}]\n", list.join(", "))).unwrap();
    let text = super::helm::template(Some(&values)).unwrap();
    let cm = super::helm::documents(&text)
        .into_iter()
        .find(|d| d["metadata"]["name"] == "bulkhead-nats-auth")
        .unwrap();
    assert_eq!(cm["data"]["bulkhead-pins.conf"].as_str(), Some(conf));

    // A real nats-server takes it inside its tls block (and checks each
    // pin's form: a broken one is refused).
    let write_server_conf = |pins: &str| {
        std::fs::write(dir.path().join("bulkhead-pins.conf"), pins).unwrap();
        std::fs::write(
            dir.path().join("bulkhead-auth.conf"),
            before["data"]["bulkhead-auth.conf"].as_str().unwrap(),
        )
        .unwrap();
        let main = dir.path().join("nats.conf");
        let p = |f: &str| certs.join(f).display().to_string();
        std::fs::write(
            &main,
            format!(
                "listen: 127.0.0.1:-1\ntls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify_and_map: true\n  include \"bulkhead-pins.conf\"\n}}\ninclude \"bulkhead-auth.conf\"\n",
                p("nats.pem"),
                p("nats.key"),
                p("ca.pem")
            ),
        )
        .unwrap();
        Command::new(bulkhead_e2e::nats_server_binary())
            .arg("-c")
            .arg(&main)
            .arg("-t")
            .output()
            .expect("running nats-server (scripts/ensure-nats.sh)")
    };
    let ok = write_server_conf(conf);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = write_server_conf("pinned_certs: [\"not-a-pin\"]\n");
    assert!(!bad.status.success());
}
