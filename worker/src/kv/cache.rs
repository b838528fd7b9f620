//! Prefix-cache and sharing operations of [`KvPool`]: fork, lookup,
//! acquire, register, evict.
use super::{BlockHash, BlockId, KvError, KvPool, TenantId};

impl KvPool {
    /// Adds one reference to each block (read-only sharing of a prefix with
    /// a new sequence of the same tenant). All must be in use by `tenant`.
    pub fn fork(&mut self, tenant: &str, blocks: &[BlockId]) -> Result<(), KvError> {
        for &b in blocks {
            let ok = self
                .meta
                .get(b as usize)
                .is_some_and(|m| m.refs > 0 && m.owner.as_deref() == Some(tenant));
            if !ok {
                return Err(KvError::GuardViolation {
                    block: b,
                    tenant: tenant.to_string(),
                });
            }
        }
        for &b in blocks {
            self.meta[b as usize].refs += 1;
        }
        Ok(())
    }

    /// How many leading `hashes` are cached blocks of `tenant`.
    pub fn lookup_prefix(&self, tenant: &str, hashes: &[BlockHash]) -> usize {
        hashes
            .iter()
            .take_while(|h| {
                self.cache
                    .get(*h)
                    .is_some_and(|&b| self.meta[b as usize].owner.as_deref() == Some(tenant))
            })
            .count()
    }

    /// References the cached blocks of the longest cached prefix of
    /// `hashes` (owned by `tenant` only) and returns them.
    pub fn acquire_prefix(&mut self, tenant: &TenantId, hashes: &[BlockHash]) -> Vec<BlockId> {
        let n = self.lookup_prefix(tenant, hashes);
        let mut out = Vec::with_capacity(n);
        for h in &hashes[..n] {
            let Some(&b) = self.cache.get(h) else { break };
            let m = &mut self.meta[b as usize];
            m.refs += 1;
            if m.refs == 1 {
                let stamp = m.stamp;
                self.lru.remove(&stamp);
                self.with_tenant(tenant, |t| {
                    t.cached.remove(&stamp);
                    t.in_use += 1;
                });
            }
            out.push(b);
        }
        self.cache_hit_blocks += out.len() as u64;
        out
    }

    /// Registers a full, computed block of `tenant` under `hash`. False when
    /// the block is not in use by `tenant`, already registered, or the hash
    /// is already cached (another copy).
    pub fn register(&mut self, tenant: &str, block: BlockId, hash: BlockHash) -> bool {
        let Some(m) = self.meta.get_mut(block as usize) else {
            return false;
        };
        if m.refs == 0 || m.owner.as_deref() != Some(tenant) || m.hash.is_some() {
            return false;
        }
        if self.cache.contains_key(&hash) {
            return false;
        }
        m.hash = Some(hash);
        self.cache.insert(hash, block);
        true
    }

    /// The LRU clock: every block cached from now on gets a later stamp
    /// (see [`Self::evict_cached_up_to`]).
    pub fn lru_clock(&self) -> u64 {
        self.clock
    }

    /// Evicts every cached block whose LRU stamp is at most `stamp` (cached
    /// when [`Self::lru_clock`] read `stamp` or before) to the free list:
    /// how cached prefixes expire.
    pub fn evict_cached_up_to(&mut self, stamp: u64) -> usize {
        let mut done = 0;
        while let Some((&s, &b)) = self.lru.iter().next() {
            if s > stamp {
                break;
            }
            self.uncache(b);
            self.scrub_now(b);
            self.free.push(b);
            done += 1;
        }
        done
    }

    /// Evicts `tenant`'s cached blocks stamped up to `stamp` (its own
    /// prefix-cache TTL) and zeroes them; returns how many.
    pub fn evict_cached_of_up_to(&mut self, tenant: &str, stamp: u64) -> usize {
        let blocks: Vec<BlockId> = self
            .tenants
            .get(tenant)
            .map(|t| t.cached.range(..=stamp).map(|(_, &b)| b).collect())
            .unwrap_or_default();
        for &b in &blocks {
            self.uncache(b);
            self.scrub_now(b);
            self.free.push(b);
        }
        blocks.len()
    }

    /// Evicts up to `n` cached blocks (global LRU) to the free list.
    pub fn evict_cached(&mut self, n: usize) -> usize {
        let mut done = 0;
        while done < n {
            let Some((_, &b)) = self.lru.iter().next() else {
                break;
            };
            self.uncache(b);
            self.free.push(b);
            done += 1;
        }
        done
    }
}
