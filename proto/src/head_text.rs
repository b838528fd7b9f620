//! The text form of an audit log's signed head (`audit::SignedHead`), one
//! JSON object per line: what `bulkhead audit heads` writes and
//! `bulkhead-audit verify --head` reads. Binary fields are lowercase hex.
use crate::audit::SignedHead;

/// One head as a JSON object.
pub fn to_json(h: &SignedHead) -> serde_json::Value {
    serde_json::json!({
        "tenant_id": h.tenant_id,
        "tenant_uid": h.tenant_uid,
        "count": h.count,
        "segment": h.segment,
        "closes": h.closes,
        "hash": hex::encode(&h.hash),
        "signature": hex::encode(&h.signature),
        "public_key": hex::encode(&h.public_key),
        "exported_unix_ms": h.exported_unix_ms,
    })
}

/// Parses one line written by [`to_json`]; says which field is wrong.
pub fn from_json(line: &str) -> Result<SignedHead, String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
    let s = |k: &str| -> Result<String, String> {
        v[k].as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("field {k:?} missing or not a string"))
    };
    let n = |k: &str| {
        v[k].as_u64()
            .ok_or_else(|| format!("field {k:?} missing or not a number"))
    };
    let bytes = |k: &str, len: usize| -> Result<Vec<u8>, String> {
        let b = hex::decode(s(k)?).map_err(|e| format!("field {k:?}: {e}"))?;
        if b.len() == len {
            Ok(b)
        } else {
            Err(format!("field {k:?}: {} bytes, expected {len}", b.len()))
        }
    };
    Ok(SignedHead {
        tenant_id: s("tenant_id")?,
        tenant_uid: s("tenant_uid")?,
        count: n("count")?,
        segment: n("segment")?,
        closes: v["closes"]
            .as_bool()
            .ok_or("field \"closes\" missing or not a boolean")?,
        hash: bytes("hash", 32)?,
        signature: bytes("signature", 64)?,
        public_key: bytes("public_key", 32)?,
        exported_unix_ms: v["exported_unix_ms"].as_i64().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_the_bad_field() {
        let h = SignedHead {
            tenant_id: "acme".into(),
            tenant_uid: "u-1".into(),
            count: 42,
            segment: 3,
            closes: true,
            hash: vec![7; 32],
            signature: vec![9; 64],
            public_key: vec![1; 32],
            exported_unix_ms: 5,
        };
        let line = to_json(&h).to_string();
        assert_eq!(from_json(&line).unwrap(), h);
        let bad = line.replace(&"07".repeat(32), "07");
        assert!(from_json(&bad).unwrap_err().contains("\"hash\""));
        assert!(from_json("nope").is_err());
    }
}
