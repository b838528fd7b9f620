//! Weighted slot shares (pure: no I/O). The fair queue decides whose
//! request goes next; this decides whether a tenant may take a free worker
//! slot at all, across every router replica:
//!
//! - each active tenant (running or queued anywhere, from this replica's
//!   state and the peers' heartbeats) has a share of the pool's sequence
//!   slots in proportion to its weight;
//! - a tenant at or above its share may not take a slot while another
//!   tenant waits for this model below its share (so a replica that only
//!   sees one tenant does not hand that tenant every slot it frees — the
//!   failure of per-router fair queuing behind a skewed load balancer);
//! - the last [`slot_reserve`] free slots go only to tenants below their
//!   share, so a flood cannot hold every slot while others are idle-but-
//!   active (a newcomer's request then starts at once).
//! - shares are fractional and slots are not: the slot that would take a
//!   tenant past its share (say from 10 to 11 of a 10.67 share) goes to it
//!   only if no other tenant waiting below its share has received less
//!   weighted service (a lower fair-queue counter). The contested slot then
//!   alternates by service, so two tenants at 2:1 over 16 slots average
//!   10.67 and 5.33 slots, not whichever of 11/5 and 10/6 arrival order
//!   happens to produce.
//! - a contested slot between tenants that are not both in this replica's
//!   fair queue (one tenant's traffic enters one replica, another's other
//!   replicas: neither replica has both counters, and counters of different
//!   replicas are not comparable) is divided in time instead: the fractional
//!   parts of the active tenants' shares (they sum to the number of contested
//!   slots) are laid end to end, in tenant order, on a period of
//!   [`CONTESTED_PERIOD_MS`] of wall-clock time, and a tenant owns a
//!   contested slot while the period's phase falls in its part. Every
//!   replica computes the same owner from the same shares and clock without
//!   exchanging anything, so exactly one side takes the slot; over time each
//!   tenant holds it for its fraction (with A's traffic on one replica and
//!   B's on three, 2:1 weights delivered 1.90 when both sides took it).
//!
//! With one active tenant every rule lets it use every slot
//! (work-conserving). Peers' figures are up to a heartbeat old, and a
//! tenant's running count covers all its requests, not only this pool's.
use std::collections::{HashMap, HashSet};

/// Slots kept for tenants below their share (an eighth, at least one).
pub fn slot_reserve(total: i64) -> i64 {
    (total / 8).max(1)
}

/// The wall-clock period over which contested slots are divided.
pub const CONTESTED_PERIOD_MS: u64 = 1_000;

/// Where in [`CONTESTED_PERIOD_MS`] the Unix time `unix_ms` falls, in [0, 1).
pub fn phase_at(unix_ms: u64) -> f64 {
    (unix_ms % CONTESTED_PERIOD_MS) as f64 / CONTESTED_PERIOD_MS as f64
}

/// One tenant across the replicas.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TenantSlots {
    pub weight: u32,
    /// Requests running, all replicas together.
    pub running: u32,
    /// Requests queued, all replicas together.
    pub queued: u32,
    /// This replica's fair-queue counter for it (weighted service), if it
    /// has one: who gets a contested slot.
    pub counter: Option<f64>,
    /// Models it has requests queued for, anywhere.
    pub queued_models: HashSet<String>,
}

/// Every active tenant's slots.
#[derive(Clone, Debug, Default)]
pub struct SlotView {
    pub tenants: HashMap<String, TenantSlots>,
    /// Where in the contested-slot period the wall clock is ([`phase_at`]).
    pub phase: f64,
}

impl SlotView {
    fn share(&self, tenant: &str, total: i64) -> f64 {
        let active: f64 = self
            .tenants
            .values()
            .filter(|t| t.running > 0 || t.queued > 0)
            .map(|t| f64::from(t.weight.max(1)))
            .sum();
        let w = f64::from(self.tenants.get(tenant).map_or(1, |t| t.weight.max(1)));
        total as f64 * w / active.max(w)
    }

    fn running(&self, tenant: &str) -> f64 {
        f64::from(self.tenants.get(tenant).map_or(0, |t| t.running))
    }

