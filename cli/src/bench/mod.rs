//! `bulkhead bench overhead`: what the router costs. The same streamed
//! requests are sent straight to a worker over mTLS and through the router
//! (auth, validation, dispatch, audit publish), interleaved in one run so
//! both see the same machine; reports P50/P99 latency of each path, the
//! difference, and the router's request rate.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bulkhead_identity::spiffe::CertPaths;
use bulkhead_proto::client::GenerateRequest;
use bulkhead_proto::client::inference_client::InferenceClient;
use bulkhead_proto::common::SamplingParams;
use bulkhead_proto::worker::WorkerGenerateRequest;
use bulkhead_proto::worker::worker_client::WorkerClient;
use clap::{Args, Subcommand};
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::dev::StackInfo;

mod fairness;
mod fairstats;
mod load;
mod probe;
mod relay;
mod soak;

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Router overhead: direct to the worker, through a bare relay (the
    /// floor) and through the router, interleaved; then each path alone
    /// for requests/s.
    Overhead(OverheadArgs),
    /// Prefix-cache timing side channel: can one tenant tell from its own
    /// TTFT whether another tenant sent a prompt? (AUC across tenants, and
    /// within one tenant as the control that shows the probe works.)
    Probe(probe::ProbeArgs),
    /// Noisy neighbour: a tenant flooding at 10x another's rate, under FIFO,
    /// rate limits only, fair queuing, 2:1 weights and two router replicas
    /// (fresh stacks with a synthetic-cost worker; P50/P99 TTFT per tenant,
    /// Jain's index, delivered service ratio).
    Fairness(fairness::FairnessArgs),
    /// Sustained load: many concurrent streams from many tenants for
    /// minutes; errors by kind and every component's memory over time.
    Soak(soak::SoakArgs),
}

