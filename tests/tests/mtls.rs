//! Invariant 5 on the router→worker hop: a real worker process admits a
//! router certificate from the cluster CA and refuses everything else —
//! another component's certificate (wrong SPIFFE id), a certificate from
//! another CA, an expired certificate, no certificate, and plaintext.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use bulkhead_e2e::{Proc, bin_path, wait_ready_file};
use bulkhead_proto::identity::CertPaths;
use bulkhead_proto::worker::ModelInfoRequest;
use bulkhead_proto::worker::worker_client::WorkerClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output()?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn certs_init(dir: &Path) -> Result<()> {
    run(Command::new(bin_path("bulkhead"))
        .args(["certs", "init", "--dir"])
        .arg(dir))
}

/// Calls ModelInfo with the given TLS settings (None = plaintext).
async fn call(addr: &str, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let ep = match &tls {
        Some(_) => format!("https://{addr}"),
        None => format!("http://{addr}"),
    };
    let mut ep = Endpoint::from_shared(ep)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    if let Some(t) = tls {
        ep = ep.tls_config(t).map_err(|e| e.to_string())?;
    }
    let channel = ep.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    WorkerClient::new(channel)
        .model_info(ModelInfoRequest {})
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

fn pem(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn tls(ca: &Path, cert: Option<(&Path, &Path)>) -> ClientTlsConfig {
    let t = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem(ca)));
    match cert {
        Some((c, k)) => t.identity(Identity::from_pem(pem(c), pem(k))),
        None => t,
    }
}

#[tokio::test]
async fn worker_admits_only_routers_of_its_ca() -> Result<()> {
    bulkhead_proto::identity::install_crypto_provider();
    let tmp = tempfile::tempdir()?;
    let (ours, theirs, expired) = (
        tmp.path().join("ours"),
        tmp.path().join("theirs"),
        tmp.path().join("expired"),
    );
    certs_init(&ours)?;
    certs_init(&theirs)?;
    certs_init(&expired)?;
    // Same CA as `ours`, but a router certificate that is already expired.
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(ours.join(f), expired.join(f))?;
    }
    run(Command::new(bin_path("bulkhead"))
        .args([
            "certs",
            "issue",
            "--component",
            "router",
            "--days=-1",
            "--dir",
        ])
        .arg(&expired))?;

    let model = tmp.path().join("model");
    run(Command::new(bin_path("bulkhead-worker"))
        .args(["gen-model", "--out"])
        .arg(&model))?;
    let ready = tmp.path().join("worker.json");
    let mut cmd = Command::new(bin_path("bulkhead-worker"));
    cmd.arg("serve")
        .arg("--model")
        .arg(&model)
        .args(["--listen", "127.0.0.1:0", "--kv-blocks", "64"])
        .arg("--certs-dir")
        .arg(&ours)
        .arg("--ready-file")
        .arg(&ready);
    let mut worker = Proc::spawn("worker", cmd, tmp.path())?;
    let info = wait_ready_file(&ready, &mut worker, Duration::from_secs(30))?;
    let addr = info["grpc"].as_str().unwrap().to_string();

    let router = CertPaths::new(&ours, "router");
    let ok = call(&addr, Some(router.client_tls()?)).await;
    ensure!(ok.is_ok(), "the router was refused: {ok:?}");

    let ca = ours.join("ca.pem");
    let cases: Vec<(&str, Option<ClientTlsConfig>, Option<&str>)> = vec![
        (
            "operator certificate (SPIFFE id not allowed on this hop)",
            Some(CertPaths::new(&ours, "operator").client_tls()?),
            Some("PermissionDenied"),
        ),
        (
            "audit certificate (SPIFFE id not allowed on this hop)",
            Some(CertPaths::new(&ours, "audit").client_tls()?),
            Some("PermissionDenied"),
        ),
        (
            "router certificate from another CA",
            Some(tls(
                &ca,
                Some((&theirs.join("router.pem"), &theirs.join("router.key"))),
            )),
            None,
        ),
        (
            "expired router certificate",
            Some(tls(
                &ca,
                Some((&expired.join("router.pem"), &expired.join("router.key"))),
            )),
            None,
        ),
        ("no client certificate", Some(tls(&ca, None)), None),
        ("plaintext", None, None),
    ];
    for (name, tls, code) in cases {
        let r = call(&addr, tls).await;
        let err = r.expect_err(name);
        if let Some(code) = code {
            ensure!(err.starts_with(code), "{name}: {err}");
        }
        println!("refused as expected: {name}: {err}");
    }
    worker.ensure_running()?;
    let log = std::fs::read_to_string(tmp.path().join("worker.log"))?;
    ensure!(
        log.contains("not allowed on this hop"),
        "no log line for the refusal:\n{log}"
    );
    Ok(())
}
