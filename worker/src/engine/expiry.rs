//! Prefix-cache expiry (`--prefix-cache-ttl-s`): a cached block nobody has
//! used for the TTL is evicted, so a tenant's prompt does not stay in a
//! worker's memory as a reusable prefix indefinitely.
//!
//! The pool stamps cached blocks with its LRU clock, not with time (it is
//! pure logic). The engine writes down, every eighth of the TTL, what that
//! clock read; a mark older than the TTL says every block stamped up to
//! its reading has been unused for at least the TTL, and those go. A block
//! is evicted between one TTL and nine eighths of it after its last use.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::kv::KvPool;

/// The marks: when the pool's LRU clock read what.
#[derive(Debug, Default)]
pub(super) struct Expiry {
    marks: VecDeque<(Instant, u64)>,
}

impl Expiry {
    /// Marks the clock when due and evicts what has expired by `now`;
    /// returns how many blocks went.
    pub(super) fn run(&mut self, pool: &mut KvPool, ttl: Duration, now: Instant) -> usize {
        let every = (ttl / 8).max(Duration::from_millis(10));
        if self
            .marks
            .back()
            .is_none_or(|(t, _)| now.saturating_duration_since(*t) >= every)
        {
            self.marks.push_back((now, pool.lru_clock()));
        }
        let mut up_to = None;
        while let Some(&(t, clock)) = self.marks.front() {
            if now.saturating_duration_since(t) < ttl {
                break;
            }
            up_to = Some(clock);
            self.marks.pop_front();
        }
        up_to.map_or(0, |c| pool.evict_cached_up_to(c))
    }

    /// How long the engine may sleep idle before the next mark or expiry.
    pub(super) fn idle_wait(ttl: Duration) -> Duration {
        (ttl / 8).max(Duration::from_millis(10))
    }
}
