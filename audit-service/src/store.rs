//! Per-tenant append-only audit logs (pure storage, no NATS).
//!
//! `<root>/tenants/<tenant>/key.<epoch>.wrapped` hold the tenant's data keys,
//! one per key epoch, wrapped by the master key (see `keyring`: a key is
//! rotated after `max_records_per_key` records). The log is a series of segment files
//! `<root>/tenants/<tenant>/segments/000001.log`, `000002.log`, … (see
//! `segment` for the frame format). Each record's plaintext is the protobuf
//! `AuditEvent`, encrypted with AES-256-GCM under a random nonce and the
//! key of the epoch the frame names, with `tenant || seq || epoch ||
//! prev_hash` as associated data; `prev_hash` is the
//! SHA-256 of the whole previous frame (zeros first), across segment
//! boundaries: a hash chain, so a removed, reordered or altered record is
//! detected.
//!
//! A segment closes after `segment_records` records, or at a clean shutdown
//! (the next start opens a new one); a closed segment is fsynced, then gets a
//! signed closing checkpoint (see `checkpoint`), and is never written again.
//! Periodic checkpoints are also written every `checkpoint_every` records,
//! once they are fsynced.
//!
//! A crypto-shredded tenant (see `shred`) has no key files but a
//! `shredded` marker: its log can no longer be decrypted, only walked
//! (lengths, sequence numbers, chain links).
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bulkhead_proto::Message;
use bulkhead_proto::audit::AuditEvent;
use bulkhead_proto::names::valid_tenant_id;
use sha2::{Digest, Sha256};

use crate::StoreError;
use crate::checkpoint::{self, CheckpointSigner};
use crate::keys::KeyWrapper;

pub mod incarnation;
pub mod keyring;
pub mod segment;

use keyring::KeyRing;
use segment::HEADER;

/// Records between two automatic checkpoints of a tenant's log.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;
/// Records in a segment before it is closed.
pub const DEFAULT_SEGMENT_RECORDS: u64 = 10_000;

/// One decoded frame.
pub struct Frame {
    pub seq: u64,
    /// Epoch of the data key it was encrypted under.
    pub epoch: u32,
    pub event: AuditEvent,
}

/// The result of reading a log: its records, and where it stops being valid.
#[derive(Default)]
pub struct LogRead {
    /// Decrypted records (empty when read without a key, e.g. shredded).
    pub frames: Vec<Frame>,
    /// Number of structurally valid records (equals `frames.len()` when
    /// decrypted).
    pub count: u64,
    /// The chain hash after each valid record (`chain[i]` covers 0..=i).
    pub chain: Vec<[u8; 32]>,
    /// Index of the first record that failed (bad chain, tag or sequence).
    pub first_bad: Option<(u64, String)>,
    /// Bytes of a trailing partial frame in the last segment (a crash
    /// mid-write), if any.
    pub torn_tail: Option<u64>,
    /// Length of the last segment's valid prefix, in bytes.
    pub valid_len: u64,
    pub last_hash: [u8; 32],
    /// The segments read, in order (up to the first bad record).
    pub segments: Vec<segment::SegmentSpan>,
    /// Key epoch of the last valid record (0: none yet).
    pub last_epoch: u32,
}

struct TenantLog {
    /// The open segment; None when the last one is closed (the next append
    /// opens a new one).
    file: Option<File>,
    /// Frames appended since the last sync, written out in one go by it
    /// (one write and one fsync per tenant per batch).
    pending: Vec<u8>,
    /// Number of the open (or last closed) segment; 0 before the first.
    segment: u64,
    /// Records in that segment.
    seg_count: u64,
    keys: KeyRing,
    /// The epoch new records are encrypted under, and how many already were.
    epoch: u32,
    used: u64,
    next_seq: u64,
    last_hash: [u8; 32],
    seen: HashSet<String>,
    dirty: bool,
    /// Record count covered by the latest signed checkpoint.
    checkpointed: u64,
}

/// Request ids remembered for recognising redeliveries, all tenants
/// together: more than the consumer's `max_ack_pending` (20,000), since a
/// redelivered event is one stored but not yet acknowledged, and nothing
/// past that many later events can still be unacknowledged. (A router's
/// spool replay is de-duplicated by JetStream's message id window.) Bounds
/// the memory, which would otherwise grow with every event ever stored.
pub const SEEN_WINDOW: usize = 32_768;

