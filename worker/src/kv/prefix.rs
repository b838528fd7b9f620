//! Prefix-cache keys: chained block hashes salted per tenant.
//!
//! The salt of a tenant is `HMAC-SHA-256(worker secret, tenant id)`, derived
//! on the worker from the tenant id of the authenticated router's request —
//! never from anything a client sends. The hash of block `i` is
//! `SHA-256(h[i-1] || token ids of block i as u32 little-endian)` with
//! `h[-1] = salt`, so two tenants with byte-identical prompts get unrelated
//! keys and can never share a block.
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// A prefix-cache key (the chained, salted hash of one full block).
pub type BlockHash = [u8; 32];

/// The per-process secret every tenant salt is derived from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PrefixSecret([u8; 32]);

impl std::fmt::Debug for PrefixSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrefixSecret(<redacted>)")
    }
}

impl Default for PrefixSecret {
    fn default() -> Self {
        Self::random()
    }
}

impl PrefixSecret {
    /// A fresh random secret (the default: caches never outlive the process).
    pub fn random() -> Self {
        Self(rand::random())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Reads a secret file: at least 16 bytes of key material (surrounding
    /// whitespace ignored), hashed down to 32 bytes.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let raw =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let trimmed = raw.trim_ascii();
        if trimmed.len() < 16 {
            return Err(format!(
                "prefix-cache secret file {} holds {} bytes; at least 16 are required",
                path.display(),
                trimmed.len()
            ));
        }
        Ok(Self(Sha256::digest(trimmed).into()))
    }

    /// `HMAC-SHA-256(secret, tenant id)`.
    pub fn tenant_salt(&self, tenant: &str) -> TenantSalt {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of any length");
        mac.update(tenant.as_bytes());
        TenantSalt(mac.finalize().into_bytes().into())
    }
}

/// One tenant's salt (never leaves the worker).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TenantSalt([u8; 32]);

impl std::fmt::Debug for TenantSalt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TenantSalt(<redacted>)")
    }
}

impl TenantSalt {
    /// The chained hashes of every FULL block of `tokens` (a trailing
    /// partial block gets none).
    pub fn block_hashes(&self, tokens: &[u32], block_size: usize) -> Vec<BlockHash> {
        let mut prev: BlockHash = self.0;
        let mut out = Vec::with_capacity(tokens.len() / block_size.max(1));
        if block_size == 0 {
            return out;
        }
        for chunk in tokens.chunks_exact(block_size) {
            let mut h = Sha256::new();
            h.update(prev);
            for t in chunk {
                h.update(t.to_le_bytes());
            }
            prev = h.finalize().into();
            out.push(prev);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salts_differ_per_tenant_and_per_secret() {
        let s = PrefixSecret::from_bytes([1; 32]);
        let toks: Vec<u32> = (0..10).collect();
        let a = s.tenant_salt("a").block_hashes(&toks, 4);
        let b = s.tenant_salt("b").block_hashes(&toks, 4);
        assert_eq!(a.len(), 2);
        assert!(a.iter().all(|h| !b.contains(h)));
        assert_eq!(a, s.tenant_salt("a").block_hashes(&toks[..8], 4));
        let other = PrefixSecret::from_bytes([2; 32]).tenant_salt("a");
        assert_ne!(a, other.block_hashes(&toks, 4));
        // Chained: the second block's key depends on the first block.
        let mut t2 = toks.clone();
        t2[0] = 99;
        let c = s.tenant_salt("a").block_hashes(&t2, 4);
        assert_ne!(a[1], c[1]);
        assert!(!format!("{s:?}").contains('1'));
    }

    #[test]
    fn secret_file_needs_enough_bytes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        std::fs::write(&p, "short\n").unwrap();
        assert!(
            PrefixSecret::from_file(&p)
                .unwrap_err()
                .contains("at least 16")
        );
        std::fs::write(&p, "0123456789abcdef0123\n").unwrap();
        let a = PrefixSecret::from_file(&p).unwrap();
        std::fs::write(&p, "0123456789abcdef0123").unwrap();
        assert_eq!(a, PrefixSecret::from_file(&p).unwrap());
    }
}
