//! The dispatcher: one task that owns the fair queue and the limiter
//! (messages in over an mpsc channel, each answer out over a oneshot).
//!
//! A request is admitted (limits), queued in its tenant's queue, and leaves
//! only when a worker that serves it has a free sequence slot, taking the
//! slot with it (a [`Pool::Lease`]). Its [`Meter`] reports the tokens the
//! worker actually processes (charged to the tenant's fair-queue counter)
//! and, when dropped, ends the request: the slot is freed, unused reserved
//! tokens are refunded and the next request may go. A request whose caller
//! goes away while it waits is removed from the queue.
//!
//! The inbox is unbounded but stays small: admission messages are bounded by
//! the number of open client requests, finishes by the running ones, and
//! token charges are summed per tenant in a ledger that wakes the actor with
//! at most one message outstanding.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bulkhead_proto::control::{Tenant, TenantLoad};
use tokio::sync::{mpsc, oneshot};

use crate::cluster::ClusterView;
use crate::error::ApiError;
use crate::fair::{FairQueue, INPUT_COST, OUTPUT_COST, Ticket};
use crate::limits::{Admission, Limiter, Limits, RateState};
use crate::slots::SlotView;

mod meter;
mod view;
pub use meter::Meter;

/// How often queued requests are retried when nothing else happens (worker
/// capacity polls can free slots without a message to the dispatcher).
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// What a request may run on: its model, and the tenant whose isolation
/// tier and pools decide which workers may take it.
#[derive(Clone, Debug)]
pub struct Target {
    pub model: String,
    pub tenant: String,
    /// The tenant's isolation tier (`None`: a value this router does not
    /// know, which no worker admits).
    pub isolation: Option<bulkhead_proto::common::Isolation>,
    /// Chained prefix-block hashes of the request (`affinity`); may be empty.
    pub prefix: Arc<[u64]>,
}

/// Where requests go: the router's workers, or a fake in tests. Every
/// method only considers workers that admit the target's tenant.
pub trait Pool: Send + Sync + 'static {
    /// A reserved slot on a worker; dropping it frees the slot.
    type Lease: Send + 'static;
    /// Whether any healthy worker admitting the tenant serves the model.
    fn serves(&self, target: &Target) -> bool;
    /// Whether such a worker has a free slot now.
    fn has_free(&self, target: &Target) -> bool;
    /// Free slots on the best such worker, and all such workers' slots.
    fn slots(&self, target: &Target) -> (i64, i64);
    /// Reserves a slot on such a worker, the one with the most free.
    fn try_acquire(&self, target: &Target) -> Option<Self::Lease>;
}

/// Seconds since some fixed start; injectable so tests need no wall clock.
pub type Clock = Arc<dyn Fn() -> Duration + Send + Sync>;

/// A request allowed to run: the worker slot and the usage meter.
///
/// Field order is drop order: the meter's `Finish` reaches the dispatcher's
/// inbox before the lease frees the slot, so the dispatcher never sees a
/// free slot while still counting the request that held it as running (a
/// tenant would look at its share with a request already done, and the
/// slot go to another tenant).
pub struct Grant<L> {
    pub meter: Meter,
    pub lease: L,
    /// The tenant's rate buckets when it was admitted.
    pub rate: RateState,
}

struct Pending<L> {
    ticket: u64,
    target: Target,
    limits: Limits,
    reserve: u64,
    reply: oneshot::Sender<Result<Grant<L>, ApiError>>,
}

/// What the dispatcher holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub queued: usize,
    pub running: u32,
}

enum Msg {
    Stats(oneshot::Sender<Stats>),
    SetFifo(bool),
    SetAdmission(Admission),
    Loads(oneshot::Sender<Vec<TenantLoad>>),
    /// Service another router replica delivered (see `cluster`).
    Remote {
        tenant: String,
        cost: f64,
    },
    Cancel {
        ticket: u64,
    },
    /// Token charges are waiting in the [`meter::Ledger`].
    Charges,
    Finish {
        tenant: String,
        limits: Limits,
        refund: i64,
    },
}

/// Admission requests carry the lease type, so they travel apart.
struct Enqueue<L> {
    ticket: u64,
    tenant: Arc<Tenant>,
    model: String,
    reserve: u64,
    prefix: Arc<[u64]>,
    reply: oneshot::Sender<Result<Grant<L>, ApiError>>,
    /// Fired when the limits admitted the request (it is then queued),
    /// with the tenant's rate buckets after it.
    admitted: oneshot::Sender<RateState>,
}

