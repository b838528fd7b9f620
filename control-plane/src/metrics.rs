//! The control-plane's Prometheus metrics (`--metrics-listen`): operator
//! RPCs by method and outcome, and what the registry holds (tenants, live
//! router replicas), refreshed in the background.
use std::sync::Arc;
use std::time::Duration;

use bulkhead_telemetry::metrics::prometheus_client::metrics::counter::Counter;
use bulkhead_telemetry::metrics::prometheus_client::metrics::family::Family;
use bulkhead_telemetry::metrics::prometheus_client::metrics::gauge::Gauge;
use bulkhead_telemetry::metrics::prometheus_client::registry::Registry as MetricsRegistry;

use crate::registry::Registry;

type Labels = Vec<(String, String)>;

#[derive(Debug)]
pub struct ControlMetrics {
    requests: Family<Labels, Counter>,
    tenants: Gauge,
    routers: Gauge,
}

impl ControlMetrics {
    pub fn new(registry: &mut MetricsRegistry) -> Self {
        let m = Self {
            requests: Family::default(),
            tenants: Gauge::default(),
            routers: Gauge::default(),
        };
        registry.register(
            "bulkhead_control_requests",
            "Operator API calls by method and gRPC code",
            m.requests.clone(),
        );
        registry.register(
            "bulkhead_control_tenants",
            "Tenants in the registry",
            m.tenants.clone(),
        );
        registry.register(
            "bulkhead_control_live_routers",
            "Router replicas with a fresh heartbeat",
            m.routers.clone(),
        );
        m
    }

    pub fn request(&self, method: &str, code: tonic::Code) {
        self.requests
            .get_or_create(&vec![
                ("method".into(), method.into()),
                ("code".into(), format!("{code:?}")),
            ])
            .inc();
    }

    /// Refreshes the registry gauges every `every` until the process ends.
    pub fn spawn_refresh(self: &Arc<Self>, registry: Registry, every: Duration) {
        let m = self.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(t) = registry.list_tenants().await {
                    m.tenants.set(t.len() as i64);
                }
                let now = bulkhead_directory::now_ms();
                let stale = bulkhead_proto::names::ROUTER_STALE_AFTER_MS;
                if let Ok(r) = registry.live_routers(now, stale).await {
                    m.routers.set(r.len() as i64);
                }
                tokio::time::sleep(every).await;
            }
        });
    }
}
