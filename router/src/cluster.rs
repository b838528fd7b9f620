//! What router replicas share with each other (pure: no I/O, clocks are
//! arguments). The NATS side is in `peers`.
//!
//! Every replica writes a `RouterHeartbeat` four times a second
//! (`ROUTER_HEARTBEAT_MS`; slot shares across replicas are only as fresh as
//! the heartbeats: at once a second, 2:1 weights over four replicas
//! delivered 1.81-1.87, at 250 ms 1.91) into the `bulkhead_routers` KV
//! bucket and watches everyone else's. From them:
//!
//! - **Limits**: a replica counts the live replicas (itself included: any
//!   heartbeat received within `ROUTER_STALE_AFTER_MS`) and enforces
//!   `limit / replicas` of each tenant limit ([`crate::limits::Limits::share`]).
//!   Behind a load balancer that spreads a tenant's requests evenly this
//!   delivers the configured limit in total; behind a skewed one a tenant
//!   gets less than its limit, never more (fail safe). While NATS is
//!   unreachable no heartbeat arrives, the count falls back to 1, and each
//!   replica enforces the full limit — but with `--audit-mode reject` nothing
//!   is served then anyway.
//! - **Fair queuing**: each heartbeat carries, per tenant, the cumulative
//!   weighted-service cost the replica has dispatched. A replica charges the
//!   growth of every peer's figure to its own fair-queue counter for that
//!   tenant, so its counters measure service delivered by the whole cluster
//!   and a tenant that is served by another replica is not served again here
//!   ahead of others (per-router fair queuing alone delivers 1:1 whatever
//!   the weights when the load balancer is skewed).
//! - **Slot shares**: each heartbeat also carries, per tenant, its running
//!   and queued requests, weight and queued models; `slots` uses the sum
//!   over replicas so that a tenant over its weighted share of the worker
//!   slots waits while another tenant below its share waits anywhere.
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use bulkhead_proto::control::{RouterHeartbeat, TenantLoad};

use crate::slots::{SlotView, TenantSlots};
use bulkhead_proto::names::{ROUTER_HEARTBEAT_MS, ROUTER_STALE_AFTER_MS};

/// Most peers counted: limits are divided by the live replica count, so a
/// flood of fake heartbeats (a stolen router certificate) could otherwise
/// shrink every tenant's limit towards zero.
pub const MAX_PEERS: usize = 63;
/// Most weighted service a peer may claim per millisecond (per tenant):
/// about a million input tokens a second, more than one replica routes; a
/// larger claim is clamped so a peer cannot push a tenant's fair-queue
/// counter out of reach.
pub const MAX_SERVICE_PER_MS: f64 = 1_000.0;
/// Most running or queued requests a peer may claim for one tenant.
pub const MAX_CLAIMED_REQUESTS: u32 = 65_536;
/// Most tenants (and queued models per tenant) taken from one heartbeat.
pub const MAX_CLAIMED_TENANTS: usize = 10_000;
const MAX_CLAIMED_MODELS: usize = 16;

/// The live replica count, written by the peer watch, read per request.
#[derive(Debug)]
pub struct ClusterView {
    replicas: AtomicU32,
    /// The live peers' tenants (not this replica's own).
    remote: Mutex<SlotView>,
}

impl Default for ClusterView {
    fn default() -> Self {
        Self {
            replicas: AtomicU32::new(1),
            remote: Mutex::default(),
        }
    }
}

impl ClusterView {
    /// Live router replicas, this one included (at least 1).
    pub fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed).max(1)
    }

    pub fn set_replicas(&self, n: u32) {
        self.replicas.store(n.max(1), Ordering::Relaxed);
    }

    /// The live peers' tenants, summed.
    pub fn remote_slots(&self) -> SlotView {
        self.remote
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_remote_slots(&self, v: SlotView) {
        *self.remote.lock().unwrap_or_else(|e| e.into_inner()) = v;
    }
}

#[derive(Debug)]
struct Peer {
    /// Local time (ms) the latest heartbeat arrived.
    received_ms: i64,
    /// Cumulative service per tenant in that heartbeat.
    service: HashMap<String, f64>,
    /// Its tenants' loads in that heartbeat.
    loads: Vec<TenantLoad>,
}

/// Other replicas as seen through their heartbeats.
#[derive(Debug)]
pub struct Peers {
    me: String,
    peers: HashMap<String, Peer>,
}

