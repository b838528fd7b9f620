//! Prometheus metrics: each service builds its families in a
//! `prometheus_client` registry and serves them at `/metrics` in the
//! Prometheus text format.
use std::sync::Arc;

pub use prometheus_client;
use prometheus_client::registry::Registry;

/// The registry as shared state.
pub type SharedRegistry = Arc<Registry>;

/// Renders the registry in the Prometheus text exposition format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

/// An axum router serving `GET /metrics`.
pub fn router(registry: SharedRegistry) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let r = registry.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    render(&r),
                )
            }
        }),
    )
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves (for
/// services that have no HTTP server of their own).
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: SharedRegistry,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Label cardinality guard: tenants beyond the first `max` distinct ids seen
/// are reported under the label value `other`, so a flood of tenants cannot
/// blow up a metrics backend.
pub struct TenantLabels {
    max: usize,
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl TenantLabels {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            seen: Default::default(),
        }
    }

    pub fn label(&self, tenant: &str) -> String {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(tenant) {
            return tenant.to_string();
        }
        if seen.len() < self.max {
            seen.insert(tenant.to_string());
            return tenant.to_string();
        }
        "other".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn renders_text_format_and_bounds_labels() {
        let mut r = Registry::default();
        let c: Counter = Counter::default();
        r.register("bulkhead_test", "a test counter", c.clone());
        c.inc_by(3);
        let text = render(&r);
        assert!(text.contains("bulkhead_test_total 3"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        let l = TenantLabels::new(2);
        assert_eq!(l.label("a"), "a");
        assert_eq!(l.label("b"), "b");
        assert_eq!(l.label("c"), "other");
        assert_eq!(l.label("a"), "a");
    }
}
