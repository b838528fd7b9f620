//! `bulkhead-audit bench`: end-to-end audit throughput and latency.
//!
//! Publishes events for several tenants to the JetStream audit stream (the
//! router's stream, subjects and de-duplication id) as fast as JetStream
//! acknowledges them, while the real consumer pipeline in this process
//! (`consumer::run_with`: fetch, append, fsync each touched segment once,
//! then ack) stores them in a temporary folder. An event counts as durable
//! when its batch has been fsynced and acknowledged; its latency runs from
//! just before its publish to that moment. At the end the store is closed
//! and every tenant's log is checked: each event stored exactly once, chain
//! intact.
//!
//! Before it, in the same run, the floor (`bench/floor.rs`): the same
//! publishers and pipelined fetching into a bare consumer that decodes and
//! encrypts nothing and fsyncs once per group before acking.
//!
//! The bench reads with its own durable consumer over its own tenants
//! (`bench-<run>-<k>`), so it never takes events from an audit-service on
//! the same server — but an audit-service consuming there would store the
//! bench's events too: point `--nats` at a dedicated server.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use bulkhead_proto::Message;
use bulkhead_proto::audit::AuditEvent;
use bulkhead_proto::names;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;

use crate::consumer::{self, ConsumerSpec, RunOptions};
use crate::keys::LocalMasterKey;
use crate::store::{AuditStore, StoreOptions};

mod floor;
pub mod nats;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Consumer(#[from] consumer::ConsumerError),
    #[error(transparent)]
    Store(#[from] crate::StoreError),
    #[error("{0}")]
    Incomplete(String),
    #[error("internal: {0}")]
    Task(String),
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// NATS server to use; None: start a local one.
    pub nats_url: Option<String>,
    pub events: usize,
    pub tenants: usize,
    /// Publishes awaiting their JetStream ack, per tenant.
    pub in_flight: usize,
    /// Events published but not yet durable, at most (closed loop: a
    /// publisher waits for room, as a router whose audit trail lags would).
    /// 0: no bound (open loop: the stream's backlog, and so the latency,
    /// grows whenever publishing outruns storing).
    pub max_pending: usize,
    pub store: StoreOptions,
    /// Give up when the events are not all durable by then.
    pub timeout: Duration,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            nats_url: None,
            events: 200_000,
            tenants: 8,
            in_flight: 1_024,
            max_pending: 3_072,
            store: StoreOptions::default(),
            timeout: Duration::from_secs(300),
        }
    }
}

/// The figures (`--json` prints this).
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub events: usize,
    pub tenants: usize,
    /// The closed-loop bound on events not yet durable (0: open loop).
    pub max_pending: usize,
    pub nats: String,
    /// First publish to last event durable.
    pub seconds: f64,
    /// Events per second, publish → durable (fsynced and acknowledged).
    pub events_per_second: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
    /// fsync groups (batches made durable together) and their mean size.
    pub durable_batches: u64,
    pub mean_batch: f64,
    /// Every event stored exactly once and every chain intact afterwards.
    pub verified: bool,
    /// The floor, measured first in the same run: the same publishing and
    /// pipelined fetching into a consumer that decodes and encrypts
    /// nothing, appends raw bytes and fsyncs once per group before acking.
    pub floor_events_per_second: f64,
    pub floor_latency_ms_p50: f64,
    pub floor_latency_ms_p99: f64,
    /// events_per_second / floor_events_per_second.
    pub events_per_second_over_floor: f64,
}

impl BenchReport {
    /// The readable form.
    pub fn text(&self) -> String {
        format!(
            "audit bench: {} events from {} tenants via {} ({})\n\
             end to end (publish -> fsynced + acked): {:.0} events/s over {:.2} s\n\
             publish -> durable latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n\
             {} fsync groups, {:.0} events each on average; stored exactly once, chains intact: {}\n\
             floor (bare consumer: no decode, no encryption, fsync per group, then ack): {:.0} events/s, p50 {:.1} ms, p99 {:.1} ms; the pipeline runs at {:.2} of it",
            self.events,
            self.tenants,
            self.nats,
            match self.max_pending {
                0 => "open loop".to_string(),
                n => format!("at most {n} events not yet durable"),
            },
            self.events_per_second,
            self.seconds,
            self.latency_ms_p50,
            self.latency_ms_p99,
            self.latency_ms_max,
            self.durable_batches,
            self.mean_batch,
            if self.verified { "yes" } else { "NO" },
            self.floor_events_per_second,
            self.floor_latency_ms_p50,
            self.floor_latency_ms_p99,
            self.events_per_second_over_floor,
        )
    }
}

