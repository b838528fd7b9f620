//! `bulkhead bench fairness` runs end to end (fresh stacks, synthetic-cost
//! worker) and shows what fair queuing is for: under a 10:1 flood the quiet
//! tenant's TTFT is far better than under FIFO, and its service matches its
//! entitlement more closely. Figures only as ratios within one run; the
//! full experiment (all scenarios, longer runs) is in the closing note.
use std::process::Command;

use anyhow::{Result, ensure};
use bulkhead_e2e::{bin_path, nats_server_binary};

#[test]
fn fair_queuing_protects_the_quiet_tenant_better_than_fifo() -> Result<()> {
    let out = Command::new(bin_path("bulkhead"))
        .args([
            "bench",
            "fairness",
            "--json",
            "--seconds",
            "6",
            "--drain-seconds",
            "3",
            "--scenarios",
            "fifo,fair",
        ])
        .arg("--nats-server")
        .arg(nats_server_binary())
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    println!("{v}");
    let s = &v["scenarios"];
    let (fifo, fair) = (&s[0], &s[1]);
    ensure!(
        fifo["scenario"] == "fifo" && fair["scenario"] == "fair",
        "{v}"
    );
    let p99 = |r: &serde_json::Value| r["quiet"]["ttft_p99_ms"].as_f64().unwrap_or(f64::NAN);
    let jain = |r: &serde_json::Value| r["jain"].as_f64().unwrap_or(f64::NAN);
    ensure!(
        p99(fair) * 2.0 < p99(fifo),
        "quiet tenant's P99 TTFT: fair {} ms vs FIFO {} ms",
        p99(fair),
        p99(fifo)
    );
    ensure!(
        jain(fair) > jain(fifo) && jain(fair) > 0.9,
        "Jain: fair {} vs FIFO {}",
        jain(fair),
        jain(fifo)
    );
    ensure!(
        fair["quiet"]["errors"] == 0 && fair["flood"]["errors"] == 0,
        "{fair}"
    );
    Ok(())
}
