//! The edge proxy (deploy/edge/): a real nginx, configured by
//! `deploy/edge/render.sh` from the template, in front of the dev stack's
//! router. It terminates TLS with a certificate from the cluster CA
//! (`bulkhead certs issue --dns-name localhost`), proxies the OpenAI HTTP API
//! (streamed SSE and not, HTTP/1.1 and HTTP/2) and passes the client gRPC API
//! to the router over HTTP/2. Clients verify the edge against the CA.
//!
//! nginx: `$BULKHEAD_NGINX`, else `nginx` on PATH (scripts/ensure-nginx.sh
//! installs Debian's). The HTTPS client is curl (this crate's reqwest is
//! built without TLS); the gRPC client is tonic with the CA as its only root.
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bulkhead_e2e::{DevStack, Proc, bin_path, workspace_root};
use bulkhead_proto::client::GenerateRequest;
use bulkhead_proto::client::inference_client::InferenceClient;
use bulkhead_proto::common::ChatMessage;
use serde_json::{Value, json};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const PROMPT: &str = "edge-proxy-canary-5521 what is a bulkhead";

fn nginx_binary() -> PathBuf {
    std::env::var_os("BULKHEAD_NGINX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nginx"))
}

/// nginx in the foreground with its own prefix; stopped (SIGTERM to the
/// master, then SIGKILL to any worker it left) when dropped.
struct Nginx {
    proc: Proc,
    run_dir: PathBuf,
    port: u16,
    stopped: bool,
}

impl Nginx {
    fn start(run_dir: &Path, cert: &Path, key: &Path, stack: &DevStack) -> Result<Self> {
        let port = free_port()?;
        let router_http = stack.s("router_http");
        let router_http = router_http.trim_start_matches("http://");
        let render = Command::new(workspace_root().join("deploy/edge/render.sh"))
            .env("EDGE_LISTEN", format!("127.0.0.1:{port}"))
            .env("EDGE_SERVER_NAME", "localhost")
            .env("EDGE_TLS_CERT", cert)
            .env("EDGE_TLS_KEY", key)
            .env("EDGE_ROUTER_HTTP", router_http)
            .env("EDGE_ROUTER_GRPC", stack.s("router_grpc"))
            .env("EDGE_RUN_DIR", run_dir)
            .output()
            .context("running deploy/edge/render.sh")?;
        ensure!(
            render.status.success(),
            "render.sh: {}",
            String::from_utf8_lossy(&render.stderr)
        );
        let conf = run_dir.join("nginx.conf");
        std::fs::write(&conf, &render.stdout)?;
        let text = String::from_utf8(render.stdout)?;
        ensure!(!text.contains("${EDGE_"), "unsubstituted variable:\n{text}");
        let mut cmd = Command::new(nginx_binary());
        cmd.arg("-p").arg(run_dir).arg("-c").arg(&conf);
        let proc = Proc::spawn("nginx", cmd, run_dir)
            .context("starting nginx (run scripts/ensure-nginx.sh or set BULKHEAD_NGINX)")?;
        let mut n = Nginx {
            proc,
            run_dir: run_dir.to_path_buf(),
            port,
            stopped: false,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Err(e) = n.proc.ensure_running() {
                bail!("{e}\n{}", n.logs());
            }
            ensure!(
                Instant::now() < deadline,
                "nginx not listening:\n{}",
                n.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(n)
    }

    fn logs(&self) -> String {
        let r = |n: &str| std::fs::read_to_string(self.run_dir.join(n)).unwrap_or_default();
        format!(
            "--- nginx.log\n{}--- error.log\n{}",
            r("nginx.log"),
            r("error.log")
        )
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.run_dir.join("access.log")).unwrap_or_default()
    }

    /// Graceful stop; returns the exit status.
    fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let workers = self.workers();
        self.stopped = true;
        let st = self
            .proc
            .terminate(Duration::from_secs(10))?
            .context("nginx did not stop within 10 s of SIGTERM")?;
        for w in workers {
            let _ = Command::new("kill").args(["-9", &w]).status();
        }
        Ok(st)
    }

