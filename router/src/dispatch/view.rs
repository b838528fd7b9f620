//! The dispatcher's state as others see it: the slot view its dispatch
//! decisions use (this replica's tenants plus its peers'), and the loads its
//! heartbeat reports.
use std::collections::HashSet;

use super::*;

impl<P: Pool> Actor<P> {
    /// Every tenant's slots: the peers' (from their heartbeats) plus this
    /// replica's running and queued requests.
    pub(super) fn slot_view(&self) -> SlotView {
        let mut view = self.cluster.remote_slots();
        for (t, n) in &self.running {
            view.tenants.entry(t.clone()).or_default().running += n;
        }
        for (t, _, model) in self.queued.values() {
            if !view.tenants.contains_key(t) {
                view.tenants.insert(t.clone(), Default::default());
            }
            let e = view.tenants.get_mut(t).expect("inserted above");
            e.queued += 1;
            if !e.queued_models.contains(model) {
                e.queued_models.insert(model.clone());
            }
        }
        // Counters only of tenants queued here: a tenant queued only on a
        // peer is judged by the phase on every replica (`slots`), not by a
        // stale counter here and the phase there.
        let here: HashSet<&String> = self.queued.values().map(|(t, _, _)| t).collect();
        for (t, e) in view.tenants.iter_mut() {
            if let Some(w) = self.weights.get(t) {
                e.weight = *w;
            }
            e.counter = if here.contains(t) {
                self.queue.counter(t)
            } else {
                None
            };
        }
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        view.phase = crate::slots::phase_at(unix_ms);
        view
    }

    /// Every tenant's load on this replica, for the heartbeat: service
    /// dispatched so far, requests, running and queued (with their models).
    pub(super) fn loads(&self) -> Vec<TenantLoad> {
        let mut loads: HashMap<String, TenantLoad> = HashMap::new();
        for (t, (service, requests)) in &self.served {
            let l = tenant_load(&mut loads, t);
            l.service = *service;
            l.requests = *requests;
        }
        for (t, n) in &self.running {
            tenant_load(&mut loads, t).running = *n;
        }
        for (t, _, model) in self.queued.values() {
            let l = tenant_load(&mut loads, t);
            l.queued += 1;
            if !l.queued_models.contains(model) {
                l.queued_models.push(model.clone());
            }
        }
        for (t, w) in &self.weights {
            if let Some(l) = loads.get_mut(t) {
                l.weight = *w;
            }
        }
        loads.into_values().collect()
    }
}

fn tenant_load<'a>(loads: &'a mut HashMap<String, TenantLoad>, t: &str) -> &'a mut TenantLoad {
    loads.entry(t.to_string()).or_insert_with(|| TenantLoad {
        tenant_id: t.to_string(),
        ..Default::default()
    })
}
