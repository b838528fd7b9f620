//! The router's Prometheus metrics, served at `/metrics` on the HTTP port.
//! Tenant labels are bounded (`--metrics-max-tenants`); beyond the bound,
//! tenants report as `other`.
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

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct RouterMetrics {
    tenants: TenantLabels,
    requests: Family<Labels, Counter>,
    tokens_in: Family<Labels, Counter>,
    tokens_out: Family<Labels, Counter>,
    ttft: Family<Labels, Histogram, fn() -> Histogram>,
    inter_token: Family<Labels, Histogram, fn() -> Histogram>,
    queue_wait: Family<Labels, Histogram, fn() -> Histogram>,
    queue_depth: Family<Labels, Gauge>,
    limit_rejections: Family<Labels, Counter>,
}

impl RouterMetrics {
    pub fn new(registry: &mut Registry, max_tenants: usize) -> Self {
        let m = Self {
            tenants: TenantLabels::new(max_tenants),
            requests: Family::default(),
            tokens_in: Family::default(),
            tokens_out: Family::default(),
            ttft: Family::new_with_constructor(latency_histogram),
            inter_token: Family::new_with_constructor(latency_histogram),
            queue_wait: Family::new_with_constructor(latency_histogram),
            queue_depth: Family::default(),
            limit_rejections: Family::default(),
        };
        let r = registry;
        r.register(
            "bulkhead_requests",
            "Requests by tenant and outcome",
            m.requests.clone(),
        );
        r.register(
            "bulkhead_tokens_in",
            "Prompt tokens processed",
            m.tokens_in.clone(),
        );
        r.register(
            "bulkhead_tokens_out",
            "Tokens generated",
            m.tokens_out.clone(),
        );
        r.register(
            "bulkhead_ttft_seconds",
            "Time to first token",
            m.ttft.clone(),
        );
        r.register(
            "bulkhead_inter_token_seconds",
            "Time between streamed tokens",
            m.inter_token.clone(),
        );
        r.register(
            "bulkhead_queue_wait_seconds",
            "Time from admission to dispatch",
            m.queue_wait.clone(),
        );
        r.register(
            "bulkhead_queue_depth",
            "Requests waiting in the router",
            m.queue_depth.clone(),
        );
        r.register(
            "bulkhead_limit_rejections",
            "Requests refused by a tenant limit",
            m.limit_rejections.clone(),
        );
        m
    }

    fn tenant(&self, tenant: &str) -> Labels {
        vec![("tenant".into(), self.tenants.label(tenant))]
    }

    /// One finished (or refused) request.
    pub fn request(&self, tenant: &str, status: &str) {
        let mut l = self.tenant(tenant);
        l.push(("status".into(), status.to_string()));
        self.requests.get_or_create(&l).inc();
    }

    pub fn tokens(&self, tenant: &str, input: u32, output: u32) {
        let l = self.tenant(tenant);
        self.tokens_in.get_or_create(&l).inc_by(u64::from(input));
        self.tokens_out.get_or_create(&l).inc_by(u64::from(output));
    }

    pub fn ttft(&self, tenant: &str, d: Duration) {
        self.ttft
            .get_or_create(&self.tenant(tenant))
            .observe(d.as_secs_f64());
    }

    pub fn inter_token(&self, tenant: &str, d: Duration) {
        self.inter_token
            .get_or_create(&self.tenant(tenant))
            .observe(d.as_secs_f64());
    }

    pub fn queued(&self, tenant: &str, delta: i64) {
        self.queue_depth
            .get_or_create(&self.tenant(tenant))
            .inc_by(delta);
    }

    pub fn queue_wait(&self, tenant: &str, d: Duration) {
        self.queue_wait
            .get_or_create(&self.tenant(tenant))
            .observe(d.as_secs_f64());
    }

    pub fn limited(&self, tenant: &str) {
        self.limit_rejections
            .get_or_create(&self.tenant(tenant))
            .inc();
    }
}
