//! `bulkhead status` and `bulkhead top`: the cluster at a glance, from the
//! control-plane's `ClusterStatus` (the live routers' heartbeats, each with
//! that router's view of its workers and per-tenant load, and the tenants).
//! The aggregation and rendering are pure functions; the commands only
//! fetch and print.
use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use bulkhead_proto::common::Isolation;
use bulkhead_proto::control::{ClusterStatusResponse, WorkerView};
use clap::Args;
use serde::Serialize;

use crate::client::ControlClient;
use crate::remote::Remote;

#[derive(Args, Debug)]
pub struct TopArgs {
    /// Refresh period in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Stop after this many refreshes (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub iterations: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct RouterRow {
    pub id: String,
    pub http: String,
    pub grpc: String,
    pub uptime_s: i64,
    pub heartbeat_age_ms: i64,
    pub replicas_seen: u32,
    pub queued: u32,
    pub running: u32,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct WorkerRow {
    pub id: String,
    pub url: String,
    pub healthy: bool,
    pub model: String,
    pub pool: String,
    pub isolation: String,
    pub device: String,
    pub running: u32,
    pub waiting: u32,
    pub max_seqs: u32,
    pub kv_used: u32,
    pub kv_total: u32,
    /// Routers whose poll sees this worker.
    pub seen_by: u32,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct TenantRow {
    pub id: String,
    pub isolation: String,
    pub weight: u32,
    pub queued: u32,
    pub running: u32,
    pub requests: u64,
    /// Weighted-service cost dispatched (input × 1 + output × 2 tokens),
    /// summed over the live routers since they started.
    pub service: f64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ClusterView {
    pub routers: Vec<RouterRow>,
    pub workers: Vec<WorkerRow>,
    pub tenants: Vec<TenantRow>,
}

fn tier(i: i32) -> String {
    match Isolation::try_from(i) {
        Ok(Isolation::Shared) => "shared",
        Ok(Isolation::Process) => "process",
        Ok(Isolation::Mig) => "mig",
        Ok(Isolation::Dedicated) => "dedicated",
        Err(_) => "unknown",
    }
    .to_string()
}

/// Folds the routers' heartbeats into one view: workers by URL (the
/// freshest router's poll wins), tenants summed over routers.
pub fn aggregate(s: &ClusterStatusResponse) -> ClusterView {
    let mut routers = vec![];
    let mut workers: BTreeMap<String, (i64, WorkerView, u32)> = BTreeMap::new();
    let mut load: BTreeMap<String, (u32, u32, u64, f64)> = BTreeMap::new();
    for hb in &s.routers {
        let (mut q, mut r) = (0, 0);
        for t in &hb.tenants {
            let l = load.entry(t.tenant_id.clone()).or_default();
            l.0 += t.queued;
            l.1 += t.running;
            l.2 += t.requests;
            l.3 += t.service;
            q += t.queued;
            r += t.running;
        }
        for w in &hb.workers {
            let e = workers
                .entry(w.url.clone())
                .or_insert_with(|| (i64::MIN, w.clone(), 0));
            e.2 += 1;
            if hb.sent_unix_ms > e.0 {
                e.0 = hb.sent_unix_ms;
                e.1 = w.clone();
            }
        }
        routers.push(RouterRow {
            id: hb.router_id.clone(),
            http: hb.http_addr.clone(),
            grpc: hb.grpc_addr.clone(),
            uptime_s: (s.now_unix_ms - hb.started_unix_ms).max(0) / 1000,
            heartbeat_age_ms: (s.now_unix_ms - hb.sent_unix_ms).max(0),
            replicas_seen: hb.replicas_seen,
            queued: q,
            running: r,
        });
    }
    let workers = workers
        .into_values()
        .map(|(_, w, seen_by)| WorkerRow {
            id: w.worker_id.clone(),
            url: w.url.clone(),
            healthy: w.healthy,
            model: w.model.clone(),
            pool: w.pool.clone(),
            isolation: tier(w.isolation),
            device: w.device.clone(),
            running: w.running,
            waiting: w.waiting,
            max_seqs: w.max_seqs,
            kv_used: w.total_kv_blocks.saturating_sub(w.free_kv_blocks),
            kv_total: w.total_kv_blocks,
            seen_by,
        })
        .collect();
    let mut tenants: Vec<TenantRow> = s
        .tenants
        .iter()
        .map(|t| {
            let (queued, running, requests, service) = load.remove(&t.id).unwrap_or_default();
            TenantRow {
                id: t.id.clone(),
                isolation: tier(t.isolation),
                weight: t.weight,
                queued,
                running,
                requests,
                service,
            }
        })
        .collect();
    // Load for a tenant no longer in the registry (deleted while running).
    for (id, (queued, running, requests, service)) in load {
        tenants.push(TenantRow {
            id: format!("{id} (deleted)"),
            isolation: "-".into(),
            weight: 0,
            queued,
            running,
            requests,
            service,
        });
    }
    ClusterView {
        routers,
        workers,
        tenants,
    }
}

fn table(out: &mut String, header: &[&str], rows: Vec<Vec<String>>) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::from("  ");
        for (i, c) in cells.iter().enumerate() {
            s.push_str(&format!("{c:<w$}  ", w = width[i]));
        }
        s.trim_end().to_string() + "\n"
    };
    out.push_str(&line(header.iter().map(|h| h.to_string()).collect()));
    for r in rows {
        out.push_str(&line(r));
    }
}

/// The text `bulkhead status` prints.
pub fn render(v: &ClusterView) -> String {
    let mut out = String::new();
    out.push_str(&format!("Routers: {} live\n", v.routers.len()));
    if v.routers.is_empty() {
        out.push_str("  (no router heartbeat in the last few seconds)\n");
    } else {
        table(
            &mut out,
            &[
                "ID", "HTTP", "GRPC", "UPTIME", "BEAT", "REPLICAS", "QUEUED", "RUNNING",
            ],
            v.routers
                .iter()
                .map(|r| {
                    vec![
                        r.id.clone(),
                        r.http.clone(),
                        r.grpc.clone(),
                        format!("{}s", r.uptime_s),
                        format!("{}ms", r.heartbeat_age_ms),
                        r.replicas_seen.to_string(),
                        r.queued.to_string(),
                        r.running.to_string(),
                    ]
                })
                .collect(),
        );
    }
    out.push_str(&format!("\nWorkers: {}\n", v.workers.len()));
    table(
        &mut out,
        &[
            "ID",
            "URL",
            "STATE",
            "POOL",
            "TIER",
            "DEVICE",
            "MODEL",
            "SEQS",
            "WAITING",
            "KV BLOCKS",
        ],
        v.workers
            .iter()
            .map(|w| {
                vec![
                    if w.id.is_empty() {
                        "?".into()
                    } else {
                        w.id.clone()
                    },
                    w.url.clone(),
                    if w.healthy { "up" } else { "DOWN" }.into(),
                    w.pool.clone(),
                    w.isolation.clone(),
                    w.device.clone(),
                    w.model.clone(),
                    format!("{}/{}", w.running, w.max_seqs),
                    w.waiting.to_string(),
                    format!("{}/{}", w.kv_used, w.kv_total),
                ]
            })
            .collect(),
    );
    out.push_str(&format!("\nTenants: {}\n", v.tenants.len()));
    table(
        &mut out,
        &[
            "ID", "TIER", "WEIGHT", "QUEUED", "RUNNING", "REQUESTS", "SERVICE",
        ],
        v.tenants
            .iter()
            .map(|t| {
                vec![
                    t.id.clone(),
                    t.isolation.clone(),
                    t.weight.to_string(),
                    t.queued.to_string(),
                    t.running.to_string(),
                    t.requests.to_string(),
                    format!("{:.0}", t.service),
                ]
            })
            .collect(),
    );
    out
}

async fn fetch(c: &mut ControlClient) -> Result<ClusterView> {
    Ok(aggregate(&c.cluster_status().await?))
}

/// `bulkhead status`.
pub async fn status(r: &Remote) -> Result<()> {
    let mut c = ControlClient::connect(&r.control, &r.certs_dir).await?;
    let v = fetch(&mut c).await?;
    if r.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render(&v));
    }
    Ok(())
}

