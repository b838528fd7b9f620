//! Bulkhead's telemetry, shared by every binary so they behave alike:
//!
//! - logs through `tracing` (text or JSON, `RUST_LOG` filter, default info);
//!   by convention no prompt or completion text is ever a field or message;
//! - traces exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//!   (service name from `OTEL_SERVICE_NAME`, else the binary's), off when
//!   unset; W3C `traceparent` carried across processes ([`propagation`]);
//! - Prometheus metrics in text format ([`metrics`]).
#![forbid(unsafe_code)]

pub mod metrics;
pub mod propagation;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log line format (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("unknown log format {s:?}: use text or json")),
        }
    }
}

/// Keeps the trace exporter alive; flushes pending spans when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("flushing traces failed: {e}");
        }
    }
}

/// Installs the global subscriber (logs, and traces when configured) and the
/// W3C trace-context propagator. Call once, inside a tokio runtime.
pub fn init(default_service: &str, format: LogFormat) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let (otel, provider, err) = match tracer_provider(default_service) {
        Ok(Some(p)) => {
            let tracer = p.tracer("bulkhead");
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(EnvFilter::new("info"));
            (Some(layer), Some(p), None)
        }
        Ok(None) => (None, None, None),
        Err(e) => (None, None, Some(e)),
    };
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter()))
        .with(otel)
        .try_init();
    match (&provider, err) {
        (Some(_), _) => tracing::info!(
            endpoint = %std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default(),
            "exporting traces over OTLP"
        ),
        (None, Some(e)) => tracing::error!(error = %e, "trace export disabled: cannot set up OTLP"),
        (None, None) => {}
    }
    Telemetry { provider }
}

fn tracer_provider(default_service: &str) -> anyhow::Result<Option<SdkTracerProvider>> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
    if endpoint.trim().is_empty() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| default_service.to_string());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. If a handler cannot be installed
/// (which should not happen), that signal is simply not awaited.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        r = tokio::signal::ctrl_c() => {
            if let Err(e) = r {
                tracing::warn!(error = %e, "cannot listen for SIGINT");
                std::future::pending::<()>().await;
            }
        }
        _ = term => {}
    }
    tracing::info!("shutdown requested");
}

/// Writes `value` as JSON to `path` atomically: a temporary file next to it,
/// then a rename, so a reader never sees a partial document.
pub fn write_ready_file(path: &std::path::Path, value: &serde_json::Value) -> std::io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(name);
    std::fs::write(&tmp, value.to_string())?;
    std::fs::rename(&tmp, path)
}

/// Connections accepted from `listener` with Nagle's algorithm off. tonic
/// sets TCP_NODELAY only on sockets it accepts itself; servers that bind
/// their own listener (for port 0 and ready files) must do it here, or small
/// streamed messages wait ~40 ms for delayed ACKs.
pub fn incoming_nodelay(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        let s = s?;
        s.set_nodelay(true)?;
        Ok(s)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn ready_file_is_complete_json() {
        let dir = std::env::temp_dir().join(format!("bh-ready-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("ready.json");
        super::write_ready_file(&p, &serde_json::json!({"grpc": "127.0.0.1:1"})).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["grpc"], "127.0.0.1:1");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "temp file left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
