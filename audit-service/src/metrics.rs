//! The audit-service's Prometheus metrics (`--metrics-listen`). Tenant
//! labels are bounded; beyond the bound, tenants report as `other`.
use std::time::Duration;

use bulkhead_telemetry::metrics::TenantLabels;
use bulkhead_telemetry::metrics::prometheus_client::metrics::counter::Counter;
use bulkhead_telemetry::metrics::prometheus_client::metrics::family::Family;
use bulkhead_telemetry::metrics::prometheus_client::metrics::histogram::{
    Histogram, exponential_buckets,
};
use bulkhead_telemetry::metrics::prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

pub struct AuditMetrics {
    tenants: TenantLabels,
    stored: Family<Labels, Counter>,
    duplicates: Counter,
    terminated: Counter,
    batch_seconds: Histogram,
}

impl AuditMetrics {
    pub fn new(registry: &mut Registry, max_tenants: usize) -> Self {
        let m = Self {
            tenants: TenantLabels::new(max_tenants),
            stored: Family::default(),
            duplicates: Counter::default(),
            terminated: Counter::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
        };
        registry.register(
            "bulkhead_audit_events_stored",
            "Audit events stored (encrypted, fsynced) per tenant",
            m.stored.clone(),
        );
        registry.register(
            "bulkhead_audit_duplicates",
            "Redelivered events recognised by request id and not stored again",
            m.duplicates.clone(),
        );
        registry.register(
            "bulkhead_audit_terminated",
            "Undecodable or spoofed messages refused (never stored)",
            m.terminated.clone(),
        );
        registry.register(
            "bulkhead_audit_batch_seconds",
            "Time to append and fsync one fetched batch",
            m.batch_seconds.clone(),
        );
        m
    }

    pub fn batch(
        &self,
        stored: &[(String, u64)],
        duplicates: u64,
        terminated: u64,
        took: Duration,
    ) {
        for (tenant, n) in stored {
            let l = vec![("tenant".to_string(), self.tenants.label(tenant))];
            self.stored.get_or_create(&l).inc_by(*n);
        }
        self.duplicates.inc_by(duplicates);
        self.terminated.inc_by(terminated);
        self.batch_seconds.observe(took.as_secs_f64());
    }
}

impl std::fmt::Debug for AuditMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditMetrics")
    }
}
