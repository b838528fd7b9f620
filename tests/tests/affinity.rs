//! Tenant-scoped prefix affinity with two workers: a tenant's repeated long
//! prompt goes back to the worker that holds its prefix (and hits its prefix
//! cache there); another tenant with byte-identical text gets no affinity
//! from the first tenant's prompts; a tenant created with
//! `--no-prefix-cache` never hits a prefix cache at all.
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bulkhead_e2e::DevStack;

async fn complete(stack: &DevStack, i: usize, prompt: &str) -> Result<String> {
    complete_as(stack, &stack.key(i), prompt).await
}

async fn complete_as(stack: &DevStack, key: &str, prompt: &str) -> Result<String> {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/completions", stack.s("router_http")))
        .bearer_auth(key)
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

        // A tenant that opted out: the same prompt three times, no hit.
        let model = stack.s("model");
        stack.cli(&[
            "tenants",
            "create",
            "--id",
            "regulated",
            "--models",
            &model,
            "--no-prefix-cache",
        ])?;
        let (key, admin) = stack.issue_keys("regulated")?;
        // Usable once the router's watch has the tenant (and so its policy).
        let t0 = Instant::now();
        while complete_as(&stack, &key, "warm up").await.is_err() {
            ensure!(t0.elapsed() < Duration::from_secs(10), "key never usable");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for _ in 0..3 {
            complete_as(&stack, &key, &prompt).await?;
        }
        let t0 = Instant::now();
        let recs = loop {
            let recs = stack.audit_records_for("regulated", &admin).await?;
            if recs.iter().filter(|r| r.status == "ok").count() >= 4 {
                break recs;
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(20),
                "{} records",
                recs.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        ensure!(
            recs.iter().all(|r| r.cached_tokens == 0),
            "an opted-out tenant hit a prefix cache: {recs:?}"
        );
        // Nor does the router keep its prefixes for affinity.
        ensure!(
            recs.iter().all(|r| r.routing_decision != "prefix-affinity"),
            "an opted-out tenant's prefixes were kept for affinity: {recs:?}"
        );
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        stack.dump_logs();
    }
    result
}
