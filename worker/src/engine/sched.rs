//! Admission (with prefix-cache reuse) and preemption by recompute.
//!
//! When a scheduled sequence cannot get the blocks it needs, the engine
//! preempts instead of failing: the victim releases its blocks (its full,
//! registered blocks stay in its tenant's prefix cache) and goes back to the
//! front of the waiting queue with its generated tokens appended to its
//! prompt; on re-admission it reuses whatever of that is still cached and
//! recomputes the rest. Victim: the newest running sequence that is
//! - of the same tenant, when the tenant is at its burst maximum
//!   (another tenant is never preempted to serve a tenant past its burst);
//! - of the same tenant or of a tenant holding more than its guarantee,
//!   when the pool is out of blocks.
use super::*;
use crate::kv::KvError;

/// The order in which sequences waiting for prefill get the step's token
/// budget: tenants take turns — every tenant's oldest prefill first, then
/// every tenant's second, and so on (oldest first within a round) — so a
/// tenant with many long prompts in flight cannot fill every step's budget
/// while another tenant's prompt waits. `seqs` are (index, tenant) in
/// admission order.
pub(super) fn prefill_order(seqs: &[(usize, &str)]) -> Vec<usize> {
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut ranked: Vec<(usize, usize)> = seqs
        .iter()
        .map(|&(i, t)| {
            let r = seen.entry(t).or_default();
            *r += 1;
            (*r, i)
        })
        .collect();
    ranked.sort();
    ranked.into_iter().map(|(_, i)| i).collect()
}

/// A request waiting for admission.
pub(super) enum Pending {
    New(GenerateRequest),
    /// A preempted sequence: `tokens` = prompt + generated, nothing computed.
    Preempted(Box<Sequence>),
}

impl Pending {
    pub(super) fn req(&self) -> &GenerateRequest {
        match self {
            Pending::New(r) => r,
            Pending::Preempted(s) => &s.req,
        }
    }
    pub(super) fn cancel(self) {
        match self {
            Pending::New(r) => finished(&r, FinishReason::Cancelled, 0, None),
            Pending::Preempted(s) => finished(&s.req, FinishReason::Cancelled, s.generated, None),
        }
    }
}

impl Engine {
    /// Admits waiting requests while sequence slots, quotas and blocks allow
    /// (a request that does not fit now is skipped, not failed), in
    /// weighted-fair order across tenants (see `fair.rs`).
    pub(super) fn admit(&mut self) {
        // Clients that went away while waiting (they hold no blocks).
        self.waiting.retain(|p| !p.req().events.is_closed());
        let mut tried = vec![false; self.waiting.len()];
        while self.running.len() < self.cfg.max_seqs {
            let tenants: Vec<&TenantId> = self.waiting.iter().map(|p| &p.req().tenant).collect();
            let Some(i) = self.fair.next(&tenants, &tried) else {
                break;
            };
            if self.try_admit(i) {
                tried.remove(i);
            } else {
                tried[i] = true;
            }
        }
    }

    /// Admits `waiting[i]` (removing it) or leaves everything as it was.
    fn try_admit(&mut self, i: usize) -> bool {
        let bs = self.pool.block_size();
        let (tenant, hashes, need_tokens) = {
            let (req, tokens) = match &self.waiting[i] {
                Pending::New(r) => (r, &r.prompt),
                Pending::Preempted(s) => (&s.req, &s.tokens),
            };
            // No hashes, no prefix cache: nothing is reused, and no block is
            // registered, so each is freed (not cached) when the request ends.
            let hashes = if req.no_prefix_cache {
                vec![]
            } else {
                // The salt comes from the tenant id the authenticated router gave.
                let salt = self.cfg.prefix_secret.tenant_salt(&req.tenant);
                salt.block_hashes(tokens, bs)
            };
            (req.tenant.clone(), hashes, tokens.len())
        };
        // At least the last prompt token is computed (its logits are needed),
        // and shared blocks are never written: only blocks before it.
        let reusable = hashes.len().min((need_tokens - 1) / bs);
        let cached = self.pool.acquire_prefix(&tenant, &hashes[..reusable]);
        // Room for the prompt plus the first generated token.
        let need = self.pool.blocks_for(need_tokens + 1) - cached.len();
        let fresh = match self.pool.allocate(&tenant, need) {
            Ok(b) => b,
            Err(_) => {
                self.pool.free(&tenant, &cached);
                return false;
            }
        };
        let Some(p) = self.waiting.remove(i) else {
            return false;
        };
        let cached_tokens = cached.len() * bs;
        let mut blocks = cached;
        blocks.extend(fresh);
        self.admissions += 1;
        let mut seq = match p {
            Pending::New(r) => Box::new(Sequence {
                tokens: r.prompt.clone(),
                computed: 0,
                blocks: Vec::new(),
                hashes: Vec::new(),
                registered: 0,
                admitted: 0,
                preempted: false,
                sampler: Sampler::with_prompt(r.params.clone(), &r.prompt),
                detok: Detokenizer::new(r.stop.clone()),
                generated: 0,
                done: None,
                req: r,
            }),
            Pending::Preempted(s) => s,
        };
        let first = seq.admitted == 0;
        seq.computed = cached_tokens;
        seq.registered = cached_tokens / bs;
        seq.blocks = blocks;
        seq.hashes = hashes;
        seq.admitted = self.admissions;
        seq.preempted = false;
        if first {
            if let Some(m) = &self.cfg.metrics {
                m.admitted(&seq.req.tenant, seq.req.prompt.len(), cached_tokens);
            }
            seq.send(EngineEvent::Started {
                prompt_tokens: seq.req.prompt.len() as u32,
                cached_tokens: cached_tokens as u32,
            });
        }
        tracing::debug!(request_id = %seq.req.request_id, tenant = %seq.req.tenant,
            tokens = seq.tokens.len(), cached_tokens, resumed = !first, "admitted");
        self.running.push(*seq);
        true
    }

