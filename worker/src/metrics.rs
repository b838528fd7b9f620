//! The worker's Prometheus metrics. The engine records into these as it
//! steps; `/metrics` renders them. Tenant labels are bounded
//! (`--metrics-max-tenants`); beyond the bound, tenants report as `other`.
use std::sync::Arc;
use std::time::Duration;

use bulkhead_telemetry::metrics::TenantLabels;
use bulkhead_telemetry::metrics::prometheus_client::metrics::counter::Counter;
use bulkhead_telemetry::metrics::prometheus_client::metrics::family::Family;
use bulkhead_telemetry::metrics::prometheus_client::metrics::gauge::Gauge;
use bulkhead_telemetry::metrics::prometheus_client::metrics::histogram::{
    Histogram, exponential_buckets,
};
use bulkhead_telemetry::metrics::prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

pub struct WorkerMetrics {
    tenants: TenantLabels,
    batch_size: Histogram,
    step_seconds: Histogram,
    kv_blocks_used: Family<Labels, Gauge>,
    kv_blocks_free: Gauge,
    kv_blocks_total: Gauge,
    prompt_tokens: Family<Labels, Counter>,
    cache_hit_tokens: Family<Labels, Counter>,
    generated_tokens: Family<Labels, Counter>,
    pub guard_violations: Gauge,
    pub preemptions: Gauge,
}

impl WorkerMetrics {
    /// Builds the families and registers them.
    pub fn new(registry: &mut Registry, max_tenants: usize) -> Arc<Self> {
        let m = Self {
            tenants: TenantLabels::new(max_tenants),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            step_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            kv_blocks_used: Family::default(),
            kv_blocks_free: Gauge::default(),
            kv_blocks_total: Gauge::default(),
            prompt_tokens: Family::default(),
            cache_hit_tokens: Family::default(),
            generated_tokens: Family::default(),
            guard_violations: Gauge::default(),
            preemptions: Gauge::default(),
        };
        let r = registry;
        r.register(
            "bulkhead_worker_batch_size",
            "Sequences per forward step",
            m.batch_size.clone(),
        );
        r.register(
            "bulkhead_worker_step_seconds",
            "Duration of one forward step",
            m.step_seconds.clone(),
        );
        r.register(
            "bulkhead_worker_kv_blocks_used",
            "KV blocks held per tenant (in use + cached)",
            m.kv_blocks_used.clone(),
        );
        r.register(
            "bulkhead_worker_kv_blocks_free",
            "KV blocks with no owner",
            m.kv_blocks_free.clone(),
        );
        r.register(
            "bulkhead_worker_kv_blocks_total",
            "KV blocks in the arena",
            m.kv_blocks_total.clone(),
        );
        r.register(
            "bulkhead_worker_prompt_tokens",
            "Prompt tokens admitted per tenant",
            m.prompt_tokens.clone(),
        );
        r.register(
            "bulkhead_worker_prefix_cache_hit_tokens",
            "Prompt tokens served from the tenant's prefix cache",
            m.cache_hit_tokens.clone(),
        );
        r.register(
            "bulkhead_worker_generated_tokens",
            "Tokens generated per tenant",
            m.generated_tokens.clone(),
        );
        r.register(
            "bulkhead_worker_guard_violations",
            "KV ownership guard violations (must stay 0)",
            m.guard_violations.clone(),
        );
        r.register(
            "bulkhead_worker_preemptions",
            "Sequences preempted for recompute",
            m.preemptions.clone(),
        );
        Arc::new(m)
    }

    fn labels(&self, tenant: &str) -> Labels {
        let id = bulkhead_proto::names::tenant_id_of_key(tenant);
        vec![("tenant".into(), self.tenants.label(id))]
    }

    pub fn step(&self, batch: usize, took: Duration) {
        self.batch_size.observe(batch as f64);
        self.step_seconds.observe(took.as_secs_f64());
    }

    pub fn kv(&self, tenant: &str, used: usize, free: usize, total: usize) {
        self.kv_blocks_used
            .get_or_create(&self.labels(tenant))
            .set(used as i64);
        self.kv_blocks_free.set(free as i64);
        self.kv_blocks_total.set(total as i64);
    }

    pub fn admitted(&self, tenant: &str, prompt: usize, cached: usize) {
        let l = self.labels(tenant);
        self.prompt_tokens.get_or_create(&l).inc_by(prompt as u64);
        self.cache_hit_tokens
            .get_or_create(&l)
            .inc_by(cached as u64);
    }

    pub fn generated(&self, tenant: &str) {
        self.generated_tokens
            .get_or_create(&self.labels(tenant))
            .inc();
    }
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerMetrics")
    }
}
