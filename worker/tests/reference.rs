//! The forward pass against an independent implementation: a NumPy script
//! (scripts/reference_llama.py, float64, full causal recompute, no paging)
//! on a generated random model. Logits must agree within 1e-4 and greedy
//! decoding token for token.
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use bulkhead_worker::LoadedModel;
use bulkhead_worker::kv::{KvPool, TenantId};
use bulkhead_worker::model::SeqInput;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's Python (scripts/test.sh installs numpy there), or $BULKHEAD_PYTHON.
fn python() -> PathBuf {
    std::env::var_os("BULKHEAD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".bulkhead/venv/bin/python3"))
}

fn last_logits(m: &LoadedModel, ids: &[u32]) -> Vec<f32> {
    let mut pool = KvPool::new(m.model.kv_shape(64, 16));
    let t: TenantId = Arc::from("t");
    let blocks = pool.allocate(&t, pool.blocks_for(ids.len())).unwrap();
    let out = m
        .model
        .forward(
            &mut pool,
            &[SeqInput {
                tokens: ids,
                start_pos: 0,
                tenant: "t",
                blocks: &blocks,
                want_logits: true,
            }],
        )
        .unwrap();
    out.into_iter().next().unwrap().unwrap()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn forward_matches_the_numpy_reference() {
    let dir = tempfile::tempdir().unwrap();
    bulkhead_worker::genmodel::generate(dir.path(), 11).unwrap();
    let m = LoadedModel::load(dir.path()).unwrap();
    let ids = m
        .tokenizer
        .encode_prompt("Tenants share the fleet; their prompts never share a block.")
        .unwrap();
    const GREEDY: usize = 8;

    let mut child = Command::new(python())
        .arg(root().join("scripts/reference_llama.py"))
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with numpy: run scripts/test.sh once, or set BULKHEAD_PYTHON");
    let req = serde_json::json!({"ids": ids, "greedy": GREEDY});
    child
        .stdin
        .take()
        .unwrap()
        .write_all(req.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ref_logits: Vec<f64> = serde_json::from_value(reference["logits"].clone()).unwrap();
    let ref_greedy: Vec<u32> = serde_json::from_value(reference["greedy"].clone()).unwrap();

    let ours = last_logits(&m, &ids);
    assert_eq!(ours.len(), ref_logits.len());
    let max_diff = ours
        .iter()
        .zip(&ref_logits)
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .fold(0.0, f64::max);
    let spread = ref_logits.iter().cloned().fold(f64::MIN, f64::max)
        - ref_logits.iter().cloned().fold(f64::MAX, f64::min);
    println!("max |logit difference| = {max_diff:e} (logit spread {spread:.3})");
    assert!(
        spread > 1e-3,
        "degenerate logits: the comparison would prove nothing"
    );
    assert!(max_diff < 1e-4, "logits differ by {max_diff}");

    let mut seq = ids.clone();
    let mut greedy = vec![];
    for _ in 0..GREEDY {
        let next = argmax(&last_logits(&m, &seq));
        greedy.push(next);
        seq.push(next);
    }
    assert_eq!(
        greedy, ref_greedy,
        "greedy decoding differs from the reference"
    );
}
