//! A tenant's data keys, one per key epoch.
//!
//! AES-GCM with random 96-bit nonces must not encrypt more than 2^32
//! records under one key (NIST SP 800-38D), so a tenant's data key is
//! rotated after `max_records_per_key` records (default 2^24, never more
//! than [`MAX_RECORDS_PER_KEY_CAP`] = 2^28). Each epoch's key is stored as
//! `<tenant>/key.<epoch>.wrapped`, wrapped by the master key with
//! `<tenant>#<epoch>` as context (so a key file moved to another tenant or
//! epoch won't unwrap). Every record frame names the epoch of its key.
//! Epochs start at 1 and only grow; old keys stay to decrypt old records
//! until the tenant is crypto-shredded, which destroys them all.
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::StoreError;
use crate::keys::{DataKey, KeyWrapper};

/// Default records encrypted under one data key before it is rotated.
pub const DEFAULT_MAX_RECORDS_PER_KEY: u64 = 1 << 24;
/// Hard upper bound on records per key, whatever is configured: far below
/// the 2^32 random-nonce limit (nonce collision odds about 2^-41).
pub const MAX_RECORDS_PER_KEY_CAP: u64 = 1 << 28;

/// `key.7.wrapped`.
pub fn file_name(epoch: u32) -> String {
    format!("key.{epoch}.wrapped")
}

fn context(tenant: &str, epoch: u32) -> String {
    format!("{tenant}#{epoch}")
}

/// The paths of every key file of a tenant (what shredding destroys).
pub fn key_files(tenant_dir: &Path) -> Result<Vec<(u32, PathBuf)>, StoreError> {
    let entries = match std::fs::read_dir(tenant_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(StoreError::io(tenant_dir, e)),
    };
    let mut v: Vec<(u32, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n = name.strip_prefix("key.")?.strip_suffix(".wrapped")?;
            let epoch = n
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| n.parse().ok())??;
            Some((epoch, e.path()))
        })
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// A tenant's unwrapped data keys.
#[derive(Default)]
pub struct KeyRing {
    keys: BTreeMap<u32, DataKey>,
}

impl KeyRing {
    /// Unwraps every key file of the tenant.
    pub fn load(
        tenant_dir: &Path,
        tenant: &str,
        wrapper: &dyn KeyWrapper,
    ) -> Result<Self, StoreError> {
        let mut keys = BTreeMap::new();
        for (epoch, path) in key_files(tenant_dir)? {
            let w = std::fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
            let key = wrapper
                .unwrap_key(&context(tenant, epoch), &w)
                .map_err(|e| StoreError::Crypto(format!("{}: {e}", path.display())))?;
            keys.insert(epoch, DataKey::new(&key));
        }
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn get(&self, epoch: u32) -> Option<&DataKey> {
        self.keys.get(&epoch)
    }

    /// The newest epoch, if any.
    pub fn current(&self) -> Option<u32> {
        self.keys.keys().next_back().copied()
    }

    /// Makes the next epoch's key and stores it wrapped (fsynced, with the
    /// folder) before it is ever used. Returns the new epoch.
    pub fn rotate(
        &mut self,
        tenant_dir: &Path,
        tenant: &str,
        wrapper: &dyn KeyWrapper,
    ) -> Result<u32, StoreError> {
        let epoch = match self.current() {
            None => 1,
            Some(e) => e
                .checked_add(1)
                .ok_or_else(|| StoreError::Crypto(format!("{tenant}: no key epochs left")))?,
        };
        std::fs::create_dir_all(tenant_dir).map_err(|e| StoreError::io(tenant_dir, e))?;
        let key: [u8; 32] = rand::random();
        let path = tenant_dir.join(file_name(epoch));
        if path.exists() {
            return Err(StoreError::Corrupt(format!(
                "{} exists but was not loaded",
                path.display()
            )));
        }
        super::write_private(&path, &wrapper.wrap(&context(tenant, epoch), &key)?)?;
        File::open(tenant_dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::io(tenant_dir, e))?;
        self.keys.insert(epoch, DataKey::new(&key));
        tracing::info!(tenant, epoch, "new audit data key epoch");
        Ok(epoch)
    }
}
