//! `bulkhead bench fairness`: the noisy-neighbour experiment. For each
//! scenario a fresh loopback stack is started (`bulkhead dev`) whose worker
//! runs in synthetic mode (the roofline of a real step, slept: at least
//! `--us-per-step` — reading the weights once — or `--us-per-token` × the
//! step's tokens when that is longer; capacity is known and runs are short
//! and repeatable), with two tenants:
//!
//! - `quiet` (B) sends at a quarter of the worker's capacity, `flood` (A)
//!   at ten times B's rate (open loop) — scenarios `fifo` (arrival order),
//!   `rate-limit` (FIFO, each tenant limited to half the capacity in
//!   requests/s) and `fair` (weighted fair queuing, equal weights). B's TTFT
//!   alone is measured first, on the same stack.
//! - both tenants saturating (closed loop), weights A:B = 2:1 — `fair-2to1`;
//!   `fair-2to1-replicas`: two router replicas behind a skewed load balancer
//!   (all of A on router 0, B split over both); `fair-2to1-4replicas` and
//!   `fair-1to1-4replicas`: four replicas, all of A on router 0 and B spread
//!   over the other three (the adversarial ingress).
//!
//! Each stack's capacity is calibrated first (one tenant saturating the
//! worker, weighted service per second). Reported per scenario: P50/P99
//! TTFT per tenant, the weighted service each received in the measurement
//! window (input tokens × 1 + output × 2), `delivered_ratio` (A:B),
//! `utilisation` (service delivered / calibrated capacity), `jain` (Jain's
//! index of service relative to each tenant's weighted max-min entitlement
//! of the calibrated capacity; 1 = each got exactly its share) and
//! `victim_p99_over_solo` (B's P99 TTFT under the flood over B's alone).
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bulkhead_proto::client::inference_client::InferenceClient;
use bulkhead_proto::control::UpdateTenantRequest;
use clap::Args;
use serde_json::{Value, json};
use tonic::transport::Endpoint;

use super::fairstats::{jain_vs_entitlement, percentile_ms, utilisation};
use super::load::{self, Sample, Sender, Status};
use crate::client::ControlClient;
use crate::dev::StackInfo;

const SCENARIOS: &[&str] = &[
    "fifo",
    "rate-limit",
    "fair",
    "fair-2to1",
    "fair-2to1-replicas",
    "fair-2to1-4replicas",
    "fair-1to1-4replicas",
];

/// Streams each tenant keeps open in the closed-loop scenarios, and the
/// calibration's (enough to fill every sequence slot of the worker).
const CLOSED_STREAMS: usize = 16;
const CALIBRATION_STREAMS: usize = 32;

#[derive(Args, Debug)]
pub struct FairnessArgs {
    /// Seconds of load per scenario (the first quarter is warm-up).
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// How long requests still waiting at the end may take before they are
    /// given up (and counted unserved, with the wait as their TTFT).
    #[arg(long, default_value_t = 10)]
    pub drain_seconds: u64,
    /// Synthetic worker: the least a step takes, in microseconds (reading
    /// the weights once; a Llama-3-8B in bf16 on an H100 takes about 5 ms).
    #[arg(long, default_value_t = 5000)]
    pub us_per_step: u64,
    /// Synthetic worker: the arithmetic per token processed, in
    /// microseconds (a step of more than us-per-step / us-per-token tokens
    /// is compute-bound).
    #[arg(long, default_value_t = 25)]
    pub us_per_token: u64,
    /// Seconds of saturating load that calibrate each stack's capacity.
    #[arg(long, default_value_t = 4)]
    pub calibrate_seconds: u64,
    /// Words per prompt.
    #[arg(long, default_value_t = 8)]
    pub prompt_words: usize,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 24)]
    pub max_tokens: u32,
    /// Scenarios to run (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fifo,rate-limit,fair,fair-2to1,fair-2to1-replicas,fair-2to1-4replicas,fair-1to1-4replicas"
    )]
    pub scenarios: Vec<String>,
    /// The nats-server binary for the stacks.
    #[arg(long, env = "BULKHEAD_NATS_SERVER", default_value = "nats-server")]
    pub nats_server: PathBuf,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

struct Stack {
    child: tokio::process::Child,
    info: StackInfo,
    _dir: tempfile::TempDir,
}

