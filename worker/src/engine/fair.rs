//! Weighted fair admission (pure: no I/O, no clock): the order in which the
//! requests waiting at this worker are admitted when sequence slots free.
//!
//! Routers keep their own fair queues, but each sees the worker's free
//! slots only through its own leases and a periodic poll, so several
//! replicas together can send the worker more than it has slots for; the
//! worker, the one place that sees every tenant's requests, then decides.
//! It keeps per tenant a virtual counter of weighted service received here
//! (tokens processed, plus one per token generated, divided by the tenant's
//! weight as its router sent it) and admits the waiting request whose
//! tenant's counter is smallest (ties: the oldest). A tenant that had
//! nothing running or waiting is lifted to the smallest counter among the
//! active tenants when its request arrives, so idle time is not banked —
//! the Virtual Token Counter scheme the routers use, at the bottleneck.
use std::collections::HashMap;

use crate::kv::TenantId;

#[derive(Debug, Default)]
pub(super) struct FairAdmission {
    counters: HashMap<TenantId, f64>,
}

impl FairAdmission {
    /// `tenant`'s request arrived; `active` are the tenants with requests
    /// running or waiting here (before this one).
    pub(super) fn arrive(&mut self, tenant: &TenantId, active: &[&TenantId]) {
        if active.contains(&tenant) {
            return;
        }
        let floor = active
            .iter()
            .map(|t| self.counter(t))
            .fold(f64::INFINITY, f64::min);
        let c = self.counters.entry(tenant.clone()).or_insert(0.0);
        if floor.is_finite() && *c < floor {
            *c = floor;
        }
    }

    /// `tenant` (of `weight`, 0 read as 1) received `cost` of service.
    pub(super) fn charge(&mut self, tenant: &TenantId, weight: u32, cost: f64) {
        *self.counters.entry(tenant.clone()).or_insert(0.0) += cost / f64::from(weight.max(1));
    }

    fn counter(&self, tenant: &TenantId) -> f64 {
        self.counters.get(tenant).copied().unwrap_or(0.0)
    }

    /// The index (into `waiting`, in arrival order) to try next, skipping
    /// `tried`: smallest counter, then oldest.
    pub(super) fn next(&self, waiting: &[&TenantId], tried: &[bool]) -> Option<usize> {
        (0..waiting.len()).filter(|&i| !tried[i]).min_by(|&a, &b| {
            self.counter(waiting[a])
                .total_cmp(&self.counter(waiting[b]))
                .then(a.cmp(&b))
        })
    }

    /// Forgets every counter: called when nothing runs or waits here (so
    /// the map does not grow with tenants long gone; a later arrival is
    /// compared only with tenants active then).
    pub(super) fn forget_all(&mut self) {
        self.counters.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> TenantId {
        TenantId::from(s)
    }

    #[test]
    fn the_tenant_behind_goes_first_and_idle_time_is_not_banked() {
        let (a, b) = (t("a"), t("b"));
        let mut f = FairAdmission::default();
        f.arrive(&a, &[]);
        f.charge(&a, 1, 100.0);
        // b arrives while a is active: lifted to a's counter, so a's older
        // request wins the tie...
        f.arrive(&b, &[&a]);
        assert_eq!(f.next(&[&a, &b], &[false, false]), Some(0));
        // ...and once a has been served a little more, b goes first.
        f.charge(&a, 1, 1.0);
        assert_eq!(f.next(&[&a, &b], &[false, false]), Some(1));
        assert_eq!(f.next(&[&a, &b], &[false, true]), Some(0));
        assert_eq!(f.next(&[&a, &b], &[true, true]), None);
        // Weights divide the charge.
        let mut g = FairAdmission::default();
        g.charge(&a, 2, 100.0);
        g.charge(&b, 1, 60.0);
        assert_eq!(g.next(&[&b, &a], &[false, false]), Some(1));
    }

    proptest! {
        /// Two tenants always waiting, one slot: each admission serves
        /// `cost`; the service each receives stays within one request of
        /// its weighted share.
        #[test]
        fn weighted_shares_within_one_request(wa in 1u32..5, wb in 1u32..5, n in 50usize..400) {
            let (a, b) = (t("a"), t("b"));
            let mut f = FairAdmission::default();
            f.arrive(&a, &[]);
            f.arrive(&b, &[&a]);
            let cost = 10.0;
            let mut got = [0.0f64; 2];
            for _ in 0..n {
                let i = f.next(&[&a, &b], &[false, false]).unwrap();
                let (tenant, w) = if i == 0 { (&a, wa) } else { (&b, wb) };
                f.charge(tenant, w, cost);
                got[i] += cost;
            }
            let (na, nb) = (got[0] / f64::from(wa), got[1] / f64::from(wb));
            prop_assert!((na - nb).abs() <= cost, "{got:?} for weights {wa}:{wb}");
        }
    }
}
