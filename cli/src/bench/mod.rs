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
mod soak;

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Router overhead: direct-to-worker vs through-the-router, interleaved.
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
    let per_task = a.requests.div_ceil(a.concurrency.max(1));
    // CPU time of the processes on the routed path only (the direct path
    // never touches them): the router, and NATS + audit-service for the
    // audit event each routed request publishes.
    let router_pid = info.routers.first().map_or(0, |r| r.pid);
    let cpu_pids = [router_pid, info.nats_pid, info.audit_pid];
    let cpu_before = cpu_pids.map(cpu_seconds);
    let direct_t = Arc::new(Mutex::new(Vec::new()));
    let routed_t = Arc::new(Mutex::new(Vec::new()));
    let mut router_busy = Duration::ZERO;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency.max(1) {
        let (mut w, mut r) = (
            WorkerClient::new(worker_ch.clone()),
            InferenceClient::new(router_ch.clone()),
        );
        let (dt, rt) = (direct_t.clone(), routed_t.clone());
        let (tenant, model, mt) = (tenant.clone(), info.model.clone(), a.max_tokens);
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                // Alternate the order so neither path always goes first.
                if i % 2 == 0 {
                    let d = direct(&mut w, &tenant.id, &model, mt).await?;
                    let r_ = routed(&mut r, &tenant.api_key, &model, mt).await?;
                    dt.lock().await.push(d);
                    rt.lock().await.push(r_);
                } else {
                    let r_ = routed(&mut r, &tenant.api_key, &model, mt).await?;
                    let d = direct(&mut w, &tenant.id, &model, mt).await?;
                    dt.lock().await.push(d);
                    rt.lock().await.push(r_);
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
    let cpu_per_req_us = |i: usize, n: usize| match (cpu_before[i], cpu_after[i]) {
        (Some(b), Some(a)) if n > 0 => Some((a - b) * 1e6 / n as f64),
        _ => None,
    };
    let mut d = direct_t.lock().await.clone();
    let mut r = routed_t.lock().await.clone();
    d.sort();
    r.sort();
    router_busy += r.iter().sum::<Duration>();
    let n = r.len();
    let out = serde_json::json!({
        "requests_per_path": n,
        "concurrency": a.concurrency,
        "max_tokens": a.max_tokens,
        "direct_ms": {"p50": pct(&d, 0.5), "p99": pct(&d, 0.99)},
        "router_ms": {"p50": pct(&r, 0.5), "p99": pct(&r, 0.99)},
        "added_ms": {"p50": pct(&r, 0.5) - pct(&d, 0.5), "p99": pct(&r, 0.99) - pct(&d, 0.99)},
        "ratio_p50": pct(&r, 0.5) / pct(&d, 0.5).max(1e-9),
        "router_requests_per_s": n as f64 / wall.as_secs_f64(),
        "mean_router_ms": router_busy.as_secs_f64() * 1e3 / n.max(1) as f64,
        // CPU per routed request, and the rate one core would sustain at
        // that cost (a projection from the measured CPU time, not a run).
        "router_cpu_us_per_request": cpu_per_req_us(0, n),
        "router_requests_per_core_s": cpu_per_req_us(0, n).map(|us| 1e6 / us.max(1e-9)),
        "nats_cpu_us_per_request": cpu_per_req_us(1, n),
        "audit_cpu_us_per_request": cpu_per_req_us(2, n),
    });
    if a.json {
        println!("{out}");
    } else {
        println!(
            "router overhead ({n} streamed requests per path, concurrency {}, {} token(s) each)",
            a.concurrency, a.max_tokens
        );
        println!(
            "  direct to worker  p50 {:>8.3} ms   p99 {:>8.3} ms",
            pct(&d, 0.5),
            pct(&d, 0.99)
        );
        println!(
            "  through router    p50 {:>8.3} ms   p99 {:>8.3} ms",
            pct(&r, 0.5),
            pct(&r, 0.99)
        );
        println!(
            "  added             p50 {:>8.3} ms   p99 {:>8.3} ms",
            out["added_ms"]["p50"].as_f64().unwrap_or(0.0),
            out["added_ms"]["p99"].as_f64().unwrap_or(0.0)
        );
        println!(
            "  router requests/s {:>8.0} (both paths share the machine; the rate counts routed requests only)",
            out["router_requests_per_s"].as_f64().unwrap_or(0.0)
        );
        let f = |k: &str| out[k].as_f64().map_or("n/a".into(), |v| format!("{v:.0}"));
        println!(
            "  CPU per routed request: router {} µs (≈ {} requests/s per core), nats {} µs, audit {} µs",
            f("router_cpu_us_per_request"),
            f("router_requests_per_core_s"),
            f("nats_cpu_us_per_request"),
            f("audit_cpu_us_per_request"),
        );
    }
    Ok(())
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
