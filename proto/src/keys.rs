//! API keys as every service sees them: the public prefix and the hash under
//! which the control-plane stores a key (the key itself is never stored).
//!
//! Keys are 192-bit random secrets (`bh_` + 32 base62 characters), so a plain
//! SHA-256 is a sufficient one-way function: there is nothing to brute-force.
use sha2::{Digest, Sha256};

/// Characters of a key that are safe to show and log (`bh_` + 6).
pub const PREFIX_LEN: usize = 9;
/// Every key starts with this.
pub const KEY_PREFIX: &str = "bh_";
/// Longest key accepted at all; longer input is refused before hashing.
pub const MAX_KEY_LEN: usize = 128;

/// The KV key under which the record of `api_key` is stored.
pub fn key_hash(api_key: &str) -> String {
    hex::encode(Sha256::digest(api_key.as_bytes()))
}

/// The loggable prefix of a key.
pub fn key_prefix(api_key: &str) -> String {
    api_key.chars().take(PREFIX_LEN).collect()
}

/// Whether the string has the shape of a Bulkhead key (not whether it is valid).
pub fn well_formed(api_key: &str) -> bool {
    api_key.len() <= MAX_KEY_LEN
        && api_key.len() > KEY_PREFIX.len()
        && api_key.starts_with(KEY_PREFIX)
        && api_key[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_prefix() {
        let k = "bh_abcdefghijklmnopqrstuvwxyz012345";
        assert!(well_formed(k));
        assert_eq!(key_prefix(k), "bh_abcdef");
        assert_eq!(key_hash(k).len(), 64);
        assert_ne!(key_hash(k), key_hash("bh_abcdefghijklmnopqrstuvwxyz012346"));
        assert!(!well_formed("sk-abc"));
        assert!(!well_formed("bh_"));
        assert!(!well_formed("bh_a b"));
        assert!(!well_formed(&format!("bh_{}", "a".repeat(200))));
    }
}
