//! Usage and token budgets across two router replicas: a tenant's daily
//! budget spent through one replica is refused at the other too (429 that
//! names the budget and when it resets); `bulkhead usage` reports the
//! requests and tokens the responses reported; lifting the budget serves
//! again; a key's own budget refuses that key only.
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bulkhead_e2e::DevStack;
use serde_json::Value;

use super::wait_for_key;

struct Reply {
    status: u16,
    body: Value,
    retry_after: Option<u64>,
}

async fn complete(http: &str, model: &str, key: &str) -> Result<Reply> {
    let r = reqwest::Client::new()
        .post(format!("{http}/v1/completions"))
        .bearer_auth(key)
        .json(&serde_json::json!({"model": model, "prompt": "hello there", "max_tokens": 4}))
        .send()
        .await?;
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    Ok(Reply {
        status,
        body: r.json().await?,
        retry_after,
    })
}

/// Polls `f` every 100 ms for up to 10 s until it returns `Some`.
async fn within_10s<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await? {
            println!("{what} after {:?}", t0.elapsed());
            return Ok(v);
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_hold_across_replicas_and_usage_is_counted() -> Result<()> {
    let stack = DevStack::start(&["--routers", "2"])?;
    let result = async {
        let model = stack.s("model");
        let http: Vec<String> = stack.info["routers"]
            .as_array()
            .context("routers")?
            .iter()
            .map(|r| r["http"].as_str().unwrap_or_default().to_string())
            .collect();
        ensure!(http.len() == 2, "{http:?}");
        stack.cli(&[
            "tenants",
            "create",
            "--id",
            "metered",
            "--models",
            &model,
            "--daily-token-budget",
            "40",
        ])?;
        let (key, _) = stack.issue_keys("metered")?;
        for h in &http {
            wait_for_key(h, &key).await?;
        }

        // Spend the budget through router 0: served until the tokens the
        // responses reported reach 40, then refused.
        let (mut served, mut tokens) = (0u64, 0u64);
        let refusal = loop {
            let r = complete(&http[0], &model, &key).await?;
            if r.status != 200 {
                break r;
            }
            served += 1;
            tokens += r.body["usage"]["total_tokens"].as_u64().context("usage")?;
            ensure!(served < 40, "never refused after {tokens} tokens");
        };
        ensure!(
            refusal.status == 429,
            "{}: {}",
            refusal.status,
            refusal.body
        );
        ensure!(tokens >= 40, "refused after only {tokens} tokens");
        let err = &refusal.body["error"];
        let msg = err["message"].as_str().unwrap_or_default();
        ensure!(
            msg.contains("daily token budget of tenant \"metered\" (40 tokens) is used up")
                && msg.contains("resets at ")
                && msg.contains("T00:00:00Z"),
            "{msg}"
        );
        ensure!(err["type"] == "insufficient_quota", "{err}");
        ensure!(
            matches!(refusal.retry_after, Some(s) if (1..=86_400).contains(&s)),
            "Retry-After {:?}",
            refusal.retry_after
        );

        // Router 1 refuses too, once router 0's records reach it.
        let t0 = Instant::now();
        loop {
            let r = complete(&http[1], &model, &key).await?;
            if r.status == 429 {
                println!("refused at the other replica after {:?}", t0.elapsed());
                break;
            }
            ensure!(r.status == 200, "{}: {}", r.status, r.body);
            served += 1;
            tokens += r.body["usage"]["total_tokens"].as_u64().unwrap_or(0);
            ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "never refused at router 1"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The control-plane's usage: what the responses said, every
        // replica together (refused requests are not counted).
        let rows: Value = within_10s("usage complete", || async {
            let rows: Value =
                serde_json::from_str(&stack.cli(&["usage", "--tenant", "metered", "--json"])?)?;
            Ok((rows[0]["requests"].as_u64() == Some(served)).then_some(rows))
        })
        .await?;
        let row = &rows[0];
        ensure!(rows.as_array().map(Vec::len) == Some(1), "{rows}");
        ensure!(
            row["total_tokens"].as_u64() == Some(tokens),
            "{row} vs {tokens}"
        );
        ensure!(
            row["prompt_tokens"].as_u64().unwrap_or(0)
                + row["completion_tokens"].as_u64().unwrap_or(0)
                == tokens,
            "{row}"
        );
        let prefix = &key[..9];
        let csv = stack.cli(&[
            "usage",
            "--tenant",
            "metered",
            "--by",
            "hour",
            "--per-key",
            "--format",
            "csv",
        ])?;
        ensure!(
            csv.starts_with("tenant,day,hour,key_prefix,requests,")
                && csv
                    .lines()
                    .skip(1)
                    .all(|l| l.starts_with("metered,") && l.contains(prefix)),
            "{csv}"
        );

        // Lifting the budget serves again at both replicas.
        stack.cli(&[
            "tenants",
            "update",
            "--id",
            "metered",
            "--daily-token-budget",
            "0",
        ])?;
        for h in &http {
            within_10s("served again", || async {
                Ok((complete(h, &model, &key).await?.status == 200).then_some(()))
            })
            .await?;
        }

        // A key's own budget refuses that key, not the tenant's others.
        let small = stack
            .cli(&[
                "keys",
                "issue",
                "--tenant",
                "metered",
                "--daily-token-budget",
                "1",
            ])?
            .trim()
            .to_string();
        wait_for_key(&http[0], &small).await?;
        ensure!(complete(&http[0], &model, &small).await?.status == 200);
        let r = complete(&http[0], &model, &small).await?;
        let msg = r.body["error"]["message"].as_str().unwrap_or_default();
        ensure!(
            r.status == 429 && msg.contains(&format!("API key {}…", &small[..9])),
            "{}: {msg}",
            r.status
        );
        ensure!(complete(&http[0], &model, &key).await?.status == 200);
        let keys: Value =
            serde_json::from_str(&stack.cli(&["keys", "list", "--tenant", "metered", "--json"])?)?;
        ensure!(
            keys.as_array()
                .into_iter()
                .flatten()
                .any(|k| k["prefix"] == small[..9] && k["daily_token_budget"] == 1),
            "{keys}"
        );
        Ok(())
    }
    .await;
    if result.is_err() {
        stack.dump_logs();
    }
    result
}
