//! `gen-model`: writes a small deterministic random Llama model as a Hugging
//! Face directory (config, safetensors, tokenizer, tokenizer config).
use std::collections::HashSet;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("cannot write {0}: {1}")]
    Io(String, std::io::Error),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("safetensors: {0}")]
    Safetensors(String),
    #[error("bad model shape (hidden must divide by heads, heads by kv_heads): {0}")]
    Shape(String),
}

/// English text the BPE merges are trained on.
const CORPUS: &str = "The quick brown fox jumps over the lazy dog. A worker serves a model to \
many tenants, and each tenant keeps its own cache. The router sends the request to the worker, \
the worker runs the model, and the answer streams back token by token. Hello, world! This is a \
small test of the tokenizer: it learns the most common pairs of bytes in this paragraph, such as \
th, he, in, er, an, re, on, at, en, nd, ti, es, or, te, of, ed, is, it, al, ar, st, to, nt, ng. \
What is the capital of France? Paris is the capital of France. One, two, three, four, five.";

/// Shape and little-endian f32 bytes.
type RawTensor = (Vec<usize>, Vec<u8>);

pub const HIDDEN: usize = 64;
pub const INTERMEDIATE: usize = 128;
pub const LAYERS: usize = 2;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const MAX_POS: usize = 512;
/// The size of a generated model (the tokenizer is always the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub max_pos: usize,
}

impl Default for GenShape {
    /// The test model: tiny, fast, what `gen-model` writes.
    fn default() -> Self {
        Self {
            hidden: HIDDEN,
            intermediate: INTERMEDIATE,
            layers: LAYERS,
            heads: HEADS,
            kv_heads: KV_HEADS,
            max_pos: MAX_POS,
        }
    }
}

pub const CHAT_TEMPLATE: &str =
    "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}<|assistant|>\n";

fn build_tokenizer() -> Result<Tokenizer, GenError> {
    let terr = |e: tokenizers::Error| GenError::Tokenizer(e.to_string());
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::new(false, true, true)));
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(400)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(alphabet)
        .special_tokens(vec![
            AddedToken::from("<s>", true),
            AddedToken::from("</s>", true),
        ])
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    tok.train(&mut trainer, CORPUS.split(". ")).map_err(terr)?;
    Ok(tok)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), GenError> {
    std::fs::write(path, bytes).map_err(|e| GenError::Io(path.display().to_string(), e))
}

/// Writes the test model directory. Same seed ⇒ byte-identical files.
pub fn generate(out: &Path, seed: u64) -> Result<(), GenError> {
    generate_with(out, seed, GenShape::default())
}

