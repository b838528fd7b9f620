//! Faults: a worker killed with SIGKILL mid-stream. The affected stream ends
//! with a clear error within 2 s; other tenants' requests keep flowing on the
//! remaining worker; the same tenant is served again; restarted, the worker
//! rejoins the rotation.
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bulkhead_e2e::DevStack;
use futures::StreamExt;

async fn complete(stack: &DevStack, key: &str) -> Result<u16> {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/completions", stack.s("router_http")))
        .bearer_auth(key)
        .json(&serde_json::json!({"model": stack.s("model"), "prompt": "still there?", "max_tokens": 2}))
        .send()
        .await?;
    Ok(r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_stream() -> Result<()> {
    let stack = DevStack::start(&["--workers", "2", "--max-tokens", "450"])?;
    let result = async {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/completions", stack.s("router_http")))
            .bearer_auth(stack.key(0))
            // Greedy: the generated model's tokens are then fixed, and this
            // prompt's run to max_tokens without an end-of-sequence (sampled,
            // it may stop after a few tokens, before the kill).
            .json(&serde_json::json!({"model": stack.s("model"), "prompt": "a long story", "max_tokens": 450, "stream": true, "temperature": 0}))
            .send()
            .await?;
        ensure!(resp.status().is_success(), "{}", resp.status());
        let request_id = resp.headers().get("x-request-id").context("no x-request-id")?.to_str()?.to_string();
        let mut body = resp.bytes_stream();
        let mut text = String::new();
        while !text.contains("\"text\"") {
            let chunk = body.next().await.context("stream ended before any token")??;
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        // Which worker holds the stream?
        let workers = stack.info["workers"].as_array().context("no workers")?.clone();
        let (i, victim) = workers
            .iter()
            .enumerate()
            .find(|(i, _)| {
                let log = if *i == 0 { "worker".to_string() } else { format!("worker-{i}") };
                stack.log(&log).contains(&request_id)
            })
            .context("no worker logged the request")?;
        let pid = victim["pid"].as_u64().context("pid")?;
        std::process::Command::new("kill").args(["-9", &pid.to_string()]).status()?;
        let killed = Instant::now();
        let rest = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(chunk) = body.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk?));
            }
            anyhow::Ok(())
        })
        .await
        .context("the stream did not end within 2 s of the worker's death")?;
        rest?;
        let ended = killed.elapsed();
        ensure!(
            !text.contains("\"finish_reason\":\"length\"") && !text.contains("\"finish_reason\":\"stop\""),
            "the stream finished before the kill; make it longer"
        );
        ensure!(text.contains("\"error\""), "no error event: {text}");
        ensure!(text.trim_end().ends_with("data: [DONE]"), "no [DONE]: {text}");
        println!("worker {i} killed; stream ended with an error after {ended:?}");
        // Others keep flowing, and the tenant itself is served again.
        for _ in 0..3 {
            ensure!(complete(&stack, &stack.key(1)).await? == 200, "other tenant refused after the kill");
        }
        ensure!(complete(&stack, &stack.key(0)).await? == 200, "tenant not served after the kill");

        // The worker restarts on its address and rejoins the rotation. First
        // the cluster view shows it out of rotation.
        let root = stack.dir.path().join("stack");
        let grpc = victim["grpc"].as_str().context("grpc")?.to_string();
        let id = victim["id"].as_str().context("id")?.to_string();
        let healthy = |st: &serde_json::Value| {
            st["workers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|w| w["id"] == id.as_str() && w["healthy"] == true)
        };
        let t0 = Instant::now();
        loop {
            let st: serde_json::Value = serde_json::from_str(&stack.cli(&["status", "--json"])?)?;
            if !healthy(&st) {
                break;
            }
            ensure!(t0.elapsed() < Duration::from_secs(20), "the dead worker stayed in rotation: {st}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut cmd = std::process::Command::new(bulkhead_e2e::bin_path("bulkhead-worker"));
        cmd.arg("serve")
            .arg("--model")
            .arg(root.join("model"))
            .args(["--model-name", &stack.s("model"), "--listen", &grpc, "--worker-id", &id])
            .arg("--certs-dir")
            .arg(root.join("certs"));
        let _restarted = bulkhead_e2e::Proc::spawn("worker-restarted", cmd, stack.dir.path())?;
        let t0 = Instant::now();
        loop {
            let st: serde_json::Value = serde_json::from_str(&stack.cli(&["status", "--json"])?)?;
            if healthy(&st) {
                break;
            }
            ensure!(t0.elapsed() < Duration::from_secs(20), "the restarted worker never rejoined: {st}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("worker {id} rejoined {:?} after its restart", t0.elapsed());
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        stack.dump_logs();
    }
    result
}

/// A worker that dies while idle: the router has not noticed yet (its next
/// health poll is up to a second away), so the first request it sends there
/// fails to connect — and is retried on the other worker instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_not_yet_streaming_are_retried_elsewhere() -> Result<()> {
    let stack = DevStack::start(&["--workers", "2"])?;
    let result = async {
        let pid = stack.info["workers"][1]["pid"].as_u64().context("pid")?;
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()?;
        for i in 0..6 {
            let status = complete(&stack, &stack.key(i % 2)).await?;
            ensure!(status == 200, "request {i} after the kill: {status}");
        }
        let router = stack.log("router");
        println!(
            "retries logged: {}",
            router.matches("retrying on another worker").count()
        );
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        stack.dump_logs();
    }
    result
}
