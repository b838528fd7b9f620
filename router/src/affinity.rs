//! Tenant-scoped prefix affinity (pure: no I/O). A worker keeps a tenant's
//! recent prompt prefixes in its KV prefix cache; sending the tenant's next
//! request with the same prefix to that worker saves its prefill. The router
//! cannot see the worker's cache, so it remembers where it sent each
//! tenant's prefixes — as Dynamo's KV router does, but never across
//! tenants: the table is keyed by tenant, so one tenant's prompts never
//! influence where another tenant's requests go.
//!
//! Prefixes are cut into [`BLOCK_BYTES`]-byte blocks of the request text
//! (the router does not tokenize; a block is roughly one 16-token KV block)
//! and hashed as a chain seeded by the tenant id, so block `i` matching
//! means the whole prefix up to `i` matches. At most [`MAX_BLOCKS`] blocks
//! of a request are considered.
//!
//! The choice ([`pick`]) balances overlap against load: each candidate
//! costs the prefill blocks it would still have to compute plus
//! [`LOAD_COST`] per sequence it is already running; the cheapest wins (ties:
//! the longer overlap, then the most free slots). With no overlap anywhere this is plain least-loaded.
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use crate::validate::Input;

/// How a request's worker was chosen (the audit event's
/// `routing_decision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoutingDecision {
    /// It holds some of the tenant's prefix blocks.
    PrefixAffinity,
    /// No worker held any: the least loaded with a free slot.
    LeastLoaded,
}

impl RoutingDecision {
    /// As audit events record it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PrefixAffinity => "prefix-affinity",
            Self::LeastLoaded => "least-loaded",
        }
    }
}

/// Bytes of request text per prefix block.
pub const BLOCK_BYTES: usize = 64;
/// Blocks of a request considered (64 × 64 bytes = the first 4 KiB).
pub const MAX_BLOCKS: usize = 64;
/// A running sequence costs as much as this many prefill blocks.
pub const LOAD_COST: u64 = 4;
/// Prefix blocks remembered per tenant (oldest forgotten first).
pub const PER_TENANT_CAP: usize = 4096;

/// The chained block hashes of a request's text, seeded by its tenant.
pub fn prefix_keys(hasher: &impl BuildHasher, tenant: &str, input: &Input) -> Vec<u64> {
    let mut text = Vec::new();
    match input {
        Input::Prompt(p) => text.extend_from_slice(p.as_bytes()),
        Input::Chat(ms) => {
            for m in ms {
                text.extend_from_slice(m.role.as_bytes());
                text.push(0);
                text.extend_from_slice(m.content.as_bytes());
                text.push(0x1e);
                if text.len() >= BLOCK_BYTES * MAX_BLOCKS {
                    break;
                }
            }
        }
    }
    let mut prev = {
        let mut h = hasher.build_hasher();
        h.write(b"bulkhead-prefix-v1");
        h.write(tenant.as_bytes());
        h.finish()
    };
    text.chunks_exact(BLOCK_BYTES)
        .take(MAX_BLOCKS)
        .map(|chunk| {
            let mut h = hasher.build_hasher();
            h.write_u64(prev);
            h.write(chunk);
            prev = h.finish();
            prev
        })
        .collect()
}

#[derive(Debug, Default)]
struct TenantPrefixes {
    /// Block hash -> (worker index, last use).
    blocks: HashMap<u64, (usize, u64)>,
    clock: u64,
}

/// Where each tenant's prefixes were sent.
#[derive(Debug)]
pub struct AffinityTable {
    tenants: HashMap<String, TenantPrefixes>,
    cap: usize,
}

impl Default for AffinityTable {
    fn default() -> Self {
        Self::with_cap(PER_TENANT_CAP)
    }
}

impl AffinityTable {
    pub fn with_cap(cap: usize) -> Self {
        Self {
            tenants: HashMap::new(),
            cap: cap.max(1),
        }
    }

    /// For each worker, how many leading blocks of `keys` it was last sent
    /// by `tenant`.
    pub fn overlap(&self, tenant: &str, keys: &[u64]) -> HashMap<usize, usize> {
        let mut out = HashMap::new();
        let Some(t) = self.tenants.get(tenant) else {
            return out;
        };
        for (i, k) in keys.iter().enumerate() {
            match t.blocks.get(k) {
                Some((w, _)) => {
                    out.insert(*w, i + 1);
                }
                // Chained: nothing after a miss can be a longer match of
                // this request's prefix.
                None => break,
            }
        }
        out
    }

    /// Remembers that `tenant`'s `keys` went to `worker`.
    pub fn record(&mut self, tenant: &str, keys: &[u64], worker: usize) {
        if keys.is_empty() {
            return;
        }
        let cap = self.cap;
        let t = self.tenants.entry(tenant.to_string()).or_default();
        t.clock += 1;
        for k in keys {
            t.blocks.insert(*k, (worker, t.clock));
        }
        if t.blocks.len() > cap {
            // Forget the oldest quarter at once (amortised O(1) per insert).
            let mut ages: Vec<u64> = t.blocks.values().map(|(_, at)| *at).collect();
            let cut = t.blocks.len() - cap * 3 / 4;
            let (_, nth, _) = ages.select_nth_unstable(cut.saturating_sub(1));
            let nth = *nth;
            t.blocks.retain(|_, (_, at)| *at > nth);
        }
    }

    /// Forgets everything sent to `worker` (it restarted or left: its cache
    /// is gone).
    pub fn forget_worker(&mut self, worker: usize) {
        for t in self.tenants.values_mut() {
            t.blocks.retain(|_, (w, _)| *w != worker);
        }
    }