/// Writes a model of the given size (`hidden` a multiple of `heads`, and
/// `heads` of `kv_heads`). Same seed and shape ⇒ byte-identical files.
pub fn generate_with(out: &Path, seed: u64, shape: GenShape) -> Result<(), GenError> {
    let GenShape {
        hidden,
        intermediate,
        layers,
        heads,
        kv_heads,
        max_pos,
    } = shape;
    if heads == 0 || kv_heads == 0 || hidden % heads != 0 || heads % kv_heads != 0 {
        return Err(GenError::Shape(format!("{shape:?}")));
    }
    std::fs::create_dir_all(out).map_err(|e| GenError::Io(out.display().to_string(), e))?;
    let tok = build_tokenizer()?;
    let vocab = tok.get_vocab_size(true);
    let bos = tok.token_to_id("<s>").unwrap_or(0);
    let eos = tok.token_to_id("</s>").unwrap_or(1);
    let json = tok
        .to_string(true)
        .map_err(|e| GenError::Tokenizer(e.to_string()))?;
    write(&out.join("tokenizer.json"), json.as_bytes())?;

    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": max_pos,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": false,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    });
    let tcfg = serde_json::json!({
        "bos_token": "<s>",
        "eos_token": "</s>",
        "add_bos_token": false,
        "model_max_length": max_pos,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
    });
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    write(&out.join("config.json"), pretty(&config).as_bytes())?;
    write(&out.join("tokenizer_config.json"), pretty(&tcfg).as_bytes())?;

    let mut rng = StdRng::seed_from_u64(seed);
    // Uniform with standard deviation 0.02.
    let a = 0.02f32 * 3f32.sqrt();
    let mut rand_t = |shape: &[usize]| -> (Vec<usize>, Vec<u8>) {
        let n: usize = shape.iter().product();
        let bytes = (0..n)
            .flat_map(|_| rng.random_range(-a..a).to_le_bytes())
            .collect();
        (shape.to_vec(), bytes)
    };
    let ones = |n: usize| -> (Vec<usize>, Vec<u8>) {
        (vec![n], (0..n).flat_map(|_| 1f32.to_le_bytes()).collect())
    };
    let hd = hidden / heads;
    let mut tensors: Vec<(String, RawTensor)> =
        vec![("model.embed_tokens.weight".into(), rand_t(&[vocab, hidden]))];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        tensors.push((format!("{p}.input_layernorm.weight"), ones(hidden)));
        tensors.push((format!("{p}.post_attention_layernorm.weight"), ones(hidden)));
        tensors.push((
            format!("{p}.self_attn.q_proj.weight"),
            rand_t(&[heads * hd, hidden]),
        ));
        tensors.push((
            format!("{p}.self_attn.k_proj.weight"),
            rand_t(&[kv_heads * hd, hidden]),
        ));
        tensors.push((
            format!("{p}.self_attn.v_proj.weight"),
            rand_t(&[kv_heads * hd, hidden]),
        ));
        tensors.push((
            format!("{p}.self_attn.o_proj.weight"),
            rand_t(&[hidden, heads * hd]),
        ));
        tensors.push((
            format!("{p}.mlp.gate_proj.weight"),
            rand_t(&[intermediate, hidden]),
        ));
        tensors.push((
            format!("{p}.mlp.up_proj.weight"),
            rand_t(&[intermediate, hidden]),
        ));
        tensors.push((
            format!("{p}.mlp.down_proj.weight"),
            rand_t(&[hidden, intermediate]),
        ));
    }
    tensors.push(("model.norm.weight".into(), ones(hidden)));
    tensors.push(("lm_head.weight".into(), rand_t(&[vocab, hidden])));
    let views = tensors
        .iter()
        .map(|(name, (shape, data))| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| GenError::Safetensors(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes =
        safetensors::serialize(views, None).map_err(|e| GenError::Safetensors(e.to_string()))?;
    write(&out.join("model.safetensors"), &bytes)?;
    Ok(())
}

/// Rewrites a generated model's weights in `dtype` (bf16 or f16 as a
/// checkpoint would store them; f32 leaves them as they are).
pub fn store_as(dir: &Path, dtype: safetensors::Dtype) -> Result<(), GenError> {
    use safetensors::Dtype;
    let serr = |e: safetensors::SafeTensorError| GenError::Safetensors(e.to_string());
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).map_err(|e| GenError::Io(path.display().to_string(), e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(serr)?;
    let mut out: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
    for (name, view) in st.tensors() {
        let f = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        let data: Vec<u8> = match dtype {
            Dtype::F32 => return Ok(()),
            Dtype::BF16 => f
                .flat_map(|x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
            Dtype::F16 => f
                .flat_map(|x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            other => {
                return Err(GenError::Safetensors(format!(
                    "cannot store as {other:?} (f32, bf16, f16)"
                )));
            }
        };
        out.push((name, view.shape().to_vec(), data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = out
        .iter()
        .map(|(n, shape, d)| {
            safetensors::tensor::TensorView::new(dtype, shape.clone(), d).map(|v| (n.clone(), v))
        })
        .collect::<Result<_, _>>()
        .map_err(serr)?;
    safetensors::serialize_to_file(views, None, &path).map_err(serr)
}
