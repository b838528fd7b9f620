//! Test harness shared by Bulkhead's end-to-end and integration tests: a real
//! nats-server on a free port, the real binaries as child processes, and the
//! `--ready-file` handshake every Bulkhead binary supports.
#![forbid(unsafe_code)]

pub mod otlp;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The nats-server binary: `$BULKHEAD_NATS_SERVER`, else the project's venv
/// (installed by `scripts/ensure-nats.sh`), else `nats-server` on PATH.
pub fn nats_server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("BULKHEAD_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let venv = workspace_root().join(".bulkhead/venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("nats-server")
}

/// Python with the test packages (`$BULKHEAD_PYTHON`, else the project's
/// venv, which `scripts/ensure-python.sh` fills).
pub fn python() -> PathBuf {
    std::env::var_os("BULKHEAD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".bulkhead/venv/bin/python3"))
}

/// The workspace root (the folder with the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A Bulkhead binary built by `cargo build --workspace --bins`
/// (`$BULKHEAD_BIN_DIR`, default `target/debug`).
pub fn bin_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("BULKHEAD_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(|t| PathBuf::from(t).join("debug")))
        .unwrap_or_else(|| workspace_root().join("target/debug"));
    dir.join(name)
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    /// Starts `cmd` with stdout/stderr appended to `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Self> {
        let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
        cmd.stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .stdin(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            name: name.to_string(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `grace` for the process to exit.
    pub fn terminate(&mut self, grace: Duration) -> Result<Option<std::process::ExitStatus>> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait()? {
                return Ok(Some(st));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(None)
    }

    /// Fails if the process has already exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!("{} exited early with {st}", self.name);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `path` holds a complete JSON document (written by a binary's
/// `--ready-file`), failing early when `proc` exits.
pub fn wait_ready_file(
    path: &Path,
    proc: &mut Proc,
    timeout: Duration,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            return Ok(v);
        }
        proc.ensure_running()?;
        if Instant::now() > deadline {
            bail!(
                "{} did not write {} in {timeout:?}",
                proc.name,
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A real nats-server with JetStream, on a free loopback port, with its
/// storage in a temporary folder. Stopped when dropped.
pub struct NatsServer {
    pub url: String,
    pub proc: Proc,
    pub store_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    pub fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        Self::start_in(dir)
    }

    /// Starts a server whose JetStream storage lives in `dir` (reuse the same
    /// folder to restart a server with its data).
    pub fn start_in(dir: tempfile::TempDir) -> Result<Self> {
        let store_dir = dir.path().join("js");
        let ports_dir = dir.path().join(format!("ports-{}", std::process::id()));
        std::fs::create_dir_all(&ports_dir)?;
        let mut cmd = Command::new(nats_server_binary());
        cmd.args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(&store_dir)
            .arg("--ports_file_dir")
            .arg(&ports_dir);
        let mut proc = Proc::spawn("nats-server", cmd, dir.path()).context(
            "starting nats-server (run scripts/ensure-nats.sh or set BULKHEAD_NATS_SERVER)",
        )?;
        let ports_file = ports_dir.join(format!("nats-server_{}.ports", proc.pid()));
        let ports = wait_ready_file(&ports_file, &mut proc, Duration::from_secs(20))?;
        let url = ports["nats"][0]
            .as_str()
            .context("ports file has no nats url")?
            .to_string();
        Ok(Self {
            url,
            proc,
            store_dir,
            _dir: dir,
        })
    }
}

/// The whole stack, started by `bulkhead dev` in a temporary folder, with
/// its `stack.json` parsed. Stopped (SIGTERM, then SIGKILL) when dropped.
pub struct DevStack {
    pub info: serde_json::Value,
    pub dir: tempfile::TempDir,
    pub dev: Proc,
}

impl DevStack {
    /// Starts `bulkhead dev` with extra arguments.
    pub fn start(extra: &[&str]) -> Result<Self> {
        Self::start_with_env(extra, &[])
    }

    /// Starts `bulkhead dev` with extra arguments and environment variables
    /// (inherited by every component).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        bulkhead_identity::spiffe::install_crypto_provider();
        let dir = tempfile::tempdir()?;
        let mut cmd = Command::new(bin_path("bulkhead"));
        cmd.arg("dev")
            .arg("--dir")
            .arg(dir.path().join("stack"))
            .arg("--nats-server")
            .arg(nats_server_binary())
            .arg("--bin-dir")
            .arg(bin_path("bulkhead").parent().expect("bin dir"))
            .args(extra)
            .envs(env.iter().copied());
        let mut dev = Proc::spawn("dev", cmd, dir.path())?;
        let stack_json = dir.path().join("stack/stack.json");
        let info = wait_ready_file(&stack_json, &mut dev, Duration::from_secs(120))
            .with_context(|| read_log(dir.path(), "dev"))?;
        Ok(Self { info, dir, dev })
    }

    /// A string field of stack.json.
    pub fn s(&self, field: &str) -> String {
        self.info[field].as_str().unwrap_or_default().to_string()
    }

    /// The API key of the i-th demo tenant.
    pub fn key(&self, i: usize) -> String {
        self.info["tenants"][i]["api_key"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The tenant-admin key (audit reads) of the i-th demo tenant.
    pub fn admin_key(&self, i: usize) -> String {
        self.info["tenants"][i]["admin_key"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The id of the i-th demo tenant.
    pub fn tenant(&self, i: usize) -> String {
        self.info["tenants"][i]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The audit records of the i-th demo tenant, read as that tenant's
    /// admin would: mTLS (operator certificate) plus its tenant-admin key.
    pub async fn audit_records(&self, i: usize) -> Result<Vec<bulkhead_proto::audit::AuditEvent>> {
        self.audit_records_for(&self.tenant(i), &self.admin_key(i))
            .await
    }

    /// Waits (up to 20 s) for the i-th demo tenant's audit record of
    /// `request_id` and returns it.
    pub async fn wait_audit_record(
        &self,
        i: usize,
        request_id: &str,
    ) -> Result<bulkhead_proto::audit::AuditEvent> {
        let t0 = std::time::Instant::now();
        loop {
            if let Some(r) = self
                .audit_records(i)
                .await?
                .into_iter()
                .find(|r| r.request_id == request_id)
            {
                return Ok(r);
            }
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("no audit record for {request_id} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The audit records of `tenant`, read with its tenant-admin key.
    pub async fn audit_records_for(
        &self,
        tenant: &str,
        admin_key: &str,
    ) -> Result<Vec<bulkhead_proto::audit::AuditEvent>> {
        use bulkhead_proto::audit::{AuditQueryRequest, audit_query_client::AuditQueryClient};
        let certs = PathBuf::from(self.s("certs_dir"));
        let ch =
            tonic::transport::Endpoint::from_shared(format!("https://{}", self.s("audit_grpc")))?
                .tls_config(
                    bulkhead_identity::spiffe::CertPaths::new(&certs, "operator")
                        .client_tls("audit")?,
                )?
                .connect()
                .await?;
        let mut req = tonic::Request::new(AuditQueryRequest {
            tenant_id: tenant.to_string(),
            page_size: 1000,
            ..Default::default()
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {admin_key}").parse()?);
        Ok(AuditQueryClient::new(ch)
            .query(req)
            .await?
            .into_inner()
            .records)
    }

    /// Runs the operator CLI against this stack (operator certificate,
    /// its control-plane) and returns its standard output.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(bin_path("bulkhead"))
            .args(["--certs-dir", &self.s("certs_dir")])
            .args(["--control", &format!("https://{}", self.s("control_grpc"))])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "bulkhead {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Issues `tenant` an inference key and a tenant-admin key through the
    /// CLI: `(inference, admin)`.
    pub fn issue_keys(&self, tenant: &str) -> Result<(String, String)> {
        let key = self.cli(&["keys", "issue", "--tenant", tenant])?;
        let admin = self.cli(&[
            "keys",
            "issue",
            "--tenant",
            tenant,
            "--scope",
            "tenant-admin",
        ])?;
        Ok((key.trim().to_string(), admin.trim().to_string()))
    }

    /// Runs `bulkhead certs <args> --dir <this stack's certificates>` and
    /// returns its standard output.
    pub fn certs(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(bin_path("bulkhead"))
            .arg("certs")
            .args(args)
            .args(["--dir", &self.s("certs_dir")])
            .output()?;
        if !out.status.success() {
            bail!(
                "bulkhead certs {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// The log of one component (`router`, `worker`, `audit`, `control`).
    pub fn log(&self, name: &str) -> String {
        read_log(&self.dir.path().join("stack/logs"), name)
    }

    /// Prints every component's log (for a failing test).
    pub fn dump_logs(&self) {
        for n in ["router", "worker", "audit", "control"] {
            eprintln!("----- {n}.log -----\n{}", self.log(n));
        }
        eprintln!("----- dev.log -----\n{}", read_log(self.dir.path(), "dev"));
    }
}

impl Drop for DevStack {
    /// Stops the stack as Ctrl-C would (the dev stack stops its children),
    /// then makes sure nothing started under this stack's folder survives,
    /// even if the dev process itself was killed.
    fn drop(&mut self) {
        let _ = self.dev.terminate(Duration::from_secs(20));
        let _ = Command::new("pkill")
            .arg("-9")
            .arg("-f")
            .arg(self.dir.path().to_string_lossy().as_ref())
            .status();
    }
}

/// `<dir>/<name>.log`, or an empty string.
pub fn read_log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}
