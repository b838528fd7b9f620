//! The router's worker pool: mTLS channels to each worker, a health and
//! capacity poll, and the choice of a worker for a request.
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_proto::identity::CertPaths;
use bulkhead_proto::worker::worker_client::WorkerClient;
use bulkhead_proto::worker::{CapacityRequest, CapacityResponse, ModelInfoRequest};
use tonic::transport::{Channel, Endpoint};

use crate::dispatch::Pool;

/// Largest message the router accepts from a worker.
const MAX_WORKER_MESSAGE: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug, Default)]
pub struct WorkerState {
    pub healthy: bool,
    pub worker_id: String,
    pub model: String,
    pub max_context: u32,
    pub capacity: CapacityResponse,
}

pub struct WorkerHandle {
    pub url: String,
    channel: Channel,
    state: Mutex<WorkerState>,
    /// Requests this router has in flight on the worker; fills the gap
    /// between two capacity polls.
    in_flight: AtomicU32,
    /// `in_flight` when the last capacity report arrived: the part of the
    /// worker's running + waiting count that is this router's own.
    in_flight_at_poll: AtomicU32,
}

impl WorkerHandle {
    pub fn client(&self) -> WorkerClient<Channel> {
        WorkerClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_WORKER_MESSAGE)
            .max_encoding_message_size(MAX_WORKER_MESSAGE)
    }

    pub fn state(&self) -> WorkerState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The name used in logs and audit events.
    pub fn name(&self) -> String {
        let s = self.state();
        if s.worker_id.is_empty() {
            self.url.clone()
        } else {
            s.worker_id
        }
    }

    /// Counts one request in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Sequence slots free now: the worker's slots, less what other routers
    /// held at the last report, less this router's requests in flight now.
    pub fn free_slots(&self) -> i64 {
        let cap = self.state().capacity;
        let ours = i64::from(self.in_flight.load(Ordering::Relaxed));
        if cap.max_seqs == 0 {
            return i64::from(cap.free_seq_slots) - ours;
        }
        let ours_then = i64::from(self.in_flight_at_poll.load(Ordering::Relaxed));
        let others = (i64::from(cap.running) + i64::from(cap.waiting) - ours_then).max(0);
        i64::from(cap.max_seqs) - others - ours
    }

    /// Takes the worker out of rotation until the next successful poll.
    pub fn mark_unhealthy(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).healthy = false;
    }

    async fn poll(&self) -> Result<(), tonic::Status> {
        let mut c = self.client();
        let info = c.model_info(ModelInfoRequest {}).await?.into_inner();
        let cap = c.capacity(CapacityRequest {}).await?.into_inner();
        self.in_flight_at_poll
            .store(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !s.healthy {
            tracing::info!(worker = %info.worker_id, url = %self.url, model = %info.model, "worker is healthy");
        }
        *s = WorkerState {
            healthy: true,
            worker_id: info.worker_id,
            model: info.model,
            max_context: info.max_context,
            capacity: cap,
        };
        Ok(())
    }
}

pub struct InFlight(Arc<WorkerHandle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct WorkerPool {
    workers: Vec<Arc<WorkerHandle>>,
}

impl WorkerPool {
    /// Prepares mTLS channels (connected lazily) to every worker URL, using
    /// the router's certificate from `certs_dir`.
    pub fn new(urls: &[String], certs_dir: &Path) -> anyhow::Result<Self> {
        let tls = CertPaths::new(certs_dir, "router").client_tls()?;
        let mut workers = Vec::new();
        for url in urls {
            let channel = Endpoint::from_shared(url.clone())
                .map_err(|e| anyhow::anyhow!("bad worker URL {url:?}: {e}"))?
                .tls_config(tls.clone())?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .connect_lazy();
            workers.push(Arc::new(WorkerHandle {
                url: url.clone(),
                channel,
                state: Mutex::new(WorkerState::default()),
                in_flight: AtomicU32::new(0),
                in_flight_at_poll: AtomicU32::new(0),
            }));
        }
        Ok(Self { workers })
    }

    /// Polls every worker once.
    pub async fn poll_all(&self) {
        for w in &self.workers {
            let r = tokio::time::timeout(Duration::from_secs(2), w.poll()).await;
            let err = match r {
                Ok(Ok(())) => continue,
                Ok(Err(status)) => status.message().to_string(),
                Err(_) => "timed out".to_string(),
            };
            let mut s = w.state.lock().unwrap_or_else(|e| e.into_inner());
            if s.healthy {
                tracing::warn!(url = %w.url, error = %err, "worker left rotation");
            }
            s.healthy = false;
        }
    }

    /// Keeps polling in the background.
    pub fn spawn_poller(self: &Arc<Self>, every: Duration) {
        let pool = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                pool.poll_all().await;
            }
        });
    }

    /// The healthy worker serving `model` with the most free sequence slots
    /// (after this router's own in-flight requests), if one has any.
    fn most_free(&self, model: &str) -> Option<&Arc<WorkerHandle>> {
        self.workers
            .iter()
            .filter(|w| {
                let s = w.state();
                s.healthy && s.model == model
            })
            .map(|w| (w.free_slots(), w))
            .filter(|(free, _)| *free > 0)
            .max_by_key(|(free, _)| *free)
            .map(|(_, w)| w)
    }

    /// Whether a healthy worker serves `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.workers.iter().any(|w| {
            let s = w.state();
            s.healthy && s.model == model
        })
    }

    /// Models served by at least one healthy worker, with their context size.
    pub fn models(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = Vec::new();
        for w in &self.workers {
            let s = w.state();
            if s.healthy && !out.iter().any(|(m, _)| *m == s.model) {
                out.push((s.model, s.max_context));
            }
        }
        out
    }
}

/// A slot on a worker, counted in its in-flight requests until dropped.
pub struct WorkerLease {
    pub worker: Arc<WorkerHandle>,
    _in_flight: InFlight,
}

impl Pool for WorkerPool {
    type Lease = WorkerLease;

    fn serves(&self, model: &str) -> bool {
        WorkerPool::serves(self, model)
    }

    fn has_free(&self, model: &str) -> bool {
        self.most_free(model).is_some()
    }

    fn try_acquire(&self, model: &str) -> Option<WorkerLease> {
        let worker = self.most_free(model)?.clone();
        let in_flight = worker.begin();
        Some(WorkerLease {
            worker,
            _in_flight: in_flight,
        })
    }
}
