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
        a_tenants_ttl_expires_its_prefixes(&stack, &model).await?;
        pool_members_are_followed(&stack, &first.worker_id).await
    }
    .await;
    if result.is_err() {
        stack.dump_logs();
    }
    result
}

/// The shared pool is found by name (`dns+https://`, the dev stack's hosts
/// file standing in for a headless Service's DNS): the worker that holds the
/// first prompt's prefix leaves the name, so the router sends everything to
/// the other one, whose repeats then go by prefix affinity too; listed again,
/// it rejoins and serves.
async fn pool_members_are_followed(stack: &DevStack, holder: &str) -> Result<()> {
    let hosts = stack.dir.path().join("stack/run/hosts");
    let both = std::fs::read_to_string(&hosts)?;
    ensure!(both.lines().count() == 2, "{both}");
    let (gone, stays) = if holder == "dev-worker-0" {
        ("127.0.0.1", "dev-worker-1")
    } else {
        ("127.0.0.2", "dev-worker-0")
    };
    let rest: String = both
        .lines()
        .filter(|l| !l.starts_with(gone))
        .map(|l| format!("{l}\n"))
        .collect();
    replace(&hosts, &rest)?;
    let prompt = "pack my box with five dozen liquor jugs, then pack another ".repeat(8);
    let t0 = Instant::now();
    let served = loop {
        let id = complete(stack, 0, &prompt).await?;
        let recs = stack.audit_records(0).await?;
        if let Some(r) = recs.iter().find(|r| r.request_id == id)
            && r.worker_id == stays
        {
            break r.clone();
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "{holder} never left the pool"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("{holder} left the pool after {:?}", t0.elapsed());
    for _ in 0..2 {
        let id = complete(stack, 0, &prompt).await?;
        let t0 = Instant::now();
        let r = loop {
            if let Some(r) = stack
                .audit_records(0)
                .await?
                .into_iter()
                .find(|r| r.request_id == id)
            {
                break r;
            }
            ensure!(t0.elapsed() < Duration::from_secs(20), "no record of {id}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        ensure!(
            r.worker_id == stays && r.routing_decision == "prefix-affinity" && r.cached_tokens > 0,
            "{r:?} (first on {})",
            served.worker_id
        );
    }
    // Listed again: it rejoins (status shows both shared workers healthy).
    replace(&hosts, &both)?;
    let t0 = Instant::now();
    loop {
        let st: serde_json::Value = serde_json::from_str(&stack.cli(&["status", "--json"])?)?;
        let healthy: Vec<String> = st["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| w["healthy"] == true)
            .map(|w| w["id"].as_str().unwrap_or_default().to_string())
            .collect();
        if healthy.iter().any(|w| w == holder) && healthy.iter().any(|w| w == stays) {
            break;
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "{holder} never rejoined: {st}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("{holder} rejoined after {:?}", t0.elapsed());
    Ok(())
}

/// Replaces a file at once (the router reads it on every round).
fn replace(path: &std::path::Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A tenant's own prefix-cache TTL (`--prefix-cache-ttl-s`, shown by
/// `tenants list`) reaches the workers: its repeat hits the cache at once
/// and misses once the prefix has been unused for longer.
async fn a_tenants_ttl_expires_its_prefixes(stack: &DevStack, model: &str) -> Result<()> {
    stack.cli(&[
        "tenants",
        "create",
        "--id",
        "brief",
        "--models",
        model,
        "--prefix-cache-ttl-s",
        "1",
    ])?;
    let listed: serde_json::Value =
        serde_json::from_str(&stack.cli(&["tenants", "list", "--json"])?)?;
    ensure!(
        listed
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["id"] == "brief" && t["prefix_cache_ttl_s"] == 1),
        "{listed}"
    );
    let (key, admin) = stack.issue_keys("brief")?;
    let t0 = Instant::now();
    while complete_as(stack, &key, "warm up").await.is_err() {
        ensure!(t0.elapsed() < Duration::from_secs(10), "key never usable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let prompt = "a brief tenant's prompt, cached for one second and no longer ".repeat(6);
    let cached = |id: String| {
        let admin = admin.clone();
        async move {
            let t0 = Instant::now();
            loop {
                let recs = stack.audit_records_for("brief", &admin).await?;
                if let Some(r) = recs.iter().find(|r| r.request_id == id) {
                    return Ok::<_, anyhow::Error>(r.cached_tokens);
                }
                ensure!(t0.elapsed() < Duration::from_secs(20), "no record of {id}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    complete_as(stack, &key, &prompt).await?;
    let hit = cached(complete_as(stack, &key, &prompt).await?).await?;
    ensure!(hit > 0, "the repeat within the TTL did not hit the cache");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let after = cached(complete_as(stack, &key, &prompt).await?).await?;
    ensure!(after == 0, "{after} cached tokens after the tenant's TTL");
    Ok(())
}
