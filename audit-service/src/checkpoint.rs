//! Ed25519-signed checkpoints of each tenant's hash chain.
//!
//! `<root>/checkpoint.key` holds the signing key (hex seed, mode 0600,
//! created on first start); `<root>/checkpoint.pub` its public key (hex), for
//! verifiers. `<root>/tenants/<t>/checkpoints` is an append-only sequence of
//! fixed-size entries
//! `[u64 count][u64 segment][u8 closes][32-byte chain hash][64-byte signature]`;
//! the signature covers a domain tag, the tenant id, the record count, the
//! segment holding the last covered record, whether this checkpoint closes
//! that segment, and the chain hash after the last covered record (the chain
//! runs on across segments). Every closed segment gets a closing checkpoint
//! (`closes = 1`, `count` = the records up to the segment's end); periodic
//! ones (`closes = 0`) may fall anywhere. A checkpoint is written only after
//! the records it covers are fsynced, so it never runs ahead of the log.
//! Anyone holding the public key can tell whether the log still matches what
//! was signed, even without the tenant's data key (after a shred).
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::StoreError;
use crate::store::LogRead;

pub const KEY_FILE: &str = "checkpoint.key";
pub const PUB_FILE: &str = "checkpoint.pub";
pub const FILE: &str = "checkpoints";
pub const ENTRY: usize = 8 + 8 + 1 + 32 + 64;
const DOMAIN: &[u8] = b"bulkhead-audit-checkpoint-v2\0";

/// One signed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Records covered (all segments up to and including `segment`).
    pub count: u64,
    /// The segment holding the last covered record.
    pub segment: u64,
    /// Whether this checkpoint closes `segment` (it ends at `count`).
    pub closes: bool,
    pub hash: [u8; 32],
    pub sig: [u8; 64],
}

impl Checkpoint {
    fn message(&self, tenant: &str) -> Vec<u8> {
        message(tenant, self.count, self.segment, self.closes, &self.hash)
    }
}

pub(crate) fn message(
    tenant: &str,
    count: u64,
    segment: u64,
    closes: bool,
    hash: &[u8; 32],
) -> Vec<u8> {
    [
        DOMAIN,
        tenant.as_bytes(),
        b"\0",
        &count.to_be_bytes(),
        &segment.to_be_bytes(),
        &[u8::from(closes)],
        hash,
    ]
    .concat()
}

/// The audit-service's checkpoint signing key.
pub struct CheckpointSigner {
    key: SigningKey,
}

impl CheckpointSigner {
    /// Reads `<root>/checkpoint.key`, creating it (0600) and the public key
    /// file on first start.
    pub fn load_or_create(root: &Path) -> Result<Self, StoreError> {
        let path = root.join(KEY_FILE);
        if !path.exists() {
            let seed: [u8; 32] = rand::random();
            crate::store::write_private(&path, hex::encode(seed).as_bytes())?;
            tracing::info!(path = %path.display(), "created a new checkpoint signing key");
        }
        let text = std::fs::read_to_string(&path).map_err(|e| StoreError::io(&path, e))?;
        let seed: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                StoreError::Corrupt(format!("{}: not 64 hex characters", path.display()))
            })?;
        let me = Self {
            key: SigningKey::from_bytes(&seed),
        };
        let pubp = root.join(PUB_FILE);
        let pub_hex = hex::encode(me.verifying_key().as_bytes());
        if std::fs::read_to_string(&pubp)
            .ok()
            .as_deref()
            .map(str::trim)
            != Some(&pub_hex)
        {
            std::fs::write(&pubp, &pub_hex).map_err(|e| StoreError::io(&pubp, e))?;
        }
        Ok(me)
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs a checkpoint of `count` records (the last in `segment`, which
    /// it closes when `closes`), appends it to the tenant's folder and
    /// fsyncs it.
    pub fn append(
        &self,
        tenant_dir: &Path,
        tenant: &str,
        count: u64,
        segment: u64,
        closes: bool,
        hash: &[u8; 32],
    ) -> Result<(), StoreError> {
        let sig = self
            .key
            .sign(&message(tenant, count, segment, closes, hash))
            .to_bytes();
        let path = tenant_dir.join(FILE);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let entry = [
            &count.to_be_bytes()[..],
            &segment.to_be_bytes(),
            &[u8::from(closes)],
            hash,
            &sig,
        ]
        .concat();
        f.write_all(&entry).map_err(|e| StoreError::io(&path, e))?;
        f.sync_data().map_err(|e| StoreError::io(&path, e))?;
        tracing::debug!(tenant, count, segment, closes, "wrote a signed checkpoint");
        Ok(())
    }
}

