//! `--audit-mode spool`: kill -9 nats-server under a steady flow of
//! requests and restart it. The router keeps serving, spooling the audit
//! events it cannot publish to local disk, and replays them when NATS is
//! back: every served request ends up in the tenant's audit log exactly once.
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bulkhead_e2e::{DevStack, Proc, nats_server_binary};

async fn complete(stack: &DevStack, i: usize) -> Result<(u16, String)> {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/completions", stack.s("router_http")))
        .bearer_auth(stack.key(0))
        .json(&serde_json::json!({
            "model": stack.s("model"), "prompt": format!("spool me {i}"), "max_tokens": 1
        }))
        .send()
        .await?;
    let status = r.status().as_u16();
    let id = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((status, id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_loses_and_duplicates_nothing() -> Result<()> {
    let stack = DevStack::start_with_env(&[], &[("BULKHEAD_ROUTER_AUDIT_MODE", "spool")])?;
    let mut restarted: Option<Proc> = None;
    let result = async {
        let mut served = vec![];
        let mut n = 0;
        let mut send = async |served: &mut Vec<String>, count: usize| -> Result<()> {
            for _ in 0..count {
                n += 1;
                let (status, id) = complete(&stack, n).await?;
                ensure!(status == 200, "request {n}: status {status}");
                ensure!(!id.is_empty(), "no x-request-id");
                served.push(id);
            }
            Ok(())
        };
        send(&mut served, 10).await?;

        let url = stack.s("nats_url");
        let port = url.rsplit(':').next().context("nats port")?.to_string();
        let pid = stack.info["nats_pid"].as_u64().unwrap_or(0);
        ensure!(pid > 0, "no nats pid in stack.json");
        // Its own command line (TLS, store), to restart it the same way.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
        let mut args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .skip(1)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let p = args
            .iter()
            .position(|a| a == "-p")
            .context("nats-server was started without -p")?;
        args[p + 1] = port.clone();
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()?;
        // NATS is gone: requests are still served, their events spooled.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(1500) {
            send(&mut served, 5).await?;
        }
        let spooled = std::fs::metadata(
            stack
                .dir
                .path()
                .join("stack/spool/dev-router-0/audit.spool"),
        )?
        .len();
        ensure!(spooled > 0, "nothing was spooled while NATS was down");
        println!(
            "{} requests served while NATS was down; spool {spooled} bytes",
            served.len() - 10
        );

        // The same server comes back on the same port with its data.
        let mut cmd = Command::new(nats_server_binary());
        cmd.args(&args);
        restarted = Some(Proc::spawn("nats-restarted", cmd, stack.dir.path())?);
        send(&mut served, 10).await?;

        // Every served request is stored exactly once.
        let t0 = Instant::now();
        let records = loop {
            let recs = stack.audit_records(0).await.unwrap_or_default();
            if recs.len() >= served.len() {
                break recs;
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(60),
                "only {} of {} events stored 60 s after NATS returned",
                recs.len(),
                served.len()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let mut count: HashMap<&str, usize> = HashMap::new();
        for r in &records {
            *count.entry(r.request_id.as_str()).or_default() += 1;
        }
        let dups: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
        ensure!(dups.is_empty(), "stored twice: {dups:?}");
        let missing: Vec<_> = served
            .iter()
            .filter(|id| !count.contains_key(id.as_str()))
            .collect();
        ensure!(missing.is_empty(), "never stored: {missing:?}");
        ensure!(
            records.len() == served.len(),
            "{} records for {} requests",
            records.len(),
            served.len()
        );
        let log = stack.log("router");
        ensure!(log.contains("spooled audit events published"), "{log}");
        println!(
            "{} requests, {} audit records, each once",
            served.len(),
            records.len()
        );
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if result.is_err() {
        stack.dump_logs();
    }
    drop(restarted);
    result
}