impl Stack {
    async fn start(a: &FairnessArgs, fifo: bool, routers: usize) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let stack_dir = dir.path().join("stack");
        let log = std::fs::File::create(dir.path().join("dev.log"))?;
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("dev")
            .arg("--dir")
            .arg(&stack_dir)
            .arg("--nats-server")
            .arg(&a.nats_server)
            .args(["--tenants", "flood,quiet", "--max-tokens", "256"])
            .args(["--routers", &routers.to_string()])
            .env(
                "BULKHEAD_WORKER_SYNTHETIC_US_PER_TOKEN",
                a.us_per_token.to_string(),
            )
            .env(
                "BULKHEAD_WORKER_SYNTHETIC_US_PER_STEP",
                a.us_per_step.to_string(),
            )
            .env(
                "BULKHEAD_ROUTER_SCHEDULER",
                if fifo { "fifo" } else { "fair" },
            )
            .env("RUST_LOG", "warn")
            // Routers see other replicas' slot use only through the
            // workers' capacity reports: poll them often.
            .env("BULKHEAD_ROUTER_POLL_MS", "200")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting `bulkhead dev`")?;
        let mut s = Self {
            child,
            info: wait_for_stack(&stack_dir, dir.path()).await?,
            _dir: dir,
        };
        if let Some(st) = s.child.try_wait()? {
            anyhow::bail!("`bulkhead dev` exited: {st}");
        }
        Ok(s)
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }

    async fn sender(&self, router: usize, tenant: usize, a: &FairnessArgs) -> Result<Sender> {
        let r = &self.info.routers[router];
        let ch = Endpoint::from_shared(format!("http://{}", r.grpc))?
            .connect()
            .await?;
        Ok(Sender {
            client: InferenceClient::new(ch),
            key: self.info.tenants[tenant].api_key.clone(),
            model: self.info.model.clone(),
            prompt: Arc::from(prompt(a.prompt_words)),
            max_tokens: a.max_tokens,
        })
    }

    async fn update(&self, r: UpdateTenantRequest) -> Result<()> {
        let mut c = ControlClient::connect(
            &format!("https://{}", self.info.control_grpc),
            &self.info.certs_dir,
        )
        .await?;
        c.update_tenant(r).await?;
        Ok(())
    }
}