    fn workers(&self) -> Vec<String> {
        Command::new("pgrep")
            .args(["-P", &self.proc.pid().to_string()])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.stop();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// curl through the edge, verifying its certificate against `ca` under the
/// name localhost. Returns the status line fields and the body, each body
/// line with the time it arrived.
struct Curl {
    status: u16,
    http_version: String,
    lines: Vec<(Duration, String)>,
}

fn curl(edge: &Nginx, ca: &Path, http2: bool, key: &str, body: &Value) -> Result<Curl> {
    let port = edge.port;
    let mut child = Command::new("curl")
        .args([
            "-sS",
            "-N",
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
        ])
        .arg("--cacert")
        .arg(ca)
        .arg(if http2 { "--http2" } else { "--http1.1" })
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
        ])
        .args(["-w", "\n%{http_code} %{http_version}\n"])
        .arg(format!("https://localhost:{port}/v1/chat/completions"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running curl")?;
    std::io::Write::write_all(
        child.stdin.as_mut().context("stdin")?,
        body.to_string().as_bytes(),
    )?;
    drop(child.stdin.take());
    let t0 = Instant::now();
    let mut lines = Vec::new();
    for l in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        lines.push((t0.elapsed(), l?));
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "curl failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, last) = lines.pop().context("no curl output")?;
    let (code, version) = last.split_once(' ').context("no status line")?;
    if lines.last().is_some_and(|(_, l)| l.is_empty()) {
        lines.pop();
    }
    Ok(Curl {
        status: code.parse()?,
        http_version: version.to_string(),
        lines,
    })
}

fn chat(model: &str, stream: bool) -> Value {
    let mut v = json!({"model": model, "messages": [{"role": "user", "content": PROMPT}],
                       "max_tokens": 64, "temperature": 0, "stream": stream});
    if stream {
        v["stream_options"] = json!({"include_usage": true});
    }
    v
}

fn http_checks(edge: &Nginx, ca: &Path, stack: &DevStack) -> Result<()> {
    let (model, key) = (stack.s("model"), stack.key(0));
    for http2 in [false, true] {
        // Not streamed.
        let r = curl(edge, ca, http2, &key, &chat(&model, false))?;
        let text: String = r.lines.iter().map(|(_, l)| l.as_str()).collect();
        ensure!(r.status == 200, "status {}: {text}", r.status);
        ensure!(
            r.http_version == if http2 { "2" } else { "1.1" },
            "{}",
            r.http_version
        );
        let v: Value = serde_json::from_str(&text).context(text.clone())?;
        ensure!(v["object"] == "chat.completion", "{v}");
        ensure!(v["choices"][0]["message"]["content"].is_string(), "{v}");
        ensure!(v["usage"]["completion_tokens"].as_u64() >= Some(1), "{v}");

        // Streamed: SSE events end with [DONE].
        let r = curl(edge, ca, http2, &key, &chat(&model, true))?;
        ensure!(r.status == 200, "stream status {}: {:?}", r.status, r.lines);
        let data: Vec<&(Duration, String)> = r
            .lines
            .iter()
            .filter(|(_, l)| l.starts_with("data:"))
            .collect();
        ensure!(
            data.last().map(|(_, l)| l.trim()) == Some("data: [DONE]"),
            "no [DONE]: {:?}",
            r.lines
        );
        let content = data
            .iter()
            .filter(|(_, l)| l.contains("\"content\""))
            .count();
        ensure!(content >= 2, "fewer than 2 content events: {:?}", r.lines);
        // Unbuffered: events arrive as they are generated, not all at the
        // end (with proxy_buffering on, every event lands within ~0.5 ms).
        let gaps = data
            .windows(2)
            .filter(|w| w[1].0 - w[0].0 > Duration::from_millis(1))
            .count();
        eprintln!(
            "SSE over HTTP/{}: {} events, first after {:?}, [DONE] after {:?}, {gaps} gaps > 1 ms",
            r.http_version,
            data.len(),
            data[0].0,
            data[data.len() - 1].0
        );
        // HTTP/2 clients may hold the first frames (curl does, even straight
        // to the router), so the timing is asserted on HTTP/1.1.
        if !http2 {
            ensure!(gaps >= 2, "the edge buffered the stream: {:?}", r.lines);
        }
    }
    // A bad key: the router's 401 comes back through the edge.
    let r = curl(
        edge,
        ca,
        true,
        "bh_notarealkey000000000000000000000",
        &chat(&model, false),
    )?;
    ensure!(r.status == 401, "bad key: {} {:?}", r.status, r.lines);

    // Only the API and /healthz go through: the router's metrics (tenant
    // ids, per-tenant counters) are on its internal listener, and any other
    // path stops at the edge.
    for (path, want) in [("/healthz", "200"), ("/metrics", "404"), ("/debug", "404")] {
        let out = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--resolve", &format!("localhost:{}:127.0.0.1", edge.port)])
            .arg("--cacert")
            .arg(ca)
            .arg(format!("https://localhost:{}{path}", edge.port))
            .output()?;
        let code = String::from_utf8_lossy(&out.stdout);
        ensure!(code == want, "GET {path} through the edge: {code}");
    }

    // Without the cluster CA the edge's certificate is not trusted.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--resolve",
            &format!("localhost:{}:127.0.0.1", edge.port),
        ])
        .args(["--cacert", "/dev/null"])
        .arg(format!("https://localhost:{}/v1/models", edge.port))
        .output()?;
    ensure!(
        !out.status.success(),
        "curl trusted the edge without the CA"
    );
    Ok(())
}