#[derive(Args, Debug)]
pub struct OverheadArgs {
    /// stack.json of a running stack (`bulkhead dev` writes one).
    #[arg(long, default_value = ".bulkhead/dev/stack.json")]
    pub stack: PathBuf,
    /// Requests per path.
    #[arg(long, default_value_t = 400)]
    pub requests: usize,
    /// Concurrent streams per path.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 1)]
    pub max_tokens: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

const PROMPT: &str = "benchmark";

async fn direct(
    client: &mut WorkerClient<Channel>,
    tenant: &str,
    model: &str,
    max_tokens: u32,
) -> Result<Duration> {
    let t0 = Instant::now();
    let req = WorkerGenerateRequest {
        request_id: uuid_like(),
        tenant_id: tenant.to_string(),
        model: model.to_string(),
        prompt: PROMPT.into(),
        max_tokens,
        sampling: Some(SamplingParams::default()),
        ..Default::default()
    };
    let mut s = client.generate(req).await?.into_inner();
    while s.message().await?.is_some() {}
    Ok(t0.elapsed())
}

async fn routed(
    client: &mut InferenceClient<Channel>,
    key: &str,
    model: &str,
    max_tokens: u32,
) -> Result<Duration> {
    let t0 = Instant::now();
    let mut req = tonic::Request::new(GenerateRequest {
        model: model.to_string(),
        prompt: PROMPT.into(),
        max_tokens,
        temperature: Some(0.0),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse()?);
    let mut s = client.generate(req).await?.into_inner();
    while s.message().await?.is_some() {}
    Ok(t0.elapsed())
}

fn uuid_like() -> String {
    format!("bench-{:032x}", rand::random::<u128>())
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

pub async fn run(cmd: BenchCmd) -> Result<()> {
    let a = match cmd {
        BenchCmd::Overhead(a) => a,
        BenchCmd::Probe(p) => return probe::run(p).await,
        BenchCmd::Fairness(f) => return fairness::run(f).await,
        BenchCmd::Soak(s) => return soak::run(s).await,
    };
    let info: StackInfo =
        serde_json::from_slice(&std::fs::read(&a.stack).with_context(|| {
            format!("reading {} (start `bulkhead dev` first)", a.stack.display())
        })?)?;
    let tenant = info
        .tenants
        .first()
        .context("the stack has no tenants")?
        .clone();
    let worker_ch = Endpoint::from_shared(format!("https://{}", info.worker_grpc))?
        .tls_config(CertPaths::new(&info.certs_dir, "router").client_tls("worker")?)?
        .connect()
        .await
        .context("connecting to the worker (as a router, over mTLS)")?;
    let router_ch = Endpoint::from_shared(format!("http://{}", info.router_grpc))?
        .connect()
        .await
        .context("connecting to the router")?;
    // The floor: a bare relay on the same hops (see `relay.rs`).
    let relay = relay::start(
        &format!("https://{}", info.worker_grpc),
        &info.certs_dir,
        &tenant.id,
    )
    .await?;
    let relay_ch = Endpoint::from_shared(format!("http://{}", relay.addr))?
        .connect()
        .await
        .context("connecting to the bench relay")?;
    let paths = Paths {
        worker: WorkerClient::new(worker_ch),
        router: InferenceClient::new(router_ch),
        relay: InferenceClient::new(relay_ch),
        tenant: tenant.id.clone(),
        key: tenant.api_key.clone(),
        model: info.model.clone(),
        max_tokens: a.max_tokens,
    };
    // CPU time of the processes on the routed path only (the direct path
    // never touches them): the router, and NATS + audit-service for the
    // audit event each routed request publishes.
    let router_pid = info.routers.first().map_or(0, |r| r.pid);
    let cpu_pids = [router_pid, info.nats_pid, info.audit_pid];
    let cpu_before = cpu_pids.map(cpu_seconds);
    // Latency: the three paths interleaved on every stream, the order
    // rotating so none always goes first.
    let per_task = a.requests.div_ceil(a.concurrency.max(1));
    let times = Arc::new(Mutex::new([vec![], vec![], vec![]]));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency.max(1) {
        let (p, times) = (paths.clone(), times.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                for k in 0..3 {
                    let which = (i + k) % 3;
                    let t = p.call(which).await?;
                    times.lock().await[which].push(t);
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let wall = started.elapsed();
    let cpu_after = cpu_pids.map(cpu_seconds);
    let [mut d, mut r, mut x] = times.lock().await.clone();
    d.sort();
    r.sort();
    x.sort();
    let n = r.len();
    let cpu_per_req_us = |i: usize| match (cpu_before[i], cpu_after[i]) {
        (Some(b), Some(a)) if n > 0 => Some((a - b) * 1e6 / n as f64),
        _ => None,
    };
    // Throughput: each path alone at the same concurrency.
    let mut rps = [0.0; 3];
    for (which, slot) in rps.iter_mut().enumerate() {
        *slot = paths.throughput(which, a.requests, a.concurrency).await?;
    }
    let added = |v: &[Duration], q: f64| pct(v, q) - pct(&d, q);
    let over = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    let out = serde_json::json!({
        "requests_per_path": n,
        "concurrency": a.concurrency,
        "max_tokens": a.max_tokens,
        "direct_ms": {"p50": pct(&d, 0.5), "p99": pct(&d, 0.99)},
        "router_ms": {"p50": pct(&r, 0.5), "p99": pct(&r, 0.99)},
        "relay_ms": {"p50": pct(&x, 0.5), "p99": pct(&x, 0.99)},
        "added_ms": {"p50": added(&r, 0.5), "p99": added(&r, 0.99)},
        "relay_added_ms": {"p50": added(&x, 0.5), "p99": added(&x, 0.99)},
        // No ratio where the relay added nothing measurable (its tail can
        // fall inside the direct path's).
        "router_added_over_relay_added": {
            "p50": over(added(&r, 0.5), added(&x, 0.5)),
            "p99": over(added(&r, 0.99), added(&x, 0.99)),
        },
        "requests_per_s": {"direct": rps[0], "router": rps[1], "relay": rps[2]},
        "router_rps_over_relay_rps": rps[1] / rps[2].max(1e-9),
        "ratio_p50": pct(&r, 0.5) / pct(&d, 0.5).max(1e-9),
        "interleaved_requests_per_s": 3.0 * n as f64 / wall.as_secs_f64(),
        // CPU per routed request, and the rate one core would sustain at
        // that cost (a projection from the measured CPU time, not a run).
        "router_cpu_us_per_request": cpu_per_req_us(0),
        "router_requests_per_core_s": cpu_per_req_us(0).map(|us| 1e6 / us.max(1e-9)),
        "nats_cpu_us_per_request": cpu_per_req_us(1),
        "audit_cpu_us_per_request": cpu_per_req_us(2),
    });
    if a.json {
        println!("{out}");
    } else {
        print_overhead(&out);
    }
    Ok(())
}

fn print_overhead(out: &serde_json::Value) {
    let f =
        |v: &serde_json::Value, d: usize| v.as_f64().map_or("n/a".into(), |x| format!("{x:.d$}"));
    println!(
        "router overhead ({} streamed requests per path, concurrency {}, {} token(s) each)",
        out["requests_per_path"], out["concurrency"], out["max_tokens"]
    );
    for (name, k) in [
        ("direct to worker", "direct_ms"),
        ("through a bare relay", "relay_ms"),
        ("through the router", "router_ms"),
    ] {
        println!(
            "  {name:<22} p50 {:>8} ms   p99 {:>8} ms",
            f(&out[k]["p50"], 3),
            f(&out[k]["p99"], 3)
        );
    }
    println!(
        "  added: router p50 {} / p99 {} ms; relay p50 {} / p99 {} ms; router/relay {}x / {}x (targets 1.3x / 2x)",
        f(&out["added_ms"]["p50"], 3),
        f(&out["added_ms"]["p99"], 3),
        f(&out["relay_added_ms"]["p50"], 3),
        f(&out["relay_added_ms"]["p99"], 3),
        f(&out["router_added_over_relay_added"]["p50"], 2),
        f(&out["router_added_over_relay_added"]["p99"], 2),
    );
    println!(
        "  requests/s alone: direct {}, relay {}, router {} (router/relay {}, target 0.8)",
        f(&out["requests_per_s"]["direct"], 0),
        f(&out["requests_per_s"]["relay"], 0),
        f(&out["requests_per_s"]["router"], 0),
        f(&out["router_rps_over_relay_rps"], 2),
    );
    println!(
        "  CPU per routed request: router {} µs (≈ {} requests/s per core), nats {} µs, audit {} µs",
        f(&out["router_cpu_us_per_request"], 0),
        f(&out["router_requests_per_core_s"], 0),
        f(&out["nats_cpu_us_per_request"], 0),
        f(&out["audit_cpu_us_per_request"], 0),
    );
}

/// The three paths of `bench overhead`: 0 direct, 1 router, 2 relay.
#[derive(Clone)]
struct Paths {
    worker: WorkerClient<Channel>,
    router: InferenceClient<Channel>,
    relay: InferenceClient<Channel>,
    tenant: String,
    key: String,
    model: String,
    max_tokens: u32,
}

impl Paths {
    async fn call(&self, which: usize) -> Result<Duration> {
        match which {
            0 => {
                direct(
                    &mut self.worker.clone(),
                    &self.tenant,
                    &self.model,
                    self.max_tokens,
                )
                .await
            }
            1 => {
                routed(
                    &mut self.router.clone(),
                    &self.key,
                    &self.model,
                    self.max_tokens,
                )
                .await
            }
            _ => {
                routed(
                    &mut self.relay.clone(),
                    &self.key,
                    &self.model,
                    self.max_tokens,
                )
                .await
            }
        }
    }

    /// Requests per second of path `which` alone: `requests` requests over
    /// `concurrency` streams.
    async fn throughput(&self, which: usize, requests: usize, concurrency: usize) -> Result<f64> {
        let per = requests.div_ceil(concurrency.max(1));
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency.max(1) {
            let p = self.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..per {
                    p.call(which).await?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok((per * concurrency.max(1)) as f64 / t0.elapsed().as_secs_f64())
    }
}

/// User + system CPU seconds a process has used (Linux `/proc`; the kernel
/// reports them in USER_HZ ticks, 100 per second on Linux).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name (which may hold spaces).
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((utime + stime) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_seconds_counts_this_process_work() {
        let me = std::process::id();
        let before = super::cpu_seconds(me).expect("own /proc/<pid>/stat");
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < std::time::Duration::from_millis(400) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = super::cpu_seconds(me).unwrap();
        // 0.4 s of spinning, ticks of 10 ms, and the machine may be shared.
        assert!(after - before >= 0.1, "{before} -> {after}");
        assert!(super::cpu_seconds(u32::MAX).is_none());
    }
}
