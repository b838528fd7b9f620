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

/// Sends one completion; returns (request id, cached prompt tokens).
async fn complete(stack: &DevStack, key: &str, prompt: &str) -> Result<(String, u64)> {
    let t0 = Instant::now();
    loop {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/completions", stack.s("router_http")))
            .bearer_auth(key)
            .json(
                &serde_json::json!({"model": stack.s("model"), "prompt": prompt, "max_tokens": 2}),
            )
            .send()
            .await?;
        // A key just issued may not have reached the router yet.
        if r.status() == 401 && t0.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        ensure!(r.status().is_success(), "{}", r.text().await?);
        let v: serde_json::Value = r.json().await?;
        let id = v["id"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("cmpl-")
            .to_string();
        let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0);
        return Ok((id, cached));
    }
}

async fn wait_records(stack: &DevStack, tenant: &str, key: &str, n: usize) -> Result<Vec<String>> {
    let t0 = Instant::now();
    loop {
        let recs = stack.audit_records_for(tenant, key).await?;
        if recs.len() >= n || t0.elapsed() > Duration::from_secs(20) {
            return Ok(recs.into_iter().map(|r| r.request_id).collect());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A tenant id deleted and created again is a new tenant: it sees none of
/// the old tenant's audit records, gets no hit in the old tenant's prefix
/// cache, and is itself audited (also after the old log was shredded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_tenant_inherits_nothing() -> Result<()> {
    let stack = DevStack::start(&[])?;
    let prompt =
        "The same long prompt, sent by the first and by the second tenant called phoenix. "
            .repeat(3);
    let create = |stack: &DevStack| -> Result<(String, String, String)> {
        let out = stack.cli(&[
            "--json",
            "tenants",
            "create",
            "--id",
            "phoenix",
            "--models",
            &stack.s("model"),
        ])?;
        let uid = serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|v| v["uid"].as_str().map(str::to_string))
            .with_context(|| format!("no uid in {out}"))?;
        let (key, admin) = stack.issue_keys("phoenix")?;
        Ok((uid, key, admin))
    };
    let result = async {
        let (uid1, key1, admin1) = create(&stack)?;
        let (old_a, _) = complete(&stack, &key1, &prompt).await?;
        let (old_b, cached) = complete(&stack, &key1, &prompt).await?;
        ensure!(
            cached > 0,
            "the first tenant's repeated prompt was not cached"
        );
        let old = wait_records(&stack, "phoenix", &admin1, 2).await?;
        ensure!(old.contains(&old_a) && old.contains(&old_b), "{old:?}");
        // Its log is shredded, then the tenant deleted and created again.
        stack.cli(&[
            "--audit",
            &format!("https://{}", stack.s("audit_grpc")),
            "audit",
            "shred",
            "--tenant",
            "phoenix",
        ])?;
        stack.cli(&["tenants", "delete", "--id", "phoenix"])?;
        let (uid2, key2, admin2) = create(&stack)?;
        ensure!(uid1 != uid2, "the same uid twice: {uid1}");
        let (new_id, cached) = complete(&stack, &key2, &prompt).await?;
        ensure!(
            cached == 0,
            "the new tenant hit the old tenant's prefix cache ({cached} tokens)"
        );
        let recs = wait_records(&stack, "phoenix", &admin2, 1).await?;
        ensure!(
            recs == vec![new_id.clone()],
            "the new tenant sees {recs:?}, its own request is {new_id}"
        );
        // The old tenant's admin key is gone with it.
        ensure!(stack.audit_records_for("phoenix", &admin1).await.is_err());
        println!("uid {uid1} -> {uid2}: no old record, no cache hit, audited ({new_id})");
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        stack.dump_logs();
    }
    result
}
