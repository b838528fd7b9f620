//! NATS least privilege, tried as an attacker holding a cluster certificate
//! would: each component's certificate maps to its own user, and every
//! write or read outside that user's job is refused by the real
//! nats-server of the dev stack (a permissions violation, and the data is
//! unchanged); each router replica writes only its own heartbeat; a
//! worker's, the operator's and the shared router certificate have no NATS
//! access at all; a revoked certificate is shut out once `certs revoke` has
//! run.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use async_nats::jetstream;
use bulkhead_e2e::DevStack;
use tokio::sync::mpsc;

/// A client connected as `component`, with the server's errors to it.
struct As {
    name: String,
    client: async_nats::Client,
    errors: mpsc::UnboundedReceiver<String>,
}

async fn connect(url: &str, certs: &Path, cert: &str, inbox: &str) -> Result<As, String> {
    let (tx, errors) = mpsc::unbounded_channel();
    let paths = bulkhead_identity::spiffe::CertPaths::new(certs, cert);
    let nats = bulkhead_identity::tls::ExpectedServer::Component("nats".into());
    let mut tls = bulkhead_identity::tls::client_config_expecting(&paths, Some(&nats))
        .map_err(|e| e.to_string())?;
    tls.alpn_protocols.clear();
    let opts = async_nats::ConnectOptions::new()
        .require_tls(true)
        .tls_client_config(tls)
        .custom_inbox_prefix(format!("_INBOX_{inbox}"))
        .max_reconnects(Some(0))
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = e {
                    let _ = tx.send(e.to_string());
                }
            }
        });
    let client = tokio::time::timeout(Duration::from_secs(5), opts.connect(url))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(5), client.flush())
        .await
        .map_err(|_| "flush timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(As {
        name: cert.to_string(),
        client,
        errors,
    })
}

impl As {
    /// Waits for the server to report a permissions violation on `subject`.
    async fn violation(&mut self, what: &str, subject: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, self.errors.recv()).await {
                Ok(Some(e))
                    if e.to_lowercase().contains("permissions violation")
                        && e.contains(subject) =>
                {
                    println!("refused: {} {what}: {e}", self.name);
                    return Ok(());
                }
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => bail!("{} {what} ({subject}) was not refused", self.name),
            }
        }
    }

    /// Publishes to `subject` and expects it refused.
    async fn publish_refused(&mut self, what: &str, subject: &str) -> Result<()> {
        self.client.publish(subject.to_string(), "x".into()).await?;
        self.client.flush().await?;
        self.violation(what, subject).await
    }

    /// Subscribes to `subject` and expects it refused.
    async fn subscribe_refused(
        &mut self,
        what: &str,
        subject: &str,
    ) -> Result<async_nats::Subscriber> {
        let sub = self.client.subscribe(subject.to_string()).await?;
        self.client.flush().await?;
        self.violation(what, subject).await?;
        Ok(sub)
    }

    fn js(&self) -> jetstream::Context {
        jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(2))
            .build(self.client.clone())
    }
}

/// The tenant record as the control-plane wrote it.
async fn tenant_record(control: &As, tenant: &str) -> Result<Vec<u8>> {
    let kv = control.js().get_key_value("bulkhead_tenants").await?;
    Ok(kv.get(tenant).await?.context("tenant missing")?.to_vec())
}

