//! Signed heads leave the host. The checkpoint signing key sits beside the
//! log it signs, so whoever controls the audit host could rewrite a log and
//! re-sign it unseen by `verify` alone. A *signed head* — the latest
//! checkpoint of a tenant's log with the public key that signed it — is
//! therefore handed out with every query answer and report, and exported by
//! `bulkhead audit heads`; kept elsewhere, it lets `bulkhead-audit verify
//! --head` prove later that the log still holds exactly what was signed then:
//! a rewritten record changes the chain hash at the head's count, and a
//! truncated log (even one whose last segment was deleted together with its
//! checkpoint) no longer reaches that count.
use std::path::Path;

use bulkhead_proto::audit::SignedHead;
use ed25519_dalek::{Signature, VerifyingKey};

use crate::StoreError;
use crate::checkpoint;
use crate::store::{AuditStore, LogRead, incarnation};

/// The latest signed head of `tenant`'s current log, if it has a checkpoint.
pub fn head(store: &AuditStore, tenant: &str) -> Result<Option<SignedHead>, StoreError> {
    let Some(vk) = checkpoint::load_public_key(store.root())? else {
        return Ok(None);
    };
    let dir = store.tenant_dir(tenant);
    let cps = checkpoint::read_all(&dir)?;
    Ok(cps.last().map(|cp| SignedHead {
        tenant_id: tenant.to_string(),
        tenant_uid: incarnation::recorded(&dir).unwrap_or_default(),
        count: cp.count,
        segment: cp.segment,
        closes: cp.closes,
        hash: cp.hash.to_vec(),
        signature: cp.sig.to_vec(),
        public_key: vk.to_bytes().to_vec(),
        exported_unix_ms: crate::access::now_ms(),
    }))
}

/// Checks `head`'s own signature (with the key it carries, or `key` when
/// given: a key kept elsewhere) and then that `log` still holds what it
/// signed. Why not, otherwise.
pub fn check(head: &SignedHead, key: Option<&VerifyingKey>, log: &LogRead) -> Result<(), String> {
    let carried = <[u8; 32]>::try_from(head.public_key.as_slice())
        .ok()
        .and_then(|b| VerifyingKey::from_bytes(&b).ok());
    let vk = key
        .copied()
        .or(carried)
        .ok_or("the head carries no valid public key")?;
    let hash: [u8; 32] = head
        .hash
        .as_slice()
        .try_into()
        .map_err(|_| "the head's hash is not 32 bytes")?;
    let sig: [u8; 64] = head
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| "the head's signature is not 64 bytes")?;
    let msg = checkpoint::message(
        &head.tenant_id,
        head.count,
        head.segment,
        head.closes,
        &hash,
    );
    vk.verify_strict(&msg, &Signature::from_bytes(&sig))
        .map_err(|_| {
            "the head's signature does not verify: not a head this key signed".to_string()
        })?;
    if head.count == 0 {
        return Ok(());
    }
    if log.count < head.count {
        return Err(format!(
            "the log was truncated: the head signed {} records, the log now holds {} valid ones",
            head.count, log.count
        ));
    }
    if log.chain[(head.count - 1) as usize] != hash {
        return Err(format!(
            "the log was rewritten: its chain after record {} differs from the signed head",
            head.count - 1
        ));
    }
    Ok(())
}

