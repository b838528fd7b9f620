//! Replays the `worker_request` and `chat_tokenizer` fuzz targets' seed
//! corpora and any crash inputs (`fuzz/corpus/<target>/`,
//! `fuzz/artifacts/<target>/`) through the same checks the targets run, so
//! CI exercises them without cargo-fuzz.
#[path = "../../fuzz/src/chat_tokenizer.rs"]
mod chat_tokenizer;
#[path = "../../fuzz/src/worker_request.rs"]
mod worker_request;

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

fn replay(target: &str, run: fn(&[u8])) {
    let files = inputs(target);
    assert!(files.len() >= 5, "the seed corpus is missing: {files:?}");
    for f in &files {
        let data = std::fs::read(f).unwrap();
        eprintln!("{}", f.display());
        run(&data);
    }
}

#[test]
fn worker_request_corpus() {
    replay("worker_request", worker_request::run);
}

#[test]
fn chat_tokenizer_corpus() {
    replay("chat_tokenizer", chat_tokenizer::run);
}
