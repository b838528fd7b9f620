//! Checkpoint variants made from the generated model: the architectures'
//! optional parts (attention biases, tied embeddings, Qwen3's head norms and
//! explicit `head_dim`) and the stored precisions (f32, bf16, f16), written
//! as Hugging Face would write them, so the engine and the reference both
//! read the same files.
use std::collections::BTreeMap;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

/// Tensors by name: shape and values.
pub type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// How the tensors are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    F32,
    Bf16,
    F16,
}

pub fn read(dir: &Path) -> Tensors {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out = Tensors::new();
    for (name, view) in st.tensors() {
        assert_eq!(view.dtype(), Dtype::F32, "{name}: the generator writes f32");
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name, (view.shape().to_vec(), data));
    }
    out
}

pub fn write(dir: &Path, tensors: &Tensors, stored: Stored) {
    let bytes: BTreeMap<&String, (Dtype, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (_, data))| {
            let encoded = match stored {
                Stored::F32 => (
                    Dtype::F32,
                    data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
                Stored::Bf16 => (
                    Dtype::BF16,
                    data.iter()
                        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                        .collect(),
                ),
                Stored::F16 => (
                    Dtype::F16,
                    data.iter()
                        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                        .collect(),
                ),
            };
            (name, encoded)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, (shape, _))| {
            let (dtype, b) = &bytes[name];
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn random(rng: &mut StdRng, n: usize, around: f32, spread: f32) -> Vec<f32> {
    (0..n)
        .map(|_| around + rng.random_range(-spread..spread))
        .collect()
}

/// Gives every attention projection of `layers` layers a bias
/// (Qwen2's q/k/v; Llama's `attention_bias` adds o too).
pub fn add_attention_biases(t: &mut Tensors, layers: usize, with_o: bool, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for l in 0..layers {
        for p in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            if p == "o_proj" && !with_o {
                continue;
            }
            let w = format!("model.layers.{l}.self_attn.{p}.weight");
            let out = t[&w].0[0];
            let b = random(&mut rng, out, 0.0, 0.2);
            t.insert(
                format!("model.layers.{l}.self_attn.{p}.bias"),
                (vec![out], b),
            );
        }
    }
}

/// Qwen3's attention: `head_dim` chosen apart from hidden / heads (new
/// random projections of that width) and RMSNorm weights over each query
/// and key head.
pub fn make_qwen3(
    t: &mut Tensors,
    shape: (usize, usize, usize, usize),
    head_dim: usize,
    seed: u64,
) {
    let (layers, hidden, heads, kv_heads) = shape;
    let mut rng = StdRng::seed_from_u64(seed);
    let scale = 1.0 / (hidden as f32).sqrt();
    for l in 0..layers {
        let a = |p: &str| format!("model.layers.{l}.self_attn.{p}");
        for (p, rows, cols) in [
            ("q_proj", heads * head_dim, hidden),
            ("k_proj", kv_heads * head_dim, hidden),
            ("v_proj", kv_heads * head_dim, hidden),
            ("o_proj", hidden, heads * head_dim),
        ] {
            t.insert(
                a(&format!("{p}.weight")),
                (
                    vec![rows, cols],
                    random(&mut rng, rows * cols, 0.0, 2.0 * scale),
                ),
            );
        }
        for p in ["q_norm", "k_norm"] {
            t.insert(
                a(&format!("{p}.weight")),
                (vec![head_dim], random(&mut rng, head_dim, 1.0, 0.5)),
            );
        }
    }
}

/// Ties the output projection to the embeddings.
pub fn tie_embeddings(t: &mut Tensors) {
    t.remove("lm_head.weight").expect("an untied model");
}
