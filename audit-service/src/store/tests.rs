use super::*;
use crate::keys::{DataKey, LocalMasterKey};

fn ev(tenant: &str, id: &str) -> AuditEvent {
    AuditEvent {
        request_id: id.into(),
        tenant_id: tenant.into(),
        model: "model-xyzzy".into(),
        prompt_tokens: 3,
        ..Default::default()
    }
}

fn master() -> Arc<dyn KeyWrapper> {
    Arc::new(LocalMasterKey::from_bytes(&[9; 32]))
}

fn store_with(dir: &Path, n: usize) -> AuditStore {
    let mut s = AuditStore::open(dir, master()).unwrap();
    for i in 0..n {
        assert!(s.append(&ev("acme", &format!("r{i}"))).unwrap());
    }
    s.sync().unwrap();
    s
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("tenants/acme/segments/000001.log")
}

#[test]
fn roundtrip_dedup_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with(dir.path(), 5);
    assert!(!s.append(&ev("acme", "r3")).unwrap(), "duplicate stored");
    assert!(s.append(&ev("globex", "r3")).unwrap(), "ids are per tenant");
    s.sync().unwrap();
    drop(s);
    let mut s = AuditStore::open(dir.path(), master()).unwrap();
    assert_eq!(s.count("acme"), 5);
    assert!(
        !s.append(&ev("acme", "r4")).unwrap(),
        "dedup set rebuilt at start"
    );
    let read = s.read("acme").unwrap();
    assert!(read.first_bad.is_none());
    let ids: Vec<_> = read
        .frames
        .iter()
        .map(|f| f.event.request_id.as_str())
        .collect();
    assert_eq!(ids, ["r0", "r1", "r2", "r3", "r4"]);
    let bytes = std::fs::read(log_path(dir.path())).unwrap();
    assert!(
        !bytes.windows(11).any(|w| w == b"model-xyzzy"),
        "plaintext on disk"
    );
}

#[test]
fn redeliveries_are_recognised_within_a_bounded_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AuditStore::open(dir.path(), master()).unwrap();
    let n = SEEN_WINDOW + 100;
    for i in 0..n {
        let t = if i.is_multiple_of(2) {
            "acme"
        } else {
            "globex"
        };
        assert!(s.append(&ev(t, &format!("r{i}"))).unwrap());
    }
    // Anything within the window (more than the consumer's max_ack_pending)
    // is recognised...
    let last = n - 1;
    let t = if last.is_multiple_of(2) {
        "acme"
    } else {
        "globex"
    };
    assert!(!s.append(&ev(t, &format!("r{last}"))).unwrap());
    let oldest_kept = n - SEEN_WINDOW;
    let t_old = if oldest_kept.is_multiple_of(2) {
        "acme"
    } else {
        "globex"
    };
    assert!(!s.append(&ev(t_old, &format!("r{oldest_kept}"))).unwrap());
    // ... and memory stays bounded: the oldest ids are forgotten.
    let remembered: usize = s.tenants.values().map(|l| l.seen.len()).sum();
    assert_eq!(remembered, SEEN_WINDOW);
    s.sync().unwrap();
    drop(s);
    // After a restart the window is rebuilt from the end of the logs.
    let mut s = AuditStore::open(dir.path(), master()).unwrap();
    assert!(!s.append(&ev(t, &format!("r{last}"))).unwrap());
}

#[test]
fn tenants_have_separate_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with(dir.path(), 1);
    s.append(&ev("globex", "g")).unwrap();
    s.sync().unwrap();
    let m = LocalMasterKey::from_bytes(&[9; 32]);
    let wa = std::fs::read(dir.path().join("tenants/acme/key.1.wrapped")).unwrap();
    let wg = std::fs::read(dir.path().join("tenants/globex/key.1.wrapped")).unwrap();
    let ka = DataKey::new(&m.unwrap_key("acme#1", &wa).unwrap());
    let kg = m.unwrap_key("globex#1", &wg).unwrap();
    assert_ne!(m.unwrap_key("acme#1", &wa).unwrap(), kg);
    assert!(
        m.unwrap_key("acme#2", &wa).is_err(),
        "epoch bound in the wrap"
    );
    // globex's record does not open under acme's key.
    let bytes = std::fs::read(dir.path().join("tenants/globex/segments/000001.log")).unwrap();
    let nonce: [u8; 12] = bytes[48..60].try_into().unwrap();
    assert!(
        ka.open(&nonce, &aad("globex", 0, 1, &[0; 32]), &bytes[60..])
            .is_none()
    );
}

