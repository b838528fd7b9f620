//! `config.json` of a Llama-family (Llama, Mistral, Qwen2, Qwen3) Hugging
//! Face model.
//!
//! A checkpoint is served exactly or not at all: every field that changes
//! what the model computes is either implemented here or refused at load
//! with an error naming it (another architecture or activation, an
//! unimplemented `rope_scaling` type, mixture-of-experts fields, MLP
//! biases). Absent fields take the Hugging Face defaults.
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

use crate::LoadError;

/// The fields the CPU forward pass needs.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f32,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub sliding_window: Option<Value>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    /// Llama/Qwen3: biases on the q, k, v and o projections (Qwen2 has q,
    /// k, v biases without saying so; they are read when present).
    #[serde(default)]
    pub attention_bias: Option<bool>,
    /// Qwen3's per-layer types ("full_attention", "sliding_attention").
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub num_local_experts: Option<Value>,
    #[serde(default)]
    pub num_experts: Option<Value>,
}

/// Architectures whose forward pass this engine computes exactly.
pub const ARCHITECTURES: &[&str] = &[
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
];
const MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];

/// How rotary position frequencies are scaled (`rope_scaling`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (frequencies too).
    Linear {
        factor: f64,
    },
    /// Llama 3.1's piecewise frequency scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// YaRN (Peng et al. 2023): frequencies ramped between interpolated and
    /// kept over the correction range of `beta_fast`..`beta_slow` rotations
    /// within the original context, and the rotated query and key scaled by
    /// `attention_factor` (so attention logits by its square).
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
        truncate: bool,
    },
}

/// `eos_token_id` may be one id or a list of ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(i) => vec![*i],
            TokenIds::Many(v) => v.clone(),
        }
    }
}

fn default_max_pos() -> usize {
    2048
}
fn default_theta() -> f32 {
    10000.0
}
/// Hugging Face's default for Llama, Mistral and Qwen2 configs.
fn default_eps() -> f32 {
    1e-6
}

