//! Traces: one request's spans reach a real OTLP receiver from both the
//! router and the worker, in the client's trace, linked parent to child
//! across the two processes, with the tenant as an attribute and never the
//! prompt text.
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bulkhead_e2e::DevStack;
use bulkhead_e2e::otlp::Collector;

const PROMPT: &str = "otel-canary-5521 the secret roadmap";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_one_trace_across_router_and_worker() -> Result<()> {
    let collector = Collector::start().await?;
    let endpoint = format!("http://{}", collector.addr);
    let stack = DevStack::start_with_env(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )?;
    let result = async {
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
        let body =
            serde_json::json!({"model": stack.s("model"), "prompt": PROMPT, "max_tokens": 3});
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/completions", stack.s("router_http")))
            .bearer_auth(stack.key(0))
            .header("traceparent", &traceparent)
            .json(&body)
            .send()
            .await?;
        ensure!(resp.status().is_success(), "{}", resp.text().await?);

        // Wait for both services' spans of this trace.
        let deadline = Instant::now() + Duration::from_secs(20);
        let spans = loop {
            let spans: Vec<_> = collector
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            let router = spans.iter().any(|s| s.service == "bulkhead-router");
            let worker = spans.iter().any(|s| s.service == "bulkhead-worker");
            if (router && worker) || Instant::now() > deadline {
                break spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for s in &spans {
            println!(
                "{:<16} {:<14} span {} parent {} {:?}",
                s.service, s.name, s.span_id, s.parent_span_id, s.attributes
            );
        }
        let router: Vec<_> = spans
            .iter()
            .filter(|s| s.service == "bulkhead-router")
            .collect();
        let worker: Vec<_> = spans
            .iter()
            .filter(|s| s.service == "bulkhead-worker")
            .collect();
        ensure!(
            !router.is_empty(),
            "no router spans in the client's trace (got {} spans in all)",
            collector.spans().len()
        );
        ensure!(!worker.is_empty(), "no worker spans in the client's trace");
        // The router's request span is a child of the client's span.
        ensure!(
            router
                .iter()
                .any(|s| s.parent_span_id == "00f067aa0ba902b7"),
            "router span not parented to the client"
        );
        // A worker span's parent is a router span: the link crosses processes.
        ensure!(
            worker
                .iter()
                .any(|w| router.iter().any(|r| r.span_id == w.parent_span_id)),
            "no worker span is a child of a router span"
        );
        let tenant = stack.tenant(0);
        for name in ["authenticate", "dispatch"] {
            let s = router
                .iter()
                .find(|s| s.name == name)
                .with_context(|| format!("no router span {name}"))?;
            ensure!(
                s.attributes.get("tenant.id") == Some(&tenant) || name == "authenticate",
                "{name}: {:?}",
                s.attributes
            );
        }
        ensure!(
            router
                .iter()
                .any(|s| s.attributes.get("tenant.id") == Some(&tenant)),
            "no tenant.id attribute"
        );
        ensure!(
            worker
                .iter()
                .any(|s| s.attributes.get("tenant.id") == Some(&tenant)),
            "worker spans lack tenant.id"
        );
        for s in &spans {
            for v in s.attributes.values() {
                ensure!(
                    !v.contains("otel-canary-5521"),
                    "prompt text in span {}: {v}",
                    s.name
                );
            }
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        stack.dump_logs();
    }
    result
}
