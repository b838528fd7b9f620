//! Segmented logs: segments roll over after N records and at a clean
//! shutdown, each closed one gets a signed checkpoint, the chain runs across
//! them, and `verify` names the first altered, removed or reordered record
//! wherever it lies.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bulkhead_audit::checkpoint;
use bulkhead_audit::keys::{KeyWrapper, LocalMasterKey};
use bulkhead_audit::store::{AuditStore, StoreOptions};
use bulkhead_audit::verify;
use bulkhead_proto::audit::AuditEvent;

const MASTER: [u8; 32] = [5; 32];

fn master() -> Arc<dyn KeyWrapper> {
    Arc::new(LocalMasterKey::from_bytes(&MASTER))
}

fn opts(segment_records: u64) -> StoreOptions {
    StoreOptions {
        segment_records,
        ..Default::default()
    }
}

fn ev(i: usize) -> AuditEvent {
    AuditEvent {
        request_id: format!("r{i}"),
        tenant_id: "acme".into(),
        model: "model-segmented".into(),
        ..Default::default()
    }
}

/// Appends records `from..to`, one sync each, then closes cleanly.
fn fill(dir: &Path, per_segment: u64, from: usize, to: usize) {
    let mut s = AuditStore::open_with(dir, master(), opts(per_segment)).unwrap();
    for i in from..to {
        assert!(s.append(&ev(i)).unwrap());
        s.sync().unwrap();
    }
    s.close().unwrap();
}

fn seg(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("tenants/acme/segments/{n:06}.log"))
}

/// Byte offsets at which each frame of a segment starts.
fn frame_starts(bytes: &[u8]) -> Vec<usize> {
    let mut v = vec![];
    let mut pos = 0;
    while pos < bytes.len() {
        v.push(pos);
        pos += 4 + u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
    }
    v
}

fn verdict(dir: &Path) -> verify::Verdict {
    let store = AuditStore::open_readonly(dir, master());
    let vk = checkpoint::load_public_key(dir).unwrap();
    verify::tenant(&store, vk.as_ref(), "acme").unwrap()
}

/// 3 records per segment; 8 records then a clean shutdown, 2 more after a
/// restart: segments 1 and 2 full (0..3, 3..6), 3 (6..8) and 4 (8..10) each
/// closed at a shutdown.
fn ten_records(dir: &Path) {
    fill(dir, 3, 0, 8);
    fill(dir, 3, 8, 10);
}

#[test]
fn segments_roll_over_and_each_closed_one_is_checkpointed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ten_records(dir);
    for n in 1..=4 {
        assert!(seg(dir, n).exists(), "segment {n}");
    }
    assert!(!seg(dir, 5).exists(), "a clean shutdown closed segment 4");
    let cps = checkpoint::read_all(&dir.join("tenants/acme")).unwrap();
    let closing: Vec<_> = cps
        .iter()
        .filter(|c| c.closes)
        .map(|c| (c.segment, c.count))
        .collect();
    assert_eq!(closing, [(1, 3), (2, 6), (3, 8), (4, 10)]);

    let store = AuditStore::open(dir, master()).unwrap();
    let read = store.read("acme").unwrap();
    let ids: Vec<_> = read
        .frames
        .iter()
        .map(|f| f.event.request_id.clone())
        .collect();
    assert_eq!(ids, (0..10).map(|i| format!("r{i}")).collect::<Vec<_>>());
    assert_eq!(store.count("acme"), 10);
    let v = verdict(dir);
    assert!(v.ok, "{}", v.line);
    assert!(
        v.line
            .contains("ok, 10 records in 4 segments, chain intact"),
        "{}",
        v.line
    );
    drop(store);

    // Dedup spans segments after a restart.
    let mut s = AuditStore::open_with(dir, master(), opts(3)).unwrap();
    assert!(
        !s.append(&ev(1)).unwrap(),
        "a record of segment 1 stored again"
    );
    assert!(s.append(&ev(10)).unwrap());
    s.sync().unwrap();
    assert!(seg(dir, 5).exists());
}

#[test]
fn a_crash_leaves_the_segment_open_and_the_next_start_continues_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut s = AuditStore::open_with(dir, master(), opts(3)).unwrap();
    for i in 0..4 {
        s.append(&ev(i)).unwrap();
    }
    s.sync().unwrap();
    drop(s); // no close(): a crash
    let mut s = AuditStore::open_with(dir, master(), opts(3)).unwrap();
    s.append(&ev(4)).unwrap();
    s.sync().unwrap();
    drop(s);
    assert!(!seg(dir, 3).exists(), "segment 2 continued after the crash");
    let v = verdict(dir);
    assert!(
        v.ok && v.line.contains("5 records in 2 segments"),
        "{}",
        v.line
    );
}

