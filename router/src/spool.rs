//! The audit spool (`--audit-mode spool`): a bounded, append-only file of
//! audit events the router could not publish because NATS was unreachable,
//! replayed in order when it returns. Pure file I/O, no NATS: the publisher
//! (`audit`) decides when to spool and drives the replay.
//!
//! File: `<dir>/audit.spool`, a sequence of frames `[u32 len][AuditEvent]`
//! (big-endian length, protobuf body), each appended and fsynced before the
//! event counts as recorded. A torn last frame (a crash mid-append) is cut
//! off when the spool is opened. Replay publishes frames from the start and
//! removes the published prefix; an event published twice (a crash between
//! publish and removal) is stored once, because JetStream de-duplicates by
//! request id and the audit-service recognises request ids it already holds.
//!
//! The bound is checked when a request is admitted ([`Spool::has_room`]):
//! with the spool full and NATS down the router refuses new requests (503),
//! as in `reject` mode. Events of requests admitted before that are always
//! spooled, so the file may exceed the bound by their few hundred bytes each.
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bulkhead_proto::Message;
use bulkhead_proto::audit::AuditEvent;

/// Largest frame read back (an audit event is a few hundred bytes).
const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("audit spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Spool {
    path: PathBuf,
    file: File,
    bytes: u64,
    events: u64,
    max_bytes: u64,
}

impl Spool {
    /// Opens (creating) the spool in `dir`; events a previous run left are
    /// kept for replay, a torn last frame is cut off.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        let path = dir.join("audit.spool");
        let io = |source| SpoolError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let (frames, valid) = read_frames(&path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if valid < len {
            tracing::warn!(path = %path.display(), torn_bytes = len - valid, "audit spool: cutting off a torn last frame");
            file.set_len(valid).map_err(io)?;
        }
        Ok(Self {
            path,
            file,
            bytes: valid,
            events: frames.len() as u64,
            max_bytes,
        })
    }

    fn io(&self, source: std::io::Error) -> SpoolError {
        SpoolError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Events waiting for replay.
    pub fn len(&self) -> u64 {
        self.events
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether a new request may be admitted on the strength of the spool.
    pub fn has_room(&self) -> bool {
        self.bytes < self.max_bytes
    }

    /// Appends one event and fsyncs it.
    pub fn append(&mut self, ev: &AuditEvent) -> Result<(), SpoolError> {
        let body = ev.encode_to_vec();
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        self.file.write_all(&frame).map_err(|e| self.io(e))?;
        self.file.sync_data().map_err(|e| self.io(e))?;
        self.bytes += frame.len() as u64;
        self.events += 1;
        Ok(())
    }

    /// Every spooled event, oldest first.
    pub fn events(&self) -> Result<Vec<AuditEvent>, SpoolError> {
        Ok(read_frames(&self.path).map_err(|e| self.io(e))?.0)
    }

    /// Removes the first `n` events (they were published).
    pub fn remove_first(&mut self, n: usize) -> Result<(), SpoolError> {
        let rest: Vec<AuditEvent> = self.events()?.into_iter().skip(n).collect();
        let tmp = self.path.with_extension("spool.tmp");
        let mut f = File::create(&tmp).map_err(|e| self.io(e))?;
        let mut bytes = 0u64;
        for ev in &rest {
            let body = ev.encode_to_vec();
            f.write_all(&(body.len() as u32).to_be_bytes())
                .and_then(|_| f.write_all(&body))
                .map_err(|e| self.io(e))?;
            bytes += 4 + body.len() as u64;
        }
        f.sync_all().map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        self.file = OpenOptions::new()
            .append(true)
            .read(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        if let Some(dir) = self.path.parent()
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        self.bytes = bytes;
        self.events = rest.len() as u64;
        Ok(())
    }
}

/// Reads whole frames; returns them and the length of the valid prefix.
fn read_frames(path: &Path) -> std::io::Result<(Vec<AuditEvent>, u64)> {
    let mut data = vec![];
    File::open(path)?.read_to_end(&mut data)?;
    let (mut out, mut at) = (vec![], 0usize);
    while at + 4 <= data.len() {
        let len = u32::from_be_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME || at + 4 + len > data.len() {
            break;
        }
        match AuditEvent::decode(&data[at + 4..at + 4 + len]) {
            Ok(ev) => out.push(ev),
            Err(_) => break,
        }
        at += 4 + len;
    }
    Ok((out, at as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str) -> AuditEvent {
        AuditEvent {
            request_id: id.into(),
            tenant_id: "acme".into(),
            ..Default::default()
        }
    }

    fn ids(s: &Spool) -> Vec<String> {
        s.events()
            .unwrap()
            .into_iter()
            .map(|e| e.request_id)
            .collect()
    }

    #[test]
    fn appends_survive_a_restart_and_replay_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(s.is_empty() && s.has_room());
        for id in ["r1", "r2", "r3"] {
            s.append(&ev(id)).unwrap();
        }
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(ids(&s), ["r1", "r2", "r3"]);
        s.remove_first(2).unwrap();
        assert_eq!(ids(&s), ["r3"]);
        s.append(&ev("r4")).unwrap();
        assert_eq!(ids(&s), ["r3", "r4"]);
        assert_eq!(s.len(), 2);
        s.remove_first(2).unwrap();
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn a_torn_last_frame_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.append(&ev("r1")).unwrap();
        drop(s);
        let path = dir.path().join("audit.spool");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0, 0, 0, 50, 1, 2]).unwrap();
        drop(f);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(ids(&s), ["r1"]);
        s.append(&ev("r2")).unwrap();
        assert_eq!(
            ids(&Spool::open(dir.path(), 1 << 20).unwrap()),
            ["r1", "r2"]
        );
    }

    #[test]
    fn full_means_no_room() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 10).unwrap();
        s.append(&ev("r1")).unwrap();
        assert!(!s.has_room());
        // Admitted requests are still recorded past the bound.
        s.append(&ev("r2")).unwrap();
        assert_eq!(s.len(), 2);
    }
}
