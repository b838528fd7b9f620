//! Process plumbing every Bulkhead binary of this crate shares: logging set-up,
//! the shutdown signal, and the atomic `--ready-file`.
use std::path::Path;

/// Log output format (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs a tracing subscriber on stderr: RUST_LOG (default `info`) as the
/// filter, text or JSON lines. Safe to call twice (the second call is a no-op).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Text => b.try_init(),
    };
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
pub fn write_ready_file(path: &Path, value: &serde_json::Value) -> std::io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(name);
    std::fs::write(&tmp, value.to_string())?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ready_file_is_complete_json() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ready.json");
        super::write_ready_file(&p, &serde_json::json!({"grpc": "127.0.0.1:1"})).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["grpc"], "127.0.0.1:1");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left"
        );
    }
}
