//! Replays the `http_body` fuzz target's seed corpus and any crash inputs
//! (`fuzz/corpus/http_body/`, `fuzz/artifacts/http_body/`) through the same
//! check the target runs, so CI exercises it without cargo-fuzz.
#[path = "../../fuzz/src/http_body.rs"]
mod http_body;

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for dir in [
        fuzz.join("corpus").join(target),
        fuzz.join("artifacts").join(target),
    ] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            files.extend(
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_file()),
            );
        }
    }
    files.sort();
    files
}

#[test]
fn http_body_corpus() {
    let files = inputs("http_body");
    assert!(files.len() >= 10, "the seed corpus is missing: {files:?}");
    for f in &files {
        let data = std::fs::read(f).unwrap();
        eprintln!("{}", f.display());
        http_body::run(&data);
    }
}

/// Found by `http_body`: serde quoted a string of the wrong type in full in
/// the refusal message, which the router logs (content in the logs).
#[test]
fn a_refusal_does_not_repeat_a_string_from_the_body() {
    use bulkhead_router::http::parse;
    use bulkhead_router::openai::Kind;
    let secret = "my confidential prompt text";
    for body in [
        format!(r#"{{"model":"tiny","messages":"{secret}"}}"#),
        format!(r#"{{"model":"tiny","prompt":"x","max_tokens":"{secret}"}}"#),
        format!(r#"{{"model":"tiny","prompt":"x","stream_options":"{secret}"}}"#),
        format!(r#"{{"model":"tiny","prompt":"x","seed":"{secret}, expected u64"}}"#),
    ] {
        for kind in [Kind::Chat, Kind::Completion] {
            let msg = parse(kind, body.as_bytes()).unwrap_err().to_string();
            assert!(!msg.contains("confidential"), "{msg}");
        }
    }
    let msg = parse(
        Kind::Completion,
        br#"{"model":"tiny","prompt":"x","max_tokens":"9"}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("invalid type: a string, expected i64"),
        "{msg}"
    );
}