    /// Gives every planned sequence the blocks its chunk needs, preempting
    /// when the pool or the tenant's quota says no. Preempted sequences
    /// leave the plan.
    pub(super) fn reserve_blocks(&mut self, plan: &mut Vec<(usize, usize)>) {
        let mut k = 0;
        while k < plan.len() {
            let (i, n) = plan[k];
            let s = &self.running[i];
            let need = self
                .pool
                .blocks_for(s.computed + n)
                .saturating_sub(s.blocks.len());
            if need == 0 {
                k += 1;
                continue;
            }
            let tenant = s.req.tenant.clone();
            match self.pool.allocate(&tenant, need) {
                Ok(b) => {
                    self.running[i].blocks.extend(b);
                    k += 1;
                }
                Err(e) => {
                    let victim = self.pick_victim(i, &e);
                    self.preempt(victim);
                    if let Some(pos) = plan.iter().position(|&(j, _)| j == victim) {
                        plan.remove(pos);
                        if pos < k {
                            k -= 1;
                        }
                    }
                    // Retry the same entry (or the next, if it was the victim).
                }
            }
        }
    }

    /// The newest running sequence that may be preempted for `running[i]`.
    fn pick_victim(&self, i: usize, err: &KvError) -> usize {
        let tenant = &self.running[i].req.tenant;
        let g = self.pool.quota().guaranteed;
        let same_only = matches!(err, KvError::QuotaExceeded { .. });
        self.running
            .iter()
            .enumerate()
            .filter(|(j, s)| {
                (*j == i || (s.done.is_none() && !s.preempted && !s.blocks.is_empty()))
                    && (s.req.tenant == *tenant
                        || (!same_only && self.pool.used_by(&s.req.tenant) > g))
            })
            .max_by_key(|(_, s)| s.admitted)
            .map_or(i, |(j, _)| j)
    }

    /// Releases a sequence's blocks; it is requeued after this step.
    fn preempt(&mut self, i: usize) {
        self.preemptions += 1;
        let blocks = std::mem::take(&mut self.running[i].blocks);
        let (tenant, no_cache) = {
            let r = &self.running[i].req;
            (r.tenant.clone(), r.no_prefix_cache)
        };
        self.release(&tenant, no_cache, &blocks);
        let s = &mut self.running[i];
        s.computed = 0;
        s.registered = 0;
        s.preempted = true;
        tracing::debug!(request_id = %s.req.request_id, tenant = %s.req.tenant,
            tokens = s.tokens.len(), "preempted (will recompute)");
    }

    /// Moves preempted sequences to the front of the waiting queue.
    pub(super) fn requeue_preempted(&mut self) {
        let mut i = self.running.len();
        while i > 0 {
            i -= 1;
            if self.running[i].preempted && self.running[i].done.is_none() {
                let s = self.running.remove(i);
                self.waiting.push_front(Pending::Preempted(Box::new(s)));
            }
        }
    }
}

#[cfg(test)]
mod order_tests {
    use super::prefill_order;

    #[test]
    fn tenants_take_turns_for_the_prefill_budget() {
        // a's four prompts were admitted before b's one.
        let seqs = [(0, "a"), (1, "a"), (2, "a"), (3, "a"), (4, "b")];
        assert_eq!(prefill_order(&seqs), [0, 4, 1, 2, 3]);
        assert_eq!(prefill_order(&[(0, "a"), (1, "a")]), [0, 1]);
        assert!(prefill_order(&[]).is_empty());
    }
}
