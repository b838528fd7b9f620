//! The continuous-batching engine. It runs on its own thread, owns the model's
//! KV pool, admits requests while sequence slots and KV blocks allow, and runs
//! one forward step at a time over all running sequences, mixing chunked
//! prefill and decode. No network code here.
use std::collections::VecDeque;
use std::sync::mpsc as stdmpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::LoadedModel;
use crate::kv::{BlockHash, BlockId, KvPool, KvQuota, PrefixSecret, TenantId};
use crate::logprobs::TokenLogprobs;
use crate::model::SeqInput;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::Detokenizer;

mod emit;
mod expiry;
mod fair;
mod handle;
mod sched;
use sched::Pending;

/// Engine sizing.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub max_seqs: usize,
    pub prefill_chunk: usize,
    pub kv_blocks: usize,
    pub block_size: usize,
    /// Per-tenant KV quota (guaranteed and burst blocks).
    pub kv_quota: KvQuota,
    /// Secret the per-tenant prefix-cache salts are derived from.
    pub prefix_secret: PrefixSecret,
    /// Where to record Prometheus metrics, if anywhere.
    pub metrics: Option<std::sync::Arc<crate::metrics::WorkerMetrics>>,
    /// Cached prefix blocks unused for this long are evicted (`None`: they
    /// stay until the space is needed). See `engine/expiry.rs`.
    pub prefix_cache_ttl: Option<std::time::Duration>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_seqs: 16,
            prefill_chunk: 256,
            kv_blocks: 1024,
            block_size: 16,
            kv_quota: KvQuota::UNLIMITED,
            prefix_secret: PrefixSecret::random(),
            metrics: None,
            prefix_cache_ttl: None,
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Length,
    Stop,
    Cancelled,
    Error,
}

/// What the engine streams back for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    Started {
        prompt_tokens: u32,
        cached_tokens: u32,
    },
    Token {
        id: u32,
        text: String,
        /// When the request asked for them (see [`crate::logprobs`]); none
        /// for an end-of-sequence token that only flushes held-back text.
        logprobs: Option<Box<TokenLogprobs>>,
    },
    Finished {
        reason: FinishReason,
        prompt_tokens: u32,
        completion_tokens: u32,
        error: Option<String>,
    },
}

/// One request for the engine. `events` must have room for
/// `max_tokens + 3` events (the engine never blocks on a slow client; a full
/// or closed channel cancels the request).
#[derive(Debug)]
pub struct GenerateRequest {
    pub request_id: String,
    pub tenant: TenantId,
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub stop: Vec<String>,
    pub max_tokens: u32,
    /// Top-k alternatives per generated token (`Some(0)`: the chosen token's
    /// log-probability only; at most [`crate::logprobs::MAX_TOP_LOGPROBS`]).
    pub logprobs: Option<u32>,
    /// Generate past end-of-sequence tokens (benchmarks: a fixed length).
    pub ignore_eos: bool,
    /// The tenant's blocks are neither reused from nor left in the prefix
    /// cache (`Tenant.no_prefix_cache`), and are zeroed as soon as they are
    /// released.
    pub no_prefix_cache: bool,
    /// The tenant's own prefix-cache TTL (`Tenant.prefix_cache_ttl_s`),
    /// when it has one: its cached blocks unused that long are evicted and
    /// zeroed (the worker's `--prefix-cache-ttl-s` applies as well).
    pub prefix_cache_ttl: Option<std::time::Duration>,
    /// The tenant's fair-share weight as its router sent it (0 is read as
    /// 1): requests waiting here are admitted in weighted-fair order.
    pub weight: u32,
    pub events: mpsc::Sender<EngineEvent>,
}

/// Capacity as reported by the Capacity RPC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capacity {
    pub free_seq_slots: u32,
    pub max_seqs: u32,
    pub free_kv_blocks: u32,
    pub total_kv_blocks: u32,
    pub running: u32,
    pub waiting: u32,
}

/// A view of one step, given to an optional observer (tests use it to check
/// block ownership at every step).
#[derive(Debug, Clone)]
pub struct StepReport {
    /// Per scheduled sequence: its tenant, block table, and each block's
    /// owner as the pool records it.
    pub tables: Vec<(TenantId, Vec<BlockId>, Vec<Option<TenantId>>)>,
}

pub type StepObserver = Arc<dyn Fn(&StepReport) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the engine has stopped")]
    Stopped,
}

enum Command {
    Submit(GenerateRequest),
    Cancel(String, oneshot::Sender<bool>),
    Shutdown,
}