/// The client's address (as the client's own proxy reports it to the edge,
/// which appends the address it saw) reaches the audit record.
async fn forwarded_check(edge: &Nginx, ca: &Path, stack: &DevStack) -> Result<()> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--resolve",
            &format!("localhost:{}:127.0.0.1", edge.port),
        ])
        .arg("--cacert")
        .arg(ca)
        .args(["-H", &format!("Authorization: Bearer {}", stack.key(0))])
        .args(["-H", "Content-Type: application/json"])
        .args(["-H", "X-Forwarded-For: 198.51.100.7"])
        .args(["--data-binary", &chat(&stack.s("model"), false).to_string()])
        .arg(format!(
            "https://localhost:{}/v1/chat/completions",
            edge.port
        ))
        .output()?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stdout).into_owned())?;
    let id = v["id"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("chatcmpl-")
        .to_string();
    let r = stack.wait_audit_record(0, &id).await?;
    ensure!(
        r.source_addr == "198.51.100.7",
        "recorded source {:?}",
        r.source_addr
    );
    Ok(())
}

async fn grpc_checks(edge: &Nginx, ca: &Path, stack: &DevStack) -> Result<()> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca)?))
        .domain_name("localhost");
    let ch = Endpoint::from_shared(format!("https://localhost:{}", edge.port))?
        .tls_config(tls)?
        .connect()
        .await
        .context("gRPC over TLS to the edge")?;
    let mut client = InferenceClient::new(ch);
    let request = |key: String| -> Result<tonic::Request<GenerateRequest>> {
        let mut req = tonic::Request::new(GenerateRequest {
            model: stack.s("model"),
            messages: vec![ChatMessage {
                role: "user".into(),
                content: PROMPT.into(),
            }],
            max_tokens: 8,
            temperature: Some(0.0),
            ..Default::default()
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse()?);
        Ok(req)
    };
    let mut stream = client.generate(request(stack.key(1))?).await?.into_inner();
    let (mut pieces, mut usage) = (0, None);
    while let Some(msg) = stream.message().await? {
        if msg.usage.is_some() {
            usage = msg.usage;
        } else {
            pieces += 1;
        }
    }
    let usage = usage.context("no final message with usage")?;
    ensure!(
        pieces >= 1 && (1..=8).contains(&usage.completion_tokens),
        "{pieces} pieces, {usage:?}"
    );
    // The router's gRPC status comes back through the edge.
    let err = client
        .generate(request("bh_notarealkey000000000000000000000".into())?)
        .await
        .expect_err("bad key accepted");
    ensure!(err.code() == tonic::Code::Unauthenticated, "{err:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_proxy_terminates_tls_for_http_and_passes_grpc() -> Result<()> {
    // The router believes X-Forwarded-For from the edge (on loopback here).
    let stack =
        DevStack::start_with_env(&[], &[("BULKHEAD_ROUTER_TRUSTED_PROXIES", "127.0.0.1/32")])?;
    let certs = PathBuf::from(stack.s("certs_dir"));
    let out = Command::new(bin_path("bulkhead"))
        .args([
            "certs",
            "issue",
            "--component",
            "edge",
            "--dns-name",
            "localhost",
        ])
        .arg("--dir")
        .arg(&certs)
        .output()?;
    ensure!(
        out.status.success(),
        "certs issue: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (cert, key, ca) = (
        certs.join("edge.pem"),
        certs.join("edge.key"),
        certs.join("ca.pem"),
    );
    ensure!(
        cert.is_file() && key.is_file(),
        "no edge certificate in {certs:?}"
    );
    let run = tempfile::tempdir()?;
    let mut edge = Nginx::start(run.path(), &cert, &key, &stack)?;

    let result = async {
        http_checks(&edge, &ca, &stack)?;
        forwarded_check(&edge, &ca, &stack).await?;
        grpc_checks(&edge, &ca, &stack).await
    }
    .await;
    if let Err(e) = &result {
        stack.dump_logs();
        eprintln!("{}", edge.logs());
        bail!("{e:#}");
    }
    // The access log has the requests, and neither prompts nor keys.
    let access = edge.access_log();
    ensure!(
        access.contains("POST /v1/chat/completions HTTP/2.0")
            && access.contains("POST /v1/chat/completions HTTP/1.1")
            && access.contains("POST /bulkhead.v1.Inference/Generate HTTP/2.0"),
        "{access}"
    );
    ensure!(
        !access.contains("edge-proxy-canary") && !access.contains(&stack.key(0)),
        "{access}"
    );
    let st = edge.stop()?;
    ensure!(st.success(), "nginx exited with {st}:\n{}", edge.logs());
    Ok(())
}
