//! Weighted fair queuing over tenants (pure: no I/O, no clock).
//!
//! Each tenant has a FIFO queue and a virtual counter of weighted service:
//! `(input tokens × 1 + output tokens × 2) / weight`. The counter is charged
//! as a worker actually processes tokens ([`FairQueue::charge`]: the prompt
//! when the worker's `Started` arrives, each output token as it streams),
//! never from an estimate. Dispatch takes the head of the backlogged tenant
//! with the smallest counter (ties: the oldest head request). A tenant that
//! becomes backlogged after being idle (nothing queued and nothing running)
//! is lifted to the smallest counter among the backlogged tenants (or, when
//! none is, to the counter of the last dispatch), so idle time is never
//! banked. A tenant whose queue merely ran dry while its requests still
//! run is not idle (its counter is being charged) and is not lifted: with
//! requests ending in cohorts, as a batching worker ends them, a busy
//! tenant's queue empties for a client round trip after each cohort, and
//! lifting it then took a weight-2 tenant from 2.00 to 1.67 of a weight-1
//! tenant's service in `dispatch/sim_tests.rs`.
//!
//! This is the Virtual Token Counter scheme (Sheng et al., "Fairness in
//! Serving Large Language Models", OSDI 2024). With one sequence slot, two
//! continuously backlogged tenants' counters never differ by more than the
//! weighted cost of one request (≤ 2 × max(input cost, output cost)); with
//! `C` slots by at most `C` times that. Both are property-tested below.
use std::collections::{HashMap, VecDeque};

/// Cost of one prompt token.
pub const INPUT_COST: f64 = 1.0;
/// Cost of one generated token.
pub const OUTPUT_COST: f64 = 2.0;

/// Identifies a queued item, to remove it when its client goes away.
pub type Ticket = u64;

#[derive(Debug)]
struct TenantQueue<T> {
    counter: f64,
    weight: u32,
    queue: VecDeque<(Ticket, T)>,
}

impl<T> TenantQueue<T> {
    fn new(weight: u32) -> Self {
        Self {
            counter: 0.0,
            weight: weight.max(1),
            queue: VecDeque::new(),
        }
    }
}

/// Per-tenant queues dispatched in order of weighted service received.
#[derive(Debug)]
pub struct FairQueue<T> {
    tenants: HashMap<String, TenantQueue<T>>,
    /// Counter of the tenant dispatched last: where a tenant that becomes
    /// backlogged while nobody else is starts (monotone).
    floor: f64,
    next_ticket: Ticket,
    len: usize,
    /// Baseline for experiments: dispatch in arrival order, ignoring the
    /// counters (they are still kept).
    fifo: bool,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        Self {
            tenants: HashMap::new(),
            floor: 0.0,
            next_ticket: 0,
            len: 0,
            fifo: false,
        }
    }
}