pub struct AuditStore {
    root: PathBuf,
    wrapper: Arc<dyn KeyWrapper>,
    tenants: HashMap<String, TenantLog>,
    /// (tenant, request id) of the latest `SEEN_WINDOW` stored events,
    /// oldest first: what each tenant's `seen` set holds.
    recent: std::collections::VecDeque<(String, String)>,
    signer: Option<CheckpointSigner>,
    opts: StoreOptions,
    /// The incarnation (tenant uid) of each tenant folder seen so far.
    incarnations: HashMap<String, String>,
}

/// Tunables of a store (every value at least 1).
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// Records between two automatic checkpoints of a tenant's log.
    pub checkpoint_every: u64,
    /// Records in a segment before it is closed.
    pub segment_records: u64,
    /// Records encrypted under one data key before it is rotated (capped at
    /// `keyring::MAX_RECORDS_PER_KEY_CAP`).
    pub max_records_per_key: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            segment_records: DEFAULT_SEGMENT_RECORDS,
            max_records_per_key: keyring::DEFAULT_MAX_RECORDS_PER_KEY,
        }
    }
}

impl StoreOptions {
    fn clamped(self) -> Self {
        Self {
            checkpoint_every: self.checkpoint_every.max(1),
            segment_records: self.segment_records.max(1),
            max_records_per_key: self
                .max_records_per_key
                .clamp(1, keyring::MAX_RECORDS_PER_KEY_CAP),
        }
    }
}

fn aad(tenant: &str, seq: u64, epoch: u32, prev: &[u8; 32]) -> Vec<u8> {
    [
        tenant.as_bytes(),
        &seq.to_be_bytes(),
        &epoch.to_be_bytes(),
        prev,
    ]
    .concat()
}

/// Writes `bytes` to `path` (mode 0600) whole or not at all: a temporary
/// file, fsynced, renamed over `path`; a concurrent reader (queries read
/// without the writer's lock) never sees half a file.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| StoreError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| StoreError::io(&tmp, e))?;
    f.sync_all().map_err(|e| StoreError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| StoreError::io(path, e))
}

impl AuditStore {
    /// Opens the store, loading every tenant's log (verifying its chain and
    /// rebuilding the set of stored request ids). A torn final frame is cut
    /// off with a warning; any other damage is an error.
    pub fn open(root: &Path, wrapper: Arc<dyn KeyWrapper>) -> Result<Self, StoreError> {
        Self::open_with(root, wrapper, StoreOptions::default())
    }

