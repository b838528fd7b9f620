//! Crypto-shredding: erasing a tenant's audit records by destroying the only
//! copies of its data keys (every key epoch). Each wrapped key file is
//! overwritten with random bytes then zeros, fsynced, and deleted, and a `shredded` marker is left in its place
//! (fsynced, with the folder). The log itself is kept untouched, so its hash
//! chain and signed checkpoints still verify — but no record can be
//! decrypted again, by anyone, with any master key.
//!
//! Limits: overwriting in place does not defeat copies made elsewhere
//! (backups, snapshots, copy-on-write or flash remapping below the file
//! system); those must be handled by the storage's own retention. The
//! shredded tenant's log is closed: new events for it are refused (and
//! terminated with an error log line) by the consumer.
use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::path::Path;

use bulkhead_proto::names::valid_tenant_id;

use crate::StoreError;
use crate::store::keyring::key_files;

pub const MARKER: &str = "shredded";

/// Whether `<root>/tenants/<tenant>` was shredded.
pub fn is_shredded(root: &Path, tenant: &str) -> bool {
    root.join("tenants").join(tenant).join(MARKER).exists()
}

/// What `shred` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Shredded {
    /// This many data keys (one per key epoch) were destroyed now.
    Now(usize),
    /// The tenant had already been shredded.
    Already,
}

/// Destroys every data key of `tenant` under `root` (the audit-service must
/// not have the tenant's log open; the running service does this through
/// `AuditStore::shred`).
pub fn shred(root: &Path, tenant: &str) -> Result<Shredded, StoreError> {
    if !valid_tenant_id(tenant) {
        return Err(StoreError::Invalid(format!("invalid tenant id {tenant:?}")));
    }
    let dir = root.join("tenants").join(tenant);
    let keys = key_files(&dir)?;
    let marker = dir.join(MARKER);
    if keys.is_empty() {
        if marker.exists() {
            return Ok(Shredded::Already);
        }
        return Err(StoreError::UnknownTenant(tenant.to_string()));
    }
    // The marker first: from here on the store never recreates a key.
    let note = format!("{{\"shredded_unix_ms\":{}}}\n", crate::access::now_ms());
    crate::store::write_private(&marker, note.as_bytes())?;
    for (_, key) in &keys {
        destroy(key)?;
    }
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(&dir, e))?;
    tracing::info!(
        tenant,
        epochs = keys.len(),
        "crypto-shredded the tenant's audit data keys"
    );
    Ok(Shredded::Now(keys.len()))
}

/// Overwrites a key file (random, then zeros, each fsynced) and deletes it.
fn destroy(key: &Path) -> Result<(), StoreError> {
    let len = std::fs::metadata(key)
        .map_err(|e| StoreError::io(key, e))?
        .len() as usize;
    let mut f = OpenOptions::new()
        .write(true)
        .open(key)
        .map_err(|e| StoreError::io(key, e))?;
    for pass in 0..2 {
        let fill: Vec<u8> = if pass == 0 {
            (0..len).map(|_| rand::random::<u8>()).collect()
        } else {
            vec![0; len]
        };
        f.seek(std::io::SeekFrom::Start(0))
            .map_err(|e| StoreError::io(key, e))?;
        f.write_all(&fill).map_err(|e| StoreError::io(key, e))?;
        f.sync_all().map_err(|e| StoreError::io(key, e))?;
    }
    drop(f);
    std::fs::remove_file(key).map_err(|e| StoreError::io(key, e))
}
