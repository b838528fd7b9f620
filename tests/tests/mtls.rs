//! Invariant 5 on the router→worker hop, against a real worker process:
//! it admits a router certificate from the cluster CA and refuses everything
//! else — another component's certificate (wrong SPIFFE id), a certificate
//! from another CA, an expired certificate, no certificate, plaintext, and a
//! certificate revoked while it runs — each with a log line saying why. It
//! also picks up a renewed certificate of its own without a restart, and a
//! worker refuses to start with a per-tenant identity of another tenant.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use bulkhead_e2e::{Proc, bin_path, read_log, wait_ready_file};
use bulkhead_identity::spiffe::CertPaths;
use bulkhead_proto::worker::ModelInfoRequest;
use bulkhead_proto::worker::worker_client::WorkerClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output()?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn certs(args: &[&str], dir: &Path) -> Result<String> {
    run(Command::new(bin_path("bulkhead"))
        .arg("certs")
        .args(args)
        .arg("--dir")
        .arg(dir))
}

async fn connect(addr: &str, tls: Option<ClientTlsConfig>) -> Result<Channel, String> {
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
    ep.connect().await.map_err(|e| format!("connect: {e:?}"))
}

async fn model_info(channel: Channel) -> Result<(), String> {
    WorkerClient::new(channel)
        .model_info(ModelInfoRequest {})
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// Calls ModelInfo on a new connection with the given TLS settings (None = plaintext).
async fn call(addr: &str, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    model_info(connect(addr, tls).await?).await
}

fn pem(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn tls(ca: &Path, cert: Option<(&Path, &Path)>) -> ClientTlsConfig {
    let t = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pem(ca)))
        .domain_name("worker");
    match cert {
        Some((c, k)) => t.identity(Identity::from_pem(pem(c), pem(k))),
        None => t,
    }
}