impl Peers {
    pub fn new(me: impl Into<String>) -> Self {
        Self {
            me: me.into(),
            peers: HashMap::new(),
        }
    }

    /// Takes in a heartbeat received at local time `now_ms`. Returns, per
    /// tenant, the service the sender dispatched since its previous
    /// heartbeat. The first heartbeat from a replica (or one whose figure
    /// went down: it restarted) only sets the baseline. Heartbeats that
    /// were already stale when sent (an old value replayed when the watch
    /// starts) are ignored.
    pub fn apply(&mut self, hb: &RouterHeartbeat, now_ms: i64) -> Vec<(String, f64)> {
        if hb.router_id == self.me || now_ms - hb.sent_unix_ms > ROUTER_STALE_AFTER_MS {
            return vec![];
        }
        if !self.peers.contains_key(&hb.router_id) && self.peers.len() >= MAX_PEERS {
            tracing::warn!(router = %hb.router_id, max = MAX_PEERS, "heartbeat of one router too many ignored");
            return vec![];
        }
        let tenants = &hb.tenants[..hb.tenants.len().min(MAX_CLAIMED_TENANTS)];
        let service: HashMap<String, f64> = tenants
            .iter()
            .filter(|t| t.service.is_finite() && t.service >= 0.0)
            .map(|t| (t.tenant_id.clone(), t.service))
            .collect();
        let mut deltas = vec![];
        if let Some(prev) = self.peers.get(&hb.router_id) {
            let elapsed = (now_ms - prev.received_ms)
                .clamp(ROUTER_HEARTBEAT_MS as i64, ROUTER_STALE_AFTER_MS);
            let cap = MAX_SERVICE_PER_MS * elapsed as f64;
            for (tenant, now) in &service {
                let before = prev.service.get(tenant).copied().unwrap_or(0.0);
                if *now > before {
                    deltas.push((tenant.clone(), (now - before).min(cap)));
                }
            }
        }
        let loads = tenants
            .iter()
            .map(|l| TenantLoad {
                running: l.running.min(MAX_CLAIMED_REQUESTS),
                queued: l.queued.min(MAX_CLAIMED_REQUESTS),
                queued_models: l
                    .queued_models
                    .iter()
                    .take(MAX_CLAIMED_MODELS)
                    .cloned()
                    .collect(),
                ..l.clone()
            })
            .collect();
        self.peers.insert(
            hb.router_id.clone(),
            Peer {
                received_ms: now_ms,
                service,
                loads,
            },
        );
        deltas
    }

    /// The live peers' tenants, summed (see `slots`).
    pub fn remote_slots(&self, now_ms: i64) -> SlotView {
        let mut v = SlotView::default();
        for p in self
            .peers
            .values()
            .filter(|p| now_ms - p.received_ms <= ROUTER_STALE_AFTER_MS)
        {
            for l in &p.loads {
                let e: &mut TenantSlots = v.tenants.entry(l.tenant_id.clone()).or_default();
                e.running += l.running;
                e.queued += l.queued;
                e.weight = e.weight.max(l.weight);
                e.queued_models.extend(l.queued_models.iter().cloned());
            }
        }
        v
    }

    /// A replica said goodbye (its key was deleted).
    pub fn remove(&mut self, router_id: &str) {
        self.peers.remove(router_id);
    }

