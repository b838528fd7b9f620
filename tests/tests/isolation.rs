//! Isolation tiers (DESIGN.md): a `process`-tier tenant runs only on its own
//! pool's worker and shared tenants never reach that worker; with the pool
//! gone the tenant gets 503, never a fallback to the shared pool; and the
//! dedicated worker refuses other tenants itself even when asked directly.
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bulkhead_e2e::DevStack;
use bulkhead_identity::spiffe::CertPaths;
use bulkhead_proto::worker::WorkerGenerateRequest;
use bulkhead_proto::worker::worker_client::WorkerClient;

async fn complete(stack: &DevStack, key: &str) -> Result<(u16, String)> {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/completions", stack.s("router_http")))
        .bearer_auth(key)
        .json(&serde_json::json!({"model": stack.s("model"), "prompt": "where do I run?", "max_tokens": 2}))
        .send()
        .await?;
    Ok((r.status().as_u16(), r.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_pool_serves_only_its_tenant() -> Result<()> {
    let stack = DevStack::start(&["--dedicated", "vip"])?;
    let result = async {
        ensure!(stack.tenant(2) == "vip", "{:?}", stack.info["tenants"]);
        for _ in 0..4 {
            for i in [0, 1, 2] {
                let (st, body) = complete(&stack, &stack.key(i)).await?;
                ensure!(st == 200, "tenant {i}: {st} {body}");
            }
        }
        let (shared, dedicated) = (stack.log("worker"), stack.log("worker-dedicated"));
        ensure!(
            dedicated.matches("tenant=vip").count() >= 4,
            "vip did not run on its pool:\n{dedicated}"
        );
        ensure!(
            !dedicated.contains("tenant=acme") && !dedicated.contains("tenant=globex"),
            "a shared tenant reached the dedicated worker"
        );
        ensure!(
            !shared.contains("tenant=vip"),
            "vip ran on the shared worker"
        );

        // Asked directly (with a router certificate), the dedicated worker
        // still refuses another tenant.
        let w = &stack.info["workers"]
            .as_array()
            .context("workers")?
            .last()
            .context("no worker")?
            .clone();
        let certs = std::path::PathBuf::from(stack.s("certs_dir"));
        let ch = tonic::transport::Endpoint::from_shared(format!(
            "https://{}",
            w["grpc"].as_str().unwrap_or("")
        ))?
        .tls_config(CertPaths::new(&certs, "router").client_tls("worker")?)?
        .connect()
        .await?;
        let err = WorkerClient::new(ch)
            .generate(WorkerGenerateRequest {
                request_id: "direct".into(),
                tenant_id: "acme".into(),
                model: stack.s("model"),
                prompt: "hi".into(),
                max_tokens: 1,
                ..Default::default()
            })
            .await
            .err()
            .context("the dedicated worker served another tenant")?;
        ensure!(err.code() == tonic::Code::PermissionDenied, "{err:?}");

        // Without its pool, the tenant is refused — never sent to the shared pool.
        let pid = w["pid"].as_u64().context("pid")?;
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()?;
        tokio::time::sleep(Duration::from_millis(1500)).await; // a health poll
        let (st, body) = complete(&stack, &stack.key(2)).await?;
        ensure!(st == 503, "vip without its pool: {st} {body}");
        ensure!(body.contains("admits this tenant"), "{body}");
        ensure!(
            !stack.log("worker").contains("tenant=vip"),
            "vip fell back to the shared worker"
        );
        ensure!(
            complete(&stack, &stack.key(0)).await?.0 == 200,
            "shared tenants affected"
        );
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        stack.dump_logs();
    }
    result
}
