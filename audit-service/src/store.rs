//! Per-tenant append-only audit logs (pure storage, no NATS).
//!
//! `<root>/tenants/<tenant>/key.wrapped` holds the tenant's data key, wrapped
//! by the master key. `<root>/tenants/<tenant>/audit.log` is a sequence of
//! frames: `[u32 len][u64 seq][32-byte prev_hash][12-byte nonce][ciphertext]`,
//! big-endian, where `len` counts the bytes after itself, the plaintext is the
//! protobuf `AuditEvent`, the associated data is `tenant || seq || prev_hash`,
//! and `prev_hash` is the SHA-256 of the whole previous frame (zeros first):
//! a hash chain, so a removed, reordered or altered record is detected.
//!
//! A crypto-shredded tenant (see `shred`) has no `key.wrapped` but a
//! `shredded` marker: its log can no longer be decrypted, only walked
//! (lengths, sequence numbers, chain links). Signed checkpoints (see
//! `checkpoint`) are written next to each log every `checkpoint_every`
//! records, once they are fsynced, and at a clean shutdown.
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
use crate::keys::{DataKey, KeyWrapper};

/// Records between two automatic checkpoints of a tenant's log.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;

const HEADER: usize = 4 + 8 + 32 + 12;
/// Largest frame accepted when reading (guards against a corrupt length).
const MAX_FRAME: usize = 1 << 20;

/// One decoded frame.
pub struct Frame {
    pub seq: u64,
    pub event: AuditEvent,
}

/// The result of reading a log: its records, and where it stops being valid.
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
    /// Bytes of a trailing partial frame (a crash mid-write), if any.
    pub torn_tail: Option<u64>,
    /// Length of the valid prefix, in bytes.
    pub valid_len: u64,
    pub last_hash: [u8; 32],
}

struct TenantLog {
    file: File,
    key: DataKey,
    next_seq: u64,
    last_hash: [u8; 32],
    seen: HashSet<String>,
    dirty: bool,
    /// Record count covered by the latest signed checkpoint.
    checkpointed: u64,
}

pub struct AuditStore {
    root: PathBuf,
    wrapper: Arc<dyn KeyWrapper>,
    tenants: HashMap<String, TenantLog>,
    signer: Option<CheckpointSigner>,
    checkpoint_every: u64,
}

fn aad(tenant: &str, seq: u64, prev: &[u8; 32]) -> Vec<u8> {
    [tenant.as_bytes(), &seq.to_be_bytes(), prev].concat()
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::io(path, e))?;
    f.write_all(bytes).map_err(|e| StoreError::io(path, e))?;
    f.sync_all().map_err(|e| StoreError::io(path, e))
}

impl AuditStore {
    /// Opens the store, loading every tenant's log (verifying its chain and
    /// rebuilding the set of stored request ids). A torn final frame is cut
    /// off with a warning; any other damage is an error.
    pub fn open(root: &Path, wrapper: Arc<dyn KeyWrapper>) -> Result<Self, StoreError> {
        let tdir = root.join("tenants");
        std::fs::create_dir_all(&tdir).map_err(|e| StoreError::io(&tdir, e))?;
        let mut store = Self {
            root: root.to_path_buf(),
            wrapper,
            tenants: HashMap::new(),
            signer: Some(CheckpointSigner::load_or_create(root)?),
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
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
        self.checkpoint_every = n.max(1);
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
            signer: None,
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
        }
    }

    pub(crate) fn tenant_dir(&self, tenant: &str) -> PathBuf {
        self.root.join("tenants").join(tenant)
    }

