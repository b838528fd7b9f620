//! Crypto-shredding and signed checkpoints, offline on the store's files and
//! through the `bulkhead-audit` binary's `shred` and `verify`.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bulkhead_audit::StoreError;
use bulkhead_audit::checkpoint;
use bulkhead_audit::keys::{KeyWrapper, LocalMasterKey};
use bulkhead_audit::store::AuditStore;
use bulkhead_audit::verify;
use bulkhead_proto::audit::AuditEvent;

const MASTER: [u8; 32] = [9; 32];

fn master() -> Arc<dyn KeyWrapper> {
    Arc::new(LocalMasterKey::from_bytes(&MASTER))
}

fn ev(tenant: &str, i: usize) -> AuditEvent {
    AuditEvent {
        request_id: format!("r{i}"),
        tenant_id: tenant.into(),
        model: "model-secretive".into(),
        prompt_tokens: 3,
        ..Default::default()
    }
}

/// A store with `n` records per tenant, one sync per record, closed cleanly.
fn fill(dir: &Path, tenants: &[&str], n: usize, every: u64) {
    let mut s = AuditStore::open(dir, master()).unwrap();
    s.set_checkpoint_every(every);
    for i in 0..n {
        for t in tenants {
            assert!(s.append(&ev(t, i)).unwrap());
        }
        s.sync().unwrap();
    }
    s.close().unwrap();
}

fn log(dir: &Path, t: &str) -> PathBuf {
    dir.join(format!("tenants/{t}/segments/000001.log"))
}

/// Byte offsets at which each frame starts.
fn frame_starts(bytes: &[u8]) -> Vec<usize> {
    let mut v = vec![];
    let mut pos = 0;
    while pos < bytes.len() {
        v.push(pos);
        pos += 4 + u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
    }
    v
}

fn bin(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead-audit"))
        .args(args)
        .env("BULKHEAD_AUDIT_MASTER_KEY", hex::encode(MASTER))
        .env_remove("BULKHEAD_AUDIT_MASTER_KEY_FILE")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn verdict(dir: &Path, t: &str) -> verify::Verdict {
    let store = AuditStore::open_readonly(dir, master());
    let vk = checkpoint::load_public_key(dir).unwrap();
    verify::tenant(&store, vk.as_ref(), t).unwrap()
}

#[test]
fn shredded_records_are_unrecoverable_but_the_chain_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fill(dir, &["acme", "globex"], 5, 1000);
    let d = dir.to_str().unwrap();
    let (ok, out) = bin(&["shred", "--tenant", "acme", "--data-dir", d]);
    assert!(ok, "{out}");
    assert!(!dir.join("tenants/acme/key.1.wrapped").exists());
    assert!(dir.join("tenants/acme/shredded").exists());
    let (ok, out) = bin(&["shred", "--tenant", "acme", "--data-dir", d]);
    assert!(ok && out.contains("already shredded"), "{out}");

    // The service still opens; acme is unreadable and closed, globex intact.
    let mut s = AuditStore::open(dir, master()).unwrap();
    assert!(matches!(s.read("acme"), Err(StoreError::Shredded(_))));
    assert!(matches!(
        s.append(&ev("acme", 99)),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(s.read("globex").unwrap().frames.len(), 5);
    drop(s);

    let (ok, out) = bin(&["verify", "--data-dir", d]);
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "acme: shredded: chain intact, 5 records in 1 segment, contents unrecoverable"
        ),
        "{out}"
    );
    assert!(
        out.contains("globex: ok, 5 records in 1 segment, chain intact"),
        "{out}"
    );
    assert!(out.contains("the latest at 5 records"), "{out}");

    // Tampering is still caught without the key: an altered chain link
    // names its record; an altered ciphertext names the next one.
    let original = std::fs::read(log(dir, "acme")).unwrap();
    let starts = frame_starts(&original);
    let mut b = original.clone();
    b[starts[2] + 16] ^= 1; // prev_hash of record 2
    std::fs::write(log(dir, "acme"), &b).unwrap();
    let (ok, out) = bin(&["verify", "--data-dir", d, "--tenant", "acme"]);
    assert!(!ok && out.contains("acme: FAILED at record 2"), "{out}");
    let mut b = original.clone();
    b[starts[3] - 1] ^= 1; // last ciphertext byte of record 2
    std::fs::write(log(dir, "acme"), &b).unwrap();
    let (ok, out) = bin(&["verify", "--data-dir", d, "--tenant", "acme"]);
    assert!(!ok && out.contains("acme: FAILED at record 3"), "{out}");
}

#[test]
fn checkpoints_are_signed_and_catch_removed_and_rewritten_records() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fill(dir, &["acme"], 10, 4);
    let mode = std::fs::metadata(dir.join(checkpoint::KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let cps = checkpoint::read_all(&dir.join("tenants/acme")).unwrap();
    assert_eq!(
        cps.iter().map(|c| c.count).collect::<Vec<_>>(),
        [4, 8, 10],
        "every 4 records and at close"
    );
    let v = verdict(dir, "acme");
    assert!(v.ok, "{}", v.line);
    assert!(
        v.line
            .contains("3 signed checkpoints verified, the latest at 10 records"),
        "{}",
        v.line
    );

    // The last record removed: the chain alone cannot tell, the checkpoint can.
    let original = std::fs::read(log(dir, "acme")).unwrap();
    let starts = frame_starts(&original);
    std::fs::write(log(dir, "acme"), &original[..starts[9]]).unwrap();
    let v = verdict(dir, "acme");
    assert!(
        !v.ok && v.line.contains("record 9 is missing"),
        "{}",
        v.line
    );
    assert!(matches!(
        AuditStore::open(dir, master()),
        Err(StoreError::Corrupt(_))
    ));
    let (ok, out) = bin(&["verify", "--data-dir", dir.to_str().unwrap()]);
    assert!(!ok && out.contains("record 9 is missing"), "{out}");
    std::fs::write(log(dir, "acme"), &original).unwrap();

    // A checkpoint altered, or checked against another key: refused.
    let cpf = dir.join("tenants/acme/checkpoints");
    let cp_bytes = std::fs::read(&cpf).unwrap();
    let mut b = cp_bytes.clone();
    b[checkpoint::ENTRY + 60] ^= 1;
    std::fs::write(&cpf, &b).unwrap();
    let v = verdict(dir, "acme");
    assert!(!v.ok && v.line.contains("checkpoint #1"), "{}", v.line);
    assert!(v.line.contains("invalid signature"), "{}", v.line);
    std::fs::write(&cpf, &cp_bytes).unwrap();
    let other = tempfile::tempdir().unwrap();
    let other_key = checkpoint::CheckpointSigner::load_or_create(other.path())
        .unwrap()
        .verifying_key();
    let store = AuditStore::open_readonly(dir, master());
    let v = verify::tenant(&store, Some(&other_key), "acme").unwrap();
    assert!(!v.ok && v.line.contains("invalid signature"), "{}", v.line);

    // The whole log rewritten with a consistent chain (someone holding the
    // master key): the chain verifies, the signed checkpoints do not.
    fill(other.path(), &["acme"], 10, 1000);
    for f in ["segments/000001.log", "key.1.wrapped"] {
        std::fs::copy(
            other.path().join("tenants/acme").join(f),
            dir.join("tenants/acme").join(f),
        )
        .unwrap();
    }
    let v = verdict(dir, "acme");
    assert!(
        !v.ok && v.line.contains("differs from signed checkpoint #0"),
        "{}",
        v.line
    );
}
