//! `bulkhead dev`: the whole stack on loopback for development and tests.
//!
//! Starts nats-server, the control-plane, the audit-service, one CPU worker
//! with a generated model, and the router, each on a free port; creates demo
//! tenants with keys; writes `<dir>/stack.json`; prints a curl command; and on
//! Ctrl-C (or SIGTERM) stops every child, newest first.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

mod nats;
mod procs;
mod tenants;

use procs::Children;

/// Arguments of `bulkhead dev`.
#[derive(clap::Args, Debug, Clone)]
pub struct DevArgs {
    /// Folder for the stack's state: certificates, NATS data, audit logs,
    /// the model, logs and stack.json.
    #[arg(long, default_value = ".bulkhead/dev")]
    pub dir: PathBuf,
    /// The nats-server binary (>= 2.10; scripts/ensure-nats.sh installs one).
    #[arg(long, env = "BULKHEAD_NATS_SERVER", default_value = "nats-server")]
    pub nats_server: PathBuf,
    /// Folder with the Bulkhead binaries (default: next to this one).
    #[arg(long, env = "BULKHEAD_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Demo tenants to create, each with one inference key.
    #[arg(long, value_delimiter = ',', default_value = "acme,globex")]
    pub tenants: Vec<String>,
    /// Name under which the worker serves the generated model.
    #[arg(long, default_value = "bulkhead-tiny")]
    pub model_name: String,
    /// Also create this tenant at the `process` isolation tier, with a
    /// worker of its own that admits only it.
    #[arg(long)]
    pub dedicated: Option<String>,
    /// How many workers to start (each serves the model on the CPU).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// How many router replicas to start (they share tenant limits and
    /// fair-queue service through their heartbeats in NATS).
    #[arg(long, default_value_t = 1)]
    pub routers: usize,
    /// Per-request token limit of the demo tenants.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: u32,
}