/// Checks `head` against `tenant`'s log in `store` (structure only when the
/// tenant was shredded); a head of another incarnation of the id is checked
/// against that incarnation's retired folder.
pub fn verify(store_root: &Path, store: &AuditStore, head: &SignedHead) -> Result<(), String> {
    let tenant = head.tenant_id.as_str();
    if !bulkhead_proto::names::valid_tenant_id(tenant) {
        return Err(format!("the head names an invalid tenant id {tenant:?}"));
    }
    let current = incarnation::recorded(&store.tenant_dir(tenant)).unwrap_or_default();
    if !head.tenant_uid.is_empty() && head.tenant_uid != current {
        let retired = incarnation::retired_dir(store_root, tenant, &head.tenant_uid);
        if !retired.exists() {
            return Err(format!(
                "the log of incarnation {} of {tenant} is gone (neither current nor retired)",
                head.tenant_uid
            ));
        }
        let log =
            crate::store::segment::read_all(&retired, tenant, None).map_err(|e| e.to_string())?;
        return check(head, None, &log);
    }
    let log = store.read_structure(tenant).map_err(|e| e.to_string())?;
    check(head, None, &log)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use bulkhead_proto::audit::AuditEvent;

    use super::*;
    use crate::keys::{KeyWrapper, LocalMasterKey};
    use crate::store::StoreOptions;

    fn master() -> Arc<dyn KeyWrapper> {
        Arc::new(LocalMasterKey::from_bytes(&[5; 32]))
    }

    /// A log of `n` records of acme, 5 per segment, checkpointed every 5.
    fn log(root: &Path, n: usize, tag: &str) -> AuditStore {
        let opts = StoreOptions {
            checkpoint_every: 5,
            segment_records: 5,
            ..StoreOptions::default()
        };
        let mut s = AuditStore::open_with(root, master(), opts).unwrap();
        for i in 0..n {
            let ev = AuditEvent {
                request_id: format!("{tag}{i}"),
                tenant_id: "acme".into(),
                ..Default::default()
            };
            s.append(&ev).unwrap();
        }
        s.sync().unwrap();
        s
    }

    fn plain_verify(root: &Path) -> bool {
        let store = AuditStore::open_readonly(root, master());
        let vk = checkpoint::load_public_key(root).unwrap();
        crate::verify::tenant(&store, vk.as_ref(), "acme")
            .unwrap()
            .ok
    }

    #[test]
    fn a_head_kept_elsewhere_catches_a_truncated_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = log(dir.path(), 12, "r");
        let head = head(&store, "acme").unwrap().expect("a signed head");
        assert_eq!(head.count, 10);
        assert_eq!(verify(dir.path(), &store.reader(), &head), Ok(()));
        drop(store);
        // The last segments go, together with their checkpoints: what is
        // left is a shorter log that verifies on its own.
        let t = dir.path().join("tenants/acme");
        for seg in ["000002.log", "000003.log"] {
            std::fs::remove_file(t.join("segments").join(seg)).unwrap();
        }
        let cps = t.join(checkpoint::FILE);
        let f = std::fs::OpenOptions::new().write(true).open(&cps).unwrap();
        f.set_len(checkpoint::ENTRY as u64).unwrap();
        assert!(
            plain_verify(dir.path()),
            "the truncation is invisible without the head"
        );
        let store = AuditStore::open_readonly(dir.path(), master());
        let e = verify(dir.path(), &store, &head).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn a_head_kept_elsewhere_catches_a_log_rewritten_and_re_signed() {
        let dir = tempfile::tempdir().unwrap();
        let store = log(dir.path(), 12, "r");
        let head = head(&store, "acme").unwrap().unwrap();
        drop(store);
        // Whoever holds the host (and so the signing key) writes another
        // history of the same length and signs it afresh.
        std::fs::remove_dir_all(dir.path().join("tenants/acme")).unwrap();
        drop(log(dir.path(), 12, "forged"));
        assert!(
            plain_verify(dir.path()),
            "the rewrite is invisible without the head"
        );
        let store = AuditStore::open_readonly(dir.path(), master());
        let e = verify(dir.path(), &store, &head).unwrap_err();
        assert!(e.contains("rewritten"), "{e}");
        // A head whose signature was tampered with is refused as such.
        let mut bad = head.clone();
        bad.count += 1;
        assert!(
            check(&bad, None, &store.read_structure("acme").unwrap())
                .unwrap_err()
                .contains("signature")
        );
    }
}
