//! W3C trace context (`traceparent`/`tracestate`) across processes: taken
//! from a client's HTTP headers or gRPC metadata, attached to the current
//! span, and passed on in gRPC metadata to the next hop.
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct StringInjector(Option<String>);

impl Injector for StringInjector {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

fn extract(ex: &dyn Extractor) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(ex))
}

/// Makes the caller's trace (if its HTTP headers carry one) the parent of `span`.
pub fn adopt_http(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    let _ = span.set_parent(extract(&HeaderExtractor(headers)));
}

/// Makes the caller's trace (if its gRPC metadata carries one) the parent of `span`.
pub fn adopt_grpc(span: &tracing::Span, md: &MetadataMap) {
    let _ = span.set_parent(extract(&MetadataExtractor(md)));
}

/// Puts the current span's trace context into outgoing gRPC metadata.
pub fn inject_grpc(md: &mut MetadataMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut MetadataInjector(md))
    });
}

/// The current span's `traceparent`, for audit events (empty when not traced).
pub fn current_traceparent() -> String {
    let cx = tracing::Span::current().context();
    let mut inj = StringInjector(None);
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut inj));
    inj.0.unwrap_or_default()
}
