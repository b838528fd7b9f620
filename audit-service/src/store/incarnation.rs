//! One audit log per incarnation of a tenant id. A tenant deleted and
//! created again under the same id is a new tenant (a new `Tenant.uid`):
//! `<root>/tenants/<id>/incarnation` names the uid whose log the folder
//! holds. The first event of a new uid retires the folder whole to
//! `<root>/retired/<id>.<old uid>` (kept for operators, never served to the
//! new tenant, its keys and checkpoints with it) and starts a fresh log —
//! also after a shred, which would otherwise leave the id unauditable.
//! A folder from before uids existed is adopted by the first uid it sees.
//!
//! Known limit: an event of a retired incarnation that arrives after the
//! new one began (a request in flight while the tenant was deleted and
//! created again) is refused as invalid, not appended to the retired log.
use std::path::{Path, PathBuf};

use crate::StoreError;

use super::{AuditStore, LogRead, flush};

const FILE: &str = "incarnation";

/// The uid whose log `tenant_dir` holds (None: a folder from before uids,
/// or none yet).
pub fn recorded(tenant_dir: &Path) -> Option<String> {
    std::fs::read_to_string(tenant_dir.join(FILE))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Records `uid` as the folder's incarnation.
pub fn record(tenant_dir: &Path, uid: &str) -> Result<(), StoreError> {
    std::fs::create_dir_all(tenant_dir).map_err(|e| StoreError::io(tenant_dir, e))?;
    super::write_private(&tenant_dir.join(FILE), uid.as_bytes())?;
    sync_dir(tenant_dir)
}

/// Where an incarnation's folder goes when it is retired.
pub fn retired_dir(root: &Path, tenant: &str, uid: &str) -> PathBuf {
    root.join("retired").join(format!("{tenant}.{uid}"))
}

/// Moves `<root>/tenants/<tenant>` to the retired folder of `old_uid`.
pub fn retire(root: &Path, tenant: &str, old_uid: &str) -> Result<PathBuf, StoreError> {
    let from = root.join("tenants").join(tenant);
    let to = retired_dir(root, tenant, old_uid);
    let parent = root.join("retired");
    std::fs::create_dir_all(&parent).map_err(|e| StoreError::io(&parent, e))?;
    if to.exists() {
        return Err(StoreError::Corrupt(format!(
            "{} already exists; not retiring {} over it",
            to.display(),
            from.display()
        )));
    }
    std::fs::rename(&from, &to).map_err(|e| StoreError::io(&from, e))?;
    sync_dir(&parent)?;
    sync_dir(&root.join("tenants"))?;
    Ok(to)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

/// Whether the folder may be served to a reader of incarnation `uid`
/// (`None`: the operator, who reads the current folder whatever it is).
pub fn visible_to(tenant_dir: &Path, uid: Option<&str>) -> bool {
    match (uid.filter(|u| !u.is_empty()), recorded(tenant_dir)) {
        (Some(want), Some(have)) => want == have,
        _ => true,
    }
}

/// The store's side: which incarnation a folder holds, retiring the old one.
impl AuditStore {
    /// Reads a tenant's log as incarnation `uid` may see it: nothing when
    /// the folder holds another incarnation's log (`None`: whatever is
    /// current, for the operator).
    pub fn read_as(&self, tenant: &str, uid: Option<&str>) -> Result<LogRead, StoreError> {
        if !visible_to(&self.tenant_dir(tenant), uid) {
            return Ok(LogRead::default());
        }
        self.read(tenant)
    }

    /// Makes `<root>/tenants/<tenant>` the log of incarnation `uid`: an
    /// older incarnation's folder is retired first (see `incarnation`).
    pub(super) fn ensure_incarnation(&mut self, tenant: &str, uid: &str) -> Result<(), StoreError> {
        if uid.len() > 64 || !uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Err(StoreError::Invalid(format!("invalid tenant_uid {uid:?}")));
        }
        if self.incarnations.get(tenant).map(String::as_str) == Some(uid) {
            return Ok(());
        }
        let dir = self.tenant_dir(tenant);
        match recorded(&dir) {
            Some(have) if have == uid => {}
            Some(have) => {
                if retired_dir(&self.root, tenant, uid).exists() {
                    return Err(StoreError::Invalid(format!(
                        "an event of tenant {tenant}'s retired incarnation {uid} arrived after a newer one began"
                    )));
                }
                self.retire(tenant, &have)?;
                record(&dir, uid)?;
            }
            // A folder from before uids: adopted, unless it was shredded
            // (then the new incarnation starts afresh).
            None if self.is_shredded(tenant) => {
                self.retire(tenant, "before-uids")?;
                record(&dir, uid)?;
            }
            None => record(&dir, uid)?,
        }
        self.incarnations
            .insert(tenant.to_string(), uid.to_string());
        Ok(())
    }

    /// Syncs and forgets a tenant's open log, then moves its folder away.
    fn retire(&mut self, tenant: &str, old_uid: &str) -> Result<(), StoreError> {
        if let Some(mut log) = self.tenants.remove(tenant) {
            let dir = self.tenant_dir(tenant);
            if log.dirty {
                flush(&dir, &mut log)?;
            }
        }
        let to = retire(&self.root, tenant, old_uid)?;
        tracing::info!(tenant, retired = %to.display(), "a new incarnation of this tenant id begins; the old log is retired");
        Ok(())
    }
}
