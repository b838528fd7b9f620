//! The router's worker pool: mTLS channels to each worker, a health and
//! capacity poll, and the choice of a worker for a request. Workers given
//! by URL are fixed; a `dns+https://` entry's are found and followed by
//! `discovery` ([`WorkerPool::rediscover`]). The list only grows (a worker
//! that leaves is retired, and the same address coming back takes its old
//! place), so a worker's index — its name in the affinity table — is stable.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use bulkhead_identity::spiffe::CertPaths;
use bulkhead_identity::tls::{ExpectedServer, ReloadingConnector, plain_scheme};
use bulkhead_proto::common::Isolation;
use bulkhead_proto::worker::worker_client::WorkerClient;
use bulkhead_proto::worker::{CapacityRequest, CapacityResponse, ModelInfoRequest};
use tonic::transport::{Channel, Endpoint};

use crate::affinity::{self, AffinityTable, Candidate, RoutingDecision};
use crate::discovery::{self, Discovered};
use crate::dispatch::{Pool, Target};

/// Largest message the router accepts from a worker.
const MAX_WORKER_MESSAGE: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug, Default)]
pub struct WorkerState {
    pub healthy: bool,
    pub worker_id: String,
    pub model: String,
    pub max_context: u32,
    pub capacity: CapacityResponse,
    pub pool: String,
    /// The isolation tier of the worker's pool (`None`: a value this router
    /// does not know; such a worker admits nobody).
    pub isolation: Option<Isolation>,
    pub admitted_tenants: Vec<String>,
    pub device: String,
}

impl WorkerState {
    /// Whether this worker may take `t`: healthy, serving its model, and in a
    /// pool that admits its tenant — shared-tier tenants go only to shared
    /// workers; any other tier only to a worker of that tier listing them.
    pub fn admits(&self, t: &Target) -> bool {
        let (Some(mine), Some(theirs)) = (self.isolation, t.isolation) else {
            return false;
        };
        self.healthy
            && self.model == t.model
            && match theirs {
                Isolation::Shared => mine == Isolation::Shared,
                tier => mine == tier && self.admitted_tenants.contains(&t.tenant),
            }
    }
}

pub struct WorkerHandle {
    pub url: String,
    channel: Channel,
    /// Connects with the router certificate as it is on disk now; knows the
    /// worker's SPIFFE id of the latest connection.
    connector: ReloadingConnector,
    /// Refuse a dedicated pool's worker without its tenant's identity.
    require_tenant_id: bool,
    /// The last identity refusal logged (logged once per change).
    refused: Mutex<Option<String>>,
    state: Mutex<WorkerState>,
    /// Requests this router has in flight on the worker; fills the gap
    /// between two capacity polls.
    in_flight: AtomicU32,
    /// `in_flight` when the last capacity report arrived: the part of the
    /// worker's running + waiting count that is this router's own.
    in_flight_at_poll: AtomicU32,
    /// The `dns+https://` entry it was found by (its index), if any.
    source: Option<usize>,
    /// No longer among its name's addresses: out of rotation, unpolled,
    /// until it is listed again.
    retired: AtomicBool,
}