pub async fn check(stack: &DevStack) -> Result<()> {
    let url = stack.s("nats_url");
    let certs = PathBuf::from(stack.s("certs_dir"));
    let tenant = stack.tenant(0);

    // No NATS user at all: a worker's and the operator's certificates, and
    // the shared router identity (it could speak for every replica).
    for c in ["worker", "operator", "router"] {
        match connect(&url, &certs, c, c).await {
            Ok(_) => bail!("the {c} certificate got into NATS"),
            // The server closes the connection on an authorization
            // violation; the client may see that or a broken pipe.
            Err(e) => println!("refused: {c} certificate: {e}"),
        }
    }

    let control = connect(&url, &certs, "control", "control")
        .await
        .map_err(anyhow::Error::msg)?;
    let before = tenant_record(&control, &tenant).await?;

    // A router replica: reads tenants and keys, writes its own heartbeat
    // and audit events; may not write tenants or keys, another replica's
    // heartbeat, read audit events or consume.
    let me = "router.dev-router-0";
    let mut router = connect(&url, &certs, me, me)
        .await
        .map_err(anyhow::Error::msg)?;
    let beats = control.js().get_key_value("bulkhead_routers").await?;
    ensure!(
        beats.get("dev-router-0").await?.is_some(),
        "the router replica's own heartbeat is missing (its legitimate write)"
    );
    ensure!(
        beats.get("dev-router-1").await?.is_some(),
        "the other replica's heartbeat is missing"
    );
    router
        .publish_refused(
            "write another replica's heartbeat",
            "$KV.bulkhead_routers.dev-router-1",
        )
        .await?;
    router
        .publish_refused(
            "write a fake replica's heartbeat",
            "$KV.bulkhead_routers.fake",
        )
        .await?;
    ensure!(
        beats.get("fake").await?.is_none(),
        "a fake replica's heartbeat was stored"
    );
    // Usage records: its own only (a replica that could rewrite another's
    // would reset the budgets that replica's spending counts against).
    let usage = router.js().get_key_value("bulkhead_usage").await?;
    ensure!(
        usage
            .put("m202612.d08.dev-router-0.own-test", "".into())
            .await
            .is_ok(),
        "the router replica cannot write its own usage record"
    );
    // Nor purge every record (or heartbeat) with a rollup on its own key:
    // the buckets routers write allow no rollups.
    for (bucket, key) in [
        ("bulkhead_usage", "m202612.d08.dev-router-0.own-test"),
        ("bulkhead_routers", "dev-router-0"),
    ] {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Rollup", "all");
        let acked = match router
            .js()
            .publish_with_headers(format!("$KV.{bucket}.{key}"), h, "".into())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match acked {
            Ok(()) => bail!("a router rolled up {bucket}"),
            Err(e) => println!("refused: router.dev-router-0 roll up {bucket}: {e}"),
        }
    }
    ensure!(
        beats.get("dev-router-1").await?.is_some(),
        "the other replica's heartbeat is gone"
    );
    router
        .publish_refused(
            "rewrite another replica's usage record",
            &format!("$KV.bulkhead_usage.m202612.d08.dev-router-1.{tenant}"),
        )
        .await?;
    let kv = router.js().get_key_value("bulkhead_tenants").await?;
    ensure!(
        kv.get(&tenant).await?.is_some(),
        "the router cannot read tenants"
    );
    ensure!(
        kv.put(&tenant, "moved to the shared tier".into())
            .await
            .is_err(),
        "the router wrote a tenant"
    );
    router
        .violation("write a tenant", "$KV.bulkhead_tenants")
        .await?;
    router
        .publish_refused("mint an API key", "$KV.bulkhead_api_keys.0123abcd")
        .await?;
    let mut sub = router
        .subscribe_refused("read every tenant's audit events", "bulkhead.audit.>")
        .await?;
    router
        .publish_refused(
            "fetch from the audit consumer",
            "$JS.API.CONSUMER.MSG.NEXT.BULKHEAD_AUDIT.bulkhead-audit",
        )
        .await?;
    router
        .publish_refused(
            "ack audit events away",
            "$JS.ACK.BULKHEAD_AUDIT.bulkhead-audit.1.1.1.1.0",
        )
        .await?;
    router
        .publish_refused(
            "delete the audit stream",
            "$JS.API.STREAM.DELETE.BULKHEAD_AUDIT",
        )
        .await?;
    router
        .subscribe_refused("read the control-plane's replies", "_INBOX_control.>")
        .await?;
    // ... and indeed no audit event reaches the refused subscription while
    // the stack serves a request.
    super::serve_one(stack)?;
    let got =
        tokio::time::timeout(Duration::from_secs(2), futures::StreamExt::next(&mut sub)).await;
    ensure!(
        !matches!(got, Ok(Some(_))),
        "the router read an audit event"
    );

    // The audit-service: reads tenants, consumes; may not write tenants,
    // heartbeats or audit events.
    let mut audit = connect(&url, &certs, "audit", "audit")
        .await
        .map_err(anyhow::Error::msg)?;
    audit
        .publish_refused("write a tenant", &format!("$KV.bulkhead_tenants.{tenant}"))
        .await?;
    audit
        .publish_refused("write a router heartbeat", "$KV.bulkhead_routers.fake")
        .await?;
    audit
        .publish_refused(
            "write a usage record",
            &format!("$KV.bulkhead_usage.m202612.d08.dev-router-0.{tenant}"),
        )
        .await?;
    audit
        .publish_refused(
            "publish an audit event",
            &format!("bulkhead.audit.{tenant}"),
        )
        .await?;

    // A certificate must use its own inbox: the router's certificate
    // cannot take the control-plane's replies, nor another replica's.
    let mut other_inbox = connect(&url, &certs, me, "router.dev-router-1")
        .await
        .map_err(anyhow::Error::msg)?;
    ensure!(
        other_inbox
            .js()
            .get_key_value("bulkhead_tenants")
            .await
            .is_err(),
        "a router replica read replies on another replica's inbox"
    );
    other_inbox
        .violation(
            "reply on another replica's inbox",
            "_INBOX_router.dev-router-1",
        )
        .await?;
    let mut wrong_inbox = connect(&url, &certs, me, "control")
        .await
        .map_err(anyhow::Error::msg)?;
    let r = wrong_inbox.js().get_key_value("bulkhead_tenants").await;
    ensure!(
        r.is_err(),
        "the router read replies on the control-plane's inbox"
    );
    wrong_inbox
        .violation("reply on another's inbox", "_INBOX_control")
        .await?;

    ensure!(
        tenant_record(&control, &tenant).await? == before,
        "the tenant record changed"
    );
    // The other replica's heartbeat holds its own writes only.
    let after = beats
        .get("dev-router-1")
        .await?
        .context("the other replica's heartbeat is gone")?;
    ensure!(
        after.as_ref() != b"x",
        "another replica's heartbeat holds the attacker's bytes"
    );
    super::serve_one(stack).context("the stack must still serve")?;

    // Revocation: a copy of the router's certificate, revoked, is refused
    // once the dev stack has reloaded NATS with the new pins.
    let stolen = tempfile::tempdir()?;
    for f in ["ca.pem", &format!("{me}.pem"), &format!("{me}.key")] {
        std::fs::copy(certs.join(f), stolen.path().join(f))?;
    }
    connect(&url, stolen.path(), me, me)
        .await
        .map_err(anyhow::Error::msg)
        .context("the router certificate before revocation")?;
    stack.certs(&[
        "revoke",
        "--component",
        "router",
        "--replica",
        "dev-router-0",
    ])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match connect(&url, stolen.path(), me, me).await {
            Err(e) => {
                println!("refused: revoked router certificate: {e}");
                break;
            }
            Ok(_) if std::time::Instant::now() > deadline => {
                bail!("a revoked router certificate still gets into NATS")
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    Ok(())
}