fn event(tenant: &str, i: usize) -> AuditEvent {
    AuditEvent {
        // Unique per run: JetStream de-duplicates by this id.
        request_id: format!("{tenant}-r{i}"),
        tenant_id: tenant.to_string(),
        model: "bench-model-7b".into(),
        timestamp_unix_ms: crate::access::now_ms() as i64,
        prompt_hash: format!("{:064x}", i as u128 * 0x9e37_79b9_7f4a_7c15),
        response_hash: format!("{:064x}", i as u128 * 0xc2b2_ae3d_27d4_eb4f),
        prompt_tokens: 512,
        completion_tokens: 128,
        cached_tokens: 64,
        ttft_us: 41_000,
        latency_us: 1_250_000,
        worker_id: "worker-0".into(),
        routing_decision: "least-loaded".into(),
        status: "ok".into(),
        source_addr: "10.0.0.7:51234".into(),
        api_key_prefix: "bh_abcd".into(),
        protocol: "http".into(),
        finish_reason: "stop".into(),
        ..Default::default()
    }
}

/// One tenant's publisher: events `k, k + n, k + 2n, …` below `events`.
struct Publisher {
    js: jetstream::Context,
    tenant: String,
    k: usize,
    n: usize,
    events: usize,
    in_flight: usize,
    /// Nanoseconds after `t0` at which each event was published.
    sent: Arc<Vec<AtomicU64>>,
    /// Room for events not yet durable (None: unbounded).
    window: Option<Arc<tokio::sync::Semaphore>>,
    t0: Instant,
}

/// Publishes, keeping at most `in_flight` unacknowledged. Returns the
/// publishes that failed.
async fn publish_tenant(p: Publisher) -> u64 {
    let Publisher {
        js,
        tenant,
        k,
        n,
        events,
        in_flight,
        sent,
        window,
        t0,
    } = p;
    let subject = names::audit_subject(&tenant);
    let mut pending: FuturesUnordered<<PublishAckFuture as IntoFuture>::IntoFuture> =
        FuturesUnordered::new();
    let mut failed = 0u64;
    let mut count = |r: Option<Result<_, _>>| {
        if let Some(Err(e)) = r {
            tracing::warn!(error = %e, "bench publish not acknowledged");
            failed += 1;
        }
    };
    for i in (k..events).step_by(n) {
        while pending.len() >= in_flight {
            count(pending.next().await.map(|r| r.map(|_| ())));
        }
        if let Some(w) = &window {
            // Given back by the collector when the event is durable.
            match w.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => break,
            }
        }
        let ev = event(&tenant, i);
        let msg = PublishMessage::build()
            .payload(ev.encode_to_vec().into())
            .message_id(ev.request_id.clone());
        sent[i].store(t0.elapsed().as_nanos() as u64, Ordering::Release);
        match js.send_publish(subject.clone(), msg).await {
            Ok(ack) => pending.push(ack.into_future()),
            Err(e) => count(Some(Err(e))),
        }
    }
    while let Some(r) = pending.next().await {
        count(Some(r.map(|_| ())));
    }
    failed
}

fn percentile_ms(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_ns.len() as f64).ceil() as usize;
    sorted_ns[rank.clamp(1, sorted_ns.len()) - 1] as f64 / 1e6
}