    fn data_key(&self, tenant: &str, create: bool) -> Result<Option<DataKey>, StoreError> {
        if self.is_shredded(tenant) {
            return Err(StoreError::Shredded(tenant.to_string()));
        }
        let path = self.tenant_dir(tenant).join("key.wrapped");
        match std::fs::read(&path) {
            Ok(w) => Ok(Some(DataKey::new(&self.wrapper.unwrap_key(tenant, &w)?))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let key: [u8; 32] = rand::random();
                std::fs::create_dir_all(self.tenant_dir(tenant))
                    .map_err(|e| StoreError::io(&path, e))?;
                write_private(&path, &self.wrapper.wrap(tenant, &key)?)?;
                Ok(Some(DataKey::new(&key)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }

    /// Reads and checks a tenant's whole log.
    pub fn read(&self, tenant: &str) -> Result<LogRead, StoreError> {
        let Some(key) = self.data_key(tenant, false)? else {
            return Ok(LogRead {
                frames: vec![],
                count: 0,
                chain: vec![],
                first_bad: None,
                torn_tail: None,
                valid_len: 0,
                last_hash: [0; 32],
            });
        };
        read_log(
            &self.tenant_dir(tenant).join("audit.log"),
            tenant,
            Some(&key),
        )
    }

    /// Walks a tenant's log without decrypting: frame structure, sequence
    /// numbers and chain links only (what remains checkable after a shred).
    pub fn read_structure(&self, tenant: &str) -> Result<LogRead, StoreError> {
        read_log(&self.tenant_dir(tenant).join("audit.log"), tenant, None)
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
        let path = self.tenant_dir(tenant).join("audit.log");
        let key = self
            .data_key(tenant, true)?
            .ok_or_else(|| StoreError::Corrupt(format!("{tenant}: no data key")))?;
        let log = read_log(&path, tenant, Some(&key))?;
        if let Some((idx, why)) = &log.first_bad {
            return Err(StoreError::Corrupt(format!(
                "{tenant}: record {idx} fails verification ({why}); refusing to append to a damaged log"
            )));
        }
        let cps = checkpoint::read_all(&self.tenant_dir(tenant))?;
        if let Some(signer) = &self.signer
            && let Err(why) = checkpoint::check(&signer.verifying_key(), tenant, &cps, &log)
        {
            return Err(StoreError::Corrupt(format!(
                "{tenant}: {why}; refusing to append to a log that disagrees with its signed checkpoints"
            )));
        }
        let file = OpenOptions::new()
            .create(true)
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
            file.sync_all().map_err(|e| StoreError::io(&path, e))?;
        }
        let seen = log
            .frames
            .iter()
            .map(|f| f.event.request_id.clone())
            .collect();
        self.tenants.insert(
            tenant.to_string(),
            TenantLog {
                file,
                key,
                next_seq: log.frames.len() as u64,
                last_hash: log.last_hash,
                seen,
                dirty: false,
                checkpointed: cps.last().map(|c| c.count).unwrap_or(0),
            },
        );
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
        if !self.tenants.contains_key(tenant) {
            // Shredding is offline, so a loaded tenant is never shredded.
            if self.is_shredded(tenant) {
                return Err(StoreError::Invalid(format!(
                    "tenant {tenant} was crypto-shredded; its audit log is closed"
                )));
            }
            self.load(tenant)?;
        }
        let log = self.tenants.get_mut(tenant).expect("loaded above");
        if log.seen.contains(&ev.request_id) {
            return Ok(false);
        }
        let seq = log.next_seq;
        let (nonce, ct) = log
            .key
            .seal(&aad(tenant, seq, &log.last_hash), &ev.encode_to_vec())?;
        let len = (HEADER - 4 + ct.len()) as u32;
        let frame = [
            &len.to_be_bytes()[..],
            &seq.to_be_bytes(),
            &log.last_hash,
            &nonce,
            &ct,
        ]
        .concat();
        log.file
            .write_all(&frame)
            .map_err(|e| StoreError::io(Path::new(tenant), e))?;
        log.last_hash = Sha256::digest(&frame).into();
        log.next_seq += 1;
        log.seen.insert(ev.request_id.clone());
        log.dirty = true;
        Ok(true)
    }

    /// fsyncs every log written since the last sync, then writes a signed
    /// checkpoint for each log that grew by `checkpoint_every` records since
    /// its last one (only ever covering fsynced records).
    pub fn sync(&mut self) -> Result<(), StoreError> {
        for (tenant, log) in self.tenants.iter_mut().filter(|(_, l)| l.dirty) {
            log.file
                .sync_data()
                .map_err(|e| StoreError::io(Path::new(tenant), e))?;
            log.dirty = false;
        }
        self.write_checkpoints(self.checkpoint_every)
    }

    /// Syncs, then checkpoints every log with records past its latest
    /// checkpoint (a clean shutdown).
    pub fn close(&mut self) -> Result<(), StoreError> {
        self.sync()?;
        self.write_checkpoints(1)
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
            signer.append(&dir, tenant, log.next_seq, &log.last_hash)?;
            log.checkpointed = log.next_seq;
        }
        Ok(())
    }

    /// Number of records stored for a tenant.
    pub fn count(&self, tenant: &str) -> u64 {
        self.tenants.get(tenant).map(|l| l.next_seq).unwrap_or(0)
    }
}

fn read_log(path: &Path, tenant: &str, key: Option<&DataKey>) -> Result<LogRead, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(StoreError::io(path, e)),
    };
    let mut out = LogRead {
        frames: vec![],
        count: 0,
        chain: vec![],
        first_bad: None,
        torn_tail: None,
        valid_len: 0,
        last_hash: [0; 32],
    };
    let mut pos = 0usize;
    while pos < bytes.len() {
        let idx = out.count;
        let rest = &bytes[pos..];
        if rest.len() < HEADER {
            out.torn_tail = Some(rest.len() as u64);
            break;
        }
        let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if !(HEADER - 4 + 16..=MAX_FRAME).contains(&len) {
            out.first_bad = Some((idx, "impossible frame length".into()));
            break;
        }
        if rest.len() < 4 + len {
            out.torn_tail = Some(rest.len() as u64);
            break;
        }
        let frame = &rest[..4 + len];
        let seq = u64::from_be_bytes(frame[4..12].try_into().expect("8 bytes"));
        let prev: [u8; 32] = frame[12..44].try_into().expect("32 bytes");
        let nonce: [u8; 12] = frame[44..56].try_into().expect("12 bytes");
        if seq != idx {
            out.first_bad = Some((idx, format!("sequence {seq} where {idx} was expected")));
            break;
        }
        if prev != out.last_hash {
            out.first_bad = Some((
                idx,
                "hash chain broken (a record before it was removed or altered)".into(),
            ));
            break;
        }
        if let Some(key) = key {
            let Some(plain) = key.open(&nonce, &aad(tenant, seq, &prev), &frame[56..]) else {
                out.first_bad = Some((idx, "authentication tag mismatch (record altered)".into()));
                break;
            };
            let event = AuditEvent::decode(plain.as_slice()).map_err(|_| {
                StoreError::Corrupt(format!("{tenant}: record {idx} does not decode"))
            })?;
            out.frames.push(Frame { seq, event });
        }
        out.last_hash = Sha256::digest(frame).into();
        out.chain.push(out.last_hash);
        out.count += 1;
        pos += frame.len();
        out.valid_len = pos as u64;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
