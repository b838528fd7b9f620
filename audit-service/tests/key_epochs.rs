//! Data-key rotation: with a tiny records-per-key limit, a tenant's records
//! end up under several key epochs (across segments and restarts); all of
//! them decrypt and verify, and shredding destroys every epoch's key while
//! the chain still verifies.
use std::path::Path;
use std::sync::Arc;

use bulkhead_audit::StoreError;
use bulkhead_audit::checkpoint;
use bulkhead_audit::keys::{KeyWrapper, LocalMasterKey};
use bulkhead_audit::shred::{self, Shredded};
use bulkhead_audit::store::keyring::{self, KeyRing};
use bulkhead_audit::store::{AuditStore, StoreOptions};
use bulkhead_audit::verify;
use bulkhead_proto::audit::AuditEvent;

fn master() -> Arc<dyn KeyWrapper> {
    Arc::new(LocalMasterKey::from_bytes(&[3; 32]))
}

fn opts() -> StoreOptions {
    StoreOptions {
        segment_records: 4,
        max_records_per_key: 3,
        ..Default::default()
    }
}

fn ev(i: usize) -> AuditEvent {
    AuditEvent {
        request_id: format!("r{i}"),
        tenant_id: "acme".into(),
        model: "model-rotating".into(),
        ..Default::default()
    }
}

fn append(dir: &Path, range: std::ops::Range<usize>, clean: bool) {
    let mut s = AuditStore::open_with(dir, master(), opts()).unwrap();
    for i in range {
        assert!(s.append(&ev(i)).unwrap());
        s.sync().unwrap();
    }
    if clean {
        s.close().unwrap();
    }
}

fn verdict(dir: &Path) -> verify::Verdict {
    let store = AuditStore::open_readonly(dir, master());
    let vk = checkpoint::load_public_key(dir).unwrap();
    verify::tenant(&store, vk.as_ref(), "acme").unwrap()
}

#[test]
fn records_under_several_key_epochs_all_decrypt_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // 5 records, a crash, 3 more, a clean shutdown, 3 more.
    append(dir, 0..5, false);
    append(dir, 5..8, true);
    append(dir, 8..11, true);

    let tdir = dir.join("tenants/acme");
    let epochs: Vec<u32> = keyring::key_files(&tdir)
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(epochs, [1, 2, 3, 4]);
    let store = AuditStore::open(dir, master()).unwrap();
    let read = store.read("acme").unwrap();
    assert!(read.first_bad.is_none());
    let got: Vec<(String, u32)> = read
        .frames
        .iter()
        .map(|f| (f.event.request_id.clone(), f.epoch))
        .collect();
    let want: Vec<(String, u32)> = (0..11)
        .map(|i| (format!("r{i}"), i as u32 / 3 + 1))
        .collect();
    assert_eq!(got, want, "3 records per key, counted across restarts");
    drop(store);
    let v = verdict(dir);
    assert!(v.ok && v.line.contains("ok, 11 records"), "{}", v.line);

    // Each key is bound to its tenant and epoch.
    let ring = KeyRing::load(&tdir, "acme", master().as_ref()).unwrap();
    assert_eq!(ring.current(), Some(4));
    std::fs::copy(tdir.join("key.1.wrapped"), tdir.join("key.9.wrapped")).unwrap();
    assert!(matches!(
        KeyRing::load(&tdir, "acme", master().as_ref()),
        Err(StoreError::Crypto(_))
    ));
    std::fs::remove_file(tdir.join("key.9.wrapped")).unwrap();

    // A missing epoch key names the first record encrypted under it.
    let k2 = std::fs::read(tdir.join("key.2.wrapped")).unwrap();
    std::fs::remove_file(tdir.join("key.2.wrapped")).unwrap();
    let v = verdict(dir);
    assert!(
        !v.ok
            && v.line
                .contains("FAILED at record 3: encrypted under key epoch 2"),
        "{}",
        v.line
    );
    std::fs::write(tdir.join("key.2.wrapped"), k2).unwrap();

    // An altered epoch field names its record.
    let seg = tdir.join("segments/000002.log");
    let original = std::fs::read(&seg).unwrap();
    let mut b = original.clone();
    b[12 + 3] ^= 3; // epoch of record 4 (first of segment 2): 2 -> 1
    std::fs::write(&seg, &b).unwrap();
    let v = verdict(dir);
    assert!(!v.ok && v.line.contains("FAILED at record 4"), "{}", v.line);
    std::fs::write(&seg, &original).unwrap();
    assert!(verdict(dir).ok);

    // Shredding destroys every epoch's key; the chain still verifies.
    assert_eq!(shred::shred(dir, "acme").unwrap(), Shredded::Now(4));
    assert!(keyring::key_files(&tdir).unwrap().is_empty());
    assert_eq!(shred::shred(dir, "acme").unwrap(), Shredded::Already);
    let v = verdict(dir);
    assert!(
        v.ok && v.line.contains("shredded: chain intact, 11 records"),
        "{}",
        v.line
    );
    let mut s = AuditStore::open_with(dir, master(), opts()).unwrap();
    assert!(matches!(s.read("acme"), Err(StoreError::Shredded(_))));
    assert!(s.append(&ev(99)).is_err());
}

#[test]
fn the_records_per_key_limit_is_capped() {
    let tmp = tempfile::tempdir().unwrap();
    let big = StoreOptions {
        max_records_per_key: u64::MAX,
        ..Default::default()
    };
    // Accepted (clamped to the cap) by the library; the binary refuses it.
    AuditStore::open_with(tmp.path(), master(), big).unwrap();
    const { assert!(keyring::MAX_RECORDS_PER_KEY_CAP <= 1 << 28) };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead-audit"))
        .args([
            "serve",
            "--max-records-per-key",
            "4294967296",
            "--certs-dir",
            "/nonexistent",
        ])
        .env("BULKHEAD_AUDIT_MASTER_KEY", hex::encode([3u8; 32]))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("above the hard cap"), "{err}");
}
