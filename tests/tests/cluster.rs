//! Two router replicas over one NATS: each publishes a heartbeat, sees the
//! other, and enforces half of every tenant limit, so the tenant gets its
//! configured limit in total and not twice it; `bulkhead status` and
//! `bulkhead top` show both routers, the workers and the tenants; a revoked
//! key is refused at both routers (the latency is printed).
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bulkhead_e2e::DevStack;
use serde_json::Value;

#[path = "cluster/usage.rs"]
mod usage;

async fn complete(http: &str, model: &str, key: &str) -> Result<u16> {
    Ok(reqwest::Client::new()
        .post(format!("{http}/v1/completions"))
        .bearer_auth(key)
        .json(&serde_json::json!({"model": model, "prompt": "hi", "max_tokens": 1}))
        .send()
        .await?
        .status()
        .as_u16())
}

/// Waits until `key` is known at the router (`/v1/models` authenticates
/// without spending any limit).
async fn wait_for_key(http: &str, key: &str) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let r = reqwest::Client::new()
            .get(format!("{http}/v1/models"))
            .bearer_auth(key)
            .send()
            .await?;
        if r.status().is_success() {
            return Ok(());
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "key never propagated"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn status(stack: &DevStack) -> Result<Value> {
    Ok(serde_json::from_str(&stack.cli(&["status", "--json"])?)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_limits_and_status_shows_the_cluster() -> Result<()> {
    let stack = DevStack::start(&["--routers", "2"])?;
    let result = async {
        let routers = stack.info["routers"].as_array().context("routers")?.clone();
        ensure!(routers.len() == 2, "{routers:?}");
        let http: Vec<String> = routers
            .iter()
            .map(|r| r["http"].as_str().unwrap_or_default().to_string())
            .collect();

        // Both replicas see each other (their heartbeats say so).
        let t0 = Instant::now();
        let st = loop {
            let st = status(&stack)?;
            let rs = st["routers"].as_array().cloned().unwrap_or_default();
            if rs.len() == 2 && rs.iter().all(|r| r["replicas_seen"] == 2) {
                break st;
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(15),
                "replicas never saw each other: {st}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        println!("replicas see each other after {:?}", t0.elapsed());
        let w = &st["workers"][0];
        ensure!(w["healthy"] == true && w["device"] == "cpu", "{st}");
        ensure!(
            w["seen_by"] == 2 && w["max_seqs"].as_u64() > Some(0),
            "{st}"
        );
        let tenants: Vec<&str> = st["tenants"]
            .as_array()
            .context("tenants")?
            .iter()
            .filter_map(|t| t["id"].as_str())
            .collect();
        ensure!(tenants.contains(&stack.tenant(0).as_str()), "{st}");

        // A tenant allowed a burst of 4 (1 request/s after it): each replica
        // lets 2 through, not 4.
        let model = stack.s("model");
        stack.cli(&[
            "tenants", "create", "--id", "burst4", "--models", &model, "--rps", "1", "--burst", "4",
        ])?;
        let key = stack
            .cli(&["keys", "issue", "--tenant", "burst4"])?
            .trim()
            .to_string();
        for h in &http {
            wait_for_key(h, &key).await?;
        }
        let mut per_router = vec![];
        for h in &http {
            let mut ok = 0;
            for _ in 0..4 {
                match complete(h, &model, &key).await? {
                    200 => ok += 1,
                    429 => {}
                    other => anyhow::bail!("unexpected status {other}"),
                }
            }
            per_router.push(ok);
        }
        println!("burst 4 across 2 replicas: served {per_router:?}");
        ensure!(
            per_router == vec![2, 2],
            "each replica should serve its half of the burst: {per_router:?}"
        );

        // The tenants' usage shows up in status, summed over the routers.
        let t0 = Instant::now();
        loop {
            let st = status(&stack)?;
            let row = st["tenants"]
                .as_array()
                .and_then(|ts| ts.iter().find(|t| t["id"] == "burst4").cloned());
            if let Some(row) = row
                && row["requests"] == 4
            {
                ensure!(row["service"].as_f64() > Some(0.0), "{row}");
                break;
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "usage never reached status: {st}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let text = stack.cli(&["status"])?;
        for needle in [
            "Routers: 2 live",
            "dev-router-0",
            "dev-router-1",
            "burst4",
            "Workers: 1",
        ] {
            ensure!(text.contains(needle), "{needle:?} missing:\n{text}");
        }
        let top = stack.cli(&["top", "--iterations", "2", "--interval-ms", "100"])?;
        ensure!(top.matches("Routers: 2 live").count() == 2, "{top}");

        // Revocation reaches every router: time from `keys revoke` returning
        // to the first refused request at each one.
        let prefix: String = key.chars().take(9).collect();
        stack.cli(&["keys", "revoke", "--prefix", &prefix, "--tenant", "burst4"])?;
        let t0 = Instant::now();
        let mut lags = vec![];
        for h in &http {
            loop {
                let r = reqwest::Client::new()
                    .get(format!("{h}/v1/models"))
                    .bearer_auth(&key)
                    .send()
                    .await?;
                if r.status() == 401 {
                    lags.push(t0.elapsed());
                    break;
                }
                ensure!(
                    t0.elapsed() < Duration::from_secs(10),
                    "{h} still accepts a revoked key"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        println!("revoked key refused at each router after {lags:?}");
        Ok(())
    }
    .await;
    if result.is_err() {
        stack.dump_logs();
    }
    result
}
