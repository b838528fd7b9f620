//! The forward pass against an independent implementation: a NumPy script
//! (scripts/reference_llama.py, float64, full causal recompute, no paging)
//! on a generated random model and on variants of it shaped like real
//! checkpoints (`reference/variants.rs`), stored as f32, bf16 and f16.
//! Logits must agree within 1e-4 and greedy decoding token for token.
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use bulkhead_worker::LoadedModel;
use bulkhead_worker::kv::{KvPool, TenantId};
use bulkhead_worker::model::SeqInput;

#[path = "reference/variants.rs"]
mod variants;
use variants::Stored;

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

/// Llama 3.1-style, linear and YaRN `rope_scaling`: with the original
/// context set so that the test model's frequencies fall in all three llama3
/// bands (kept, smoothed, divided) and across YaRN's ramp, the engine
/// matches the reference's transformers formula (YaRN's attention factor
/// included); a model served without the scaling would not.
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
        // Qwen2.5's long-context setting: the original context small enough
        // that the test model's frequencies span the whole ramp.
        (
            "yarn",
            serde_json::json!({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}),
        ),
        // DeepSeek-style: the attention factor from mscale / mscale_all_dim.
        (
            "yarn-mscale",
            serde_json::json!({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 64,
                "mscale": 1.0, "mscale_all_dim": 0.5, "beta_fast": 16.0, "beta_slow": 2.0}),
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
            serde_json::json!({"rope_scaling": {"rope_type": "longrope", "factor": 4.0}}),
            "longrope",
        ),
        (
            serde_json::json!({"rope_scaling": {"rope_type": "yarn", "factor": -1.0}}),
            "rope_scaling.factor",
        ),
        (serde_json::json!({"hidden_act": "gelu"}), "hidden_act"),
        (
            serde_json::json!({"architectures": ["GemmaForCausalLM"]}),
            "GemmaForCausalLM",
        ),
        // Qwen3 without its head norms: the checkpoint is not what the
        // config says.
        (
            serde_json::json!({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}),
            "q_norm",
        ),
        (
            serde_json::json!({"layer_types": ["full_attention", "sliding_attention"]}),
            "sliding_attention",
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

/// Real checkpoints' shapes, scaled down: each architecture's optional
/// parts, each stored as f32, bf16 and f16, against the reference. A
/// variant the engine computed without its part (biases, head norms, tied
/// head, head_dim) would not match.
#[test]
fn checkpoint_variants_match_the_numpy_reference() {
    use bulkhead_worker::genmodel::{HEADS, HIDDEN, KV_HEADS, LAYERS};
    type Edit = fn(&mut variants::Tensors);
    let variants: [(&str, serde_json::Value, Edit); 6] = [
        (
            "llama-3.2-1b-shaped",
            serde_json::json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "tie_word_embeddings": true, "rope_theta": 500000.0,
                "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
            variants::tie_embeddings,
        ),
        (
            "qwen2.5-0.5b-shaped",
            serde_json::json!({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                "tie_word_embeddings": true, "rope_theta": 1000000.0,
                "use_sliding_window": false, "sliding_window": 32}),
            |t| {
                variants::add_attention_biases(t, LAYERS, false, 5);
                variants::tie_embeddings(t);
            },
        ),
        (
            "qwen3-0.6b-shaped",
            serde_json::json!({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
                "tie_word_embeddings": true, "rope_theta": 1000000.0, "head_dim": 32,
                "attention_bias": false, "layer_types": ["full_attention", "full_attention"]}),
            |t| {
                variants::make_qwen3(t, (LAYERS, HIDDEN, HEADS, KV_HEADS), 32, 6);
                variants::tie_embeddings(t);
            },
        ),
        (
            "mistral-7b-shaped",
            serde_json::json!({"architectures": ["MistralForCausalLM"], "model_type": "mistral",
                "rope_theta": 1000000.0, "sliding_window": 4096}),
            |_| {},
        ),
        (
            "smollm2-shaped",
            serde_json::json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "tie_word_embeddings": true, "rope_theta": 100000.0}),
            variants::tie_embeddings,
        ),
        (
            "llama-attention-bias",
            serde_json::json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "attention_bias": true}),
            |t| variants::add_attention_biases(t, LAYERS, true, 7),
        ),
    ];
    for (name, patch, edit) in variants {
        for stored in [Stored::F32, Stored::Bf16, Stored::F16] {
            let dir = tempfile::tempdir().unwrap();
            bulkhead_worker::genmodel::generate(dir.path(), 11).unwrap();
            let mut t = variants::read(dir.path());
            edit(&mut t);
            variants::write(dir.path(), &t, stored);
            patch_config(dir.path(), patch.clone());
            compare_with_reference(dir.path(), &format!("{name} ({stored:?})"));
        }
    }
}