/// The handle callers use; cheap to share.
pub struct Dispatcher<L> {
    enqueue: mpsc::UnboundedSender<Enqueue<L>>,
    tx: mpsc::UnboundedSender<Msg>,
    next: AtomicU64,
}

/// Sends `Cancel` if the caller stops waiting before its grant arrives.
struct CancelOnDrop<'a> {
    tx: &'a mpsc::UnboundedSender<Msg>,
    ticket: u64,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.tx.send(Msg::Cancel {
                ticket: self.ticket,
            });
        }
    }
}

impl<L: Send + 'static> Dispatcher<L> {
    /// Starts the dispatcher task with the wall clock.
    pub fn spawn<P: Pool<Lease = L>>(pool: Arc<P>) -> Self {
        let start = Instant::now();
        Self::spawn_with_clock(pool, Arc::new(move || start.elapsed()))
    }

    pub fn spawn_with_clock<P: Pool<Lease = L>>(pool: Arc<P>, clock: Clock) -> Self {
        Self::spawn_in_cluster(pool, clock, Arc::new(ClusterView::default()))
    }

    /// Starts the dispatcher as one of several router replicas: tenant
    /// limits are divided by `cluster`'s live replica count.
    pub fn spawn_in_cluster<P: Pool<Lease = L>>(
        pool: Arc<P>,
        clock: Clock,
        cluster: Arc<ClusterView>,
    ) -> Self {
        let (enqueue, enq_rx) = mpsc::unbounded_channel();
        let (tx, rx) = mpsc::unbounded_channel();
        let actor = Actor {
            pool,
            clock,
            tx: tx.clone(),
            ledger: Arc::default(),
            queue: FairQueue::new(),
            limiter: Limiter::new(),
            queued: HashMap::new(),
            running: HashMap::new(),
            weights: HashMap::new(),
            cluster,
            served: HashMap::new(),
            admission: Admission::default(),
        };
        tokio::spawn(actor.run(enq_rx, rx));
        Self {
            enqueue,
            tx,
            next: AtomicU64::new(0),
        }
    }

    /// Requests queued and running, all tenants together.
    pub async fn stats(&self) -> Stats {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Msg::Stats(reply));
        rx.await.unwrap_or_default()
    }

    /// Per tenant: queued, running, and the service and requests this
    /// replica dispatched since it started (for the heartbeat).
    pub async fn loads(&self) -> Vec<TenantLoad> {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Msg::Loads(reply));
        rx.await.unwrap_or_default()
    }

    /// Switches to the FIFO baseline (experiments only; see `FairQueue`).
    pub fn set_fifo(&self, fifo: bool) {
        let _ = self.tx.send(Msg::SetFifo(fifo));
    }

    /// Sets the default per-tenant counts and this router's queue bound.
    pub fn set_admission(&self, a: Admission) {
        let _ = self.tx.send(Msg::SetAdmission(a));
    }

    /// Charges service another replica delivered to `tenant`.
    pub fn charge_remote(&self, tenant: String, cost: f64) {
        let _ = self.tx.send(Msg::Remote { tenant, cost });
    }

    /// Admits, queues and waits until the request may run on a worker.
    /// `reserve` is the token reservation (prompt estimate + max_tokens).
    pub async fn acquire(
        &self,
        tenant: Arc<Tenant>,
        model: String,
        reserve: u64,
    ) -> Result<Grant<L>, ApiError> {
        self.acquire_routed(tenant, model, reserve, Arc::from([]))
            .await
    }

    /// [`acquire`](Self::acquire) with the request's prefix-block hashes,
    /// for the pool's tenant-scoped prefix affinity.
    pub async fn acquire_routed(
        &self,
        tenant: Arc<Tenant>,
        model: String,
        reserve: u64,
        prefix: Arc<[u64]>,
    ) -> Result<Grant<L>, ApiError> {
        use tracing::Instrument;
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        let (admitted, admitted_rx) = oneshot::channel();
        let gone = || ApiError::Internal("the dispatcher stopped".into());
        let tenant_id = tenant.id.clone();
        self.enqueue
            .send(Enqueue {
                ticket,
                tenant,
                model,
                reserve,
                prefix,
                reply,
                admitted,
            })
            .map_err(|_| gone())?;
        let mut cancel = CancelOnDrop {
            tx: &self.tx,
            ticket,
            armed: true,
        };
        // Two spans: the limit check, then (if admitted) the wait in the queue.
        let limits = tracing::info_span!("limits", tenant.id = %tenant_id);
        let admitted = admitted_rx.instrument(limits).await.ok();
        let r = if admitted.is_some() {
            let queue = tracing::info_span!("queue", tenant.id = %tenant_id);
            rx.instrument(queue).await.map_err(|_| gone())
        } else {
            rx.await.map_err(|_| gone())
        };
        cancel.armed = false;
        let mut grant = r??;
        grant.rate = admitted.unwrap_or_default();
        Ok(grant)
    }
}