/// What `stack.json` holds.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct StackInfo {
    pub router_http: String,
    pub router_grpc: String,
    /// The first router's Prometheus endpoint (an internal listener: the
    /// public HTTP port serves only the API and /healthz).
    pub router_metrics: String,
    /// Every router replica (the first is `router_http`/`router_grpc`).
    pub routers: Vec<RouterInfo>,
    pub audit_grpc: String,
    pub audit_pid: u32,
    pub control_pid: u32,
    /// The audit-service's Prometheus endpoint.
    pub audit_metrics: String,
    pub control_grpc: String,
    /// The control-plane's Prometheus endpoint.
    pub control_metrics: String,
    pub worker_grpc: String,
    /// The first worker's Prometheus endpoint (`http://host:port/metrics`).
    pub worker_metrics: String,
    /// Every worker.
    pub workers: Vec<WorkerInfo>,
    pub nats_url: String,
    pub nats_pid: u32,
    pub ca_cert: PathBuf,
    pub certs_dir: PathBuf,
    pub model: String,
    pub tenants: Vec<TenantInfo>,
    pub logs_dir: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct RouterInfo {
    pub id: String,
    pub http: String,
    pub grpc: String,
    /// `http://host:port/metrics`.
    pub metrics: String,
    pub pid: u32,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct WorkerInfo {
    pub id: String,
    pub grpc: String,
    pub metrics: String,
    pub pid: u32,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct TenantInfo {
    pub id: String,
    /// Inference key.
    pub api_key: String,
    /// Tenant-admin key (reads the tenant's audit records).
    pub admin_key: String,
}

fn ready_addr(v: &serde_json::Value, field: &str) -> Result<String> {
    v[field]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("ready file has no {field:?}: {v}"))
}

/// Runs the dev stack until Ctrl-C / SIGTERM or until a child dies.
pub async fn run(args: DevArgs) -> Result<()> {
    let dir = absolute(&args.dir)?;
    let run_dir = dir.join("run");
    let logs = dir.join("logs");
    for d in [&dir, &run_dir, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    for stale in std::fs::read_dir(&run_dir)? {
        std::fs::remove_file(stale?.path()).ok();
    }
    std::fs::remove_file(dir.join("stack.json")).ok();
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the binary has no folder")?
            .to_path_buf(),
    };
    let bin = |name: &str| bin_dir.join(name);
    for b in [
        "bulkhead",
        "bulkhead-control",
        "bulkhead-audit",
        "bulkhead-worker",
        "bulkhead-router",
    ] {
        if !bin(b).exists() {
            bail!(
                "{} is missing: build with `cargo build --workspace --bins`",
                bin(b).display()
            );
        }
    }
    let mut kids = Children::new(logs.clone());
    let result = start(&args, &dir, &run_dir, &bin, &mut kids).await;
    let outcome = match result {
        Ok(info) => {
            print_welcome(&info);
            kids.wait_for_signal_or_exit().await
        }
        Err(e) => Err(e),
    };
    println!("stopping the dev stack ...");
    kids.stop_all(Duration::from_secs(10)).await;
    std::fs::remove_file(dir.join("stack.json")).ok();
    println!("stopped");
    outcome
}

async fn start(
    args: &DevArgs,
    dir: &Path,
    run_dir: &Path,
    bin: &dyn Fn(&str) -> PathBuf,
    kids: &mut Children,
) -> Result<StackInfo> {
    let certs = dir.join("certs");
    if !certs.join("ca.pem").exists() {
        println!(
            "creating a CA and component certificates in {}",
            certs.display()
        );
        let st = tokio::process::Command::new(bin("bulkhead"))
            .args(["certs", "init", "--dir"])
            .arg(&certs)
            .status()
            .await?;
        anyhow::ensure!(st.success(), "`bulkhead certs init` failed");
    }
    if !certs.join("nats.pem").exists() {
        // A certificates folder from before NATS spoke TLS.
        let st = tokio::process::Command::new(bin("bulkhead"))
            .args(["certs", "issue", "--component", "nats", "--dir"])
            .arg(&certs)
            .status()
            .await?;
        anyhow::ensure!(
            st.success(),
            "`bulkhead certs issue --component nats` failed"
        );
    }
    let certs_s = certs.to_string_lossy().to_string();

    // NATS, mutual TLS: every client presents a certificate of this CA,
    // which maps to a user of its own with only the subjects its job needs
    // (`crate::nats_conf`); the configuration follows revocations.
    // Each router replica has an identity of its own, so NATS lets it write
    // only its own heartbeat.
    let td = nats::trust_domain(&certs)?;
    let router_ids: Vec<String> = (0..args.routers.max(1))
        .map(|i| format!("dev-router-{i}"))
        .collect();
    for id in &router_ids {
        if !certs.join(format!("router.{id}.pem")).exists() {
            crate::pki::issue_for_replica(&certs, &td, id, 365, &[])
                .with_context(|| format!("issuing router replica {id}'s certificate"))?;
        }
    }
    let nats_files = nats::DevNats {
        conf: run_dir.join("nats.conf"),
        certs: certs.clone(),
        store_dir: dir.join("nats"),
        trust_domain: td,
        routers: router_ids.clone(),
    };
    nats_files.write_config()?;
    let mut cmd = tokio::process::Command::new(&args.nats_server);
    cmd.arg("-c")
        .arg(&nats_files.conf)
        .args(["-a", "127.0.0.1", "-p", "-1", "-js"])
        .arg("--ports_file_dir")
        .arg(run_dir);
    // Expendable so fault tests can take NATS away and watch the router fail
    // closed; the stack says so when it happens.
    let nats_pid = kids.spawn_expendable("nats-server", cmd).with_context(|| {
        format!(
            "starting {} (run scripts/ensure-nats.sh, or pass --nats-server)",
            args.nats_server.display()
        )
    })?;
    let ports = kids
        .wait_ready(&run_dir.join(format!("nats-server_{nats_pid}.ports")))
        .await?;
    let nats_url = ports["nats"][0]
        .as_str()
        .context("nats-server wrote no client URL")?
        .to_string();
    println!("nats-server      {nats_url}");
    nats_files.spawn_reloader(nats_pid);

    // Control-plane
    let ready = run_dir.join("control.json");
    let mut cmd = tokio::process::Command::new(bin("bulkhead-control"));
    cmd.args([
        "--nats-url",
        &nats_url,
        "--listen",
        "127.0.0.1:0",
        "--certs-dir",
        &certs_s,
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .arg("--ready-file")
    .arg(&ready);
    let control_pid = kids.spawn("control", cmd)?;
    let ready_json = kids.wait_ready(&ready).await?;
    let control_grpc = ready_addr(&ready_json, "grpc")?;
    let control_metrics = format!("http://{}/metrics", ready_addr(&ready_json, "metrics")?);
    println!("control-plane    {control_grpc}");

    // Audit-service
    let ready = run_dir.join("audit.json");
    let mut cmd = tokio::process::Command::new(bin("bulkhead-audit"));
    cmd.args([
        "--nats-url",
        &nats_url,
        "--listen",
        "127.0.0.1:0",
        "--certs-dir",
        &certs_s,
    ])
    .arg("--data-dir")
    .arg(dir.join("audit"))
    .arg("--master-key-file")
    .arg(dir.join("audit-master.key"))
    .arg("--create-master-key")
    .args(["--metrics-listen", "127.0.0.1:0"])
    .arg("--ready-file")
    .arg(&ready);
    let audit_pid = kids.spawn("audit", cmd)?;
    let a = kids.wait_ready(&ready).await?;
    let (audit_grpc, audit_metrics) = (ready_addr(&a, "grpc")?, ready_addr(&a, "metrics")?);
    println!("audit-service    {audit_grpc}");

    // Worker with the generated model
    let model_dir = dir.join("model");
    if !model_dir.join("config.json").exists() {
        println!(
            "generating a small random Llama model in {}",
            model_dir.display()
        );
        let st = tokio::process::Command::new(bin("bulkhead-worker"))
            .arg("gen-model")
            .arg("--out")
            .arg(&model_dir)
            .status()
            .await?;
        anyhow::ensure!(st.success(), "`bulkhead-worker gen-model` failed");
    }
    // The shared pool is found by name, as in Kubernetes (a headless
    // Service): its workers listen on one port at 127.0.0.1, 127.0.0.2, …
    // and `run/hosts` gives the name all of them (the router's
    // --hosts-file, read again on every resolution round).
    let mut workers = vec![];
    let mut pool_port = 0u16;
    for i in 0..args.workers.max(1) {
        anyhow::ensure!(i < 250, "at most 250 workers on loopback");
        let listen = format!("127.0.0.{}:{pool_port}", i + 1);
        let name = if i == 0 {
            "worker".to_string()
        } else {
            format!("worker-{i}")
        };
        let ready = run_dir.join(format!("{name}.json"));
        let mut cmd = tokio::process::Command::new(bin("bulkhead-worker"));
        cmd.arg("serve")
            .arg("--model")
            .arg(&model_dir)
            .args(["--model-name", &args.model_name, "--listen", &listen])
            .args([
                "--certs-dir",
                &certs_s,
                "--worker-id",
                &format!("dev-worker-{i}"),
            ])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .arg("--ready-file")
            .arg(&ready);
        // A worker may die (or be killed in a fault test) without taking the
        // stack down: the router routes around it.
        let pid = kids.spawn_expendable(&name, cmd)?;
        let w = kids.wait_ready(&ready).await?;
        let (grpc, metrics) = (ready_addr(&w, "grpc")?, ready_addr(&w, "metrics")?);
        if pool_port == 0 {
            pool_port = grpc
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .context("the first worker's port")?;
        }
        println!("{name:<16} {grpc}");
        workers.push(WorkerInfo {
            id: format!("dev-worker-{i}"),
            grpc,
            metrics: format!("http://{metrics}/metrics"),
            pid,
        });
    }
    if let Some(t) = &args.dedicated {
        // A pool of its own for one tenant (the `process` tier), with the
        // tenant's own worker identity (routers refuse the shared one on a
        // dedicated pool).
        if !certs.join(format!("worker.{t}.pem")).exists() {
            let st = tokio::process::Command::new(bin("bulkhead"))
                .args([
                    "certs",
                    "issue",
                    "--component",
                    "worker",
                    "--tenant",
                    t,
                    "--dir",
                ])
                .arg(&certs)
                .status()
                .await?;
            anyhow::ensure!(
                st.success(),
                "`bulkhead certs issue --component worker --tenant {t}` failed"
            );
        }
        let ready = run_dir.join("worker-dedicated.json");
        let mut cmd = tokio::process::Command::new(bin("bulkhead-worker"));
        cmd.arg("serve")
            .arg("--model")
            .arg(&model_dir)
            .args(["--model-name", &args.model_name, "--listen", "127.0.0.1:0"])
            .args([
                "--certs-dir",
                &certs_s,
                "--worker-id",
                &format!("dev-worker-{t}"),
            ])
            .args([
                "--pool",
                &format!("dedicated-{t}"),
                "--isolation",
                "process",
                "--admit",
                t,
            ])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .arg("--ready-file")
            .arg(&ready);
        let pid = kids.spawn_expendable("worker-dedicated", cmd)?;
        let w = kids.wait_ready(&ready).await?;
        let (grpc, metrics) = (ready_addr(&w, "grpc")?, ready_addr(&w, "metrics")?);
        println!("worker-dedicated {grpc} (admits only {t})");
        workers.push(WorkerInfo {
            id: format!("dev-worker-{t}"),
            grpc,
            metrics: format!("http://{metrics}/metrics"),
            pid,
        });
    }
    let (worker_grpc, worker_metrics) = (workers[0].grpc.clone(), workers[0].metrics.clone());

    // Router
    let secret = dir.join("router-hash.secret");
    if !secret.exists() {
        write_private(&secret, &hex::encode(rand::random::<[u8; 32]>()))?;
    }
    // The shared pool by name; the dedicated pool's URL names its tenant:
    // the router then accepts only that tenant's worker identity in the
    // handshake.
    let hosts = run_dir.join("hosts");
    let shared = workers.len() - usize::from(args.dedicated.is_some());
    std::fs::write(&hosts, hosts_file(shared))?;
    let mut worker_urls = format!("dns+https://{POOL_NAME}:{pool_port}");
    if let (Some(t), Some(w)) = (&args.dedicated, workers.last()) {
        worker_urls.push_str(&format!(",https://{}#tenant={t}", w.grpc));
    }
    let mut routers = vec![];
    for (i, id) in router_ids.into_iter().enumerate() {
        let ready = run_dir.join(format!("{id}.json"));
        let mut cmd = tokio::process::Command::new(bin("bulkhead-router"));
        cmd.args([
            "--http-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .args(["--nats-url", &nats_url, "--certs-dir", &certs_s])
        .args(["--worker", &worker_urls, "--router-id", &id])
        .arg("--hosts-file")
        .arg(&hosts)
        .args(["--worker-resolve-ms", "250"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        // Used when BULKHEAD_ROUTER_AUDIT_MODE=spool.
        .arg("--audit-spool-dir")
        .arg(dir.join("spool").join(&id))
        .arg("--hash-secret-file")
        .arg(&secret)
        .arg("--ready-file")
        .arg(&ready);
        let name = if i == 0 {
            "router".to_string()
        } else {
            id.clone()
        };
        let pid = kids.spawn(&name, cmd)?;
        let r = kids.wait_ready(&ready).await?;
        let (http, grpc) = (ready_addr(&r, "http")?, ready_addr(&r, "grpc")?);
        let metrics = ready_addr(&r, "metrics")?;
        println!("{name:<16} http://{http}  grpc {grpc}");
        routers.push(RouterInfo {
            id,
            http: format!("http://{http}"),
            grpc,
            metrics: format!("http://{metrics}/metrics"),
            pid,
        });
    }
    let (router_http, router_grpc) = (routers[0].http.clone(), routers[0].grpc.clone());
    let router_metrics = routers[0].metrics.clone();

    let tenants = tenants::create_demo(
        &format!("https://{control_grpc}"),
        &certs,
        &args.tenants,
        args.dedicated.as_deref(),
        &args.model_name,
        args.max_tokens,
    )
    .await?;
    for r in &routers {
        tenants::wait_until_router_knows(&r.grpc, &tenants).await?;
    }

    let info = StackInfo {
        router_http,
        router_grpc,
        router_metrics,
        routers,
        audit_grpc,
        audit_pid,
        control_pid,
        audit_metrics: format!("http://{audit_metrics}/metrics"),
        control_grpc,
        control_metrics,
        worker_grpc,
        worker_metrics,
        workers,
        nats_url,
        nats_pid,
        ca_cert: certs.join("ca.pem"),
        certs_dir: certs.clone(),
        model: args.model_name.clone(),
        tenants,
        logs_dir: kids.logs_dir().to_path_buf(),
    };
    let path = dir.join("stack.json");
    let tmp = dir.join("stack.json.tmp");
    write_private(&tmp, &serde_json::to_string_pretty(&info)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(info)
}

fn print_welcome(info: &StackInfo) {
    let key = info
        .tenants
        .first()
        .map(|t| t.api_key.as_str())
        .unwrap_or("<key>");
    println!();
    println!(
        "Bulkhead dev stack is up. Logs: {}",
        info.logs_dir.display()
    );
    for t in &info.tenants {
        println!(
            "  tenant {:<10} key {}  (audit admin key {})",
            t.id, t.api_key, t.admin_key
        );
    }
    println!("\nTry:\n");
    println!(
        "curl -sN {}/v1/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n  -d '{{\"model\":\"{}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}],\"max_tokens\":16,\"stream\":true}}'",
        info.router_http, info.model
    );
    println!("\nPress Ctrl-C to stop every component.");
}

/// Writes a file readable by its owner only (it holds secrets).
fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// The name the dev stack's shared pool is found by (see [`hosts_file`]).
pub const POOL_NAME: &str = "bulkhead-workers.dev";

/// The router's hosts file for `n` shared workers (127.0.0.1 ..): tests
/// rewrite it to make workers leave and join.
pub fn hosts_file(n: usize) -> String {
    (0..n)
        .map(|i| format!("127.0.0.{} {POOL_NAME}\n", i + 1))
        .collect()
}
