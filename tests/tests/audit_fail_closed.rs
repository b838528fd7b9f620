//! The router fails closed: with NATS (the audit trail) gone, it serves
//! nothing it could not audit — a clear 503 / UNAVAILABLE, not a silent
//! unaudited answer.
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bulkhead_e2e::DevStack;

async fn complete(stack: &DevStack) -> Result<(u16, String)> {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/completions", stack.s("router_http")))
        .bearer_auth(stack.key(0))
        .json(
            &serde_json::json!({"model": stack.s("model"), "prompt": "audit me", "max_tokens": 2}),
        )
        .send()
        .await?;
    Ok((r.status().as_u16(), r.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_audit_trail_no_service() -> Result<()> {
    let stack = DevStack::start(&[])?;
    let result = async {
        ensure!(
            complete(&stack).await?.0 == 200,
            "not served before the fault"
        );
        let pid = stack.info["nats_pid"].as_u64().unwrap_or(0);
        ensure!(pid > 0, "no nats pid in stack.json");
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()?;
        let t0 = Instant::now();
        loop {
            let (status, body) = complete(&stack).await?;
            if status == 503 {
                ensure!(body.contains("audit trail is unreachable"), "{body}");
                println!("failing closed {:?} after NATS died: {body}", t0.elapsed());
                break;
            }
            ensure!(status == 200, "unexpected {status}: {body}");
            ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "still serving unaudited requests 10 s after NATS died"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        stack.dump_logs();
    }
    result
}