    /// Whether the next slot would take `tenant` from below its share to
    /// past it.
    fn contested(&self, tenant: &str, total: i64) -> bool {
        let (running, share) = (self.running(tenant), self.share(tenant, total));
        running < share && running + 1.0 > share
    }

    /// Whether `tenant` owns a contested slot at this phase: its share's
    /// fractional part, laid after those of the active tenants before it
    /// (by name) on the unit circle, covers the phase.
    fn owns_contested(&self, tenant: &str, total: i64) -> bool {
        let mut active: Vec<&str> = self
            .tenants
            .iter()
            .filter(|(_, t)| t.running > 0 || t.queued > 0)
            .map(|(n, _)| n.as_str())
            .collect();
        active.sort_unstable();
        let mut start = 0.0;
        for name in active {
            let part = self.share(name, total).fract();
            if name == tenant {
                return (self.phase - start).rem_euclid(1.0) < part;
            }
            start += part;
        }
        false
    }

    /// Whether `tenant` may take one of `free` slots (of `total`) for
    /// `model` now.
    pub fn may_take(&self, tenant: &str, model: &str, free: i64, total: i64) -> bool {
        if free <= 0 {
            return false;
        }
        let below = |t: &str| self.running(t) < self.share(t, total);
        let mine = self.tenants.get(tenant).and_then(|t| t.counter);
        let contested = self.contested(tenant, total);
        // Decided once, and only for a contested slot.
        let mut i_own = None;
        // One pass over the others: is anyone waiting below its share, and
        // does this tenant yield the contested slot to one of those?
        let (mut contender, mut yields) = (false, false);
        for (u, s) in &self.tenants {
            if u != tenant && s.queued_models.contains(model) && below(u) {
                contender = true;
                if !contested || yields {
                    continue;
                }
                yields = match (s.counter, mine) {
                    // Both in this replica's queue: whoever was served least.
                    (Some(theirs), Some(m)) => theirs < m,
                    // Otherwise: to one that is further below its share
                    // (not contested itself), or by the phase to one that
                    // owns the slot now when this tenant does not.
                    _ => {
                        !self.contested(u, total)
                            || (!*i_own.get_or_insert_with(|| self.owns_contested(tenant, total))
                                && self.owns_contested(u, total))
                    }
                };
            }
        }
        if contender && !below(tenant) {
            return false;
        }
        if yields {
            return false;
        }
        free > slot_reserve(total) || below(tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(weight: u32, running: u32, queued_for: &[&str]) -> TenantSlots {
        TenantSlots {
            weight,
            running,
            counter: None,
            queued: queued_for.len() as u32,
            queued_models: queued_for.iter().map(|m| m.to_string()).collect(),
        }
    }

    fn view(ts: &[(&str, TenantSlots)]) -> SlotView {
        SlotView {
            tenants: ts.iter().map(|(n, s)| (n.to_string(), s.clone())).collect(),
            phase: 0.0,
        }
    }

    #[test]
    fn alone_a_tenant_may_use_every_slot() {
        let v = view(&[("a", t(1, 15, &["m"]))]);
        assert!(v.may_take("a", "m", 1, 16));
        assert!(!v.may_take("a", "m", 0, 16));
    }

    #[test]
    fn the_reserve_goes_to_tenants_below_their_share() {
        // a holds 14 of 16, b waits: the last two slots are b's.
        let v = view(&[("a", t(1, 14, &["m"])), ("b", t(1, 0, &["m"]))]);
        assert!(!v.may_take("a", "m", 2, 16));
        assert!(v.may_take("b", "m", 2, 16));
        // Plenty free and b not waiting (only running): a may take.
        let v = view(&[("a", t(1, 4, &["m"])), ("b", t(1, 2, &[]))]);
        assert!(v.may_take("a", "m", 10, 16));
    }

    #[test]
    fn the_slot_past_a_share_goes_to_whoever_was_served_least() {
        // 2:1 over 16: shares 10.67 and 5.33. At 10 and 5 with one slot
        // free, either would end past its share: the lower counter takes it.
        let with = |ca: f64, cb: f64| {
            let mut a = t(2, 10, &["m"]);
            a.counter = Some(ca);
            let mut b = t(1, 5, &["m"]);
            b.counter = Some(cb);
            view(&[("a", a), ("b", b)])
        };
        let v = with(100.0, 120.0);
        assert!(v.may_take("a", "m", 1, 16) && !v.may_take("b", "m", 1, 16));
        let v = with(130.0, 120.0);
        assert!(!v.may_take("a", "m", 1, 16) && v.may_take("b", "m", 1, 16));
        // Well below its share a tenant takes regardless of counters.
        let mut a = t(2, 4, &["m"]);
        a.counter = Some(500.0);
        let mut b = t(1, 2, &["m"]);
        b.counter = Some(1.0);
        let v = view(&[("a", a), ("b", b)]);
        assert!(v.may_take("a", "m", 10, 16));
        // Without counters (a tenant only a peer reports) the phase
        // decides: at 0 it is a's.
        let v = view(&[("a", t(2, 10, &["m"])), ("b", t(1, 5, &["m"]))]);
        assert!(v.may_take("a", "m", 1, 16) && !v.may_take("b", "m", 1, 16));
    }

    #[test]
    fn a_tenant_at_its_share_waits_while_another_is_below_it() {
        // Weights 2:1 over 15 slots: shares 10 and 5. b (seen by another
        // replica too) already runs 6: over its share while a waits below
        // its own, so b does not take even a plentiful free slot...
        let v = view(&[("a", t(2, 8, &["m"])), ("b", t(1, 6, &["m"]))]);
        assert!(!v.may_take("b", "m", 5, 15));
        assert!(v.may_take("a", "m", 5, 15));
        // ... unless a waits for another model only.
        let v = view(&[("a", t(2, 8, &["other"])), ("b", t(1, 6, &["m"]))]);
        assert!(v.may_take("b", "m", 5, 15));
    }

    #[test]
    fn without_both_counters_the_contested_slot_is_divided_by_the_phase() {
        // 2:1 over 16 (shares 10.67 and 5.33), each tenant in a different
        // replica's queue: a's part of the period is [0, 0.67), b's the rest.
        let at = |phase: f64, ca: Option<f64>, cb: Option<f64>| {
            let mut a = t(2, 10, &["m"]);
            a.counter = ca;
            let mut b = t(1, 5, &["m"]);
            b.counter = cb;
            let mut v = view(&[("a", a), ("b", b)]);
            v.phase = phase;
            (v.may_take("a", "m", 1, 16), v.may_take("b", "m", 1, 16))
        };
        // Exactly one takes it, whichever replica asks.
        assert_eq!(at(0.1, Some(1.0), None), (true, false));
        assert_eq!(at(0.1, None, Some(1.0)), (true, false));
        assert_eq!(at(0.8, Some(1.0), None), (false, true));
        assert_eq!(at(0.8, None, Some(1.0)), (false, true));
        // Over the period each owns it for its share's fraction.
        let n = 3000;
        let a_owns = (0..n)
            .filter(|i| at(*i as f64 / n as f64, None, None).0)
            .count();
        assert!(
            (a_owns as f64 / n as f64 - 2.0 / 3.0).abs() < 0.01,
            "{a_owns}"
        );
        // Both counters known: the counters decide, as before.
        assert_eq!(at(0.8, Some(1.0), Some(2.0)), (true, false));
        // Not contested for the other (well below its share): it gets the
        // slot whatever the phase.
        let mut a = t(2, 10, &["m"]);
        a.counter = Some(1.0);
        let mut v = view(&[("a", a), ("b", t(1, 2, &["m"]))]);
        v.phase = 0.1;
        assert!(!v.may_take("a", "m", 1, 16) && v.may_take("b", "m", 1, 16));
        // Three tenants 1:1:1 over 16 (5.33 each): the parts tile the
        // period, so one owner at any phase.
        for i in 0..30 {
            let mut v = view(&[
                ("a", t(1, 5, &["m"])),
                ("b", t(1, 5, &["m"])),
                ("c", t(1, 5, &["m"])),
            ]);
            v.phase = i as f64 / 30.0;
            let takers = ["a", "b", "c"]
                .iter()
                .filter(|x| v.may_take(x, "m", 1, 16))
                .count();
            assert_eq!(takers, 1, "phase {}", v.phase);
        }
    }
}
