//! Invariant 4 under crashes: events flow into JetStream at a few thousand
//! per second while the audit-service is killed with SIGKILL twice and
//! restarted; afterwards every event is stored exactly once (each tenant's
//! log holds exactly its unique request ids, chain intact).
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use async_nats::jetstream::{self, message::PublishMessage};
use bulkhead_e2e::{NatsServer, Proc, bin_path, wait_ready_file};
use bulkhead_proto::audit::AuditEvent;
use bulkhead_proto::{Message, names};

const TENANTS: [&str; 4] = ["acme", "globex", "initech", "umbrella"];
const EVENTS: usize = 6000;

fn start_audit(dir: &std::path::Path, nats: &str, n: usize) -> Result<Proc> {
    let ready = dir.join(format!("audit-{n}.json"));
    let mut cmd = Command::new(bin_path("bulkhead-audit"));
    cmd.args(["--nats-url", nats, "--listen", "127.0.0.1:0"])
        .arg("--certs-dir")
        .arg(dir.join("certs"))
        .arg("--data-dir")
        .arg(dir.join("audit"))
        .arg("--master-key-file")
        .arg(dir.join("master.key"))
        .arg("--create-master-key")
        .arg("--ready-file")
        .arg(&ready);
    let mut p = Proc::spawn(&format!("audit-{n}"), cmd, dir)?;
    wait_ready_file(&ready, &mut p, Duration::from_secs(30))?;
    Ok(p)
}

/// Per-tenant record counts from `bulkhead-audit verify` (which also checks
/// every chain).
fn stored(dir: &std::path::Path) -> Result<HashMap<String, usize>> {
    let out = Command::new(bin_path("bulkhead-audit"))
        .arg("verify")
        .arg("--data-dir")
        .arg(dir.join("audit"))
        .arg("--master-key-file")
        .arg(dir.join("master.key"))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut counts = HashMap::new();
    for line in text.lines() {
        ensure!(!line.contains("FAILED"), "verify: {line}");
        if let Some((tenant, rest)) = line.split_once(": ok, ") {
            let n: usize = rest.split_whitespace().next().unwrap_or("0").parse()?;
            counts.insert(tenant.to_string(), n);
        }
    }
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_flow_stores_every_event_exactly_once() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let st = Command::new(bin_path("bulkhead"))
        .args(["certs", "init", "--dir"])
        .arg(dir.join("certs"))
        .output()?;
    ensure!(st.status.success());
    let nats = NatsServer::start()?;
    let mut audit = start_audit(dir, &nats.url, 0)?;

    let js = jetstream::new(async_nats::connect(&nats.url).await?);
    let publisher = tokio::spawn(async move {
        let mut expected: HashMap<&str, usize> = HashMap::new();
        let mut ids: HashMap<&str, Vec<String>> = HashMap::new();
        for i in 0..EVENTS {
            let tenant = TENANTS[i % TENANTS.len()];
            let ev = AuditEvent {
                request_id: format!("req-{i:06}"),
                tenant_id: tenant.into(),
                model: "m".into(),
                status: "ok".into(),
                ..Default::default()
            };
            // Every 10th event is published twice (a router retry).
            let copies = if i % 10 == 0 { 2 } else { 1 };
            for _ in 0..copies {
                let msg = PublishMessage::build()
                    .payload(ev.encode_to_vec().into())
                    .message_id(ev.request_id.clone());
                js.send_publish(names::audit_subject(tenant), msg)
                    .await?
                    .await?;
            }
            *expected.entry(tenant).or_default() += 1;
            ids.entry(tenant).or_default().push(ev.request_id.clone());
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await; // a few thousand/s
            }
        }
        anyhow::Ok((expected, ids))
    });

    // Kill -9 twice while events flow, restarting each time.
    for n in 1..=2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        audit.child.kill()?; // SIGKILL
        audit.child.wait()?;
        audit = start_audit(dir, &nats.url, n)?;
    }
    let (expected, ids) = publisher.await??;
    let deadline = Instant::now() + Duration::from_secs(60);
    let counts = loop {
        let c = stored(dir)?;
        let done = TENANTS.iter().all(|t| c.get(*t) == expected.get(t));
        if done || Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for t in TENANTS {
        ensure!(
            counts.get(t) == expected.get(t),
            "{t}: stored {:?}, published {:?} unique",
            counts.get(t),
            expected.get(t)
        );
    }
    // Not just as many: exactly the published request ids, each once.
    let store = bulkhead_audit::store::AuditStore::open_readonly(
        &dir.join("audit"),
        std::sync::Arc::new(bulkhead_audit::keys::LocalMasterKey::from_file(
            &dir.join("master.key"),
            false,
        )?),
    );
    for t in TENANTS {
        let mut got: Vec<String> = store
            .read(t)?
            .frames
            .into_iter()
            .map(|f| f.event.request_id)
            .collect();
        got.sort();
        let mut want = ids.get(t).cloned().unwrap_or_default();
        want.sort();
        ensure!(
            got == want,
            "{t}: the stored request ids differ from the published ones"
        );
    }
    println!(
        "{EVENTS} events ({} with a duplicate publish), 2 SIGKILLs: stored exactly once, the same ids: {counts:?}",
        EVENTS / 10
    );
    audit
        .terminate(Duration::from_secs(10))
        .context("stopping")?;
    Ok(())
}
