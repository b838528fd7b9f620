//! Tenant-scoped prefix affinity with two workers: a tenant's repeated long
//! prompt goes back to the worker that holds its prefix (and hits its prefix
//! cache there); another tenant with byte-identical text gets no affinity
//! from the first tenant's prompts.
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bulkhead_e2e::DevStack;

async fn complete(stack: &DevStack, i: usize, prompt: &str) -> Result<String> {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/completions", stack.s("router_http")))
        .bearer_auth(stack.key(i))
        .json(&serde_json::json!({"model": stack.s("model"), "prompt": prompt, "max_tokens": 1}))
        .send()
        .await?;
    ensure!(r.status() == 200, "status {}", r.status());
    Ok(r.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string())
}

async fn records(
    stack: &DevStack,
    i: usize,
    want: usize,
) -> Result<Vec<bulkhead_proto::audit::AuditEvent>> {
    let t0 = Instant::now();
    loop {
        let recs = stack.audit_records(i).await?;
        if recs.len() >= want {
            return Ok(recs);
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(20),
            "{} of {want} records",
            recs.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_prefix_returns_to_its_worker_and_no_one_elses() -> Result<()> {
    let stack = DevStack::start(&["--workers", "2"])?;
    let result = async {
        let prompt = "the quick brown fox jumps over the lazy dog and keeps running ".repeat(8);
        let mut ids = vec![];
        for _ in 0..3 {
            ids.push(complete(&stack, 0, &prompt).await?);
        }
        let recs = records(&stack, 0, 3).await?;
        let by_id = |id: &str| recs.iter().find(|r| r.request_id == id).cloned();
        let first = by_id(&ids[0]).expect("first record");
        ensure!(first.routing_decision == "least-loaded", "{first:?}");
        for id in &ids[1..] {
            let r = by_id(id).expect("record");
            ensure!(r.routing_decision == "prefix-affinity", "{r:?}");
            ensure!(
                r.worker_id == first.worker_id,
                "went to {} not {}",
                r.worker_id,
                first.worker_id
            );
            ensure!(r.cached_tokens > 0, "no prefix-cache hit: {r:?}");
        }
        // The other tenant, same text: the first tenant's prefixes count
        // for nothing, and its cache holds nothing of the first tenant's.
        let other = complete(&stack, 1, &prompt).await?;
        let recs = records(&stack, 1, 1).await?;
        let r = recs.iter().find(|r| r.request_id == other).expect("record");
        ensure!(r.routing_decision == "least-loaded", "{r:?}");
        ensure!(r.cached_tokens == 0, "cross-tenant cache hit: {r:?}");
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        stack.dump_logs();
    }
    result
}
