//! Tenant data keys and the master key that wraps them. The wrapping is
//! behind [`KeyWrapper`] so a KMS can take the master key's place.
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};

use crate::StoreError;

/// Wraps and unwraps tenant data keys. `context` (the tenant id) is bound
/// into the wrapping, so a wrapped key moved to another tenant won't open.
pub trait KeyWrapper: Send + Sync {
    fn wrap(&self, context: &str, key: &[u8; 32]) -> Result<Vec<u8>, StoreError>;
    fn unwrap_key(&self, context: &str, wrapped: &[u8]) -> Result<[u8; 32], StoreError>;
}

/// A 256-bit master key held by this process (from a file or environment).
pub struct LocalMasterKey {
    cipher: Aes256Gcm,
}

const WRAP_AAD: &str = "bulkhead-audit-data-key-v1:";

impl LocalMasterKey {
    pub fn from_bytes(key: &[u8; 32]) -> Self {
        Self {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)),
        }
    }

    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Result<Self, StoreError> {
        let bytes = hex::decode(text.trim()).map_err(|_| {
            StoreError::MasterKey("the master key must be 64 hex characters".into())
        })?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            StoreError::MasterKey("the master key must be 32 bytes (64 hex characters)".into())
        })?;
        Ok(Self::from_bytes(&key))
    }

    /// Reads the key file; with `create`, makes a new random key (mode 0600)
    /// when the file does not exist.
    pub fn from_file(path: &Path, create: bool) -> Result<Self, StoreError> {
        if create && !path.exists() {
            let key: [u8; 32] = rand::random();
            crate::store::write_private(path, hex::encode(key).as_bytes())?;
            tracing::info!(path = %path.display(), "created a new audit master key");
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| StoreError::MasterKey(format!("cannot read {}: {e}", path.display())))?;
        Self::from_hex(&text)
    }
}

impl KeyWrapper for LocalMasterKey {
    fn wrap(&self, context: &str, key: &[u8; 32]) -> Result<Vec<u8>, StoreError> {
        let nonce: [u8; 12] = rand::random();
        let aad = format!("{WRAP_AAD}{context}");
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: key,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Crypto("wrapping a data key failed".into()))?;
        Ok([nonce.as_slice(), &ct].concat())
    }

    fn unwrap_key(&self, context: &str, wrapped: &[u8]) -> Result<[u8; 32], StoreError> {
        if wrapped.len() < 12 {
            return Err(StoreError::Crypto("wrapped key is truncated".into()));
        }
        let (nonce, ct) = wrapped.split_at(12);
        let aad = format!("{WRAP_AAD}{context}");
        let key = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| {
                StoreError::Crypto(format!(
                    "cannot unwrap the data key of {context}: wrong master key or altered file"
                ))
            })?;
        key.try_into()
            .map_err(|_| StoreError::Crypto("unwrapped key has the wrong length".into()))
    }
}

/// Encrypts and decrypts one tenant's records.
pub struct DataKey {
    cipher: Aes256Gcm,
}

impl DataKey {
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)),
        }
    }

    /// Returns (random 96-bit nonce, ciphertext with tag).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<([u8; 12], Vec<u8>), StoreError> {
        let nonce: [u8; 12] = rand::random();
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| StoreError::Crypto("encryption failed".into()))?;
        Ok((nonce, ct))
    }

    pub fn open(&self, nonce: &[u8; 12], aad: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_binds_the_tenant() {
        let m = LocalMasterKey::from_bytes(&[7; 32]);
        let w = m.wrap("acme", &[1; 32]).unwrap();
        assert_eq!(m.unwrap_key("acme", &w).unwrap(), [1; 32]);
        assert!(m.unwrap_key("globex", &w).is_err());
        assert!(
            LocalMasterKey::from_bytes(&[8; 32])
                .unwrap_key("acme", &w)
                .is_err()
        );
        assert!(LocalMasterKey::from_hex("zz").is_err());
        assert!(LocalMasterKey::from_hex(&"ab".repeat(31)).is_err());
    }
}