    /// Live replicas at local time `now_ms`, this one included; forgets
    /// replicas silent for much longer than the staleness bound.
    pub fn live(&mut self, now_ms: i64) -> u32 {
        self.peers
            .retain(|_, p| now_ms - p.received_ms <= 10 * ROUTER_STALE_AFTER_MS);
        1 + self
            .peers
            .values()
            .filter(|p| now_ms - p.received_ms <= ROUTER_STALE_AFTER_MS)
            .count() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_proto::control::TenantLoad;

    fn hb(id: &str, sent: i64, service: &[(&str, f64)]) -> RouterHeartbeat {
        RouterHeartbeat {
            router_id: id.into(),
            sent_unix_ms: sent,
            tenants: service
                .iter()
                .map(|(t, s)| TenantLoad {
                    tenant_id: t.to_string(),
                    service: *s,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn counts_live_replicas_including_itself() {
        let mut p = Peers::new("r1");
        assert_eq!(p.live(0), 1);
        p.apply(&hb("r2", 1_000, &[]), 1_000);
        p.apply(&hb("r3", 1_000, &[]), 1_000);
        // Its own heartbeat does not count twice.
        p.apply(&hb("r1", 1_000, &[]), 1_000);
        assert_eq!(p.live(1_500), 3);
        // r3 goes silent; r2 keeps beating.
        p.apply(&hb("r2", 5_000, &[]), 5_000);
        assert_eq!(p.live(1_000 + ROUTER_STALE_AFTER_MS + 1), 2);
        p.remove("r2");
        assert_eq!(p.live(6_100), 1);
    }

    #[test]
    fn sums_the_live_peers_tenant_loads() {
        let mut p = Peers::new("r1");
        let load = |t: &str, running, queued, model: &str| TenantLoad {
            tenant_id: t.into(),
            running,
            queued,
            weight: 2,
            queued_models: vec![model.into()],
            ..Default::default()
        };
        let mut a = hb("r2", 1_000, &[]);
        a.tenants = vec![load("x", 3, 1, "m")];
        let mut b = hb("r3", 1_000, &[]);
        b.tenants = vec![load("x", 2, 0, "n")];
        p.apply(&a, 1_000);
        p.apply(&b, 1_000);
        let v = p.remote_slots(1_500);
        let x = &v.tenants["x"];
        assert_eq!((x.running, x.queued, x.weight), (5, 1, 2));
        assert!(x.queued_models.contains("m") && x.queued_models.contains("n"));
        // Stale peers count for nothing.
        assert!(
            p.remote_slots(1_000 + ROUTER_STALE_AFTER_MS + 1)
                .tenants
                .is_empty()
        );
    }

    #[test]
    fn stale_replayed_heartbeats_are_ignored() {
        let mut p = Peers::new("r1");
        p.apply(&hb("dead", 0, &[("a", 5.0)]), 60_000);
        assert_eq!(p.live(60_000), 1);
    }

    #[test]
    fn charges_only_growth_since_the_previous_heartbeat() {
        let mut p = Peers::new("r1");
        // First sight: a baseline, not a charge for the peer's whole past.
        assert!(p.apply(&hb("r2", 0, &[("a", 100.0)]), 0).is_empty());
        let d = p.apply(&hb("r2", 1_000, &[("a", 130.0), ("b", 4.0)]), 1_000);
        let mut d: Vec<_> = d.into_iter().collect();
        d.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(d, vec![("a".to_string(), 30.0), ("b".to_string(), 4.0)]);
        // A restarted peer (figure went down) resets the baseline.
        assert!(p.apply(&hb("r2", 2_000, &[("a", 3.0)]), 2_000).is_empty());
        // Garbage figures are ignored.
        let d = p.apply(&hb("r2", 3_000, &[("a", f64::NAN), ("b", -1.0)]), 3_000);
        assert!(d.is_empty());
    }

    #[test]
    fn a_flood_of_fake_routers_cannot_divide_limits_without_bound() {
        let mut p = Peers::new("r0");
        for i in 0..1_000 {
            p.apply(&hb(&format!("fake-{i}"), 1_000, &[]), 1_000);
        }
        assert_eq!(p.live(1_000), 1 + MAX_PEERS as u32);
    }

    #[test]
    fn a_huge_service_claim_is_clamped_to_a_plausible_rate() {
        let mut p = Peers::new("r0");
        p.apply(&hb("r1", 0, &[("a", 0.0)]), 0);
        let d = p.apply(&hb("r1", 1_000, &[("a", 1e18)]), 1_000);
        assert_eq!(d, vec![("a".to_string(), MAX_SERVICE_PER_MS * 1_000.0)]);
        // An honest figure passes unchanged.
        let d = p.apply(&hb("r1", 2_000, &[("a", 1e18 + 5_000.0)]), 2_000);
        assert_eq!(d.len(), 1);
        assert!((d[0].1 - 5_000.0).abs() < 1e3, "{d:?}");
    }

    #[test]
    fn claimed_loads_are_bounded() {
        let mut p = Peers::new("r0");
        let mut h = hb("r1", 1_000, &[("a", 1.0)]);
        h.tenants[0].running = u32::MAX;
        h.tenants[0].queued = u32::MAX;
        h.tenants[0].queued_models = (0..1_000).map(|i| format!("m{i}")).collect();
        p.apply(&h, 1_000);
        let v = p.remote_slots(1_000);
        let a = &v.tenants["a"];
        assert_eq!(
            (a.running, a.queued),
            (MAX_CLAIMED_REQUESTS, MAX_CLAIMED_REQUESTS)
        );
        assert_eq!(a.queued_models.len(), MAX_CLAIMED_MODELS);
    }
}