    /// [`open`](Self::open) with other tunables.
    pub fn open_with(
        root: &Path,
        wrapper: Arc<dyn KeyWrapper>,
        opts: StoreOptions,
    ) -> Result<Self, StoreError> {
        let tdir = root.join("tenants");
        std::fs::create_dir_all(&tdir).map_err(|e| StoreError::io(&tdir, e))?;
        let mut store = Self {
            root: root.to_path_buf(),
            wrapper,
            tenants: HashMap::new(),
            recent: std::collections::VecDeque::new(),
            incarnations: HashMap::new(),
            signer: Some(CheckpointSigner::load_or_create(root)?),
            opts: opts.clamped(),
        };
        let entries = std::fs::read_dir(&tdir).map_err(|e| StoreError::io(&tdir, e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if valid_tenant_id(&name) && !store.is_shredded(&name) {
                store.load(&name)?;
            }
        }
        Ok(store)
    }

    /// Sets how many records pass between automatic checkpoints (min 1).
    pub fn set_checkpoint_every(&mut self, n: u64) {
        self.opts.checkpoint_every = n.max(1);
    }

    /// Whether the tenant's data key was destroyed (crypto-shredded).
    pub fn is_shredded(&self, tenant: &str) -> bool {
        crate::shred::is_shredded(&self.root, tenant)
    }

    /// The data folder (for checkpoints and shredding tools).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A store for reading only (e.g. `verify`): loads nothing, so it can
    /// read a damaged log that `open` would refuse to append to.
    pub fn open_readonly(root: &Path, wrapper: Arc<dyn KeyWrapper>) -> Self {
        Self {
            root: root.to_path_buf(),
            wrapper,
            tenants: HashMap::new(),
            recent: std::collections::VecDeque::new(),
            incarnations: HashMap::new(),
            signer: None,
            opts: StoreOptions::default(),
        }
    }

    /// A read-only handle on the same folder, for queries: reading needs no
    /// lock on this store, so a large query never stalls ingestion (a
    /// record being appended meanwhile is either read whole or, as a torn
    /// tail of the open segment, not yet).
    pub fn reader(&self) -> Self {
        Self::open_readonly(&self.root, self.wrapper.clone())
    }

    pub(crate) fn tenant_dir(&self, tenant: &str) -> PathBuf {
        self.root.join("tenants").join(tenant)
    }

    /// Every data key of a tenant (none yet for a new tenant).
    fn keys(&self, tenant: &str) -> Result<KeyRing, StoreError> {
        if self.is_shredded(tenant) {
            return Err(StoreError::Shredded(tenant.to_string()));
        }
        KeyRing::load(&self.tenant_dir(tenant), tenant, self.wrapper.as_ref())
    }

    /// Reads and checks a tenant's whole log.
    pub fn read(&self, tenant: &str) -> Result<LogRead, StoreError> {
        let keys = self.keys(tenant)?;
        let read = segment::read_all(&self.tenant_dir(tenant), tenant, Some(&keys))?;
        if read.first_bad.is_none() {
            return Ok(read);
        }
        // A reader (see `reader`) may have loaded the keys just before the
        // writer started a new key epoch and appended under it: read once
        // more with the keys as they are now. Real damage stays damage.
        let keys = self.keys(tenant)?;
        segment::read_all(&self.tenant_dir(tenant), tenant, Some(&keys))
    }

    /// Walks a tenant's log without decrypting: frame structure, sequence
    /// numbers and chain links only (what remains checkable after a shred).
    pub fn read_structure(&self, tenant: &str) -> Result<LogRead, StoreError> {
        segment::read_all(&self.tenant_dir(tenant), tenant, None)
    }

    /// Verifies a tenant's log: `Ok(None)` when every record decrypts and the
    /// chain is intact, else the index of the first bad record. A torn final
    /// frame (a crash mid-write, cut at the next start) is not counted as bad.
    pub fn verify(&self, tenant: &str) -> Result<Option<u64>, StoreError> {
        if !valid_tenant_id(tenant) {
            return Err(StoreError::Invalid(format!("invalid tenant id {tenant:?}")));
        }
        Ok(self.read(tenant)?.first_bad.map(|(idx, _)| idx))
    }

    fn load(&mut self, tenant: &str) -> Result<(), StoreError> {
        let dir = self.tenant_dir(tenant);
        let mut keys = self.keys(tenant)?;
        if keys.is_empty() {
            keys.rotate(&dir, tenant, self.wrapper.as_ref())?;
        }
        let log = segment::read_all(&dir, tenant, Some(&keys))?;
        if let Some((idx, why)) = &log.first_bad {
            return Err(StoreError::Corrupt(format!(
                "{tenant}: record {idx} fails verification ({why}); refusing to append to a damaged log"
            )));
        }
        let cps = checkpoint::read_all(&dir)?;
        if let Some(signer) = &self.signer
            && let Err(why) = checkpoint::check(&signer.verifying_key(), tenant, &cps, &log)
        {
            return Err(StoreError::Corrupt(format!(
                "{tenant}: {why}; refusing to append to a log that disagrees with its signed checkpoints"
            )));
        }
        let skip = log.frames.len().saturating_sub(SEEN_WINDOW);
        let mut seen = HashSet::new();
        for f in log.frames.iter().skip(skip) {
            seen.insert(f.event.request_id.clone());
            self.recent
                .push_back((tenant.to_string(), f.event.request_id.clone()));
        }
        let epoch = keys.current().expect("created above");
        let used = log.frames.iter().filter(|f| f.epoch == epoch).count() as u64;
        let mut tl = TenantLog {
            file: None,
            pending: Vec::new(),
            segment: 0,
            seg_count: 0,
            keys,
            epoch,
            used,
            next_seq: log.count,
            last_hash: log.last_hash,
            seen,
            dirty: false,
            checkpointed: cps.last().map(|c| c.count).unwrap_or(0),
        };
        if let Some(last) = log.segments.last() {
            tl.segment = last.number;
            tl.seg_count = last.count;
            let closed = cps.iter().any(|c| c.closes && c.segment == last.number);
            if !closed {
                // A crash left this segment open: append to it (after
                // cutting a torn final frame), or close it if it is full.
                let path = segment::path(&dir, last.number);
                let file = OpenOptions::new()
                    .read(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| StoreError::io(&path, e))?;
                if let Some(torn) = log.torn_tail {
                    tracing::warn!(
                        tenant,
                        bytes = torn,
                        "cutting a torn final frame (crash during a write)"
                    );
                    file.set_len(log.valid_len)
                        .map_err(|e| StoreError::io(&path, e))?;
                }
                file.sync_all().map_err(|e| StoreError::io(&path, e))?;
                tl.file = Some(file);
                if tl.seg_count >= self.opts.segment_records {
                    close_segment(&dir, tenant, &mut tl, self.signer.as_ref())?;
                }
            }
        }
        self.tenants.insert(tenant.to_string(), tl);
        Ok(())
    }

    /// Appends one event to its tenant's log (not yet synced). Returns false
    /// when the request id is already stored (a redelivery).
    pub fn append(&mut self, ev: &AuditEvent) -> Result<bool, StoreError> {
        let tenant = ev.tenant_id.as_str();
        if !valid_tenant_id(tenant) {
            return Err(StoreError::Invalid(format!("invalid tenant id {tenant:?}")));
        }
        if ev.request_id.is_empty() || ev.request_id.len() > 128 {
            return Err(StoreError::Invalid("request_id must be 1-128 bytes".into()));
        }
        if !ev.tenant_uid.is_empty() {
            self.ensure_incarnation(tenant, &ev.tenant_uid)?;
        }
        if !self.tenants.contains_key(tenant) {
            // Shredding is offline, so a loaded tenant is never shredded.
            if self.is_shredded(tenant) {
                return Err(StoreError::Invalid(format!(
                    "tenant {tenant} was crypto-shredded; its audit log is closed"
                )));
            }
            self.load(tenant)?;
        }
        let dir = self.root.join("tenants").join(tenant);
        let log = self.tenants.get_mut(tenant).expect("loaded above");
        if log.seen.contains(&ev.request_id) {
            return Ok(false);
        }
        if log.file.is_none() {
            open_next_segment(&dir, log)?;
        }
        if log.used >= self.opts.max_records_per_key {
            log.epoch = log.keys.rotate(&dir, tenant, self.wrapper.as_ref())?;
            log.used = 0;
        }
        let seq = log.next_seq;
        let key = log.keys.get(log.epoch).expect("the current epoch's key");
        let (nonce, ct) = key.seal(
            &aad(tenant, seq, log.epoch, &log.last_hash),
            &ev.encode_to_vec(),
        )?;
        let len = (HEADER - 4 + ct.len()) as u32;
        let frame = [
            &len.to_be_bytes()[..],
            &seq.to_be_bytes(),
            &log.epoch.to_be_bytes(),
            &log.last_hash,
            &nonce,
            &ct,
        ]
        .concat();
        log.pending.extend_from_slice(&frame);
        log.last_hash = Sha256::digest(&frame).into();
        log.next_seq += 1;
        log.seg_count += 1;
        log.used += 1;
        log.seen.insert(ev.request_id.clone());
        log.dirty = true;
        if log.seg_count >= self.opts.segment_records {
            close_segment(&dir, tenant, log, self.signer.as_ref())?;
        }
        self.recent
            .push_back((tenant.to_string(), ev.request_id.clone()));
        while self.recent.len() > SEEN_WINDOW {
            if let Some((t, id)) = self.recent.pop_front()
                && let Some(l) = self.tenants.get_mut(&t)
            {
                l.seen.remove(&id);
            }
        }
        Ok(true)
    }

    /// fsyncs every log written since the last sync, then writes a signed
    /// checkpoint for each log that grew by `checkpoint_every` records since
    /// its last one (only ever covering fsynced records).
    pub fn sync(&mut self) -> Result<(), StoreError> {
        for (tenant, log) in self.tenants.iter_mut().filter(|(_, l)| l.dirty) {
            let dir = self.root.join("tenants").join(tenant);
            flush(&dir, log)?;
        }
        self.write_checkpoints(self.opts.checkpoint_every)
    }

    /// A clean shutdown: syncs, then closes every open segment with a
    /// signed checkpoint (the next start opens new ones).
    pub fn close(&mut self) -> Result<(), StoreError> {
        self.sync()?;
        for (tenant, log) in self.tenants.iter_mut() {
            if log.file.is_some() && log.seg_count > 0 {
                let dir = self.root.join("tenants").join(tenant);
                close_segment(&dir, tenant, log, self.signer.as_ref())?;
            }
        }
        Ok(())
    }

    /// Sets the records per segment (min 1); applies from the next record.
    pub fn set_segment_records(&mut self, n: u64) {
        self.opts.segment_records = n.max(1);
    }

    fn write_checkpoints(&mut self, min_new: u64) -> Result<(), StoreError> {
        let Some(signer) = &self.signer else {
            return Ok(());
        };
        for (tenant, log) in self.tenants.iter_mut() {
            if log.dirty || log.next_seq < log.checkpointed + min_new {
                continue;
            }
            let dir = self.root.join("tenants").join(tenant);
            signer.append(
                &dir,
                tenant,
                log.next_seq,
                log.segment,
                false,
                &log.last_hash,
            )?;
            log.checkpointed = log.next_seq;
        }
        Ok(())
    }

    /// Crypto-shreds a tenant while the store is open: fsyncs and closes its
    /// open segment with a signed checkpoint, forgets its keys, then
    /// destroys every key file (see `shred`). Returns what was done and the
    /// records in its log.
    pub fn shred(&mut self, tenant: &str) -> Result<(crate::shred::Shredded, u64), StoreError> {
        if !valid_tenant_id(tenant) {
            return Err(StoreError::Invalid(format!("invalid tenant id {tenant:?}")));
        }
        let dir = self.tenant_dir(tenant);
        if let Some(mut log) = self.tenants.remove(tenant) {
            let sealed = if log.seg_count > 0 {
                close_segment(&dir, tenant, &mut log, self.signer.as_ref())
            } else {
                Ok(())
            };
            if let Err(e) = sealed {
                self.tenants.insert(tenant.to_string(), log);
                return Err(e);
            }
        }
        let done = crate::shred::shred(&self.root, tenant)?;
        let records = segment::read_all(&dir, tenant, None)?.count;
        Ok((done, records))
    }

    /// Number of records stored for a tenant.
    pub fn count(&self, tenant: &str) -> u64 {
        self.tenants.get(tenant).map(|l| l.next_seq).unwrap_or(0)
    }
}

/// Creates the next segment file (and makes its name durable).
fn open_next_segment(dir: &Path, log: &mut TenantLog) -> Result<(), StoreError> {
    let sdir = dir.join(segment::DIR);
    std::fs::create_dir_all(&sdir).map_err(|e| StoreError::io(&sdir, e))?;
    let number = log.segment + 1;
    let path = segment::path(dir, number);
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| StoreError::io(&path, e))?;
    File::open(&sdir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(&sdir, e))?;
    log.file = Some(file);
    log.segment = number;
    log.seg_count = 0;
    Ok(())
}

/// Writes the pending frames to the open segment and fsyncs it.
fn flush(dir: &Path, log: &mut TenantLog) -> Result<(), StoreError> {
    if let Some(f) = log.file.as_mut() {
        let path = || segment::path(dir, log.segment);
        if !log.pending.is_empty() {
            f.write_all(&log.pending)
                .map_err(|e| StoreError::io(&path(), e))?;
            log.pending.clear();
        }
        f.sync_data().map_err(|e| StoreError::io(&path(), e))?;
    }
    log.dirty = false;
    Ok(())
}

/// fsyncs the open segment and closes it with a signed checkpoint.
fn close_segment(
    dir: &Path,
    tenant: &str,
    log: &mut TenantLog,
    signer: Option<&CheckpointSigner>,
) -> Result<(), StoreError> {
    if log.file.is_none() {
        return Ok(());
    }
    flush(dir, log)?;
    log.file = None;
    if let Some(signer) = signer {
        signer.append(dir, tenant, log.next_seq, log.segment, true, &log.last_hash)?;
        log.checkpointed = log.next_seq;
    }
    tracing::debug!(tenant, segment = log.segment, "closed a segment");
    Ok(())
}

#[cfg(test)]
mod tests;
