//! Per-tenant limits end to end: an operator creates a tenant with a
//! requests-per-second limit through the CLI; the routers learn it from the
//! KV watch; over the limit the tenant gets 429 with Retry-After (and
//! OpenAI's `x-ratelimit-*` headers, on served requests too) and an
//! OpenAI-shaped body, while another tenant is not affected.
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bulkhead_e2e::DevStack;

async fn complete(stack: &DevStack, key: &str) -> Result<reqwest::Response> {
    Ok(reqwest::Client::new()
        .post(format!("{}/v1/completions", stack.s("router_http")))
        .bearer_auth(key)
        .json(&serde_json::json!({"model": stack.s("model"), "prompt": "hello", "max_tokens": 2}))
        .send()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_limit_is_429_and_others_are_unaffected() -> Result<()> {
    let stack = DevStack::start(&[])?;
    let result = async {
        stack.cli(&[
            "tenants",
            "create",
            "--id",
            "limited",
            "--models",
            &stack.s("model"),
            "--rps",
            "1",
            "--burst",
            "1",
        ])?;
        let key = stack
            .cli(&["keys", "issue", "--tenant", "limited"])?
            .trim()
            .to_string();
        // Wait until the router's watch has the new key (propagation).
        let t0 = Instant::now();
        loop {
            let r = complete(&stack, &key).await?;
            if r.status() != 401 {
                break;
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "key never propagated"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("new key usable at the router after {:?}", t0.elapsed());
        // The bucket is now empty: the next requests within the second are refused.
        let mut refused = None;
        for _ in 0..3 {
            let r = complete(&stack, &key).await?;
            if r.status() == 429 {
                refused = Some(r);
                break;
            }
        }
        let r = refused.context("no 429 over a 1 request/s limit")?;
        let retry: u64 = r
            .headers()
            .get("retry-after")
            .context("no Retry-After")?
            .to_str()?
            .parse()?;
        ensure!((1..=2).contains(&retry), "Retry-After {retry}");
        // OpenAI's x-ratelimit-* headers: a bucket of 1, empty, full again
        // within a second; no token limit, so no token headers.
        let h = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        ensure!(
            h("x-ratelimit-limit-requests").as_deref() == Some("1"),
            "{:?}",
            r.headers()
        );
        ensure!(
            h("x-ratelimit-remaining-requests").as_deref() == Some("0"),
            "{:?}",
            r.headers()
        );
        let reset = h("x-ratelimit-reset-requests").context("no reset")?;
        let reset: f64 = reset.trim_end_matches('s').parse()?;
        ensure!(reset > 0.0 && reset <= 1.0, "reset {reset}");
        ensure!(h("x-ratelimit-limit-tokens").is_none(), "{:?}", r.headers());
        let body: serde_json::Value = r.json().await?;
        ensure!(body["error"]["type"] == "rate_limit_error", "{body}");
        // Another tenant is served meanwhile.
        for _ in 0..3 {
            let r = complete(&stack, &stack.key(1)).await?;
            ensure!(r.status().is_success(), "other tenant: {}", r.status());
        }
        // And the limited tenant is served again after Retry-After.
        tokio::time::sleep(Duration::from_secs(retry)).await;
        let r = complete(&stack, &key).await?;
        ensure!(r.status().is_success(), "after Retry-After: {}", r.status());
        // A served request carries them too: this one took the only token.
        let remaining = r.headers().get("x-ratelimit-remaining-requests");
        ensure!(
            remaining.and_then(|v| v.to_str().ok()) == Some("0"),
            "{:?}",
            r.headers()
        );
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        stack.dump_logs();
    }
    result
}
