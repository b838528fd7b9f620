//! NATS is a hop like any other: the dev stack's nats-server requires mutual
//! TLS with the cluster CA. A plaintext client, a TLS client without a
//! certificate, and one whose certificate another CA issued are all refused;
//! a component certificate of this cluster gets in (and the stack itself,
//! which only talks to NATS this way, serves and audits a request). Inside,
//! each certificate is a user with only its job's subjects
//! (`least_privilege`).
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bulkhead_e2e::{DevStack, bin_path};

#[path = "nats_tls/least_privilege.rs"]
mod least_privilege;

/// Serves one completion through the stack's router.
fn serve_one(stack: &DevStack) -> Result<()> {
    let http = stack.s("router_http");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .arg(format!("{http}/v1/completions"))
        .args(["-H", &format!("Authorization: Bearer {}", stack.key(0))])
        .args(["-H", "Content-Type: application/json"])
        .args([
            "-d",
            &format!(
                r#"{{"model":"{}","prompt":"hi","max_tokens":2}}"#,
                stack.s("model")
            ),
        ])
        .output()?;
    let body = String::from_utf8_lossy(&out.stdout);
    ensure!(body.contains("\"usage\""), "request not served: {body}");
    Ok(())
}

async fn try_connect(
    url: &str,
    opts: async_nats::ConnectOptions,
) -> Result<async_nats::Client, String> {
    let c = tokio::time::timeout(
        Duration::from_secs(5),
        opts.max_reconnects(Some(0)).connect(url),
    )
    .await
    .map_err(|_| "timed out".to_string())?
    .map_err(|e| e.to_string())?;
    // A refused handshake may only show on the first round trip.
    tokio::time::timeout(Duration::from_secs(5), c.flush())
        .await
        .map_err(|_| "flush timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(c)
}

/// Everything a plaintext client reads after sending CONNECT and PING
/// (until the server closes or 3 s pass).
async fn plaintext_session(addr: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await??;
    let mut seen = String::from_utf8_lossy(&buf[..n]).into_owned();
    let _ = s
        .write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    Ok(seen)
}

/// TLS to the stack's NATS (checked as the `nats` component, whatever
/// address is dialled) with `cert` (a certificate and key) or none.
fn tls_opts(ca: &Path, cert: Option<(PathBuf, PathBuf)>) -> async_nats::ConnectOptions {
    use bulkhead_identity::tls::{
        ExpectedServer, anonymous_client_config, client_config_expecting,
    };
    let nats = ExpectedServer::Component("nats".into());
    let mut config = match cert {
        Some((cert, key)) => {
            let paths = bulkhead_identity::spiffe::CertPaths {
                ca: ca.to_path_buf(),
                cert,
                key,
            };
            client_config_expecting(&paths, Some(&nats))
        }
        None => {
            let paths = bulkhead_identity::spiffe::CertPaths::new(ca.parent().unwrap(), "none");
            anonymous_client_config(&paths, "bulkhead.local", &nats)
        }
    }
    .expect("client TLS config");
    config.alpn_protocols.clear();
    async_nats::ConnectOptions::new()
        .require_tls(true)
        .tls_client_config(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_requires_a_certificate_of_this_cluster() -> Result<()> {
    bulkhead_identity::spiffe::install_crypto_provider();
    // Two router replicas: each has its own NATS user.
    let stack = DevStack::start(&["--routers", "2"])?;
    let url = stack.s("nats_url");
    ensure!(
        url.starts_with("tls://"),
        "the dev stack's NATS URL is {url}"
    );
    let certs = PathBuf::from(stack.s("certs_dir"));
    let ca = certs.join("ca.pem");

    // 1. plaintext: the server announces TLS as required and answers a
    //    plaintext CONNECT + PING with no PONG.
    let addr = url.trim_start_matches("tls://").to_string();
    let plain = plaintext_session(&addr).await?;
    ensure!(plain.contains("\"tls_required\":true"), "INFO: {plain}");
    ensure!(
        !plain.contains("PONG"),
        "a plaintext client got an answer: {plain}"
    );
    eprintln!("plaintext: {}", plain.trim());
    // 2. TLS, no client certificate
    let r = try_connect(&url, tls_opts(&ca, None)).await;
    ensure!(r.is_err(), "a client without a certificate got in");
    eprintln!("no certificate: {}", r.err().unwrap_or_default());
    // 3. a certificate from another CA (it trusts our server, but the
    //    server does not trust it)
    let other = tempfile::tempdir()?;
    let st = Command::new(bin_path("bulkhead"))
        .args(["certs", "init", "--components", "router", "--dir"])
        .arg(other.path())
        .status()?;
    ensure!(st.success(), "certs init for the other CA failed");
    let foreign = (
        other.path().join("router.pem"),
        other.path().join("router.key"),
    );
    let r = try_connect(&url, tls_opts(&ca, Some(foreign))).await;
    ensure!(r.is_err(), "a client with another CA's certificate got in");
    eprintln!("another CA: {}", r.err().unwrap_or_default());
    // 4. this cluster's certificate (a NATS user's: the first router
    //    replica's own)
    let ours = (
        certs.join("router.dev-router-0.pem"),
        certs.join("router.dev-router-0.key"),
    );
    let c = try_connect(&url, tls_opts(&ca, Some(ours)))
        .await
        .map_err(anyhow::Error::msg)
        .context("a component certificate of this cluster must be accepted")?;
    drop(c);

    // The stack's own clients (router, control-plane, audit-service) use it:
    // a request is served and its audit record stored.
    serve_one(&stack)?;
    let audit = stack
        .dir
        .path()
        .join("stack/audit/tenants")
        .join(stack.tenant(0));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !audit.join("segments/000001.log").exists() {
        ensure!(
            std::time::Instant::now() < deadline,
            "no audit record in {}",
            audit.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = least_privilege::check(&stack).await;
    if r.is_err() {
        stack.dump_logs();
    }
    r
}
