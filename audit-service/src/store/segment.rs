//! Segment files and the frames in them.
//!
//! A tenant's log is the concatenation of `<tenant>/segments/000001.log`,
//! `000002.log`, … (numbered from 1, no gaps). Each holds whole frames
//! `[u32 len][u64 seq][u32 key epoch][32-byte prev_hash][12-byte nonce][ciphertext]`
//! (big-endian, `len` counts the bytes after itself). Sequence numbers and
//! the hash chain run on across segments: the first record of a segment
//! links to the last record of the one before.
use std::path::{Path, PathBuf};

use bulkhead_proto::Message;
use bulkhead_proto::audit::AuditEvent;
use sha2::{Digest, Sha256};

use super::keyring::KeyRing;
use super::{Frame, LogRead, aad};
use crate::StoreError;

pub const DIR: &str = "segments";
pub(crate) const HEADER: usize = 4 + 8 + 4 + 32 + 12;
/// Largest frame accepted when reading (guards against a corrupt length).
const MAX_FRAME: usize = 1 << 20;

/// Where one segment's records lie in the whole log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSpan {
    pub number: u64,
    /// Index (= sequence number) of its first record.
    pub first: u64,
    /// Valid records in it.
    pub count: u64,
}

impl SegmentSpan {
    /// Index one past its last record.
    pub fn end(&self) -> u64 {
        self.first + self.count
    }
}

/// `000042.log`.
pub fn file_name(number: u64) -> String {
    format!("{number:06}.log")
}

pub fn path(tenant_dir: &Path, number: u64) -> PathBuf {
    tenant_dir.join(DIR).join(file_name(number))
}

/// The segment numbers present in a tenant's folder, ascending.
pub fn list(tenant_dir: &Path) -> Result<Vec<u64>, StoreError> {
    let dir = tenant_dir.join(DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(StoreError::io(&dir, e)),
    };
    let mut v: Vec<u64> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let num = name.strip_suffix(".log")?;
            (num.len() >= 6 && num.bytes().all(|b| b.is_ascii_digit()))
                .then(|| num.parse().ok())
                .flatten()
        })
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// Reads and checks every segment of a tenant's log, in order: frame
/// structure, sequence numbers, key epochs (never decreasing), chain links
/// and (with the keys) tags.
pub fn read_all(
    tenant_dir: &Path,
    tenant: &str,
    keys: Option<&KeyRing>,
) -> Result<LogRead, StoreError> {
    let numbers = list(tenant_dir)?;
    let mut out = LogRead::default();
    for (i, &number) in numbers.iter().enumerate() {
        let expected = i as u64 + 1;
        if number != expected {
            out.first_bad = Some((
                out.count,
                format!(
                    "segment {} is missing: the records from {} on were removed",
                    file_name(expected),
                    out.count
                ),
            ));
            break;
        }
        let last = i + 1 == numbers.len();
        let p = path(tenant_dir, number);
        let bytes = std::fs::read(&p).map_err(|e| StoreError::io(&p, e))?;
        let span = read_segment(&bytes, number, last, tenant, keys, &mut out)?;
        out.segments.push(span);
        if out.first_bad.is_some() {
            break;
        }
    }
    Ok(out)
}

fn read_segment(
    bytes: &[u8],
    number: u64,
    last: bool,
    tenant: &str,
    keys: Option<&KeyRing>,
    out: &mut LogRead,
) -> Result<SegmentSpan, StoreError> {
    let mut span = SegmentSpan {
        number,
        first: out.count,
        count: 0,
    };
    out.valid_len = 0;
    let name = file_name(number);
    let mut pos = 0usize;
    while pos < bytes.len() {
        let idx = out.count;
        let rest = &bytes[pos..];
        let len = (rest.len() >= HEADER)
            .then(|| u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize);
        if len.is_some_and(|len| !(HEADER - 4 + 16..=MAX_FRAME).contains(&len)) {
            out.first_bad = Some((idx, format!("impossible frame length (in {name})")));
            break;
        }
        if len.is_none_or(|len| rest.len() < 4 + len) {
            if last {
                out.torn_tail = Some(rest.len() as u64);
            } else {
                out.first_bad = Some((
                    idx,
                    format!("closed segment {name} ends in a partial frame (truncated)"),
                ));
            }
            break;
        }
        let frame = &rest[..4 + len.expect("checked")];
        let seq = u64::from_be_bytes(frame[4..12].try_into().expect("8 bytes"));
        let epoch = u32::from_be_bytes(frame[12..16].try_into().expect("4 bytes"));
        let prev: [u8; 32] = frame[16..48].try_into().expect("32 bytes");
        let nonce: [u8; 12] = frame[48..60].try_into().expect("12 bytes");
        if seq != idx {
            let why = if seq > idx {
                format!(
                    "sequence {seq} where {idx} was expected: records {idx}..{seq} were removed (in {name})"
                )
            } else {
                format!(
                    "sequence {seq} where {idx} was expected: records reordered or replayed (in {name})"
                )
            };
            out.first_bad = Some((idx, why));
            break;
        }
        if prev != out.last_hash {
            out.first_bad = Some((
                idx,
                format!("hash chain broken: a record before it was removed or altered (in {name})"),
            ));
            break;
        }
        if epoch == 0 || epoch < out.last_epoch {
            out.first_bad = Some((
                idx,
                format!(
                    "key epoch {epoch} after epoch {} (record altered, in {name})",
                    out.last_epoch
                ),
            ));
            break;
        }
        if let Some(keys) = keys {
            let Some(key) = keys.get(epoch) else {
                out.first_bad = Some((
                    idx,
                    format!(
                        "encrypted under key epoch {epoch}, whose key file is missing (in {name})"
                    ),
                ));
                break;
            };
            let Some(plain) = key.open(&nonce, &aad(tenant, seq, epoch, &prev), &frame[HEADER..])
            else {
                out.first_bad = Some((
                    idx,
                    format!("authentication tag mismatch: record altered (in {name})"),
                ));
                break;
            };
            let event = AuditEvent::decode(plain.as_slice()).map_err(|_| {
                StoreError::Corrupt(format!("{tenant}: record {idx} does not decode"))
            })?;
            out.frames.push(Frame { seq, epoch, event });
        }
        out.last_hash = Sha256::digest(frame).into();
        out.last_epoch = epoch;
        out.chain.push(out.last_hash);
        out.count += 1;
        span.count += 1;
        pos += frame.len();
        out.valid_len = pos as u64;
    }
    Ok(span)
}
