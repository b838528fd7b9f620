//! `bulkhead bench soak`, CI-sized: a hundred concurrent streams from ten
//! tenants for a few seconds against the real stack; nothing fails, and
//! every component's memory is sampled. (The 10-minute, 1,000-stream run
//! is in the closing note.)
use std::process::Command;

use anyhow::{Result, ensure};
use bulkhead_e2e::{DevStack, bin_path};

#[test]
fn a_short_soak_has_no_errors() -> Result<()> {
    let stack = DevStack::start(&[])?;
    let out = Command::new(bin_path("bulkhead"))
        .args([
            "bench",
            "soak",
            "--json",
            "--minutes",
            "0.15",
            "--streams",
            "100",
            "--tenants",
            "10",
            "--sample-every",
            "2",
            "--stack",
        ])
        .arg(stack.dir.path().join("stack/stack.json"))
        .output()?;
    if !out.status.success() {
        stack.dump_logs();
    }
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let req = &v["requests"];
    println!("requests {req}, memory {}", v["memory"]);
    ensure!(req["ok"].as_u64() > Some(0), "nothing served: {v}");
    for bad in ["error", "limited", "unserved"] {
        ensure!(req[bad].is_null(), "{bad} requests in a soak: {v}");
    }
    for component in [
        "dev-router-0",
        "dev-worker-0",
        "audit",
        "control",
        "nats-server",
    ] {
        ensure!(
            v["memory"][component]["rss_kib_end"].as_u64() > Some(0),
            "no memory samples of {component}: {v}"
        );
    }
    Ok(())
}