impl WorkerHandle {
    /// A worker at `url` (channel connected lazily): its SPIFFE id is
    /// checked in the handshake against `expected` — a worker identity (a
    /// tenant's, when the entry names the tenant), never another
    /// component's certificate.
    fn new(
        url: &str,
        expected: ExpectedServer,
        paths: &CertPaths,
        require_tenant_id: bool,
        source: Option<usize>,
    ) -> anyhow::Result<Arc<Self>> {
        let connector = ReloadingConnector::expecting(paths.clone(), expected)?;
        let channel = Endpoint::from_shared(plain_scheme(url))
            .map_err(|e| anyhow::anyhow!("bad worker URL {url:?}: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .connect_with_connector_lazy(connector.clone());
        Ok(Arc::new(WorkerHandle {
            url: url.to_string(),
            channel,
            connector,
            require_tenant_id,
            refused: Mutex::new(None),
            state: Mutex::new(WorkerState::default()),
            in_flight: AtomicU32::new(0),
            in_flight_at_poll: AtomicU32::new(0),
            source,
            retired: AtomicBool::new(false),
        }))
    }

    pub fn client(&self) -> WorkerClient<Channel> {
        WorkerClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_WORKER_MESSAGE)
            .max_encoding_message_size(MAX_WORKER_MESSAGE)
    }

    /// As the last poll saw it; a retired worker is never healthy.
    pub fn state(&self) -> WorkerState {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if self.retired.load(Ordering::Relaxed) {
            s.healthy = false;
        }
        s
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
        let shared = info.isolation == Isolation::Shared as i32;
        let id = self.connector.peer_id();
        if let Err(why) = bulkhead_identity::spiffe::check_worker_identity(
            id.as_ref(),
            shared,
            &info.admitted_tenants,
            self.require_tenant_id,
        ) {
            let mut last = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            if last.as_deref() != Some(why.as_str()) {
                tracing::warn!(url = %self.url, reason = %why, "refused a worker: its certificate does not match its pool");
                *last = Some(why.clone());
            }
            return Err(tonic::Status::permission_denied(why));
        }
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
            pool: info.pool,
            isolation: Isolation::try_from(info.isolation).ok(),
            admitted_tenants: info.admitted_tenants,
            device: info.device,
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

/// `https://host:port` or `https://host:port#tenant=<t>` (a pool dedicated
/// to tenant t: only t's worker identity is accepted at the handshake).
pub fn parse_worker(entry: &str) -> anyhow::Result<(String, ExpectedServer)> {
    let (url, expected) = match entry.split_once('#') {
        None => (entry, ExpectedServer::AnyWorker),
        Some((url, frag)) => match frag.strip_prefix("tenant=") {
            Some(t) if bulkhead_proto::names::valid_tenant_id(t) => {
                (url, ExpectedServer::TenantWorker(t.to_string()))
            }
            _ => {
                anyhow::bail!("worker {entry:?}: the only suffix understood is #tenant=<tenant id>")
            }
        },
    };
    anyhow::ensure!(
        url.starts_with("https://") || url.starts_with(discovery::SCHEME),
        "worker URL {url:?} must be https:// (mTLS) or {}NAME:PORT (every address NAME resolves to)",
        discovery::SCHEME
    );
    Ok((url.to_string(), expected))
}

pub struct WorkerPool {
    /// Append-only (see the module docs).
    workers: RwLock<Vec<Arc<WorkerHandle>>>,
    affinity: Mutex<AffinityTable>,
    hasher: std::hash::RandomState,
    /// For the workers discovery adds.
    paths: CertPaths,
    require_tenant_id: bool,
    discovered: Vec<Discovered>,
    hosts_file: Option<PathBuf>,
    /// Per discovered entry, the last resolution error (logged once).
    resolve_errors: Mutex<Vec<Option<String>>>,
}

impl WorkerPool {
    /// Prepares mTLS channels (connected lazily) to every worker URL, using
    /// the router's certificate from `certs_dir`.
    pub fn new(urls: &[String], certs_dir: &Path) -> anyhow::Result<Self> {
        Self::with_identity_rule(urls, &CertPaths::new(certs_dir, "router"), false)
    }

    /// [`Self::new`], presenting the certificate in `paths` (this
    /// replica's, see `crate::replica`); with `require_tenant_id`, a worker reporting a
    /// dedicated pool must present that tenant's worker identity. Each new
    /// connection reads the router certificate, CA and CRL from disk (a
    /// renewed certificate is used from the next reconnection on; a revoked
    /// worker certificate is refused).
    pub fn with_identity_rule(
        urls: &[String],
        paths: &CertPaths,
        require_tenant_id: bool,
    ) -> anyhow::Result<Self> {
        let (mut workers, mut discovered) = (Vec::new(), Vec::new());
        for entry in urls {
            let (url, expected) = parse_worker(entry)?;
            if url.starts_with(discovery::SCHEME) {
                discovered.push(discovery::parse(&url, expected, entry)?);
            } else {
                workers.push(WorkerHandle::new(
                    &url,
                    expected,
                    paths,
                    require_tenant_id,
                    None,
                )?);
            }
        }
        Ok(Self {
            workers: RwLock::new(workers),
            affinity: Mutex::default(),
            hasher: std::hash::RandomState::new(),
            paths: paths.clone(),
            require_tenant_id,
            resolve_errors: Mutex::new(vec![None; discovered.len()]),
            discovered,
            hosts_file: None,
        })
    }

    /// Resolves `dns+https://` names from this hosts file (`IP NAME…`
    /// lines, read on every round) before DNS.
    pub fn with_hosts_file(mut self, path: Option<PathBuf>) -> Self {
        self.hosts_file = path;
        self
    }

    fn list(&self) -> RwLockReadGuard<'_, Vec<Arc<WorkerHandle>>> {
        self.workers.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether any entry is a `dns+https://` name.
    pub fn discovers(&self) -> bool {
        !self.discovered.is_empty()
    }

    /// Resolves every `dns+https://` entry once: addresses new to it become
    /// workers (or rejoin), its workers no longer listed are retired (their
    /// requests in flight finish; their affinity entries are dropped). A
    /// name that does not resolve leaves its workers as they are (a DNS
    /// outage is not every worker leaving); polls take a dead one out.
    /// Returns whether a worker joined or rejoined (to be polled now).
    pub async fn rediscover(&self) -> bool {
        let mut joined = false;
        for (di, d) in self.discovered.iter().enumerate() {
            let resolved = discovery::resolve(d, self.hosts_file.as_deref()).await;
            {
                let mut last = self
                    .resolve_errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let now = resolved.as_ref().err().cloned();
                if last[di] != now {
                    match &now {
                        Some(why) => {
                            tracing::warn!(entry = %d.entry, reason = %why, "cannot resolve a worker pool's name; keeping its workers as they were")
                        }
                        None => {
                            tracing::info!(entry = %d.entry, "a worker pool's name resolves again")
                        }
                    }
                    last[di] = now;
                }
            }
            let Ok(urls) = resolved else {
                continue;
            };
            let mut left = vec![];
            {
                let mut ws = self.workers.write().unwrap_or_else(|e| e.into_inner());
                for url in &urls {
                    match ws.iter().find(|w| w.source == Some(di) && w.url == *url) {
                        Some(w) => {
                            if w.retired.swap(false, Ordering::Relaxed) {
                                tracing::info!(url = %url, entry = %d.entry, "worker rejoined its pool");
                                joined = true;
                            }
                        }
                        None => match WorkerHandle::new(
                            url,
                            d.expected.clone(),
                            &self.paths,
                            self.require_tenant_id,
                            Some(di),
                        ) {
                            Ok(w) => {
                                tracing::info!(url = %url, entry = %d.entry, "worker joined its pool");
                                ws.push(w);
                                joined = true;
                            }
                            Err(e) => {
                                tracing::warn!(url = %url, error = %e, "worker address refused")
                            }
                        },
                    }
                }
                for (i, w) in ws.iter().enumerate() {
                    if w.source == Some(di)
                        && !urls.contains(&w.url)
                        && !w.retired.swap(true, Ordering::Relaxed)
                    {
                        tracing::info!(url = %w.url, entry = %d.entry, "worker left its pool (no longer among its name's addresses)");
                        // Back only after a poll sees it again.
                        w.state.lock().unwrap_or_else(|e| e.into_inner()).healthy = false;
                        left.push(i);
                    }
                }
            }
            let mut table = self.affinity.lock().unwrap_or_else(|e| e.into_inner());
            for i in left {
                table.forget_worker(i);
            }
        }
        joined
    }

    /// Polls every worker once (not the retired).
    pub async fn poll_all(&self) {
        let workers: Vec<Arc<WorkerHandle>> = self.list().clone();
        for (i, w) in workers.iter().enumerate() {
            if w.retired.load(Ordering::Relaxed) {
                continue;
            }
            let r = tokio::time::timeout(Duration::from_secs(2), w.poll()).await;
            let err = match r {
                Ok(Ok(())) => continue,
                Ok(Err(status)) => status.message().to_string(),
                Err(_) => "timed out".to_string(),
            };
            // The state lock is released before the affinity lock is taken
            // (`choose` takes them in the other order).
            let was_healthy = std::mem::replace(
                &mut w.state.lock().unwrap_or_else(|e| e.into_inner()).healthy,
                false,
            );
            if was_healthy {
                tracing::warn!(url = %w.url, error = %err, "worker left rotation");
                // Its prefix cache will be gone when it comes back.
                self.affinity
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .forget_worker(i);
            }
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

    /// Keeps resolving the `dns+https://` names in the background (a new
    /// worker is polled at once, so it serves from the next dispatch on).
    pub fn spawn_resolver(self: &Arc<Self>, every: Duration) {
        if !self.discovers() {
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if pool.rediscover().await {
                    pool.poll_all().await;
                }
            }
        });
    }

    /// The request's prefix-block hashes for affinity (see `affinity`).
    pub fn prefix_keys(&self, tenant: &str, input: &crate::validate::Input) -> Vec<u64> {
        affinity::prefix_keys(&self.hasher, tenant, input)
    }

    /// The worker for `target`: among those admitting it with a free slot,
    /// the cheapest by prefix overlap (this tenant's only) and load.
    fn choose(&self, target: &Target) -> Option<(usize, bool)> {
        let table = self.affinity.lock().unwrap_or_else(|e| e.into_inner());
        let overlap = table.overlap(&target.tenant, &target.prefix);
        let candidates: Vec<Candidate> = self
            .list()
            .iter()
            .enumerate()
            .filter(|(_, w)| w.state().admits(target))
            .map(|(i, w)| {
                let free = w.free_slots();
                let max = i64::from(w.state().capacity.max_seqs);
                Candidate {
                    worker: i,
                    free_slots: free,
                    running: (max - free).max(0) as u64,
                    overlap: overlap.get(&i).copied().unwrap_or(0),
                }
            })
            .collect();
        affinity::pick(&candidates, target.prefix.len())
    }

    /// Whether a healthy worker admitting the tenant serves the model.
    pub fn serves(&self, target: &Target) -> bool {
        self.list().iter().any(|w| w.state().admits(target))
    }

    /// Every worker as the last poll saw it (for the heartbeat).
    pub fn views(&self) -> Vec<bulkhead_proto::control::WorkerView> {
        self.list()
            .iter()
            .filter(|w| !w.retired.load(Ordering::Relaxed))
            .map(|w| {
                let s = w.state();
                bulkhead_proto::control::WorkerView {
                    url: w.url.clone(),
                    worker_id: s.worker_id,
                    healthy: s.healthy,
                    model: s.model,
                    pool: s.pool,
                    // An unknown tier shows as the strictest.
                    isolation: s.isolation.unwrap_or(Isolation::Dedicated) as i32,
                    device: s.device,
                    running: s.capacity.running,
                    waiting: s.capacity.waiting,
                    max_seqs: s.capacity.max_seqs,
                    free_kv_blocks: s.capacity.free_kv_blocks,
                    total_kv_blocks: s.capacity.total_kv_blocks,
                    admitted_tenants: s.admitted_tenants,
                }
            })
            .collect()
    }

    /// Models served by at least one healthy worker, with their context size.
    pub fn models(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = Vec::new();
        for w in self.list().iter() {
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
    /// How the worker was chosen (for the audit event).
    pub decision: RoutingDecision,
    _in_flight: InFlight,
}

impl Pool for WorkerPool {
    type Lease = WorkerLease;

    fn serves(&self, target: &Target) -> bool {
        WorkerPool::serves(self, target)
    }

    fn slots(&self, target: &Target) -> (i64, i64) {
        let mut best = 0;
        let mut total = 0;
        for w in self.list().iter().filter(|w| w.state().admits(target)) {
            best = best.max(w.free_slots());
            total += i64::from(w.state().capacity.max_seqs);
        }
        (best, total)
    }

    fn has_free(&self, target: &Target) -> bool {
        self.choose(target).is_some()
    }

    fn try_acquire(&self, target: &Target) -> Option<WorkerLease> {
        let (i, by_prefix) = self.choose(target)?;
        let worker = self.list()[i].clone();
        self.affinity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(&target.tenant, &target.prefix, i);
        let in_flight = worker.begin();
        Some(WorkerLease {
            worker,
            decision: if by_prefix {
                RoutingDecision::PrefixAffinity
            } else {
                RoutingDecision::LeastLoaded
            },
            _in_flight: in_flight,
        })
    }
}

#[cfg(test)]
mod tests;
