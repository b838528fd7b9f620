//! Smoke test of `bulkhead-worker bench kv|decode --json` at tiny sizes: the
//! binary runs, prints JSON with the figures, and finds no violations.
use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead-worker"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("run bulkhead-worker");
    assert!(
        out.status.success(),
        "bench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

#[test]
fn kv_bench_runs_and_finds_no_violations() {
    let v = bench(&["kv", "--ops", "20000", "--audit-every", "2000"]);
    assert_eq!(v["tenants"], 64);
    assert_eq!(v["violations"], 0, "{v}");
    assert_eq!(v["audits"], 11, "{v}");
    assert!(v["ops_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    let ops = v["per_op"].as_array().unwrap();
    let names: Vec<&str> = ops.iter().filter_map(|o| o["op"].as_str()).collect();
    assert_eq!(
        names,
        ["allocate", "extend", "fork", "free", "evict", "guard"]
    );
    assert!(ops.iter().all(|o| o["count"].as_u64().unwrap() > 0), "{v}");
    let total: u64 = ops.iter().map(|o| o["count"].as_u64().unwrap()).sum();
    assert_eq!(v["ops"].as_u64(), Some(total));
}

#[test]
fn decode_bench_runs_at_a_tiny_size() {
    let v = bench(&[
        "decode",
        "--hidden",
        "32",
        "--intermediate",
        "64",
        "--layers",
        "1",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--batches",
        "1,4",
        "--gen-tokens",
        "4",
        "--tenants",
        "8",
        "--iso-requests",
        "8",
        "--iso-batch",
        "4",
        "--rounds",
        "2",
    ]);
    let b = v["batches"].as_array().unwrap();
    assert_eq!(b.len(), 2);
    // End-of-sequence is ignored: exactly batch × gen_tokens tokens.
    assert_eq!(b[0]["tokens"], 4);
    assert_eq!(b[1]["tokens"], 16);
    assert!(
        b.iter()
            .all(|f| f["tokens_per_sec"].as_f64().unwrap() > 0.0)
    );
    assert_eq!(b[0]["speedup_vs_batch1"], 1.0);
    assert!(v["batch32_over_batch1"].is_null());
    let iso = &v["isolation"];
    assert_eq!(iso["tenants"], 8);
    for series in ["one_tenant", "many_tenants", "control"] {
        assert_eq!(iso[series]["tokens_per_sec"].as_array().unwrap().len(), 2);
        assert!(iso[series]["best"].as_f64().unwrap() > 0.0, "{v}");
    }
    assert!(iso["overhead_percent"].as_f64().is_some());
    assert!(iso["noise_floor_percent"].as_f64().unwrap() >= 0.0);
    assert!(iso["target_met"].is_boolean() && iso["conclusive"].is_boolean());
    assert_eq!(v["isolation_target_met"], iso["target_met"]);
    let s = &v["step_share"];
    assert!(s["steps"].as_u64().unwrap() > 0);
    let pct = s["guard_and_scrub_percent"].as_f64().unwrap();
    assert!((0.0..100.0).contains(&pct), "{v}");
    // 8 tenants share the blocks: some changed owner and were zeroed.
    assert!(s["scrub_seconds"].as_f64().unwrap() > 0.0, "{v}");
}