async fn wait_for_stack(stack_dir: &Path, dir: &Path) -> Result<StackInfo> {
    let t0 = Instant::now();
    loop {
        if let Ok(b) = std::fs::read(stack_dir.join("stack.json"))
            && let Ok(info) = serde_json::from_slice(&b)
        {
            return Ok(info);
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let log = std::fs::read_to_string(dir.join("dev.log")).unwrap_or_default();
            anyhow::bail!("the stack did not start in 120 s:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn prompt(words: usize) -> String {
    const W: &[&str] = &["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];
    (0..words)
        .map(|i| W[i % W.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// One tenant's figures in one scenario.
fn tenant_json(samples: &[Sample], window: (Instant, Instant), skipped: u64) -> (Value, f64) {
    let in_window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent >= window.0 && s.sent < window.1)
        .collect();
    let ttfts: Vec<Duration> = in_window
        .iter()
        .filter(|s| matches!(s.status, Status::Ok | Status::Unserved))
        .filter_map(|s| s.ttft)
        .collect();
    let count = |st: Status| samples.iter().filter(|s| s.status == st).count();
    let service: f64 = samples
        .iter()
        .map(|s| s.service_between(window.0, window.1))
        .sum();
    let secs = (window.1 - window.0).as_secs_f64();
    (
        json!({
            "sent": samples.len(), "served": count(Status::Ok), "limited": count(Status::Limited),
            "errors": count(Status::Error), "unserved": count(Status::Unserved),
            "skipped_by_client": skipped,
            "ttft_p50_ms": percentile_ms(&ttfts, 50.0), "ttft_p99_ms": percentile_ms(&ttfts, 99.0),
            "service_per_s": service / secs,
        }),
        service / secs,
    )
}

/// What a scenario runs.
struct Spec {
    fifo: bool,
    limit: bool,
    weights: (u32, u32),
    closed: bool,
    routers: usize,
}

fn spec(name: &str) -> Result<Spec> {
    let s = |fifo, limit, weights, closed, routers| Spec {
        fifo,
        limit,
        weights,
        closed,
        routers,
    };
    Ok(match name {
        "fifo" => s(true, false, (1, 1), false, 1),
        "rate-limit" => s(true, true, (1, 1), false, 1),
        "fair" => s(false, false, (1, 1), false, 1),
        "fair-2to1" => s(false, false, (2, 1), true, 1),
        "fair-2to1-replicas" => s(false, false, (2, 1), true, 2),
        "fair-2to1-4replicas" => s(false, false, (2, 1), true, 4),
        "fair-1to1-4replicas" => s(false, false, (1, 1), true, 4),
        other => anyhow::bail!(
            "unknown scenario {other:?} (known: {})",
            SCENARIOS.join(", ")
        ),
    })
}

/// The stack's capacity: weighted service per second with one tenant
/// saturating the worker (the first second is warm-up), and the service of
/// one request.
async fn calibrate(stack: &Stack, a: &FairnessArgs) -> Result<(f64, f64)> {
    let s = stack.sender(0, 1, a).await?;
    let start = Instant::now();
    let until = start + Duration::from_secs(a.calibrate_seconds.max(2));
    let from = start + Duration::from_secs(1);
    let samples = load::closed_loop(&s, CALIBRATION_STREAMS, until, Duration::from_secs(5)).await;
    let served: Vec<&Sample> = samples.iter().filter(|s| s.status == Status::Ok).collect();
    anyhow::ensure!(!served.is_empty(), "no calibration request was served");
    let per_request = served
        .iter()
        .map(|s| s.charges.iter().map(|(_, c)| c).sum::<f64>())
        .sum::<f64>()
        / served.len() as f64;
    let service: f64 = samples.iter().map(|s| s.service_between(from, until)).sum();
    Ok((service / (until - from).as_secs_f64(), per_request))
}

async fn scenario(a: &FairnessArgs, name: &str) -> Result<Value> {
    let sp = spec(name)?;
    let stack = Stack::start(a, sp.fifo, sp.routers).await?;
    let result = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (capacity, per_request) = calibrate(&stack, a).await?;
        let capacity_rps = capacity / per_request.max(1.0);
        for (id, w) in [("flood", sp.weights.0), ("quiet", sp.weights.1)] {
            let rps = if sp.limit {
                (capacity_rps / 2.0).ceil() as u32
            } else {
                0
            };
            stack
                .update(UpdateTenantRequest {
                    id: id.into(),
                    weight: Some(w),
                    requests_per_second: Some(rps),
                    burst: Some(rps.min(2)),
                    ..Default::default()
                })
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await; // the routers' KV watch
        let run = Duration::from_secs(a.seconds.max(4));
        let warm = run / 4;
        let drain = Duration::from_secs(a.drain_seconds);
        let mut out = json!({
            "scenario": name, "scheduler": if sp.fifo { "fifo" } else { "fair" },
            "routers": sp.routers, "weights": {"flood": sp.weights.0, "quiet": sp.weights.1},
            "capacity_service_per_s": capacity, "service_per_request": per_request,
            "capacity_requests_per_s": capacity_rps,
        });
        let quiet = stack.sender(0, 1, a).await?;
        let flood = stack.sender(0, 0, a).await?;
        let (fs, qs, window, skipped, demands) = if !sp.closed {
            let rate_b = capacity_rps / 4.0;
            // B alone first, on the same stack.
            let until = Instant::now() + run / 2;
            let (alone, _) = load::open_loop(&quiet, rate_b, until, 256, drain).await;
            let alone_ttft: Vec<Duration> = alone.iter().filter_map(|s| s.ttft).collect();
            out["quiet_alone_ttft_p99_ms"] = json!(percentile_ms(&alone_ttft, 99.0));
            out["quiet_alone_ttft_p50_ms"] = json!(percentile_ms(&alone_ttft, 50.0));
            out["rates_per_s"] = json!({"flood": rate_b * 10.0, "quiet": rate_b});
            let start = Instant::now();
            let until = start + run;
            let (f, q) = tokio::join!(
                load::open_loop(&flood, rate_b * 10.0, until, 512, drain),
                load::open_loop(&quiet, rate_b, until, 256, drain)
            );
            let demand = |r: f64| r * per_request;
            (
                f.0,
                q.0,
                (start + warm, until),
                (f.1, q.1),
                [demand(rate_b * 10.0), demand(rate_b)],
            )
        } else {
            let start = Instant::now();
            let until = start + run;
            // All of A on router 0; B spread over the others (over both
            // when there are two: a load balancer that skews, not one that
            // partitions).
            let b_routers: Vec<usize> = match sp.routers {
                1 => vec![0],
                2 => vec![0, 1],
                n => (1..n).collect(),
            };
            let mut b_senders = vec![];
            for &r in &b_routers {
                b_senders.push(stack.sender(r, 1, a).await?);
            }
            let per = CLOSED_STREAMS.div_ceil(b_senders.len());
            let b = futures::future::join_all(
                b_senders
                    .iter()
                    .map(|s| load::closed_loop(s, per, until, drain)),
            );
            let (f, q) = tokio::join!(load::closed_loop(&flood, CLOSED_STREAMS, until, drain), b);
            out["quiet_routers"] = json!(b_routers);
            (
                f,
                q.into_iter().flatten().collect(),
                (start + warm, until),
                (0, 0),
                [f64::INFINITY, f64::INFINITY],
            )
        };
        let (fj, f_service) = tenant_json(&fs, window, skipped.0);
        let (qj, q_service) = tenant_json(&qs, window, skipped.1);
        let delivered = [f_service, q_service];
        let weights = [f64::from(sp.weights.0), f64::from(sp.weights.1)];
        let entitled = super::fairstats::entitlements(capacity, &demands, &weights);
        out["flood"] = fj;
        out["quiet"] = qj;
        out["flood"]["delivered_over_entitled"] = json!(f_service / entitled[0].max(1e-9));
        out["quiet"]["delivered_over_entitled"] = json!(q_service / entitled[1].max(1e-9));
        out["delivered_ratio"] = json!(f_service / q_service.max(1e-9));
        out["entitled_ratio"] = json!(entitled[0] / entitled[1].max(1e-9));
        out["utilisation"] = json!(utilisation(&delivered, capacity));
        out["jain"] = json!(jain_vs_entitlement(
            &delivered, &demands, &weights, capacity
        ));
        out["victim_p99_over_solo"] = match out["quiet_alone_ttft_p99_ms"].as_f64() {
            Some(alone) => json!(out["quiet"]["ttft_p99_ms"].as_f64().unwrap_or(f64::NAN) / alone),
            None => Value::Null,
        };
        Ok::<Value, anyhow::Error>(out)
    }
    .await;
    stack.stop().await;
    result
}

pub async fn run(a: FairnessArgs) -> Result<()> {
    let mut results = vec![];
    for name in &a.scenarios {
        if !a.json {
            eprintln!("scenario {name} ...");
        }
        results.push(
            scenario(&a, name)
                .await
                .with_context(|| format!("scenario {name}"))?,
        );
    }
    if a.json {
        println!(
            "{}",
            json!({"us_per_step": a.us_per_step, "us_per_token": a.us_per_token, "seconds": a.seconds, "scenarios": results})
        );
        return Ok(());
    }
    println!(
        "{:<20} {:>14} {:>14} {:>9} {:>7} {:>6} {:>6} {:>6}",
        "scenario", "A p50/p99 ms", "B p50/p99 ms", "B alone", "B/solo", "Jain", "A:B", "util"
    );
    let num = |v: &Value, d: usize| v.as_f64().map_or("-".to_string(), |x| format!("{x:.d$}"));
    for r in &results {
        let pair = |t: &str| {
            format!(
                "{}/{}",
                num(&r[t]["ttft_p50_ms"], 0),
                num(&r[t]["ttft_p99_ms"], 0)
            )
        };
        println!(
            "{:<20} {:>14} {:>14} {:>9} {:>7} {:>6} {:>6} {:>6}",
            r["scenario"].as_str().unwrap_or("?"),
            pair("flood"),
            pair("quiet"),
            num(&r["quiet_alone_ttft_p99_ms"], 0),
            num(&r["victim_p99_over_solo"], 2),
            num(&r["jain"], 3),
            num(&r["delivered_ratio"], 2),
            num(&r["utilisation"], 2),
        );
    }
    Ok(())
}
