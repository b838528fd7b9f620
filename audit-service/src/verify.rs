//! `bulkhead-audit verify`: checks a tenant's log offline — every segment in
//! order, every record's frame, sequence number, chain link and (unless
//! shredded) authentication tag, then every signed checkpoint against the
//! log and a closing checkpoint for every closed segment — and says in one line
//! what it found, naming the first record that was altered, removed or
//! reordered.
use std::path::Path;

use ed25519_dalek::VerifyingKey;

use crate::StoreError;
use crate::checkpoint;
use crate::store::AuditStore;

/// The verdict on one tenant's log.
#[derive(Debug)]
pub struct Verdict {
    pub tenant: String,
    pub ok: bool,
    pub line: String,
}

/// Verifies one tenant. `vk` is the checkpoint public key (None: the
/// checkpoints, if any, cannot be checked, which fails verification).
pub fn tenant(
    store: &AuditStore,
    vk: Option<&VerifyingKey>,
    tenant: &str,
) -> Result<Verdict, StoreError> {
    let shredded = store.is_shredded(tenant);
    let log = if shredded {
        store.read_structure(tenant)?
    } else {
        store.read(tenant)?
    };
    let cps = checkpoint::read_all(&store.tenant_dir(tenant))?;
    let fail = |line: String| Verdict {
        tenant: tenant.to_string(),
        ok: false,
        line: format!("{tenant}: FAILED {line}"),
    };
    if let Some((idx, why)) = &log.first_bad {
        return Ok(fail(format!(
            "at record {idx}: {why} ({} records before it verify)",
            log.count
        )));
    }
    let cp_note = match vk {
        None if cps.is_empty() && log.segments.len() <= 1 => "no signed checkpoint yet".to_string(),
        None => {
            return Ok(fail(
                "the log has signed checkpoints (or closed segments) but no public key to check them (checkpoint.pub missing)".into(),
            ));
        }
        Some(vk) => match checkpoint::check(vk, tenant, &cps, &log) {
            Ok(()) => match cps.last() {
                None => "no signed checkpoint yet".to_string(),
                Some(last) => format!(
                    "{} signed checkpoints verified, the latest at {} records",
                    cps.len(),
                    last.count
                ),
            },
            Err(why) => return Ok(fail(why)),
        },
    };
    let segs = match log.segments.len() {
        1 => "1 segment".to_string(),
        n => format!("{n} segments"),
    };
    let torn = log
        .torn_tail
        .map(|b| {
            format!("; a torn final frame of {b} bytes (crash mid-write) will be cut at start")
        })
        .unwrap_or_default();
    let line = if shredded {
        format!(
            "{tenant}: shredded: chain intact, {} records in {segs}, contents unrecoverable; {cp_note}{torn}",
            log.count
        )
    } else {
        format!(
            "{tenant}: ok, {} records in {segs}, chain intact; {cp_note}{torn}",
            log.count
        )
    };
    Ok(Verdict {
        tenant: tenant.to_string(),
        ok: true,
        line,
    })
}

/// Tenants with a folder under `<root>/tenants`, sorted.
pub fn tenants(root: &Path) -> Result<Vec<String>, StoreError> {
    let tdir = root.join("tenants");
    let mut v: Vec<String> = std::fs::read_dir(&tdir)
        .map_err(|e| StoreError::io(&tdir, e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| bulkhead_proto::names::valid_tenant_id(n))
        .collect();
    v.sort();
    Ok(v)
}
