//! `config.json` of a Llama-family (Llama, Mistral, Qwen2) Hugging Face model.
use serde::Deserialize;
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
fn default_eps() -> f32 {
    1e-5
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

    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |m: String| Err(LoadError::Config(m));
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