/// `bulkhead top`: `status`, redrawn every `interval_ms` until Ctrl-C (or
/// `iterations`). With `--json`, one JSON document per line instead.
pub async fn top(a: TopArgs, r: &Remote) -> Result<()> {
    let mut c = ControlClient::connect(&r.control, &r.certs_dir).await?;
    let mut tick = tokio::time::interval(Duration::from_millis(a.interval_ms.max(100)));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let body = match fetch(&mut c).await {
            Ok(v) if r.json => serde_json::to_string(&v)?,
            Ok(v) => render(&v),
            // Keep refreshing through a control-plane restart.
            Err(e) => format!("control-plane unreachable: {e:#}\n"),
        };
        if r.json {
            println!("{body}");
        } else {
            // Clear the screen, cursor home, then the frame.
            print!(
                "\x1b[2J\x1b[Hbulkhead top — every {} ms, Ctrl-C quits\n\n{body}",
                a.interval_ms.max(100)
            );
        }
        n += 1;
        if a.iterations != 0 && n >= a.iterations {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_proto::control::{RouterHeartbeat, Tenant, TenantLoad};

    fn worker(url: &str, running: u32) -> WorkerView {
        WorkerView {
            url: url.into(),
            worker_id: format!("w-{url}"),
            healthy: true,
            model: "m".into(),
            pool: "shared".into(),
            device: "cpu".into(),
            running,
            max_seqs: 16,
            free_kv_blocks: 90,
            total_kv_blocks: 100,
            ..Default::default()
        }
    }

    fn load(t: &str, queued: u32, running: u32, service: f64) -> TenantLoad {
        TenantLoad {
            tenant_id: t.into(),
            queued,
            running,
            service,
            requests: 1,
            ..Default::default()
        }
    }

    #[test]
    fn aggregates_routers_workers_and_tenants() {
        let s = ClusterStatusResponse {
            now_unix_ms: 10_000,
            stale_after_ms: 5_000,
            routers: vec![
                RouterHeartbeat {
                    router_id: "r1".into(),
                    sent_unix_ms: 9_000,
                    started_unix_ms: 0,
                    replicas_seen: 2,
                    tenants: vec![load("acme", 2, 1, 30.0)],
                    workers: vec![worker("a", 1)],
                    ..Default::default()
                },
                RouterHeartbeat {
                    router_id: "r2".into(),
                    sent_unix_ms: 9_500,
                    started_unix_ms: 5_000,
                    replicas_seen: 2,
                    tenants: vec![load("acme", 1, 0, 12.0), load("gone", 0, 1, 1.0)],
                    workers: vec![worker("a", 3), worker("b", 0)],
                    ..Default::default()
                },
            ],
            tenants: vec![
                Tenant {
                    id: "acme".into(),
                    weight: 2,
                    ..Default::default()
                },
                Tenant {
                    id: "idle".into(),
                    weight: 1,
                    ..Default::default()
                },
            ],
        };
        let v = aggregate(&s);
        assert_eq!(v.routers.len(), 2);
        assert_eq!((v.routers[0].queued, v.routers[0].running), (2, 1));
        assert_eq!(v.routers[1].uptime_s, 5);
        assert_eq!(v.routers[1].heartbeat_age_ms, 500);
        // Worker "a" as the freshest router (r2) saw it, seen by both.
        assert_eq!(v.workers.len(), 2);
        assert_eq!((v.workers[0].running, v.workers[0].seen_by), (3, 2));
        assert_eq!(v.workers[0].kv_used, 10);
        let acme = &v.tenants[0];
        assert_eq!((acme.queued, acme.running, acme.requests), (3, 1, 2));
        assert_eq!(acme.service, 42.0);
        assert_eq!(v.tenants[1].id, "idle");
        assert_eq!(v.tenants[1].requests, 0);
        assert_eq!(v.tenants[2].id, "gone (deleted)");
        let text = render(&v);
        for needle in [
            "Routers: 2 live",
            "r1",
            "w-a",
            "3/16",
            "10/100",
            "acme",
            "42",
        ] {
            assert!(text.contains(needle), "{needle:?} missing in\n{text}");
        }
    }

    #[test]
    fn says_when_no_router_is_live() {
        let v = aggregate(&ClusterStatusResponse::default());
        assert!(render(&v).contains("no router heartbeat"));
    }
}
