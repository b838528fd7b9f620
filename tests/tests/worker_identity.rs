//! A router (by default) keeps a worker that
//! reports a dedicated pool out of rotation while it presents the plain
//! worker certificate (a shared identity must not front a tenant's pool),
//! and takes it once it presents that tenant's identity
//! (`bulkhead certs issue --component worker --tenant T`).
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use bulkhead_e2e::{NatsServer, Proc, bin_path, read_log, wait_ready_file};

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output()?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn wait_log(dir: &Path, name: &str, needle: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = read_log(dir, name);
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            return Ok(line.to_string());
        }
        if Instant::now() > deadline {
            bail!("no log line containing {needle:?} in {name}.log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn worker(tmp: &Path, certs: &Path, port: u16, log: &str) -> Result<Proc> {
    let ready = tmp.join(format!("{log}.json"));
    let mut cmd = Command::new(bin_path("bulkhead-worker"));
    cmd.arg("serve")
        .arg("--model")
        .arg(tmp.join("model"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--kv-blocks",
            "64",
        ])
        .args([
            "--pool",
            "acme",
            "--isolation",
            "process",
            "--admit",
            "acme",
        ])
        .arg("--certs-dir")
        .arg(certs)
        .arg("--ready-file")
        .arg(&ready);
    let mut p = Proc::spawn(log, cmd, tmp)?;
    wait_ready_file(&ready, &mut p, Duration::from_secs(30))?;
    Ok(p)
}

#[test]
fn router_requires_the_tenant_identity_of_a_dedicated_worker() -> Result<()> {
    let nats = NatsServer::start()?;
    let tmp = tempfile::tempdir()?;
    let certs = tmp.path().join("certs");
    run(Command::new(bin_path("bulkhead"))
        .args(["certs", "init", "--dir"])
        .arg(&certs))?;
    run(Command::new(bin_path("bulkhead-worker"))
        .args(["gen-model", "--out"])
        .arg(tmp.path().join("model")))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    // The dedicated worker with the shared worker identity.
    let mut plain = worker(tmp.path(), &certs, port, "worker-plain")?;
    wait_log(
        tmp.path(),
        "worker-plain",
        "a dedicated worker without a per-tenant identity",
    )?;

    let secret = tmp.path().join("hash.secret");
    std::fs::write(&secret, "ab".repeat(32))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
    }
    let ready = tmp.path().join("router.json");
    let mut cmd = Command::new(bin_path("bulkhead-router"));
    cmd.args([
        "--http-listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
    ])
    .args(["--nats-url", &nats.url])
    .arg("--certs-dir")
    .arg(&certs)
    .args(["--worker", &format!("https://127.0.0.1:{port}")])
    .args(["--poll-ms", "200"])
    .arg("--hash-secret-file")
    .arg(&secret)
    .arg("--ready-file")
    .arg(&ready);
    let mut router = Proc::spawn("router", cmd, tmp.path())?;
    wait_ready_file(&ready, &mut router, Duration::from_secs(30))?;
    let line = wait_log(
        tmp.path(),
        "router",
        "refused a worker: its certificate does not match its pool",
    )?;
    ensure!(
        line.contains("must present its tenant's identity"),
        "{line}"
    );
    ensure!(!read_log(tmp.path(), "router").contains("worker is healthy"));
    println!("router log: {line}");

    // The same pool restarted with acme's own identity.
    let _ = plain.terminate(Duration::from_secs(5))?;
    run(Command::new(bin_path("bulkhead"))
        .args([
            "certs",
            "issue",
            "--component",
            "worker",
            "--tenant",
            "acme",
            "--dir",
        ])
        .arg(&certs))?;
    let mut tenant = worker(tmp.path(), &certs, port, "worker-acme")?;
    wait_log(
        tmp.path(),
        "worker-acme",
        "serving with a per-tenant worker identity",
    )?;
    let line = wait_log(tmp.path(), "router", "worker is healthy")?;
    println!("router log: {line}");
    router.ensure_running()?;
    tenant.ensure_running()?;
    Ok(())
}
