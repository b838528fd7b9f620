//! Prefix-cache expiry (`--prefix-cache-ttl-s`): a cached block nobody has
//! used for the TTL is evicted, so a tenant's prompt does not stay in a
//! worker's memory as a reusable prefix indefinitely.
//!
//! The pool stamps cached blocks with its LRU clock, not with time (it is
//! pure logic). The engine writes down, every eighth of the TTL, what that
//! clock read; a mark older than the TTL says every block stamped up to
//! its reading has been unused for at least the TTL, and those go. A block
//! is evicted between one TTL and nine eighths of it after its last use.
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::kv::KvPool;

/// The marks: when the pool's LRU clock read what.
#[derive(Debug, Default)]
pub(super) struct Expiry {
    marks: VecDeque<(Instant, u64)>,
}

/// The TTLs in force: the worker's (every tenant's cached blocks) and the
/// tenants' own (`Tenant.prefix_cache_ttl_s`, only theirs).
pub(super) struct Ttls<'a> {
    pub worker: Option<Duration>,
    pub tenants: &'a HashMap<String, Duration>,
}

impl Ttls<'_> {
    fn shortest(&self) -> Option<Duration> {
        self.worker
            .into_iter()
            .chain(self.tenants.values().copied())
            .min()
    }

    fn longest(&self) -> Option<Duration> {
        self.worker
            .into_iter()
            .chain(self.tenants.values().copied())
            .max()
    }

    /// How long the engine may sleep idle before the next mark or expiry
    /// (`None`: no TTL, sleep until a command arrives).
    pub(super) fn idle_wait(&self) -> Option<Duration> {
        self.shortest().map(every)
    }
}

fn every(ttl: Duration) -> Duration {
    (ttl / 8).max(Duration::from_millis(10))
}

impl Expiry {
    /// Marks the clock when due and evicts (zeroing) what has expired by
    /// `now` under each TTL; returns how many blocks went.
    pub(super) fn run(&mut self, pool: &mut KvPool, ttls: &Ttls<'_>, now: Instant) -> usize {
        let (Some(shortest), Some(longest)) = (ttls.shortest(), ttls.longest()) else {
            self.marks.clear();
            return 0;
        };
        if self
            .marks
            .back()
            .is_none_or(|(t, _)| now.saturating_duration_since(*t) >= every(shortest))
        {
            self.marks.push_back((now, pool.lru_clock()));
        }
        // The newest mark at least `ttl` old: what its clock read.
        let reading = |ttl: Duration| {
            self.marks
                .iter()
                .rev()
                .find(|(t, _)| now.saturating_duration_since(*t) >= ttl)
                .map(|&(_, clock)| clock)
        };
        let mut gone = ttls
            .worker
            .and_then(reading)
            .map_or(0, |c| pool.evict_cached_up_to(c));
        for (tenant, ttl) in ttls.tenants {
            if let Some(c) = reading(*ttl) {
                gone += pool.evict_cached_of_up_to(tenant, c);
            }
        }
        // Marks older than the longest TTL have done their work.
        while self
            .marks
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= longest)
        {
            self.marks.pop_front();
        }
        gone
    }
}