/// The part a variant adds is computed, not dropped: without Qwen3's head
/// norms (the same checkpoint, its config claiming Llama) the engine
/// refuses the tensors it would not read, by name.
#[test]
fn a_part_the_config_does_not_name_is_refused_not_ignored() {
    use bulkhead_worker::genmodel::{HEADS, HIDDEN, KV_HEADS, LAYERS};
    let dir = tempfile::tempdir().unwrap();
    bulkhead_worker::genmodel::generate(dir.path(), 11).unwrap();
    let mut t = variants::read(dir.path());
    variants::make_qwen3(&mut t, (LAYERS, HIDDEN, HEADS, KV_HEADS), 32, 6);
    variants::write(dir.path(), &t, Stored::F32);
    patch_config(dir.path(), serde_json::json!({"head_dim": 32}));
    let Err(e) = LoadedModel::load(dir.path()) else {
        panic!("a Llama config loaded a checkpoint with head norms");
    };
    assert!(e.to_string().contains("q_norm"), "{e}");
    // Said to be Qwen3, the same files load.
    patch_config(
        dir.path(),
        serde_json::json!({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}),
    );
    LoadedModel::load(dir.path()).unwrap();
}

/// Weights stay as stored: a bf16 or f16 checkpoint occupies its file's
/// size in the worker (norms and biases, widened to f32, aside), half of
/// the f32 one.
#[test]
fn weights_stay_in_their_stored_precision() {
    let mut sizes = vec![];
    for dtype in [
        safetensors::Dtype::F32,
        safetensors::Dtype::BF16,
        safetensors::Dtype::F16,
    ] {
        let dir = tempfile::tempdir().unwrap();
        bulkhead_worker::genmodel::generate(dir.path(), 11).unwrap();
        bulkhead_worker::genmodel::store_as(dir.path(), dtype).unwrap();
        let file = std::fs::metadata(dir.path().join("model.safetensors"))
            .unwrap()
            .len() as f64;
        let m = LoadedModel::load(dir.path()).unwrap();
        let held = m.model.weight_bytes() as f64;
        println!("{dtype:?}: file {file} bytes, held {held} bytes");
        assert!(
            (held / file - 1.0).abs() < 0.02,
            "{dtype:?}: {held} bytes held for a {file}-byte file"
        );
        sizes.push(held);
    }
    assert!((sizes[1] / sizes[0] - 0.5).abs() < 0.01, "{sizes:?}");
    assert_eq!(sizes[1], sizes[2]);
}

/// The opt-in int8 mode's cost in quality, against the weights as stored
/// (bf16, what such a checkpoint would be): the log-probabilities of the
/// reference prompt's next token over the whole vocabulary, and greedy
/// decoding. Printed, and bounded.
#[test]
fn int8_weights_stay_close_to_the_stored_ones() {
    let dir = tempfile::tempdir().unwrap();
    bulkhead_worker::genmodel::generate(dir.path(), 11).unwrap();
    bulkhead_worker::genmodel::store_as(dir.path(), safetensors::Dtype::BF16).unwrap();
    let stored = LoadedModel::load(dir.path()).unwrap();
    let mut int8 = LoadedModel::load(dir.path()).unwrap();
    int8.model.quantize_int8();
    assert!(int8.model.weight_bytes() < stored.model.weight_bytes());
    let log_softmax = |l: &[f32]| -> Vec<f64> {
        let m = l.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let z: f64 = l.iter().map(|v| (*v as f64 - m).exp()).sum();
        l.iter().map(|v| *v as f64 - m - z.ln()).collect()
    };
    let mut worst: f64 = 0.0;
    let mut same = 0;
    let prompts = [
        "Tenants share the fleet; their prompts never share a block.",
        "The quick brown fox jumps over the lazy dog.",
        "What is the capital of France?",
    ];
    for p in prompts {
        let ids = stored.tokenizer.encode_prompt(p).unwrap();
        let (a, b) = (last_logits(&stored, &ids), last_logits(&int8, &ids));
        let (la, lb) = (log_softmax(&a), log_softmax(&b));
        let diff = la
            .iter()
            .zip(&lb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        worst = worst.max(diff);
        same += usize::from(argmax(&a) == argmax(&b));
    }
    let ratio = stored.model.weight_bytes() as f64 / int8.model.weight_bytes() as f64;
    println!(
        "int8 vs bf16: max |logprob difference| {worst:.4} over {} prompts, same greedy token in {same}; weights {ratio:.2}x smaller",
        prompts.len()
    );
    assert!(worst < 0.05, "int8 moved a logprob by {worst}");
    assert_eq!(same, prompts.len());
}