/// Waits until the log `<dir>/<name>.log` contains `needle`.
fn wait_log(dir: &Path, name: &str, needle: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = read_log(dir, name);
        if log.contains(needle) {
            return Ok(log
                .lines()
                .find(|l| l.contains(needle))
                .unwrap_or_default()
                .to_string());
        }
        if Instant::now() > deadline {
            bail!("no log line containing {needle:?} in {name}.log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A generated model and a worker serving it with the certificates in `certs`.
fn start_worker(tmp: &Path, certs: &Path, extra: &[&str]) -> Result<(Proc, String)> {
    let model = tmp.join("model");
    if !model.exists() {
        run(Command::new(bin_path("bulkhead-worker"))
            .args(["gen-model", "--out"])
            .arg(&model))?;
    }
    let ready = tmp.join("worker.json");
    let mut cmd = Command::new(bin_path("bulkhead-worker"));
    cmd.arg("serve")
        .arg("--model")
        .arg(&model)
        .args(["--listen", "127.0.0.1:0", "--kv-blocks", "64"])
        .args(extra)
        .arg("--certs-dir")
        .arg(certs)
        .arg("--ready-file")
        .arg(&ready);
    let mut worker = Proc::spawn("worker", cmd, tmp)?;
    let info = wait_ready_file(&ready, &mut worker, Duration::from_secs(30))?;
    Ok((worker, info["grpc"].as_str().unwrap().to_string()))
}

#[tokio::test]
async fn worker_admits_only_routers_of_its_ca() -> Result<()> {
    bulkhead_identity::spiffe::install_crypto_provider();
    let tmp = tempfile::tempdir()?;
    let (ours, theirs, expired) = (
        tmp.path().join("ours"),
        tmp.path().join("theirs"),
        tmp.path().join("expired"),
    );
    certs(&["init"], &ours)?;
    certs(&["init"], &theirs)?;
    certs(&["init"], &expired)?;
    // Same CA as `ours`, but a router certificate that is already expired.
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(ours.join(f), expired.join(f))?;
    }
    certs(&["issue", "--component", "router", "--days=-1"], &expired)?;
    let (mut worker, addr) = start_worker(tmp.path(), &ours, &[])?;

    let router = CertPaths::new(&ours, "router");
    let ok = call(&addr, Some(router.client_tls("worker")?)).await;
    ensure!(ok.is_ok(), "the router was refused: {ok:?}");

    let ca = ours.join("ca.pem");
    // (case, client TLS, gRPC code when refused after the handshake, worker log line)
    let cases: Vec<(&str, Option<ClientTlsConfig>, Option<&str>, &str)> = vec![
        (
            "operator certificate (SPIFFE id not allowed on this hop)",
            Some(CertPaths::new(&ours, "operator").client_tls("worker")?),
            Some("PermissionDenied"),
            "not allowed on this hop hop=\"worker\" caller=spiffe://bulkhead.local/bulkhead/operator",
        ),
        (
            "audit certificate (SPIFFE id not allowed on this hop)",
            Some(CertPaths::new(&ours, "audit").client_tls("worker")?),
            Some("PermissionDenied"),
            "not allowed on this hop hop=\"worker\" caller=spiffe://bulkhead.local/bulkhead/audit",
        ),
        (
            "router certificate from another CA",
            Some(tls(
                &ca,
                Some((&theirs.join("router.pem"), &theirs.join("router.key"))),
            )),
            None,
            "refused a TLS connection: client certificate not issued by this cluster's CA",
        ),
        (
            "expired router certificate",
            Some(tls(
                &ca,
                Some((&expired.join("router.pem"), &expired.join("router.key"))),
            )),
            None,
            "refused a TLS connection: client certificate expired",
        ),
        (
            "no client certificate",
            Some(tls(&ca, None)),
            None,
            "refused a TLS connection: no client certificate",
        ),
        (
            "plaintext",
            None,
            None,
            "refused a TLS connection: not a TLS client hello (plaintext?)",
        ),
    ];
    for (name, tls, code, line) in cases {
        let err = call(&addr, tls).await.expect_err(name);
        if let Some(code) = code {
            ensure!(err.starts_with(code), "{name}: {err}");
        }
        let logged = wait_log(tmp.path(), "worker", line)?;
        println!("refused as expected: {name}: {err}\n  worker log: {logged}");
    }
    worker.ensure_running()?;
    Ok(())
}

/// Revoked while the worker runs: new connections fail the handshake and
/// requests on a connection opened before are refused, without a restart.
/// Then the worker's own certificate is renewed on disk and new connections
/// get the new one, also without a restart.
#[tokio::test]
async fn revocation_and_renewal_take_effect_without_restart() -> Result<()> {
    bulkhead_identity::spiffe::install_crypto_provider();
    let tmp = tempfile::tempdir()?;
    let ours = tmp.path().join("certs");
    certs(&["init"], &ours)?;
    // A second router identity of the same CA that stays valid.
    let spare = tmp.path().join("spare");
    std::fs::create_dir_all(&spare)?;
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(ours.join(f), spare.join(f))?;
    }
    certs(&["issue", "--component", "router"], &spare)?;
    let (mut worker, addr) = start_worker(tmp.path(), &ours, &[])?;
    let router = CertPaths::new(&ours, "router");
    let open = connect(&addr, Some(router.client_tls("worker")?))
        .await
        .unwrap();
    model_info(open.clone()).await.unwrap();

    let out = certs(&["revoke", "--component", "router"], &ours)?;
    println!("{}", out.trim());
    let revoked_at = Instant::now();
    let latency = loop {
        match call(&addr, Some(router.client_tls("worker")?)).await {
            Err(_) => break revoked_at.elapsed(),
            Ok(()) if revoked_at.elapsed() > Duration::from_secs(15) => {
                bail!("the revoked router certificate is still admitted")
            }
            Ok(()) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    // The first refusal may come from the per-request check (a handshake
    // that finished just before the worker reloaded its CRL); a connection
    // made now, after the reload, must be refused at the handshake itself.
    ensure!(
        call(&addr, Some(router.client_tls("worker")?))
            .await
            .is_err(),
        "a new connection with the revoked certificate was admitted"
    );
    let line = wait_log(
        tmp.path(),
        "worker",
        "refused a TLS connection: client certificate revoked",
    )?;
    println!("revoked certificate refused {latency:?} after `certs revoke`\n  worker log: {line}");
    let err = model_info(open)
        .await
        .expect_err("revoked, connection opened before");
    ensure!(err.starts_with("Unauthenticated"), "{err}");
    let line = wait_log(
        tmp.path(),
        "worker",
        "refused a caller whose certificate has been revoked",
    )?;
    println!("open connection refused: {err}\n  worker log: {line}");
    let other = CertPaths::new(&spare, "router");
    let ok = call(&addr, Some(other.client_tls("worker")?)).await;
    ensure!(ok.is_ok(), "an unrevoked router was refused: {ok:?}");

    // Renewal: a new worker certificate (2 days) replaces the old one on disk.
    let worker_paths = CertPaths::new(&ours, "worker");
    let probe = || bulkhead_identity::tls::server_certificate(&addr, "worker", &other);
    let (old_serial, old_not_after) =
        bulkhead_identity::tls::serial_and_not_after(probe().await?.as_ref()).unwrap();
    certs(&["issue", "--component", "worker", "--days", "2"], &ours)?;
    let on_disk = bulkhead_identity::tls::read_certs(&worker_paths.cert)?;
    let (new_serial, new_not_after) =
        bulkhead_identity::tls::serial_and_not_after(on_disk[0].as_ref()).unwrap();
    ensure!(new_serial != old_serial && new_not_after < old_not_after);
    let renewed_at = Instant::now();
    loop {
        let served = bulkhead_identity::tls::serial_and_not_after(probe().await?.as_ref()).unwrap();
        if served == (new_serial.clone(), new_not_after) {
            break;
        }
        ensure!(
            renewed_at.elapsed() < Duration::from_secs(15),
            "still serving {served:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = wait_log(tmp.path(), "worker", &format!("serial={new_serial}"))?;
    println!(
        "new connections get serial {new_serial} (not after {new_not_after}, was {old_serial}/{old_not_after}) {:?} after renewal\n  worker log: {line}",
        renewed_at.elapsed()
    );
    let ok = call(&addr, Some(other.client_tls("worker")?)).await;
    ensure!(ok.is_ok(), "refused after renewal: {ok:?}");
    worker.ensure_running()?;
    Ok(())
}

/// A per-tenant worker identity is served only by that tenant's dedicated
/// worker; anything else refuses to start.
#[tokio::test]
async fn tenant_worker_identities() -> Result<()> {
    bulkhead_identity::spiffe::install_crypto_provider();
    let tmp = tempfile::tempdir()?;
    let ours: PathBuf = tmp.path().join("certs");
    certs(&["init"], &ours)?;
    certs(
        &["issue", "--component", "worker", "--tenant", "acme"],
        &ours,
    )?;
    let dedicated = [
        "--pool",
        "acme",
        "--isolation",
        "process",
        "--admit",
        "acme",
    ];
    let (mut worker, addr) = start_worker(tmp.path(), &ours, &dedicated)?;
    let router = CertPaths::new(&ours, "router");
    let served = bulkhead_identity::tls::server_certificate(&addr, "worker", &router).await?;
    let id = bulkhead_identity::spiffe::spiffe_id_of_der(served.as_ref()).unwrap();
    ensure!(
        id.to_string() == "spiffe://bulkhead.local/bulkhead/worker/tenant/acme",
        "{id}"
    );
    ensure!(
        call(&addr, Some(router.client_tls("worker")?))
            .await
            .is_ok()
    );
    worker.ensure_running()?;
    drop(worker);

    // acme's identity in the place of the shared worker certificate.
    std::fs::copy(ours.join("worker.acme.pem"), ours.join("worker.pem"))?;
    std::fs::copy(ours.join("worker.acme.key"), ours.join("worker.key"))?;
    for (args, says) in [
        (
            &[
                "--pool",
                "beta",
                "--isolation",
                "process",
                "--admit",
                "beta",
            ][..],
            "dedicated to tenant \"acme\", but this worker admits [\"beta\"]",
        ),
        (
            &[][..],
            "dedicated to tenant \"acme\", but this worker is a shared worker",
        ),
    ] {
        let out = Command::new(bin_path("bulkhead-worker"))
            .args(["serve", "--model"])
            .arg(tmp.path().join("model"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .arg("--certs-dir")
            .arg(&ours)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
        println!("refused to start as expected: {}", err.trim());
    }
    Ok(())
}

/// The router's connector reads its files at each new connection: a renewed
/// router certificate is presented from the next connection on (its old one
/// revoked, the worker still admits it), and a worker whose certificate is
/// revoked is refused by the client.
#[tokio::test]
async fn client_connector_follows_renewal_and_revocation() -> Result<()> {
    use bulkhead_identity::tls::{ExpectedServer, ReloadingConnector, plain_scheme};
    bulkhead_identity::spiffe::install_crypto_provider();
    let tmp = tempfile::tempdir()?;
    let ours = tmp.path().join("certs");
    certs(&["init"], &ours)?;
    let (mut worker, addr) = start_worker(tmp.path(), &ours, &[])?;
    let router = CertPaths::new(&ours, "router");
    let connector = ReloadingConnector::expecting(router.clone(), ExpectedServer::AnyWorker)?;
    let channel = || {
        Endpoint::from_shared(plain_scheme(&format!("https://{addr}")))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(connector.clone())
    };
    model_info(channel()).await.unwrap();
    let id = connector.peer_id().expect("the worker's SPIFFE id");
    ensure!(
        id.to_string() == "spiffe://bulkhead.local/bulkhead/worker",
        "{id}"
    );

    // Renew the router certificate, then revoke the old one.
    let (old_pem, old_key) = (tmp.path().join("old.pem"), tmp.path().join("old.key"));
    std::fs::copy(&router.cert, &old_pem)?;
    std::fs::copy(&router.key, &old_key)?;
    let old = bulkhead_identity::tls::read_certs(&old_pem)?;
    let (old_serial, _) = bulkhead_identity::tls::serial_and_not_after(old[0].as_ref()).unwrap();
    certs(&["issue", "--component", "router"], &ours)?;
    certs(&["revoke", "--serial", &old_serial], &ours)?;
    wait_log(tmp.path(), "worker", "revoked=1")?;
    let old_tls = tls(&ours.join("ca.pem"), Some((&old_pem, &old_key)));
    ensure!(
        call(&addr, Some(old_tls)).await.is_err(),
        "the old certificate is still admitted"
    );
    let r = model_info(channel()).await;
    ensure!(
        r.is_ok(),
        "a new connection did not present the renewed certificate: {r:?}"
    );

    // Revoke the worker's certificate: the client refuses the server.
    certs(&["revoke", "--component", "worker"], &ours)?;
    let err = model_info(channel())
        .await
        .expect_err("a revoked worker was trusted");
    println!("client refused the revoked worker: {err}");
    worker.ensure_running()?;
    Ok(())
}

/// Calls ModelInfo through a connector that expects `expected` of the
/// server's SPIFFE id (what the router and the CLI do).
async fn model_info_expecting(
    addr: &str,
    client: CertPaths,
    expected: bulkhead_identity::tls::ExpectedServer,
) -> Result<(), String> {
    use bulkhead_identity::tls::{ReloadingConnector, plain_scheme};
    let connector = ReloadingConnector::expecting(client, expected).map_err(|e| e.to_string())?;
    let channel = Endpoint::from_shared(plain_scheme(&format!("https://{addr}")))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    model_info(channel).await
}

/// Clients check the server's identity in the handshake, not the address
/// they dialled: a worker presenting the shared identity is refused where a
/// tenant's dedicated worker is expected (same `worker` name, wrong SPIFFE
/// id), a server with another component's certificate is refused where a
/// worker is expected, and a worker where the CLI expects the control-plane
/// (wrong name) — though every one of these certificates chains to the
/// cluster CA and all listen on the same loopback address.
#[tokio::test]
async fn clients_refuse_the_wrong_server_identity_in_the_handshake() -> Result<()> {
    use bulkhead_identity::tls::ExpectedServer;
    bulkhead_identity::spiffe::install_crypto_provider();
    let tmp = tempfile::tempdir()?;
    let ours = tmp.path().join("certs");
    certs(&["init"], &ours)?;
    let (mut worker, addr) = start_worker(tmp.path(), &ours, &[])?;
    let router = CertPaths::new(&ours, "router");

    model_info_expecting(&addr, router.clone(), ExpectedServer::AnyWorker)
        .await
        .map_err(anyhow::Error::msg)?;
    let e = model_info_expecting(
        &addr,
        router.clone(),
        ExpectedServer::TenantWorker("acme".into()),
    )
    .await
    .expect_err("the shared worker identity fronted acme's pool");
    ensure!(e.contains("expected tenant acme's dedicated worker"), "{e}");
    println!("tenant pool, shared identity: {e}");
    let e = model_info_expecting(
        &addr,
        CertPaths::new(&ours, "operator"),
        ExpectedServer::Component("control".into()),
    )
    .await
    .expect_err("a worker passed for the control-plane");
    // Refused by name: a worker's certificate carries `worker`, not `control`.
    ensure!(e.contains(r#"expected: DnsName("control")"#), "{e}");
    println!("CLI to a worker posing as control: {e}");

    // A server with the audit-service's certificate where a worker is expected.
    let tls = CertPaths::new(&ours, "audit").reloading_server_tls("impostor")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let impostor = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        let mut incoming = tls.incoming(listener);
        while let Some(s) = futures::StreamExt::next(&mut incoming).await {
            drop(s);
        }
    });
    let e = model_info_expecting(&impostor, router, ExpectedServer::AnyWorker)
        .await
        .expect_err("an audit-service certificate passed for a worker");
    ensure!(e.contains(r#"expected: DnsName("worker")"#), "{e}");
    println!("impostor with the audit certificate: {e}");
    worker.ensure_running()?;
    Ok(())
}