/// Where step time goes (cheap `Instant` timing; `bench decode` reads it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepTiming {
    /// Steps run and their total time (admission, guard, forward, sampling).
    pub steps: u64,
    pub step: std::time::Duration,
    /// In the KV ownership guard (`check_table` of every scheduled sequence).
    pub guard: std::time::Duration,
    /// Zeroing blocks that changed owner (inside KV allocation).
    pub scrub: std::time::Duration,
}

#[derive(Debug, Default)]
struct Shared {
    timing: StepTiming,
    capacity: Capacity,
    guard_violations: u64,
    preemptions: u64,
    cache_hit_blocks: u64,
    scrubbed_blocks: u64,
}

/// Handle to the engine thread.
pub struct EngineHandle {
    tx: stdmpsc::Sender<Command>,
    shared: Arc<Mutex<Shared>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Sequence {
    req: GenerateRequest,
    /// Prompt plus generated tokens (EOS excluded).
    tokens: Vec<u32>,
    /// Tokens whose K/V are in the cache.
    computed: usize,
    blocks: Vec<BlockId>,
    /// Prefix-cache keys of the full blocks of the prompt as admitted
    /// (after a preemption: prompt + generated tokens).
    hashes: Vec<BlockHash>,
    /// Leading blocks already in the prefix cache.
    registered: usize,
    /// Admission order (the newest running sequence is preempted first).
    admitted: u64,
    /// Released its blocks; goes back to the waiting queue after this step.
    preempted: bool,
    sampler: Sampler,
    detok: Detokenizer,
    generated: u32,
    done: Option<(FinishReason, Option<String>)>,
}

struct Engine {
    model: Arc<LoadedModel>,
    cfg: EngineConfig,
    pool: KvPool,
    rx: stdmpsc::Receiver<Command>,
    waiting: VecDeque<Pending>,
    running: Vec<Sequence>,
    admissions: u64,
    preemptions: u64,
    fair: fair::FairAdmission,
    timing: StepTiming,
    shared: Arc<Mutex<Shared>>,
    observer: Option<StepObserver>,
    expiry: expiry::Expiry,
    /// Tenants' own prefix-cache TTLs (by tenant key), from their latest
    /// request.
    tenant_ttls: std::collections::HashMap<String, std::time::Duration>,
}

fn finished(req: &GenerateRequest, reason: FinishReason, completion: u32, error: Option<String>) {
    let _ = req.events.try_send(EngineEvent::Finished {
        reason,
        prompt_tokens: req.prompt.len() as u32,
        completion_tokens: completion,
        error,
    });
}

impl Sequence {
    fn send(&mut self, ev: EngineEvent) {
        if self.req.events.try_send(ev).is_err() && self.done.is_none() {
            self.done = Some((FinishReason::Cancelled, None));
        }
    }
    fn fail(&mut self, msg: String) {
        if self.done.is_none() {
            self.done = Some((FinishReason::Error, Some(msg)));
        }
    }
}

impl Engine {
    fn run(mut self) {
        tracing::debug!("engine started");
        loop {
            let ttls = expiry::Ttls {
                worker: self.cfg.prefix_cache_ttl,
                tenants: &self.tenant_ttls,
            };
            let idle_wait = ttls.idle_wait();
            if idle_wait.is_some() {
                let gone = self
                    .expiry
                    .run(&mut self.pool, &ttls, std::time::Instant::now());
                if gone > 0 {
                    tracing::debug!(blocks = gone, "expired cached prefix blocks");
                    self.publish();
                }
            }
            if self.running.is_empty() && self.waiting.is_empty() {
                self.fair.forget_all();
                // Idle: block until a command arrives (with a TTL, waking
                // in time to expire cached prefixes).
                let cmd = match idle_wait {
                    None => self.rx.recv().map_err(|_| true),
                    Some(wait) => match self.rx.recv_timeout(wait) {
                        Ok(c) => Ok(c),
                        Err(stdmpsc::RecvTimeoutError::Timeout) => continue,
                        Err(stdmpsc::RecvTimeoutError::Disconnected) => Err(true),
                    },
                };
                match cmd {
                    Ok(c) => {
                        if !self.handle(c) {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            let mut stop = false;
            loop {
                match self.rx.try_recv() {
                    Ok(c) => {
                        if !self.handle(c) {
                            stop = true;
                            break;
                        }
                    }
                    Err(stdmpsc::TryRecvError::Empty) => break,
                    Err(stdmpsc::TryRecvError::Disconnected) => {
                        stop = true;
                        break;
                    }
                }
            }
            if stop {
                break;
            }
            let t = std::time::Instant::now();
            self.step();
            (self.timing.steps, self.timing.step) =
                (self.timing.steps + 1, self.timing.step + t.elapsed());
            self.publish();
            if self.running.is_empty() && !self.waiting.is_empty() {
                // Nothing admissible right now: wait for a command briefly
                // instead of spinning.
                match self.rx.recv_timeout(std::time::Duration::from_millis(5)) {
                    Ok(c) => {
                        if !self.handle(c) {
                            break;
                        }
                    }
                    Err(stdmpsc::RecvTimeoutError::Timeout) => {}
                    Err(stdmpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        // Shutting down: cancel everything still here.
        for p in self.waiting.drain(..) {
            p.cancel();
        }
        for s in &mut self.running {
            s.done.get_or_insert((FinishReason::Cancelled, None));
        }
        self.reap();
        self.publish();
        tracing::debug!("engine stopped");
    }

    /// Returns false on shutdown.
    fn handle(&mut self, c: Command) -> bool {
        match c {
            Command::Submit(r) => {
                let need = self.pool.blocks_for(r.prompt.len() + r.max_tokens as usize);
                let burst = self.pool.quota().burst;
                if need > self.pool.total_blocks() {
                    finished(
                        &r,
                        FinishReason::Error,
                        0,
                        Some(format!(
                            "request needs {need} KV blocks but this worker has only {}",
                            self.pool.total_blocks()
                        )),
                    );
                } else if need > burst {
                    finished(
                        &r,
                        FinishReason::Error,
                        0,
                        Some(format!(
                            "request needs {need} KV blocks but a tenant may hold at most {burst} on this worker"
                        )),
                    );
                } else {
                    // The tenant's own TTL, as its latest request says.
                    match r.prefix_cache_ttl {
                        Some(ttl) => self.tenant_ttls.insert(r.tenant.to_string(), ttl),
                        None => self.tenant_ttls.remove(&*r.tenant),
                    };
                    let active: Vec<&TenantId> = (self.running.iter().map(|s| &s.req.tenant))
                        .chain(self.waiting.iter().map(|p| &p.req().tenant))
                        .collect();
                    self.fair.arrive(&r.tenant, &active);
                    self.waiting.push_back(Pending::New(r));
                }
            }
            Command::Cancel(id, reply) => {
                let mut found = false;
                if let Some(i) = self.waiting.iter().position(|p| p.req().request_id == id) {
                    if let Some(p) = self.waiting.remove(i) {
                        p.cancel();
                    }
                    found = true;
                }
                for s in self.running.iter_mut().filter(|s| s.req.request_id == id) {
                    s.done.get_or_insert((FinishReason::Cancelled, None));
                    found = true;
                }
                self.reap();
                let _ = reply.send(found);
            }
            Command::Shutdown => return false,
        }
        true
    }

    fn publish(&self) {
        let cap = Capacity {
            free_seq_slots: self.cfg.max_seqs.saturating_sub(self.running.len()) as u32,
            max_seqs: self.cfg.max_seqs as u32,
            // Cached blocks are reclaimable, so they count as free here.
            free_kv_blocks: (self.pool.free_blocks() + self.pool.cached_blocks()) as u32,
            total_kv_blocks: self.pool.total_blocks() as u32,
            running: self.running.len() as u32,
            waiting: self.waiting.len() as u32,
        };
        if let Ok(mut s) = self.shared.lock() {
            s.capacity = cap;
            s.guard_violations = self.pool.guard_violations();
            s.preemptions = self.preemptions;
            s.cache_hit_blocks = self.pool.cache_hit_blocks();
            s.scrubbed_blocks = self.pool.scrubbed_blocks();
            s.timing = StepTiming {
                scrub: self.pool.scrub_time(),
                ..self.timing
            };
        }
    }

    /// Releases a sequence's blocks: zeroed at once for a tenant without
    /// prefix cache. Returns how many it did not hold.
    fn release(&mut self, tenant: &TenantId, no_prefix_cache: bool, blocks: &[BlockId]) -> usize {
        if no_prefix_cache {
            self.pool.free_scrubbed(tenant, blocks)
        } else {
            self.pool.free(tenant, blocks)
        }
    }

    /// Frees and reports finished sequences.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].done.is_none() && self.running[i].req.events.is_closed() {
                self.running[i].done = Some((FinishReason::Cancelled, None));
            }
            if let Some((reason, error)) = self.running[i].done.clone() {
                let s = self.running.swap_remove(i);
                let skipped = self.release(&s.req.tenant, s.req.no_prefix_cache, &s.blocks);
                if skipped > 0 {
                    tracing::error!(request_id = %s.req.request_id, skipped, "sequence held blocks it did not own");
                }
                finished(&s.req, reason, s.generated, error);
                tracing::debug!(request_id = %s.req.request_id, tenant = %s.req.tenant,
                    completion_tokens = s.generated, ?reason, "finished");
            } else {
                i += 1;
            }
        }
    }

    fn step(&mut self) {
        self.reap();
        self.admit();
        if self.running.is_empty() {
            return;
        }
        // Plan: decodes first (one token each), then prefill chunks within the
        // token budget, tenants taking turns (see `sched::prefill_order`).
        let mut plan: Vec<(usize, usize)> = Vec::new();
        let mut budget = self.cfg.prefill_chunk.max(1);
        for (i, s) in self.running.iter().enumerate() {
            if s.tokens.len() - s.computed == 1 {
                plan.push((i, 1));
                budget = budget.saturating_sub(1);
            }
        }
        let prefills: Vec<(usize, &str)> = self
            .running
            .iter()
            .enumerate()
            .filter(|(_, s)| s.tokens.len() - s.computed > 1)
            .map(|(i, s)| (i, &*s.req.tenant))
            .collect();
        for i in sched::prefill_order(&prefills) {
            let s = &self.running[i];
            let rem = s.tokens.len() - s.computed;
            if budget > 0 {
                let n = rem.min(budget);
                plan.push((i, n));
                budget -= n;
            }
        }
        // Blocks, then the ownership guard, for every scheduled sequence.
        // Out of blocks: preempt (recompute later) rather than fail.
        self.reserve_blocks(&mut plan);
        let guard = std::time::Instant::now();
        plan.retain(|&(i, _)| {
            let s = &mut self.running[i];
            if let Err(e) = self.pool.check_table(&s.req.tenant, &s.blocks) {
                tracing::error!(request_id = %s.req.request_id, tenant = %s.req.tenant,
                    error = %e, "KV ownership guard violation; failing the sequence");
                s.fail("internal error: KV ownership guard violation".into());
                return false;
            }
            true
        });
        self.timing.guard += guard.elapsed();
        // Weighted service, for the admission order: each token processed,
        // and one more for each token this step generates.
        for &(i, n) in &plan {
            let s = &self.running[i];
            let sampled = usize::from(s.computed + n == s.tokens.len());
            self.fair
                .charge(&s.req.tenant, s.req.weight, (n + sampled) as f64);
        }
        if let Some(obs) = &self.observer {
            let tables = plan
                .iter()
                .map(|&(i, _)| {
                    let s = &self.running[i];
                    let owners = s
                        .blocks
                        .iter()
                        .map(|&b| self.pool.owner(b).cloned())
                        .collect();
                    (s.req.tenant.clone(), s.blocks.clone(), owners)
                })
                .collect();
            obs(&StepReport { tables });
        }
        if plan.is_empty() {
            self.requeue_preempted();
            self.reap();
            return;
        }
        let inputs: Vec<SeqInput<'_>> = plan
            .iter()
            .map(|&(i, n)| {
                let s = &self.running[i];
                SeqInput {
                    tokens: &s.tokens[s.computed..s.computed + n],
                    start_pos: s.computed,
                    tenant: &s.req.tenant,
                    blocks: &s.blocks,
                    want_logits: s.computed + n == s.tokens.len(),
                }
            })
            .collect();
        let t0 = std::time::Instant::now();
        let result = self.model.model.forward(&mut self.pool, &inputs);
        drop(inputs);
        if let Some(m) = &self.cfg.metrics {
            m.step(plan.len(), t0.elapsed());
            let (free, total) = (self.pool.free_blocks(), self.pool.total_blocks());
            for &(i, _) in &plan {
                let t = &self.running[i].req.tenant;
                m.kv(t, self.pool.used_by(t), free, total);
            }
        }
        match result {
            Ok(logits) => {
                let bs = self.pool.block_size();
                for (&(i, n), l) in plan.iter().zip(logits) {
                    let s = &mut self.running[i];
                    s.computed += n;
                    // Full, computed prompt blocks enter the prefix cache.
                    while s.registered < s.hashes.len() && (s.registered + 1) * bs <= s.computed {
                        let (b, h) = (s.blocks[s.registered], s.hashes[s.registered]);
                        self.pool.register(&s.req.tenant, b, h);
                        s.registered += 1;
                    }
                    if let Some(l) = l {
                        if let Some(m) = &self.cfg.metrics {
                            m.generated(&self.running[i].req.tenant);
                        }
                        self.sample(i, &l);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "forward step failed");
                for &(i, _) in &plan {
                    self.running[i].fail(format!("internal error: {e}"));
                }
            }
        }
        self.requeue_preempted();
        self.reap();
    }
}