impl<T> FairQueue<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// FIFO baseline (`--scheduler fifo`): oldest request first, whoever
    /// sent it. Only for comparing against fair queuing.
    pub fn set_fifo(&mut self, fifo: bool) {
        self.fifo = fifo;
    }

    pub fn is_fifo(&self) -> bool {
        self.fifo
    }

    /// Queued items, all tenants together.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Items `tenant` has queued.
    pub fn queued(&self, tenant: &str) -> usize {
        self.tenants.get(tenant).map_or(0, |t| t.queue.len())
    }

    /// The tenant's virtual counter (weighted service), if it is known.
    pub fn counter(&self, tenant: &str) -> Option<f64> {
        self.tenants.get(tenant).map(|t| t.counter)
    }

    /// Sets a tenant's weight (0 is treated as 1); applies to later charges.
    pub fn set_weight(&mut self, tenant: &str, weight: u32) {
        self.entry(tenant, weight).weight = weight.max(1);
    }

    fn entry(&mut self, tenant: &str, weight: u32) -> &mut TenantQueue<T> {
        if !self.tenants.contains_key(tenant) {
            self.tenants
                .insert(tenant.to_string(), TenantQueue::new(weight));
        }
        self.tenants.get_mut(tenant).expect("inserted above")
    }

    /// Smallest counter among backlogged tenants other than `except`.
    fn min_backlogged(&self, except: &str) -> Option<f64> {
        self.tenants
            .iter()
            .filter(|(id, t)| !t.queue.is_empty() && id.as_str() != except)
            .map(|(_, t)| t.counter)
            .min_by(f64::total_cmp)
    }

    /// Queues `item` for `tenant` (whose current weight is `weight`), which
    /// has nothing running: if it has nothing queued either it was idle,
    /// and is lifted.
    pub fn push(&mut self, tenant: &str, weight: u32, item: T) -> Ticket {
        self.push_with(tenant, weight, false, item)
    }

    /// [`push`](Self::push) for a tenant that may have requests `running`:
    /// a tenant being served is not idle, so it is never lifted.
    pub fn push_with(&mut self, tenant: &str, weight: u32, running: bool, item: T) -> Ticket {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let lift = if self.queued(tenant) == 0 && !running {
            Some(self.min_backlogged(tenant).unwrap_or(self.floor))
        } else {
            None
        };
        let t = self.entry(tenant, weight);
        t.weight = weight.max(1);
        if let Some(lift) = lift {
            // Newly backlogged: no credit for the time it was idle.
            t.counter = t.counter.max(lift);
        }
        t.queue.push_back((ticket, item));
        self.len += 1;
        ticket
    }

    /// Takes the head of the backlogged tenant with the smallest counter.
    pub fn pop(&mut self) -> Option<(String, Ticket, T)> {
        self.pop_eligible(|_, _| true)
    }

    /// Like [`pop`](Self::pop), among tenants whose head item `eligible`
    /// accepts (e.g. a worker that tenant may use has a free slot).
    pub fn pop_eligible(
        &mut self,
        mut eligible: impl FnMut(&str, &T) -> bool,
    ) -> Option<(String, Ticket, T)> {
        let mut best: Option<(&String, f64, Ticket)> = None;
        for (id, t) in &self.tenants {
            let Some((ticket, item)) = t.queue.front() else {
                continue;
            };
            let better = match best {
                None => true,
                Some((_, _, s)) if self.fifo => *ticket < s,
                Some((_, c, s)) => t.counter.total_cmp(&c).then(ticket.cmp(&s)).is_lt(),
            };
            if better && eligible(id, item) {
                best = Some((id, t.counter, *ticket));
            }
        }
        let id = best?.0.clone();
        let t = self.tenants.get_mut(&id)?;
        let (ticket, item) = t.queue.pop_front()?;
        self.floor = self.floor.max(t.counter);
        self.len -= 1;
        Some((id, ticket, item))
    }

    /// Removes a queued item (its client went away). `None` if it already left.
    pub fn remove(&mut self, tenant: &str, ticket: Ticket) -> Option<T> {
        let t = self.tenants.get_mut(tenant)?;
        let pos = t.queue.iter().position(|(k, _)| *k == ticket)?;
        let (_, item) = t.queue.remove(pos)?;
        self.len -= 1;
        Some(item)
    }

    /// Removes and returns every queued item `drop` selects (e.g. requests
    /// for a model no worker serves any more).
    pub fn remove_where(&mut self, mut drop: impl FnMut(&str, &T) -> bool) -> Vec<(String, T)> {
        let mut out = vec![];
        for (id, t) in &mut self.tenants {
            let (gone, kept): (VecDeque<_>, VecDeque<_>) =
                t.queue.drain(..).partition(|(_, item)| drop(id, item));
            t.queue = kept;
            out.extend(gone.into_iter().map(|(_, item)| (id.clone(), item)));
        }
        self.len -= out.len();
        out
    }

    /// Charges service actually processed for `tenant`.
    pub fn charge(&mut self, tenant: &str, input_tokens: u32, output_tokens: u32) {
        let Some(t) = self.tenants.get_mut(tenant) else {
            return;
        };
        let cost = f64::from(input_tokens) * INPUT_COST + f64::from(output_tokens) * OUTPUT_COST;
        t.counter += cost / f64::from(t.weight);
    }

    /// Charges service another router replica delivered to `tenant`
    /// (`cost` in input/output cost units, not yet divided by the weight).
    /// Ignored for a tenant not known here: when it becomes backlogged it
    /// is lifted to the smallest backlogged counter anyway.
    pub fn charge_cost(&mut self, tenant: &str, cost: f64) {
        if !cost.is_finite() || cost <= 0.0 {
            return;
        }
        if let Some(t) = self.tenants.get_mut(tenant) {
            t.counter += cost / f64::from(t.weight);
        }
    }

    /// Forgets tenants with nothing queued whose counter is at or below the
    /// floor: they would be lifted to at least that on their next request,
    /// except when other tenants are backlogged below the floor, so call
    /// this only when nothing is queued (or accept that small difference).
    pub fn forget_idle(&mut self, mut busy: impl FnMut(&str) -> bool) {
        let floor = self.floor;
        self.tenants
            .retain(|id, t| !t.queue.is_empty() || t.counter > floor || busy(id));
    }

    /// Tenants currently known (queued, or with a counter above the floor).
    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }
}

#[cfg(test)]
mod tests;
