//! `bulkhead bench soak`: many concurrent streams from many tenants against
//! a running stack for a while; counts errors by kind and samples the
//! resident memory of every component, to show that nothing leaks or fails
//! under sustained load. Tenants `soak-NN` are created (or reused) through
//! the control-plane.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bulkhead_proto::client::inference_client::InferenceClient;
use bulkhead_proto::control::{CreateTenantRequest, KeyScope};
use clap::Args;
use serde_json::json;
use tokio::task::JoinSet;
use tonic::transport::Endpoint;

use super::load::{self, Sender, Status};
use crate::client::ControlClient;
use crate::dev::StackInfo;

#[derive(Args, Debug)]
pub struct SoakArgs {
    /// stack.json of a running stack (`bulkhead dev` writes one).
    #[arg(long, default_value = ".bulkhead/dev/stack.json")]
    pub stack: PathBuf,
    /// How long to run, in minutes (fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Concurrent streams, all tenants together.
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    /// Tenants the streams are spread over.
    #[arg(long, default_value_t = 50)]
    pub tenants: usize,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 8)]
    pub max_tokens: u32,
    /// Seconds between memory samples.
    #[arg(long, default_value_t = 5)]
    pub sample_every: u64,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Resident memory of a process in KiB (Linux `/proc`), if readable.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

async fn soak_tenants(info: &StackInfo, n: usize) -> Result<Vec<String>> {
    let mut c = ControlClient::connect(&format!("https://{}", info.control_grpc), &info.certs_dir)
        .await
        .context("connecting to the control-plane")?;
    let existing: Vec<String> = c.list_tenants().await?.into_iter().map(|t| t.id).collect();
    let mut keys = vec![];
    for i in 0..n {
        let id = format!("soak-{i:02}");
        if !existing.contains(&id) {
            c.create_tenant(CreateTenantRequest {
                id: id.clone(),
                weight: 1,
                allowed_models: vec![info.model.clone()],
                max_tokens_per_request: 64,
                ..Default::default()
            })
            .await?;
        }
        keys.push(c.issue_key(&id, KeyScope::Inference).await?.api_key);
    }
    Ok(keys)
}

pub async fn run(a: SoakArgs) -> Result<()> {
    let info: StackInfo = serde_json::from_slice(
        &std::fs::read(&a.stack).with_context(|| format!("reading {}", a.stack.display()))?,
    )?;
    let keys = soak_tenants(&info, a.tenants.max(1)).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await; // the routers' KV watch
    let mut procs: Vec<(String, u32)> = info
        .routers
        .iter()
        .map(|r| (r.id.clone(), r.pid))
        .chain(info.workers.iter().map(|w| (w.id.clone(), w.pid)))
        .collect();
    procs.push(("audit".into(), info.audit_pid));
    procs.push(("control".into(), info.control_pid));
    procs.push(("nats-server".into(), info.nats_pid));
    let mut channels = vec![];
    for r in &info.routers {
        channels.push(
            Endpoint::from_shared(format!("http://{}", r.grpc))?
                .connect()
                .await?,
        );
    }
    let run = Duration::from_secs_f64(a.minutes.max(0.05) * 60.0);
    let start = Instant::now();
    let until = start + run;
    let mut set = JoinSet::new();
    for i in 0..a.streams.max(1) {
        let s = Sender {
            client: InferenceClient::new(channels[i % channels.len()].clone()),
            key: keys[i % keys.len()].clone(),
            model: info.model.clone(),
            prompt: Arc::from("soak test prompt with a few words"),
            max_tokens: a.max_tokens,
        };
        set.spawn(async move { load::closed_loop(&s, 1, until, Duration::from_secs(30)).await });
    }
    let mut samples: Vec<(f64, BTreeMap<String, u64>)> = vec![];
    let mut tick = tokio::time::interval(Duration::from_secs(a.sample_every.max(1)));
    while Instant::now() < until {
        tick.tick().await;
        let rss = procs
            .iter()
            .filter_map(|(n, p)| Some((n.clone(), rss_kib(*p)?)))
            .collect();
        let t = start.elapsed().as_secs_f64();
        if !a.json {
            eprintln!("{t:>6.0} s  rss KiB {rss:?}");
        }
        samples.push((t, rss));
    }
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        for s in r.unwrap_or_default() {
            let k = match s.status {
                Status::Ok => "ok",
                Status::Limited => "limited",
                Status::Error => "error",
                Status::Unserved => "unserved",
            };
            *counts.entry(k).or_default() += 1;
        }
    }
    // Growth from the first sample after a tenth of the run (warm-up) to
    // the last.
    let warm = samples
        .iter()
        .find(|(t, _)| *t >= run.as_secs_f64() / 10.0)
        .or(samples.first());
    let last = samples.last();
    let growth: BTreeMap<String, serde_json::Value> = procs
        .iter()
        .map(|(n, _)| {
            let v = match (warm.and_then(|w| w.1.get(n)), last.and_then(|l| l.1.get(n))) {
                (Some(a), Some(b)) => json!({"rss_kib_after_warmup": a, "rss_kib_end": b,
                    "growth_pct": (*b as f64 - *a as f64) / (*a as f64) * 100.0}),
                _ => json!(null),
            };
            (n.clone(), v)
        })
        .collect();
    let ok = counts.get("ok").copied().unwrap_or(0);
    let out = json!({
        "minutes": a.minutes, "streams": a.streams, "tenants": a.tenants,
        "requests": counts, "requests_per_s": ok as f64 / run.as_secs_f64(),
        "memory": growth,
        "samples": samples.iter().map(|(t, m)| json!({"t_s": t, "rss_kib": m})).collect::<Vec<_>>(),
    });
    if a.json {
        println!("{out}");
    } else {
        println!(
            "soak: {} streams over {} tenants for {:.1} min",
            a.streams, a.tenants, a.minutes
        );
        println!("requests: {counts:?} ({:.0} ok/s)", out["requests_per_s"]);
        for (n, g) in &growth {
            println!("  {n:<16} {g}");
        }
    }
    Ok(())
}