impl ModelConfig {
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| LoadError::Io(path.clone(), e))?;
        let cfg: ModelConfig =
            serde_json::from_str(&text).map_err(|e| LoadError::Json(path.clone(), e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The `rope_scaling` setting, or why it cannot be served. `dynamic`
    /// (NTK) scaling changes nothing up to `max_position_embeddings`, which
    /// bounds the context served, so it is served as none.
    pub fn rope_scaling(&self) -> Result<RopeScaling, String> {
        let Some(v) = self.rope_scaling.as_ref().filter(|v| !v.is_null()) else {
            return Ok(RopeScaling::None);
        };
        let kind = v
            .get("rope_type")
            .or_else(|| v.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let num = |k: &str| -> Result<f64, String> {
            v.get(k)
                .and_then(Value::as_f64)
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| format!("rope_scaling.{k} is missing or not a positive number"))
        };
        match kind {
            "default" => Ok(RopeScaling::None),
            "dynamic" => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear {
                factor: num("factor")?,
            }),
            "llama3" => {
                let s = RopeScaling::Llama3 {
                    factor: num("factor")?,
                    low_freq_factor: num("low_freq_factor")?,
                    high_freq_factor: num("high_freq_factor")?,
                    original_max_position_embeddings: num("original_max_position_embeddings")?,
                };
                if let RopeScaling::Llama3 {
                    low_freq_factor,
                    high_freq_factor,
                    ..
                } = s
                    && high_freq_factor <= low_freq_factor
                {
                    return Err("rope_scaling.high_freq_factor must exceed low_freq_factor".into());
                }
                Ok(s)
            }
            "yarn" => self.yarn(v),
            other => Err(format!(
                "rope_scaling type {other:?} is not implemented (default, linear, dynamic, llama3 and yarn are); refusing rather than serving the model wrong"
            )),
        }
    }

    /// Whether the architecture normalizes each query and key head
    /// (RMSNorm over `head_dim`, before the rotary embedding): Qwen3's
    /// `q_norm`/`k_norm`, which its checkpoints then must carry.
    pub fn qk_norm(&self) -> bool {
        self.model_type.as_deref() == Some("qwen3")
            || self
                .architectures
                .as_ref()
                .is_some_and(|a| a.iter().any(|a| a == "Qwen3ForCausalLM"))
    }

    /// YaRN's parameters as transformers (v5) reads them: `factor` (or, when
    /// absent, `max_position_embeddings / original_max_position_embeddings`),
    /// the original context (default `max_position_embeddings`), the
    /// attention factor (given, or `0.1 ln(factor) + 1` scaled by
    /// `mscale`/`mscale_all_dim` when both are given), `beta_fast` 32,
    /// `beta_slow` 1, `truncate` true.
    fn yarn(&self, v: &Value) -> Result<RopeScaling, String> {
        let opt = |k: &str| -> Result<Option<f64>, String> {
            match v.get(k).filter(|x| !x.is_null()) {
                None => Ok(None),
                Some(x) => x
                    .as_f64()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .map(Some)
                    .ok_or_else(|| format!("rope_scaling.{k} must be a positive number")),
            }
        };
        let max_pos = self.max_position_embeddings as f64;
        let original = opt("original_max_position_embeddings")?.unwrap_or(max_pos);
        let factor = opt("factor")?.unwrap_or(max_pos / original);
        let mscale = |scale: f64, m: f64| {
            if scale <= 1.0 {
                1.0
            } else {
                0.1 * m * scale.ln() + 1.0
            }
        };
        let attention_factor = match (
            opt("attention_factor")?,
            opt("mscale")?,
            opt("mscale_all_dim")?,
        ) {
            (Some(a), _, _) => a,
            (None, Some(m), Some(all)) => mscale(factor, m) / mscale(factor, all),
            _ => mscale(factor, 1.0),
        };
        let truncate = match v.get("truncate").filter(|x| !x.is_null()) {
            None => true,
            Some(t) => t
                .as_bool()
                .ok_or("rope_scaling.truncate must be true or false")?,
        };
        Ok(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: original,
            beta_fast: opt("beta_fast")?.unwrap_or(32.0),
            beta_slow: opt("beta_slow")?.unwrap_or(1.0),
            attention_factor,
            truncate,
        })
    }

    /// What the rotated query and key are multiplied by (YaRN's attention
    /// factor; 1 otherwise).
    pub fn rope_attention_factor(&self) -> f32 {
        match self.rope_scaling() {
            Ok(RopeScaling::Yarn {
                attention_factor, ..
            }) => attention_factor as f32,
            _ => 1.0,
        }
    }

    /// The scale of attention logits: `attention_factor² / sqrt(head_dim)`.
    pub fn attention_scale(&self) -> f32 {
        let af = self.rope_attention_factor();
        af * af / (self.head_dim() as f32).sqrt()
    }

    /// The rotary inverse frequencies (one per pair of dimensions), with
    /// `rope_scaling` applied as transformers computes it.
    pub fn inv_freq(&self) -> Result<Vec<f32>, String> {
        let hd = self.head_dim();
        let theta = f64::from(self.rope_theta);
        let base: Vec<f64> = (0..hd / 2)
            .map(|i| 1.0 / theta.powf(2.0 * i as f64 / hd as f64))
            .collect();
        let scaled: Vec<f64> = match self.rope_scaling()? {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original,
                beta_fast,
                beta_slow,
                truncate,
                ..
            } => {
                let d = hd as f64;
                // The dimension whose wavelength makes `rotations` turns
                // over the original context.
                let correction = |rotations: f64| {
                    d * (original / (rotations * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * theta.ln())
                };
                let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
                if truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, high) = (low.max(0.0), high.min(d - 1.0));
                let high = if low == high { high + 0.001 } else { high };
                base.iter()
                    .enumerate()
                    .map(|(i, &f)| {
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let keep = 1.0 - ramp;
                        f / factor * (1.0 - keep) + f * keep
                    })
                    .collect()
            }
        };
        Ok(scaled.into_iter().map(|f| f as f32).collect())
    }

    /// The longest context served exactly: `max_position_embeddings`, or a
    /// sliding attention window when one applies (every token then sees
    /// the whole sequence, which is what the window computes too).
    pub fn served_context(&self) -> usize {
        let window = match (&self.sliding_window, self.use_sliding_window) {
            (_, Some(false)) => None,
            (Some(v), _) => v.as_u64().map(|w| w as usize).filter(|w| *w > 0),
            (None, _) => None,
        };
        match window {
            Some(w) => w.min(self.max_position_embeddings),
            None => self.max_position_embeddings,
        }
    }

    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |m: String| Err(LoadError::Config(m));
        if let Some(archs) = &self.architectures
            && let Some(a) = archs.iter().find(|a| !ARCHITECTURES.contains(&a.as_str()))
        {
            return bad(format!(
                "architectures: {a} is not served (only {}); refusing rather than computing it wrong",
                ARCHITECTURES.join(", ")
            ));
        }
        if let Some(t) = &self.model_type
            && !MODEL_TYPES.contains(&t.as_str())
        {
            return bad(format!(
                "model_type {t:?} is not served (only {})",
                MODEL_TYPES.join(", ")
            ));
        }
        if let Some(act) = &self.hidden_act
            && act != "silu"
        {
            return bad(format!("hidden_act {act:?} is not implemented (only silu)"));
        }
        if self.mlp_bias == Some(true) {
            return bad("mlp_bias: MLP biases are not implemented".into());
        }
        for (name, v) in [
            ("num_local_experts", &self.num_local_experts),
            ("num_experts", &self.num_experts),
        ] {
            if v.as_ref()
                .is_some_and(|v| !v.is_null() && v.as_u64() != Some(0))
            {
                return bad(format!("{name}: mixture-of-experts models are not served"));
            }
        }
        if let Some(types) = &self.layer_types
            && let Some(t) = types.iter().find(|t| *t != "full_attention")
        {
            return bad(format!(
                "layer_types: {t:?} layers are not implemented (only full_attention)"
            ));
        }
        if let Err(e) = self.rope_scaling() {
            return bad(e);
        }
        if self.num_attention_heads == 0 || self.num_kv_heads() == 0 {
            return bad("attention head counts must be positive".into());
        }
        if !self.num_attention_heads.is_multiple_of(self.num_kv_heads()) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_kv_heads()
            ));
        }
        if self.head_dim() == 0 || !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head_dim {} must be even and positive",
                self.head_dim()
            ));
        }
        if self.hidden_size == 0 || self.vocab_size == 0 || self.max_position_embeddings == 0 {
            return bad(
                "hidden_size, vocab_size and max_position_embeddings must be positive".into(),
            );
        }
        Ok(())
    }
}