    /// Blocks remembered for `tenant`.
    pub fn len(&self, tenant: &str) -> usize {
        self.tenants.get(tenant).map_or(0, |t| t.blocks.len())
    }
}

/// A worker that could take the request now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub worker: usize,
    pub free_slots: i64,
    pub running: u64,
    /// Leading blocks of the request this worker likely has cached.
    pub overlap: usize,
}

/// The cheapest candidate with a free slot (see the module docs), and
/// whether it holds some of the request's prefix (it was chosen with that
/// overlap counted in).
pub fn pick(candidates: &[Candidate], blocks: usize) -> Option<(usize, bool)> {
    let cost = |c: &Candidate| (blocks.saturating_sub(c.overlap) as u64) + LOAD_COST * c.running;
    let best = candidates
        .iter()
        .filter(|c| c.free_slots > 0)
        .min_by(|a, b| {
            cost(a)
                .cmp(&cost(b))
                .then(b.overlap.cmp(&a.overlap))
                .then(b.free_slots.cmp(&a.free_slots))
        })?;
    Some((best.worker, best.overlap > 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_proto::common::ChatMessage;
    use std::hash::RandomState;

    fn prompt(s: &str) -> Input {
        Input::Prompt(s.to_string())
    }

    #[test]
    fn keys_are_chained_per_block_and_per_tenant() {
        let h = RandomState::new();
        let a = "x".repeat(BLOCK_BYTES * 3 + 10);
        let ka = prefix_keys(&h, "acme", &prompt(&a));
        assert_eq!(ka.len(), 3, "only full blocks");
        // Same first block, different second: only the first key agrees.
        let b = format!("{}{}", "x".repeat(BLOCK_BYTES), "y".repeat(BLOCK_BYTES * 2));
        let kb = prefix_keys(&h, "acme", &prompt(&b));
        assert_eq!(ka[0], kb[0]);
        assert_ne!(ka[1], kb[1]);
        // Another tenant's identical text shares no key.
        let other = prefix_keys(&h, "globex", &prompt(&a));
        assert!(other.iter().all(|k| !ka.contains(k)));
        // Long inputs are capped.
        let long = "z".repeat(BLOCK_BYTES * (MAX_BLOCKS + 10));
        assert_eq!(prefix_keys(&h, "acme", &prompt(&long)).len(), MAX_BLOCKS);
        // Chat: role boundaries are part of the text.
        let chat = |role: &str| {
            Input::Chat(vec![ChatMessage {
                role: role.into(),
                content: "c".repeat(BLOCK_BYTES * 2),
            }])
        };
        assert_ne!(
            prefix_keys(&h, "acme", &chat("user")),
            prefix_keys(&h, "acme", &chat("system"))
        );
    }

    #[test]
    fn overlap_is_the_longest_leading_match_and_tenant_scoped() {
        let h = RandomState::new();
        let mut t = AffinityTable::default();
        let long = "p".repeat(BLOCK_BYTES * 4);
        let keys = prefix_keys(&h, "acme", &prompt(&long));
        t.record("acme", &keys, 1);
        let shorter = prefix_keys(&h, "acme", &prompt(&long[..BLOCK_BYTES * 2]));
        assert_eq!(t.overlap("acme", &shorter), HashMap::from([(1, 2)]));
        assert_eq!(t.overlap("acme", &keys), HashMap::from([(1, 4)]));
        // Another tenant with the same text: nothing (its keys differ, and
        // even the same keys would be looked up in its own table).
        let g = prefix_keys(&h, "globex", &prompt(&long));
        assert!(t.overlap("globex", &g).is_empty());
        assert!(t.overlap("globex", &keys).is_empty());
        t.forget_worker(1);
        assert!(t.overlap("acme", &keys).is_empty());
    }

    #[test]
    fn the_table_is_bounded_per_tenant() {
        let mut t = AffinityTable::with_cap(100);
        for i in 0..1000u64 {
            t.record("acme", &[i], (i % 3) as usize);
            assert!(t.len("acme") <= 100);
        }
        // The newest are kept.
        assert_eq!(t.overlap("acme", &[999]).len(), 1);
        assert!(t.overlap("acme", &[0]).is_empty());
    }

    fn c(worker: usize, free: i64, running: u64, overlap: usize) -> Candidate {
        Candidate {
            worker,
            free_slots: free,
            running,
            overlap,
        }
    }

    #[test]
    fn overlap_is_balanced_against_load() {
        // No overlap: least loaded.
        assert_eq!(pick(&[c(0, 4, 4, 0), c(1, 6, 2, 0)], 8), Some((1, false)));
        // A long cached prefix wins over a slightly less loaded worker.
        assert_eq!(pick(&[c(0, 5, 3, 8), c(1, 6, 2, 0)], 8), Some((0, true)));
        // ... but not over a much less loaded one.
        assert_eq!(pick(&[c(0, 1, 7, 8), c(1, 6, 2, 0)], 8), Some((1, false)));
        // A tie goes to the worker holding the prefix.
        assert_eq!(pick(&[c(1, 6, 0, 0), c(0, 5, 1, 4)], 4), Some((0, true)));
        // A full worker is never picked, whatever it has cached.
        assert_eq!(pick(&[c(0, 0, 8, 8), c(1, 1, 7, 0)], 8), Some((1, false)));
        assert_eq!(pick(&[c(0, 0, 8, 8)], 8), None);
    }
}
