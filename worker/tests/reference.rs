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

/// Compares our forward pass with the reference on the model in `dir`:
/// the last position's logits and 8 greedy tokens.
fn compare_with_reference(dir: &std::path::Path, label: &str) {
    let m = LoadedModel::load(dir).unwrap();
    let ids = m
        .tokenizer
        .encode_prompt("Tenants share the fleet; their prompts never share a block.")
        .unwrap();
    const GREEDY: usize = 8;

    let mut child = Command::new(python())
        .arg(root().join("scripts/reference_llama.py"))
        .arg(dir)
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
        "{label}: reference failed: {}",
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
    println!("{label}: max |logit difference| = {max_diff:e} (logit spread {spread:.3})");
    assert!(
        spread > 1e-3,
        "{label}: degenerate logits: the comparison would prove nothing"
    );
    assert!(max_diff < 1e-4, "{label}: logits differ by {max_diff}");

    let mut seq = ids.clone();
    let mut greedy = vec![];
    for _ in 0..GREEDY {
        let next = argmax(&last_logits(&m, &seq));
        greedy.push(next);
        seq.push(next);
    }
    assert_eq!(
        greedy, ref_greedy,
        "{label}: greedy decoding differs from the reference"
    );
}

/// Rewrites fields of the model's config.json.
fn patch_config(dir: &std::path::Path, patch: serde_json::Value) {
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (k, v) in patch.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    std::fs::write(&path, cfg.to_string()).unwrap();
}

#[test]
fn forward_matches_the_numpy_reference() {
    let dir = tempfile::tempdir().unwrap();
    bulkhead_worker::genmodel::generate(dir.path(), 11).unwrap();
    compare_with_reference(dir.path(), "plain");
}

/// Llama 3.1-style and linear `rope_scaling`: with the original context set
/// so that the test model's frequencies fall in all three llama3 bands
/// (kept, smoothed, divided), the engine matches the reference's
/// transformers formula; a model served without the scaling would not.
#[test]
fn rope_scaling_matches_the_numpy_reference() {
    for (label, scaling) in [
        (
            "llama3",
            serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        ),
        (
            "linear",
            serde_json::json!({"type": "linear", "factor": 4.0}),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        bulkhead_worker::genmodel::generate(dir.path(), 11).unwrap();
        let plain = LoadedModel::load(dir.path()).unwrap();
        patch_config(dir.path(), serde_json::json!({"rope_scaling": scaling}));
        let scaled = LoadedModel::load(dir.path()).unwrap();
        let ids = plain
            .tokenizer
            .encode_prompt("Positions far enough apart to tell.")
            .unwrap();
        let (a, b) = (last_logits(&plain, &ids), last_logits(&scaled, &ids));
        let moved = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(
            moved > 1e-3,
            "{label}: the scaling changed nothing ({moved})"
        );
        compare_with_reference(dir.path(), label);
    }
}

/// Anything the engine does not compute is refused at load, by name.
#[test]
fn configs_the_engine_does_not_implement_are_refused_by_name() {
    for (patch, names) in [
        (
            serde_json::json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}),
            "yarn",
        ),
        (serde_json::json!({"hidden_act": "gelu"}), "hidden_act"),
        (
            serde_json::json!({"architectures": ["Qwen3ForCausalLM"]}),
            "Qwen3ForCausalLM",
        ),
        (
            serde_json::json!({"num_local_experts": 8}),
            "num_local_experts",
        ),
        (serde_json::json!({"mlp_bias": true}), "mlp_bias"),
        (
            serde_json::json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}),
            "low_freq_factor",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        bulkhead_worker::genmodel::generate(dir.path(), 11).unwrap();
        patch_config(dir.path(), patch.clone());
        let Err(e) = LoadedModel::load(dir.path()) else {
            panic!("{patch}: loaded a config it cannot serve");
        };
        assert!(e.to_string().contains(names), "{patch}: {e}");
    }
    // What is served: silu, the listed architectures, a sliding window
    // (served by bounding the context to it), dynamic scaling.
    let dir = tempfile::tempdir().unwrap();
    bulkhead_worker::genmodel::generate(dir.path(), 11).unwrap();
    patch_config(
        dir.path(),
        serde_json::json!({"hidden_act": "silu", "architectures": ["MistralForCausalLM"],
            "sliding_window": 32, "rope_scaling": {"type": "dynamic", "factor": 2.0}}),
    );
    let m = LoadedModel::load(dir.path()).unwrap();
    assert_eq!(m.model.max_context(), 32);
}
