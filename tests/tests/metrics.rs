//! `/metrics` on the router (an internal listener, never the public port)
//! and the worker: valid exposition format (parsed
//! by the reference parser, prometheus_client), and the per-tenant series
//! move when that tenant's traffic flows — and only that tenant's.
use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use bulkhead_e2e::{DevStack, python, workspace_root};

async fn scrape(url: &str) -> Result<HashMap<String, f64>> {
    let text = reqwest::get(url).await?.error_for_status()?.text().await?;
    let mut child = Command::new(python())
        .arg(workspace_root().join("scripts/parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("python3 with prometheus_client: run scripts/test.sh once")?;
    child.stdin.take().unwrap().write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{url} is not valid exposition format: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

/// A series that must be exported (a missing one is not a zero: "no guard
/// violations" must not pass because the metric is gone).
fn must(m: &HashMap<String, f64>, key: &str) -> Result<f64> {
    m.get(key)
        .copied()
        .with_context(|| format!("{key} is not exported"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_traffic() -> Result<()> {
    let stack = DevStack::start(&[])?;
    let result = async {
        let router = stack.s("router_metrics");
        // The public port serves the API and /healthz only: to a caller
        // without a key, /metrics (tenant ids, token counts, latency
        // histograms) is not there, and the API wants a key.
        let public = stack.s("router_http");
        let http = reqwest::Client::new();
        for (path, want) in [("/metrics", 404), ("/v1/models", 401), ("/healthz", 200)] {
            let st = http.get(format!("{public}{path}")).send().await?.status();
            ensure!(st.as_u16() == want, "GET {path} on the public port: {st}");
        }
        ensure!(
            !router.contains(public.trim_start_matches("http://")),
            "the router's metrics are on its public port: {router}"
        );
        let worker = stack.s("worker_metrics");
        let (a, b) = (stack.tenant(0), stack.tenant(1));
        let audit = stack.s("audit_metrics");
        let (r0, w0, a0) = (scrape(&router).await?, scrape(&worker).await?, scrape(&audit).await?);
        for _ in 0..2 {
            let resp = reqwest::Client::new()
                .post(format!("{}/v1/completions", stack.s("router_http")))
                .bearer_auth(stack.key(0))
                .json(&serde_json::json!({"model": stack.s("model"), "prompt": "count me", "max_tokens": 3}))
                .send()
                .await?;
            ensure!(resp.status().is_success(), "{}", resp.text().await?);
        }
        // Wait for the audit/metrics bookkeeping of the last request.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let (r1, w1) = (scrape(&router).await?, scrape(&worker).await?);
        // The audit-service stores both requests' events (asynchronously).
        let stored = format!("bulkhead_audit_events_stored_total{{tenant={a}}}");
        let t0 = std::time::Instant::now();
        let a1 = loop {
            let a1 = scrape(&audit).await?;
            if get(&a1, &stored) - get(&a0, &stored) >= 2.0 || t0.elapsed().as_secs() > 10 {
                break a1;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        ensure!(get(&a1, &stored) - get(&a0, &stored) == 2.0, "audit stored: {a1:?}");
        ensure!(must(&a1, "bulkhead_audit_terminated_total{}")? == 0.0);
        let ok = |t: &str| format!("bulkhead_requests_total{{status=ok,tenant={t}}}");
        ensure!(get(&r1, &ok(&a)) - get(&r0, &ok(&a)) == 2.0, "requests: {r1:?}");
        ensure!(get(&r1, &ok(&b)) == get(&r0, &ok(&b)), "the other tenant's series moved");
        let out = format!("bulkhead_tokens_out_total{{tenant={a}}}");
        ensure!(get(&r1, &out) - get(&r0, &out) >= 2.0, "tokens out did not move");
        let ttft = format!("bulkhead_ttft_seconds_count{{tenant={a}}}");
        ensure!(get(&r1, &ttft) - get(&r0, &ttft) == 2.0, "ttft histogram did not move");
        let prompt = format!("bulkhead_worker_prompt_tokens_total{{tenant={a}}}");
        ensure!(get(&w1, &prompt) > get(&w0, &prompt), "worker prompt tokens did not move");
        let generated = format!("bulkhead_worker_generated_tokens_total{{tenant={a}}}");
        ensure!(get(&w1, &generated) - get(&w0, &generated) >= 2.0, "worker generated tokens did not move");
        ensure!(get(&w1, "bulkhead_worker_step_seconds_count{}") > get(&w0, "bulkhead_worker_step_seconds_count{}"));
        // The metric must exist: a missing one would read as 0 and pass.
        ensure!(
            w1.contains_key("bulkhead_worker_guard_violations{}"),
            "no guard-violation metric: {w1:?}"
        );
        ensure!(must(&w1, "bulkhead_worker_guard_violations{}")? == 0.0);
        for k in r1.keys().chain(w1.keys()) {
            ensure!(!k.contains("count me"), "content in a metric label: {k}");
        }
        // The control-plane counts operator calls and knows the registry.
        let control = stack.s("control_metrics");
        let c0 = scrape(&control).await?;
        stack.cli(&["tenants", "list"])?;
        let calls = "bulkhead_control_requests_total{code=Ok,method=list_tenants}";
        let t0 = std::time::Instant::now();
        loop {
            let c1 = scrape(&control).await?;
            if get(&c1, calls) - get(&c0, calls) == 1.0
                && get(&c1, "bulkhead_control_tenants{}") == 2.0
            {
                break;
            }
            ensure!(t0.elapsed().as_secs() < 15, "control-plane metrics did not move: {c1:?}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        stack.dump_logs();
    }
    result
}