struct Actor<P: Pool> {
    pool: Arc<P>,
    clock: Clock,
    tx: mpsc::UnboundedSender<Msg>,
    ledger: Arc<meter::Ledger>,
    queue: FairQueue<Pending<P::Lease>>,
    limiter: Limiter,
    /// Caller ticket -> (tenant, fair-queue ticket) of queued requests.
    queued: HashMap<u64, (String, Ticket, String)>,
    /// Requests running per tenant.
    running: HashMap<String, u32>,
    /// Weights of tenants seen queued (for the slot headroom).
    weights: HashMap<String, u32>,
    cluster: Arc<ClusterView>,
    /// Service cost and requests this replica dispatched, per tenant.
    served: HashMap<String, (f64, u64)>,
    admission: Admission,
}

impl<P: Pool> Actor<P> {
    async fn run(
        mut self,
        mut enq: mpsc::UnboundedReceiver<Enqueue<P::Lease>>,
        mut rx: mpsc::UnboundedReceiver<Msg>,
    ) {
        let mut tick = tokio::time::interval(RETRY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Dispatch only after what can let a queued request go: an
            // arrival, a finished request (a freed slot), or the tick (the
            // capacity polls and the peers' heartbeats). Token charges, by
            // far the most frequent messages, only reorder the queue.
            let may_go = tokio::select! {
                e = enq.recv() => match e {
                    Some(e) => {
                        self.enqueue(e);
                        true
                    }
                    // Every handle is gone: nobody can ask any more.
                    None => return,
                },
                Some(m) = rx.recv() => self.handle(m),
                _ = tick.tick() => {
                    self.housekeeping();
                    true
                }
            };
            // Take in everything already waiting first (above all the
            // `Finish` of every request a worker step ended together), so
            // the dispatch sees one consistent state.
            let mut may_go = may_go;
            while let Ok(m) = rx.try_recv() {
                may_go |= self.handle(m);
            }
            while let Ok(e) = enq.try_recv() {
                self.enqueue(e);
                may_go = true;
            }
            if may_go {
                self.dispatch();
            }
        }
    }

    fn enqueue(&mut self, e: Enqueue<P::Lease>) {
        let target = Target {
            model: e.model.clone(),
            tenant: e.tenant.id.clone(),
            isolation: bulkhead_proto::common::Isolation::try_from(e.tenant.isolation).ok(),
            prefix: e.prefix.clone(),
        };
        if !self.pool.serves(&target) {
            let _ = e.reply.send(Err(ApiError::Unavailable(format!(
                "no healthy worker that admits this tenant serves model {:?} right now",
                crate::validate::truncate(&e.model, 64)
            ))));
            return;
        }
        if self.queued.len() >= self.admission.max_queued_total as usize {
            tracing::warn!(
                max = self.admission.max_queued_total,
                "router queue full; request refused"
            );
            let _ = e.reply.send(Err(ApiError::Overloaded {
                message: format!(
                    "this router's queue is full ({} requests waiting); try again shortly",
                    self.admission.max_queued_total
                ),
                retry_after: std::time::Duration::from_secs(1),
            }));
            return;
        }
        let limits =
            Limits::from_tenant_with(&e.tenant, &self.admission).share(self.cluster.replicas());
        let id = e.tenant.id.as_str();
        let queued = self.queue.queued(id) as u32;
        let in_flight = queued + self.running.get(id).copied().unwrap_or(0);
        let now = (self.clock)();
        let rate = match self
            .limiter
            .admit(id, &limits, now, e.reserve, in_flight, queued)
        {
            Ok(rate) => rate,
            Err(r) => {
                tracing::info!(
                    tenant = id,
                    retry_after_ms = r.retry_after.as_millis() as u64,
                    "request over a tenant limit"
                );
                let _ = e.reply.send(Err(ApiError::RateLimited {
                    message: r.message,
                    retry_after: r.retry_after,
                    rate: r.rate,
                }));
                return;
            }
        };
        let _ = e.admitted.send(rate);
        let pending = Pending {
            ticket: e.ticket,
            target,
            limits,
            reserve: e.reserve,
            reply: e.reply,
        };
        self.weights.insert(id.to_string(), e.tenant.weight.max(1));
        let running = self.running.get(id).is_some_and(|n| *n > 0);
        let fq = self.queue.push_with(id, e.tenant.weight, running, pending);
        self.queued
            .insert(e.ticket, (id.to_string(), fq, e.model.clone()));
    }