#[test]
fn verify_names_the_first_bad_record_across_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ten_records(dir);
    let s2 = std::fs::read(seg(dir, 2)).unwrap();
    let starts = frame_starts(&s2);
    assert_eq!(starts.len(), 3);
    let check = |expect: &str| {
        let v = verdict(dir);
        assert!(!v.ok && v.line.contains(expect), "{}", v.line);
    };

    // A flipped ciphertext byte in record 4 (the 2nd of segment 2).
    let mut b = s2.clone();
    b[starts[1] + 70] ^= 1;
    std::fs::write(seg(dir, 2), &b).unwrap();
    check("FAILED at record 4: authentication tag mismatch");
    check("000002.log");

    // Record 4 removed.
    std::fs::write(seg(dir, 2), [&s2[..starts[1]], &s2[starts[2]..]].concat()).unwrap();
    check("FAILED at record 4");

    // Records 4 and 5 swapped.
    let swapped = [
        &s2[..starts[1]],
        &s2[starts[2]..],
        &s2[starts[1]..starts[2]],
    ]
    .concat();
    std::fs::write(seg(dir, 2), &swapped).unwrap();
    check("FAILED at record 4");

    // The last record of segment 2 removed (the chain in the segment stays
    // whole; segment 3's first record no longer links).
    std::fs::write(seg(dir, 2), &s2[..starts[2]]).unwrap();
    check("FAILED at record 5");
    std::fs::write(seg(dir, 2), &s2).unwrap();
    assert!(verdict(dir).ok);

    // A whole segment removed, or two swapped.
    let s3 = std::fs::read(seg(dir, 3)).unwrap();
    std::fs::remove_file(seg(dir, 2)).unwrap();
    check("FAILED at record 3: segment 000002.log is missing");
    std::fs::write(seg(dir, 2), &s3).unwrap();
    std::fs::write(seg(dir, 3), &s2).unwrap();
    check("FAILED at record 3: sequence 6 where 3 was expected");
    std::fs::write(seg(dir, 2), &s2).unwrap();
    std::fs::write(seg(dir, 3), &s3).unwrap();

    // The last segment removed: only the signed checkpoints can tell.
    let s4 = std::fs::read(seg(dir, 4)).unwrap();
    std::fs::remove_file(seg(dir, 4)).unwrap();
    check("record 8 is missing");
    assert!(AuditStore::open(dir, master()).is_err());
    std::fs::write(seg(dir, 4), &s4).unwrap();

    // A closed segment whose closing checkpoint was removed.
    let cpf = dir.join("tenants/acme/checkpoints");
    let cps = std::fs::read(&cpf).unwrap();
    std::fs::write(&cpf, &cps[..checkpoint::ENTRY]).unwrap();
    check("segment 000002.log (records 3..6) was closed without a signed checkpoint");
    std::fs::remove_file(&cpf).unwrap();
    let v = verdict(dir);
    assert!(!v.ok, "{}", v.line);
    std::fs::write(&cpf, &cps).unwrap();
    assert!(verdict(dir).ok);

    // Through the binary: exit status 2 and the record named.
    let mut b = s3.clone();
    b[80] ^= 1;
    std::fs::write(seg(dir, 3), &b).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead-audit"))
        .args(["verify", "--data-dir", dir.to_str().unwrap()])
        .env("BULKHEAD_AUDIT_MASTER_KEY", hex::encode(MASTER))
        .env_remove("BULKHEAD_AUDIT_MASTER_KEY_FILE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("acme: FAILED at record 6"), "{text}");
}

/// `bulkhead-audit verify --head FILE`: a head exported while the log was
/// whole fails the log once its last segment is deleted together with the
/// checkpoint that closed it (which plain `verify` cannot see).
#[test]
fn verify_with_an_exported_head_catches_a_dropped_last_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ten_records(dir);
    let store = AuditStore::open_readonly(dir, master());
    let head = bulkhead_audit::heads::head(&store, "acme")
        .unwrap()
        .unwrap();
    assert_eq!(head.count, 10);
    let heads = tmp.path().join("heads.jsonl");
    std::fs::write(
        &heads,
        format!("{}\n", bulkhead_proto::head_text::to_json(&head)),
    )
    .unwrap();
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_bulkhead-audit"))
            .args(["verify", "--data-dir", dir.to_str().unwrap()])
            .arg("--head")
            .arg(&heads)
            .env_remove("BULKHEAD_AUDIT_MASTER_KEY")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = run();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("acme: ok"), "{text}");
    // The last segment and its closing checkpoint go.
    let last = (1..=10)
        .rev()
        .find(|n| seg(dir, *n).exists())
        .expect("a segment");
    std::fs::remove_file(seg(dir, last)).unwrap();
    let cpf = dir.join("tenants/acme/checkpoints");
    let cps: Vec<checkpoint::Checkpoint> = checkpoint::read_all(&dir.join("tenants/acme")).unwrap();
    let keep = cps.iter().take_while(|c| c.segment < last).count();
    let bytes = std::fs::read(&cpf).unwrap();
    std::fs::write(&cpf, &bytes[..keep * checkpoint::ENTRY]).unwrap();
    assert!(verdict(dir).ok, "{}", verdict(dir).line);
    let (code, text) = run();
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("acme: FAILED against its signed head: the log was truncated"),
        "{text}"
    );
}
