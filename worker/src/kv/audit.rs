//! [`KvPool::audit`]: a full consistency check of the pool's bookkeeping
//! (used by the property tests and the `kv_pool` bench; O(blocks)). Per-tenant
//! in-use counts are summed here; the property test checks them per tenant.
use super::{KvPool, Tenant};

impl KvPool {
    /// Checks every internal invariant: each block is exactly one of free,
    /// in use or cached; `free + in use + cached = total`; per-tenant
    /// counters, the LRU indexes, the prefix-cache map and the deficit sum
    /// agree with the blocks; no tenant holds more than its burst.
    pub fn audit(&self) -> Result<(), String> {
        let total = self.shape.num_blocks;
        let mut on_free = vec![false; total];
        for &b in &self.free {
            let i = b as usize;
            if i >= total || on_free[i] {
                return Err(format!("block {b} twice on the free list or out of range"));
            }
            on_free[i] = true;
        }
        let (mut in_use, mut cached) = (0, 0);
        for (i, m) in self.meta.iter().enumerate() {
            match (&m.owner, on_free[i]) {
                (None, true) => {
                    if m.refs != 0 || m.hash.is_some() {
                        return Err(format!("free block {i} has refs or a hash"));
                    }
                }
                (None, false) => return Err(format!("block {i} leaked (no owner, not free)")),
                (Some(_), true) => return Err(format!("owned block {i} is on the free list")),
                (Some(_), false) => {
                    if m.refs > 0 {
                        in_use += 1;
                    } else {
                        let Some(h) = m.hash else {
                            return Err(format!(
                                "block {i} leaked (owned, unreferenced, uncached)"
                            ));
                        };
                        if self.lru.get(&m.stamp) != Some(&(i as u32)) {
                            return Err(format!("cached block {i} missing from the LRU"));
                        }
                        if self.cache.get(&h) != Some(&(i as u32)) {
                            return Err(format!("cached block {i} missing from the cache map"));
                        }
                        cached += 1;
                    }
                }
            }
        }
        if self.free.len() + in_use + cached != total || self.lru.len() != cached {
            return Err(format!(
                "free {} + in use {in_use} + cached {cached} != total {total} (lru {})",
                self.free.len(),
                self.lru.len()
            ));
        }
        for (&h, &b) in &self.cache {
            if self.meta.get(b as usize).and_then(|m| m.hash) != Some(h) {
                return Err(format!("cache map entry for block {b} is stale"));
            }
        }
        let mut deficit = 0;
        let (mut sum_in_use, mut sum_cached) = (0, 0);
        for (t, st) in &self.tenants {
            sum_in_use += st.in_use;
            sum_cached += st.cached.len();
            if st.held() == 0 {
                return Err(format!("tenant {t} kept with no blocks"));
            }
            if st.held() > self.quota.burst {
                return Err(format!(
                    "tenant {t} holds {} > burst {}",
                    st.held(),
                    self.quota.burst
                ));
            }
            for (&s, &b) in &st.cached {
                let m = &self.meta[b as usize];
                if m.stamp != s || m.refs != 0 || m.owner.as_ref() != Some(t) {
                    return Err(format!("tenant {t}: LRU entry of block {b} is stale"));
                }
            }
            deficit += Tenant::deficit(st, self.quota.guaranteed);
        }
        if sum_in_use != in_use || sum_cached != cached {
            return Err(format!(
                "tenant counters {sum_in_use}/{sum_cached} != blocks {in_use}/{cached}"
            ));
        }
        if deficit != self.total_deficit {
            return Err(format!("deficit sum {} != {deficit}", self.total_deficit));
        }
        Ok(())
    }
}
