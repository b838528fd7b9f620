//! The dev stack's children: started with logs in files, watched, and
//! stopped newest first with SIGTERM, then SIGKILL after a grace period.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Expendable {
    No,
    Yes,
    /// Expendable, exited, already reported.
    Gone,
}

pub struct Children {
    logs: PathBuf,
    /// (name, process, expendable: may exit without stopping the stack).
    kids: Vec<(String, Child, Expendable)>,
}

impl Children {
    pub fn new(logs: PathBuf) -> Self {
        Self { logs, kids: vec![] }
    }

    pub fn logs_dir(&self) -> &Path {
        &self.logs
    }

    /// Starts a child with stdout/stderr in `<logs>/<name>.log`; returns its
    /// pid. If it exits, the stack stops.
    pub fn spawn(&mut self, name: &str, cmd: Command) -> Result<u32> {
        self.start(name, cmd, Expendable::No)
    }

    /// Like `spawn`, but the stack keeps running if this child exits.
    pub fn spawn_expendable(&mut self, name: &str, cmd: Command) -> Result<u32> {
        self.start(name, cmd, Expendable::Yes)
    }

    fn start(&mut self, name: &str, mut cmd: Command, expendable: Expendable) -> Result<u32> {
        let log_path = self.logs.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        cmd.stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        // Keep Ctrl-C in the terminal from reaching the children directly:
        // the dev stack stops them itself, in order.
        cmd.process_group(0);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let pid = child.id().context("child has no pid")?;
        self.kids.push((name.to_string(), child, expendable));
        Ok(pid)
    }

    /// Waits for a ready file (a complete JSON document), failing early if
    /// any child exits.
    pub async fn wait_ready(&mut self, path: &Path) -> Result<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(path)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            {
                return Ok(v);
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("timed out waiting for {}", path.display());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        for (name, child, expendable) in &mut self.kids {
            if let Some(st) = child.try_wait()? {
                match *expendable {
                    Expendable::Gone => continue,
                    Expendable::Yes => {
                        eprintln!("{name} exited with {st}; the stack keeps running without it");
                        *expendable = Expendable::Gone;
                        continue;
                    }
                    Expendable::No => {}
                }
                bail!(
                    "{name} exited with {st}; see {}",
                    self.logs.join(format!("{name}.log")).display()
                );
            }
        }
        Ok(())
    }

    /// Returns Ok on Ctrl-C/SIGTERM, Err when a child exits on its own.
    pub async fn wait_for_signal_or_exit(&mut self) -> Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = term.recv() => return Ok(()),
                _ = tick.tick() => self.check_alive()?,
            }
        }
    }

    /// Stops every child, newest first: SIGTERM, then SIGKILL after `grace`.
    pub async fn stop_all(&mut self, grace: Duration) {
        while let Some((name, mut child, _)) = self.kids.pop() {
            if let Ok(Some(_)) = child.try_wait() {
                continue;
            }
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(Ok(st)) => println!("  {name} stopped ({st})"),
                _ => {
                    eprintln!("  {name} did not stop in {grace:?}; killing it");
                    let _ = child.kill().await;
                }
            }
        }
    }
}