#[test]
fn a_flipped_byte_names_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_with(dir.path(), 4);
    let path = log_path(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let frame_len = bytes.len() / 4;
    bytes[2 * frame_len + 70] ^= 1; // inside record 2's ciphertext
    std::fs::write(&path, &bytes).unwrap();
    let read = s.read("acme").unwrap();
    assert_eq!(read.first_bad.as_ref().map(|b| b.0), Some(2));
    assert_eq!(s.verify("acme").unwrap(), Some(2));
    assert_eq!(s.verify("nobody").unwrap(), None);
    assert!(s.verify("../x").is_err());
    assert_eq!(read.frames.len(), 2);
    drop(s);
    assert!(
        AuditStore::open(dir.path(), master()).is_err(),
        "appending to a damaged log"
    );
}

#[test]
fn a_removed_record_breaks_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_with(dir.path(), 4);
    let path = log_path(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let n = bytes.len() / 4;
    let cut = [&bytes[..n], &bytes[2 * n..]].concat();
    std::fs::write(&path, cut).unwrap();
    let read = s.read("acme").unwrap();
    assert_eq!(read.first_bad.as_ref().map(|b| b.0), Some(1));
    assert_eq!(s.verify("acme").unwrap(), Some(1));
}

#[test]
fn a_torn_tail_is_cut_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    drop(store_with(dir.path(), 3));
    let path = log_path(dir.path());
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[0, 0, 1, 0, 7, 7]).unwrap();
    drop(f);
    let mut s = AuditStore::open(dir.path(), master()).unwrap();
    assert_eq!(s.count("acme"), 3);
    assert!(s.append(&ev("acme", "r9")).unwrap());
    s.sync().unwrap();
    let read = s.read("acme").unwrap();
    assert!(read.first_bad.is_none() && read.torn_tail.is_none());
    assert_eq!(read.frames.len(), 4);
}

#[test]
fn bad_events_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AuditStore::open(dir.path(), master()).unwrap();
    assert!(s.append(&ev("../etc", "x")).is_err());
    assert!(s.append(&ev("acme", "")).is_err());
    assert!(s.append(&ev("acme", &"x".repeat(500))).is_err());
}

fn ev_uid(tenant: &str, uid: &str, id: &str) -> AuditEvent {
    AuditEvent {
        tenant_uid: uid.into(),
        ..ev(tenant, id)
    }
}

#[test]
fn each_incarnation_of_a_tenant_id_has_its_own_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AuditStore::open(dir.path(), master()).unwrap();
    for i in 0..3 {
        assert!(
            s.append(&ev_uid("acme", "aaaa-1", &format!("old{i}")))
                .unwrap()
        );
    }
    s.sync().unwrap();
    assert_eq!(s.read_as("acme", Some("aaaa-1")).unwrap().frames.len(), 3);
    // The id is deleted and created again: a new uid. Until its first
    // event, the new tenant sees nothing of the old log.
    assert_eq!(s.read_as("acme", Some("bbbb-2")).unwrap().frames.len(), 0);
    assert!(s.append(&ev_uid("acme", "bbbb-2", "new0")).unwrap());
    s.sync().unwrap();
    let now = s.read_as("acme", Some("bbbb-2")).unwrap();
    assert_eq!(now.frames.len(), 1);
    assert_eq!(now.frames[0].event.request_id, "new0");
    assert!(now.first_bad.is_none());
    // The old log is kept, retired, whole.
    let retired = dir.path().join("retired/acme.aaaa-1");
    assert!(retired.join("segments").exists());
    // A late event of the retired incarnation is refused, not mixed in.
    assert!(matches!(
        s.append(&ev_uid("acme", "aaaa-1", "late")),
        Err(StoreError::Invalid(_))
    ));
    // The operator (no uid) reads the current log.
    assert_eq!(s.read_as("acme", None).unwrap().frames.len(), 1);
    drop(s);
    // After a restart the incarnation is still known.
    let mut s = AuditStore::open(dir.path(), master()).unwrap();
    assert!(s.append(&ev_uid("acme", "bbbb-2", "new1")).unwrap());
    s.sync().unwrap();
    assert_eq!(s.read_as("acme", Some("bbbb-2")).unwrap().frames.len(), 2);
}

#[test]
fn a_log_from_before_uids_is_adopted_by_the_first_uid() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = store_with(dir.path(), 2);
    assert!(s.append(&ev_uid("acme", "cccc-3", "r9")).unwrap());
    s.sync().unwrap();
    assert_eq!(s.read_as("acme", Some("cccc-3")).unwrap().frames.len(), 3);
    assert!(!dir.path().join("retired").exists());
}