/// Parses a hex Ed25519 public key.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| "a checkpoint public key is 64 hex characters (Ed25519)".to_string())
}

/// The public key in `<root>/checkpoint.pub`, if there is one.
pub fn load_public_key(root: &Path) -> Result<Option<VerifyingKey>, StoreError> {
    let path = root.join(PUB_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) => parse_public_key(&t)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(&path, e)),
    }
}

/// Every checkpoint of a tenant, oldest first (a torn final entry, from a
/// crash while writing it, is ignored).
pub fn read_all(tenant_dir: &Path) -> Result<Vec<Checkpoint>, StoreError> {
    let path = tenant_dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(StoreError::io(&path, e)),
    };
    Ok(bytes
        .chunks_exact(ENTRY)
        .map(|c| Checkpoint {
            count: u64::from_be_bytes(c[..8].try_into().expect("8 bytes")),
            segment: u64::from_be_bytes(c[8..16].try_into().expect("8 bytes")),
            closes: c[16] != 0,
            hash: c[17..49].try_into().expect("32 bytes"),
            sig: c[49..].try_into().expect("64 bytes"),
        })
        .collect())
}

/// Checks every checkpoint's signature and that the log still matches each
/// one, and that every segment but the last was closed by a signed
/// checkpoint at its end. The error names the checkpoint and the first
/// record (or range of records) that no longer matches.
pub fn check(
    vk: &VerifyingKey,
    tenant: &str,
    cps: &[Checkpoint],
    log: &LogRead,
) -> Result<(), String> {
    let mut prev = 0u64;
    for (k, cp) in cps.iter().enumerate() {
        let sig = Signature::from_bytes(&cp.sig);
        if vk.verify_strict(&cp.message(tenant), &sig).is_err() {
            return Err(format!(
                "checkpoint #{k} (at {} records) has an invalid signature: the checkpoint file was altered or signed with another key",
                cp.count
            ));
        }
        if cp.count < prev {
            return Err(format!(
                "checkpoint #{k} covers fewer records than the one before it"
            ));
        }
        if cp.count == 0 {
            continue;
        }
        if log.count < cp.count {
            return Err(format!(
                "record {} is missing: signed checkpoint #{k} covers {} records, the log has only {} valid ones (records removed)",
                log.count, cp.count, log.count
            ));
        }
        if log.chain[(cp.count - 1) as usize] != cp.hash {
            return Err(format!(
                "the log differs from signed checkpoint #{k}: a record in {prev}..={} was altered, removed or reordered and the chain rewritten",
                cp.count - 1
            ));
        }
        let seg = log.segments.iter().find(|s| s.number == cp.segment);
        let fits = seg.is_some_and(|s| {
            s.first < cp.count
                && cp.count <= s.first + s.count
                && (!cp.closes || s.end() == cp.count)
        });
        if !fits {
            let now = seg
                .map(|s| format!("holds records {}..{}", s.first, s.end()))
                .unwrap_or_else(|| "is missing".into());
            return Err(format!(
                "signed checkpoint #{k} {} segment {} at {} records, but that segment {now} (records moved between segments)",
                if cp.closes { "closes" } else { "ends in" },
                crate::store::segment::file_name(cp.segment),
                cp.count
            ));
        }
        prev = cp.count;
    }
    let last = log.segments.last().map(|s| s.number);
    for s in &log.segments {
        if Some(s.number) != last && !cps.iter().any(|c| c.closes && c.segment == s.number) {
            return Err(format!(
                "segment {} (records {}..{}) was closed without a signed checkpoint (checkpoint removed?)",
                crate::store::segment::file_name(s.number),
                s.first,
                s.end()
            ));
        }
    }
    Ok(())
}
