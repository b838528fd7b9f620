//! `bulkhead bench fairness`: the noisy-neighbour experiment. For each
//! scenario a fresh loopback stack is started (`bulkhead dev`) whose worker
//! runs in synthetic mode (`--synthetic-us-per-token`: a calibrated cost per
//! processed token instead of the model's arithmetic, so capacity is known
//! and runs are short and repeatable), with two tenants:
//!
//! - `quiet` (B) sends at a quarter of the worker's capacity, `flood` (A)
//!   at ten times B's rate (open loop) — scenarios `fifo` (arrival order),
//!   `rate-limit` (FIFO, each tenant limited to half the capacity in
//!   requests/s) and `fair` (weighted fair queuing, equal weights). B's TTFT
//!   alone is measured first, on the same stack.
//! - both tenants saturating (closed loop), weights A:B = 2:1 — `fair-2to1`,
//!   and `fair-2to1-replicas`: two router replicas behind a skewed load
//!   balancer (all of A on router 0, B split over both).
//!
//! Reported per scenario: P50/P99 TTFT per tenant, the weighted service each
//! received in the measurement window (input tokens × 1 + output × 2), the
//! delivered A:B ratio, and Jain's index of service relative to each
//! tenant's weighted max-min entitlement (1 = each got exactly its share).
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bulkhead_proto::client::inference_client::InferenceClient;
use bulkhead_proto::control::UpdateTenantRequest;
use clap::Args;
use serde_json::{Value, json};
use tonic::transport::Endpoint;

use super::fairstats::{jain_vs_entitlement, percentile_ms};
use super::load::{self, Sample, Sender, Status};
use crate::client::ControlClient;
use crate::dev::StackInfo;

const SCENARIOS: &[&str] = &[
    "fifo",
    "rate-limit",
    "fair",
    "fair-2to1",
    "fair-2to1-replicas",
];

#[derive(Args, Debug)]
pub struct FairnessArgs {
    /// Seconds of load per scenario (the first quarter is warm-up).
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// How long requests still waiting at the end may take before they are
    /// given up (and counted unserved, with the wait as their TTFT).
    #[arg(long, default_value_t = 10)]
    pub drain_seconds: u64,
    /// Synthetic worker cost per processed token, in microseconds.
    #[arg(long, default_value_t = 500)]
    pub us_per_token: u64,
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
        default_value = "fifo,rate-limit,fair,fair-2to1,fair-2to1-replicas"
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

async fn scenario(a: &FairnessArgs, name: &str) -> Result<Value> {
    let (fifo, limit, weights, closed, routers) = match name {
        "fifo" => (true, false, (1, 1), false, 1),
        "rate-limit" => (true, true, (1, 1), false, 1),
        "fair" => (false, false, (1, 1), false, 1),
        "fair-2to1" => (false, false, (2, 1), true, 1),
        "fair-2to1-replicas" => (false, false, (2, 1), true, 2),
        other => anyhow::bail!(
            "unknown scenario {other:?} (known: {})",
            SCENARIOS.join(", ")
        ),
    };
    let stack = Stack::start(a, fifo, routers).await?;
    let result = async {
        let quiet = stack.sender(0, 1, a).await?;
        // Calibrate: tokens per request, hence the worker's capacity.
        let probe = load::one(quiet.clone()).await;
        anyhow::ensure!(probe.status == Status::Ok, "calibration request failed");
        let tokens_per_req: f64 =
            probe.charges.iter().map(|(_, c)| c).sum::<f64>() - f64::from(a.max_tokens); // charges count output twice
        let capacity_rps = 1e6 / a.us_per_token as f64 / tokens_per_req.max(1.0);
        for (id, w) in [("flood", weights.0), ("quiet", weights.1)] {
            let rps = if limit {
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
            "scenario": name, "scheduler": if fifo { "fifo" } else { "fair" },
            "routers": routers, "weights": {"flood": weights.0, "quiet": weights.1},
            "capacity_requests_per_s": capacity_rps, "tokens_per_request": tokens_per_req,
        });
        let flood = stack.sender(0, 0, a).await?;
        let (fs, qs, window, skipped, demands) = if !closed {
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
            let demand = |r: f64| r * (tokens_per_req + f64::from(a.max_tokens));
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
            let (f, q) = if routers == 1 {
                tokio::join!(
                    load::closed_loop(&flood, 16, until, drain),
                    load::closed_loop(&quiet, 16, until, drain)
                )
            } else {
                // Skewed: all of A on router 0; B split over both routers.
                let quiet2 = stack.sender(1, 1, a).await?;
                let (f, q1, q2) = tokio::join!(
                    load::closed_loop(&flood, 16, until, drain),
                    load::closed_loop(&quiet, 8, until, drain),
                    load::closed_loop(&quiet2, 8, until, drain)
                );
                (f, q1.into_iter().chain(q2).collect())
            };
            (
                f,
                q,
                (start + warm, until),
                (0, 0),
                [f64::INFINITY, f64::INFINITY],
            )
        };
        let (fj, f_service) = tenant_json(&fs, window, skipped.0);
        let (qj, q_service) = tenant_json(&qs, window, skipped.1);
        out["flood"] = fj;
        out["quiet"] = qj;
        out["service_ratio_flood_to_quiet"] = json!(f_service / q_service.max(1e-9));
        out["jain"] = json!(jain_vs_entitlement(
            &[f_service, q_service],
            &demands,
            &[f64::from(weights.0), f64::from(weights.1)],
        ));
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
            json!({"us_per_token": a.us_per_token, "seconds": a.seconds, "scenarios": results})
        );
        return Ok(());
    }
    println!(
        "{:<20} {:>16} {:>16} {:>13} {:>6} {:>9}",
        "scenario", "A p50/p99 ms", "B p50/p99 ms", "B alone p99", "Jain", "A:B"
    );
    for r in &results {
        let pair = |t: &str| {
            format!(
                "{:.0}/{:.0}",
                r[t]["ttft_p50_ms"].as_f64().unwrap_or(f64::NAN),
                r[t]["ttft_p99_ms"].as_f64().unwrap_or(f64::NAN)
            )
        };
        let alone = r["quiet_alone_ttft_p99_ms"]
            .as_f64()
            .map_or("-".to_string(), |v| format!("{v:.0}"));
        println!(
            "{:<20} {:>16} {:>16} {:>13} {:>6.3} {:>9.2}",
            r["scenario"].as_str().unwrap_or("?"),
            pair("flood"),
            pair("quiet"),
            alone,
            r["jain"].as_f64().unwrap_or(f64::NAN),
            r["service_ratio_flood_to_quiet"]
                .as_f64()
                .unwrap_or(f64::NAN),
        );
    }
    Ok(())
}