    /// Handles one message; true when it may have freed a slot.
    fn handle(&mut self, m: Msg) -> bool {
        let frees = matches!(m, Msg::Finish { .. } | Msg::SetFifo(_));
        match m {
            Msg::Stats(reply) => {
                let _ = reply.send(Stats {
                    queued: self.queue.len(),
                    running: self.running.values().sum(),
                });
            }
            Msg::Cancel { ticket } => {
                if let Some((tenant, fq, _)) = self.queued.remove(&ticket)
                    && let Some(p) = self.queue.remove(&tenant, fq)
                {
                    let now = (self.clock)();
                    self.limiter
                        .refund_tokens(&tenant, &p.limits, now, p.reserve as i64);
                }
            }
            Msg::Loads(reply) => {
                self.apply_charges();
                let _ = reply.send(self.loads());
            }
            Msg::SetFifo(fifo) => self.queue.set_fifo(fifo),
            Msg::SetAdmission(a) => self.admission = a,
            Msg::Remote { tenant, cost } => self.queue.charge_cost(&tenant, cost),
            Msg::Charges => self.apply_charges(),
            Msg::Finish {
                tenant,
                limits,
                refund,
            } => {
                if let Some(n) = self.running.get_mut(&tenant) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.running.remove(&tenant);
                    }
                }
                let now = (self.clock)();
                self.limiter.refund_tokens(&tenant, &limits, now, refund);
            }
        }
        frees
    }

    /// Fails queued requests whose model lost every worker; forgets idle
    /// tenants so the maps do not grow with tenants long gone.
    fn housekeeping(&mut self) {
        let pool = self.pool.clone();
        let dead = self.queue.remove_where(|_, p| !pool.serves(&p.target));
        let now = (self.clock)();
        for (tenant, p) in dead {
            self.queued.remove(&p.ticket);
            self.limiter
                .refund_tokens(&tenant, &p.limits, now, p.reserve as i64);
            let _ = p.reply.send(Err(ApiError::Unavailable(
                "the workers serving this model left while the request was queued".into(),
            )));
        }
        if self.queue.is_empty() {
            let running = &self.running;
            self.queue.forget_idle(|t| running.contains_key(t));
            self.weights.retain(|t, _| running.contains_key(t));
        }
    }

    /// Applies the token charges the meters left in the ledger.
    fn apply_charges(&mut self) {
        for (tenant, (input, output)) in self.ledger.take() {
            let cost = input as f64 * INPUT_COST + output as f64 * OUTPUT_COST;
            let served = self.served.entry(tenant.clone()).or_default();
            served.0 += cost;
            self.queue.charge_cost(&tenant, cost);
        }
    }

    fn dispatch(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        // The queue's order must include every token charged so far.
        self.apply_charges();
        // The FIFO baseline keeps no shares: arrival order only.
        let fifo = self.queue.is_fifo();
        // Built once per call (it walks the queue), then kept current.
        let mut view = if fifo {
            SlotView::default()
        } else {
            self.slot_view()
        };
        loop {
            let pool = self.pool.clone();
            let may_take = |tenant: &str, target: &Target| {
                let (free, total) = pool.slots(target);
                if fifo {
                    return free > 0;
                }
                view.may_take(tenant, &target.model, free, total)
            };
            let Some((tenant, _, p)) = self.queue.pop_eligible(|t, p| may_take(t, &p.target))
            else {
                return;
            };
            self.queued.remove(&p.ticket);
            let lease = match pool.try_acquire(&p.target) {
                Some(l) if !p.reply.is_closed() => l,
                other => {
                    // Its caller left, or the slot vanished: nothing ran.
                    drop(other);
                    let now = (self.clock)();
                    self.limiter
                        .refund_tokens(&tenant, &p.limits, now, p.reserve as i64);
                    let _ = p.reply.send(Err(ApiError::Unavailable(
                        "no worker slot is free for this model right now".into(),
                    )));
                    continue;
                }
            };
            *self.running.entry(tenant.clone()).or_default() += 1;
            self.served.entry(tenant.clone()).or_default().1 += 1;
            if let Some(v) = view.tenants.get_mut(&tenant) {
                v.running += 1;
                v.queued = v.queued.saturating_sub(1);
            }
            let meter = Meter {
                tx: self.tx.clone(),
                ledger: self.ledger.clone(),
                tenant,
                limits: p.limits,
                reserved: p.reserve,
                prompt: 0,
                output: 0,
            };
            // If the caller left just now, dropping the grant ends it.
            let _ = p.reply.send(Ok(Grant {
                lease,
                meter,
                rate: RateState::default(),
            }));
        }
    }
}

#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;
