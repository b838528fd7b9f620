//! `bulkhead-audit bench` against a real nats-server: the library run (with
//! segments rolling over under load), the binary's JSON output with a
//! nats-server it starts itself, and a clear error for an unreachable one.
use std::process::Command;
use std::time::Duration;

use bulkhead_audit::bench::{BenchConfig, run};
use bulkhead_audit::store::StoreOptions;
use bulkhead_e2e::{NatsServer, nats_server_binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_stores_every_event_once_and_reports_figures() {
    let nats = NatsServer::start().unwrap();
    let cfg = BenchConfig {
        nats_url: Some(nats.url.clone()),
        events: 3_000,
        tenants: 3,
        in_flight: 64,
        max_pending: 256,
        store: StoreOptions {
            segment_records: 400,
            ..Default::default()
        },
        timeout: Duration::from_secs(120),
    };
    let r = run(&cfg).await.unwrap();
    assert!(r.verified, "{r:?}");
    assert_eq!((r.events, r.tenants), (3_000, 3));
    assert!(r.events_per_second > 0.0 && r.seconds > 0.0, "{r:?}");
    assert!(
        0.0 < r.latency_ms_p50 && r.latency_ms_p50 <= r.latency_ms_p99,
        "{r:?}"
    );
    assert!(r.latency_ms_p99 <= r.latency_ms_max, "{r:?}");
    assert!(r.durable_batches >= 1 && r.mean_batch >= 1.0, "{r:?}");
    assert!(r.text().contains("events/s"));

    // A second run on the same server uses its own consumer and tenants;
    // open loop this time.
    let again = run(&BenchConfig {
        events: 500,
        max_pending: 0,
        ..cfg
    })
    .await
    .unwrap();
    assert!(again.verified && again.events == 500, "{again:?}");
}

#[test]
fn bench_binary_prints_json_and_starts_its_own_nats() {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead-audit"))
        .args(["bench", "--json", "--events", "1000", "--tenants", "2"])
        .env("BULKHEAD_NATS_SERVER", nats_server_binary())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["events"], 1000);
    assert_eq!(v["verified"], true);
    for k in [
        "events_per_second",
        "latency_ms_p50",
        "latency_ms_p99",
        "floor_events_per_second",
        "floor_latency_ms_p99",
        "events_per_second_over_floor",
    ] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }

    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead-audit"))
        .args(["bench", "--nats", "nats://127.0.0.1:1", "--events", "10"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot connect to nats://127.0.0.1:1"),
        "{err}"
    );
}