/// Runs the bench.
pub async fn run(cfg: &BenchConfig) -> Result<BenchReport, BenchError> {
    let (events, n) = (cfg.events.max(1), cfg.tenants.max(1));
    let local = match cfg.nats_url {
        Some(_) => None,
        None => Some(
            tokio::task::spawn_blocking(nats::LocalNats::start)
                .await
                .map_err(|e| BenchError::Task(e.to_string()))??,
        ),
    };
    let url = cfg
        .nats_url
        .clone()
        .or_else(|| local.as_ref().map(|l| l.url.clone()))
        .expect("a url either way");
    let client = async_nats::connect(&url)
        .await
        .map_err(|e| BenchError::Nats(format!("cannot connect to {url}: {e}")))?;
    // Room for every publisher's window, or publishers blocked on a permit
    // would stop polling the acks that free permits.
    let in_flight = cfg.in_flight.max(1);
    let js = jetstream::context::ContextBuilder::new()
        .max_ack_inflight(n * in_flight + 16)
        .build(client);
    let dir = tempfile::tempdir().map_err(|e| BenchError::Io(e.to_string()))?;
    // The floor first (tenants and a consumer of its own), on the same
    // server and disk, then the real pipeline.
    let floor = {
        let (tenants, spec) = bench_tenants(n);
        consumer::ensure_named_consumer(&js, &spec).await?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (dur_tx, dur_rx) = tokio::sync::mpsc::unbounded_channel();
        let file = dir.path().join("floor.bin");
        let mut task = tokio::spawn(floor::run(js.clone(), spec.clone(), file, stop_rx, dur_tx));
        let m = drive(&js, &tenants, cfg, dur_rx, &mut task).await?;
        let _ = stop_tx.send(true);
        let _ = task.await;
        if let Ok(stream) = js.get_stream(names::AUDIT_STREAM).await {
            let _ = stream.delete_consumer(&spec.durable).await;
        }
        m
    };
    let (tenants, spec) = bench_tenants(n);
    consumer::ensure_named_consumer(&js, &spec).await?;

    let root = dir.path().join("store");
    let store_opts = cfg.store;
    let store = tokio::task::spawn_blocking(move || {
        let master = Arc::new(LocalMasterKey::from_bytes(&rand::random()));
        AuditStore::open_with(&root, master, store_opts)
    })
    .await
    .map_err(|e| BenchError::Task(e.to_string()))??;
    let store = Arc::new(Mutex::new(store));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (dur_tx, dur_rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = RunOptions {
        metrics: None,
        on_durable: Some(dur_tx),
        consumer: spec.clone(),
    };
    let mut consumer_task =
        tokio::spawn(consumer::run_with(js.clone(), store.clone(), stop_rx, opts));

    let m = drive(&js, &tenants, cfg, dur_rx, &mut consumer_task).await?;
    let _ = stop_tx.send(true);
    if !consumer_task.is_finished() {
        consumer_task
            .await
            .map_err(|e| BenchError::Task(e.to_string()))??;
    }
    let Measured {
        seconds,
        latencies,
        batches,
    } = m;
    let verified = tokio::task::spawn_blocking({
        let store = store.clone();
        let tenants = tenants.clone();
        move || -> Result<bool, crate::StoreError> {
            let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
            s.close()?;
            let mut ok = true;
            for (k, t) in tenants.iter().enumerate() {
                let want = (k..events).step_by(n).count() as u64;
                let read = s.read(t)?;
                ok &= read.first_bad.is_none() && read.count == want;
            }
            Ok(ok)
        }
    })
    .await
    .map_err(|e| BenchError::Task(e.to_string()))??;
    if let Ok(stream) = js.get_stream(names::AUDIT_STREAM).await {
        let _ = stream.delete_consumer(&spec.durable).await;
    }
    Ok(BenchReport {
        events,
        tenants: n,
        max_pending: cfg.max_pending,
        nats: if local.is_some() {
            format!("a local nats-server ({url})")
        } else {
            url
        },
        seconds,
        events_per_second: events as f64 / seconds,
        latency_ms_p50: percentile_ms(&latencies, 50.0),
        latency_ms_p99: percentile_ms(&latencies, 99.0),
        latency_ms_max: percentile_ms(&latencies, 100.0),
        durable_batches: batches,
        mean_batch: events as f64 / batches.max(1) as f64,
        verified,
        floor_events_per_second: events as f64 / floor.seconds,
        floor_latency_ms_p50: percentile_ms(&floor.latencies, 50.0),
        floor_latency_ms_p99: percentile_ms(&floor.latencies, 99.0),
        events_per_second_over_floor: floor.seconds / seconds,
    })
}

/// Tenants of their own for one arm, and a consumer of their subjects.
fn bench_tenants(n: usize) -> (Vec<String>, ConsumerSpec) {
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let tenants: Vec<String> = (0..n).map(|k| format!("bench-{run_id}-{k}")).collect();
    let spec = ConsumerSpec {
        durable: format!("bulkhead-audit-bench-{run_id}"),
        subjects: tenants.iter().map(|t| names::audit_subject(t)).collect(),
    };
    (tenants, spec)
}

/// What one arm measured.
struct Measured {
    seconds: f64,
    /// Publish -> durable, nanoseconds, sorted.
    latencies: Vec<u64>,
    /// Durable groups.
    batches: u64,
}

/// Publishes `cfg.events` events over `tenants` while a consumer (the real
/// pipeline or the floor) makes them durable and reports their ids on
/// `dur_rx`; returns when every event is durable.
async fn drive(
    js: &jetstream::Context,
    tenants: &[String],
    cfg: &BenchConfig,
    mut dur_rx: tokio::sync::mpsc::UnboundedReceiver<Vec<String>>,
    consumer_task: &mut tokio::task::JoinHandle<Result<(), consumer::ConsumerError>>,
) -> Result<Measured, BenchError> {
    let (events, n, in_flight) = (cfg.events.max(1), tenants.len(), cfg.in_flight.max(1));
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..events).map(|_| AtomicU64::new(0)).collect());
    let window =
        (cfg.max_pending > 0).then(|| Arc::new(tokio::sync::Semaphore::new(cfg.max_pending)));
    let t0 = Instant::now();
    let publishers: Vec<_> = tenants
        .iter()
        .enumerate()
        .map(|(k, t)| {
            tokio::spawn(publish_tenant(Publisher {
                js: js.clone(),
                tenant: t.clone(),
                k,
                n,
                events,
                in_flight,
                sent: sent.clone(),
                window: window.clone(),
                t0,
            }))
        })
        .collect();

    let mut durable = vec![false; events];
    let mut latencies: Vec<u64> = Vec::with_capacity(events);
    let mut batches = 0u64;
    let deadline = tokio::time::Instant::now() + cfg.timeout;
    while latencies.len() < events {
        let ids = tokio::select! {
            r = tokio::time::timeout_at(deadline, dur_rx.recv()) => match r {
                Ok(Some(ids)) => ids,
                Ok(None) => break,
                Err(_) => return Err(BenchError::Incomplete(format!(
                    "only {} of {events} events became durable within {:?}",
                    latencies.len(), cfg.timeout
                ))),
            },
            r = &mut *consumer_task => {
                r.map_err(|e| BenchError::Task(e.to_string()))??;
                break;
            }
        };
        let now = t0.elapsed().as_nanos() as u64;
        batches += 1;
        for id in ids {
            let Some(i) = id
                .rsplit_once("-r")
                .and_then(|(_, i)| i.parse::<usize>().ok())
            else {
                continue;
            };
            if i < events && !durable[i] {
                durable[i] = true;
                if let Some(w) = &window {
                    w.add_permits(1);
                }
                latencies.push(now.saturating_sub(sent[i].load(Ordering::Acquire)));
            }
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let mut failed = 0;
    for p in publishers {
        failed += p.await.map_err(|e| BenchError::Task(e.to_string()))?;
    }
    if failed > 0 || latencies.len() < events {
        return Err(BenchError::Incomplete(format!(
            "{} of {events} events became durable; {failed} publishes failed",
            latencies.len()
        )));
    }
    latencies.sort_unstable();
    Ok(Measured {
        seconds,
        latencies,
        batches,
    })
}
