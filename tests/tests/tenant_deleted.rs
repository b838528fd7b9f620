//! A tenant deleted mid-stream: its in-flight stream finishes or ends
//! cleanly ([DONE]); its new requests are refused with 401; other tenants are
//! unaffected.
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bulkhead_e2e::DevStack;
use futures::StreamExt;

async fn post(
    stack: &DevStack,
    key: &str,
    stream: bool,
    max_tokens: u32,
) -> Result<reqwest::Response> {
    Ok(reqwest::Client::new()
        .post(format!("{}/v1/completions", stack.s("router_http")))
        .bearer_auth(key)
        .json(&serde_json::json!({"model": stack.s("model"), "prompt": "hello there", "max_tokens": max_tokens, "stream": stream}))
        .send()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_tenant_mid_stream() -> Result<()> {
    let stack = DevStack::start(&["--max-tokens", "400"])?;
    let result = async {
        stack.cli(&[
            "tenants",
            "create",
            "--id",
            "leaving",
            "--models",
            &stack.s("model"),
            "--max-tokens",
            "400",
        ])?;
        let key = stack
            .cli(&["keys", "issue", "--tenant", "leaving"])?
            .trim()
            .to_string();
        let t0 = Instant::now();
        let resp = loop {
            let r = post(&stack, &key, true, 400).await?;
            if r.status() != 401 {
                break r;
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "key never propagated"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        ensure!(resp.status().is_success(), "{}", resp.status());
        let mut body = resp.bytes_stream();
        let mut text = String::new();
        while !text.contains("\"text\"") {
            let c = body.next().await.context("stream ended early")??;
            text.push_str(&String::from_utf8_lossy(&c));
        }
        stack.cli(&["tenants", "delete", "--id", "leaving"])?;
        let deleted = Instant::now();
        // New requests are refused as soon as the routers see the deletion.
        loop {
            let r = post(&stack, &key, false, 2).await?;
            if r.status() == 401 {
                break;
            }
            ensure!(
                deleted.elapsed() < Duration::from_secs(5),
                "still served after deletion: {}",
                r.status()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!(
            "refused {:?} after `tenants delete` returned",
            deleted.elapsed()
        );
        // The in-flight stream finishes or ends cleanly.
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(c) = body.next().await {
                text.push_str(&String::from_utf8_lossy(&c?));
            }
            anyhow::Ok(())
        })
        .await
        .context("the in-flight stream hung")??;
        ensure!(
            text.trim_end().ends_with("data: [DONE]"),
            "not ended cleanly: {text}"
        );
        // Others are unaffected.
        ensure!(
            post(&stack, &stack.key(0), false, 2)
                .await?
                .status()
                .is_success()
        );
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        stack.dump_logs();
    }
    result
}
