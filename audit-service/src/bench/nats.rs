//! A throw-away local nats-server with JetStream for `bench` when no
//! `--nats` URL is given: the same binary the tests use
//! (`$BULKHEAD_NATS_SERVER`, else `.bulkhead/venv/bin/nats-server` in this
//! folder or one above it — installed by `scripts/ensure-nats.sh` — else
//! `nats-server` on PATH), on a free loopback port, storing in a temporary
//! folder. Killed when dropped.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::BenchError;

pub struct LocalNats {
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

/// The nats-server binary to start, if one can be found.
pub fn find_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BULKHEAD_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let cwd = std::env::current_dir().ok()?;
    for dir in cwd.ancestors() {
        let p = dir.join(".bulkhead/venv/bin/nats-server");
        if p.is_file() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    })
}

impl LocalNats {
    pub fn start() -> Result<Self, BenchError> {
        let bin = find_binary().ok_or_else(|| {
            BenchError::Nats(
                "no nats-server found: pass --nats <url>, set BULKHEAD_NATS_SERVER, or run scripts/ensure-nats.sh".into(),
            )
        })?;
        let dir = tempfile::tempdir().map_err(|e| BenchError::Io(e.to_string()))?;
        let child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(dir.path().join("js"))
            .arg("--ports_file_dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::Nats(format!("starting {}: {e}", bin.display())))?;
        let mut me = Self {
            url: String::new(),
            child,
            _dir: dir,
        };
        let ports = me
            ._dir
            .path()
            .join(format!("nats-server_{}.ports", me.child.id()));
        me.url = me.wait_for_url(&ports, Duration::from_secs(20))?;
        Ok(me)
    }

    fn wait_for_url(&mut self, ports: &Path, limit: Duration) -> Result<String, BenchError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(text) = std::fs::read_to_string(ports)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(url) = v["nats"][0].as_str()
            {
                return Ok(url.to_string());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(BenchError::Nats(format!(
                    "nats-server exited at start: {st}"
                )));
            }
            if Instant::now() > deadline {
                return Err(BenchError::Nats(format!(
                    "nats-server wrote no ports file within {limit:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
