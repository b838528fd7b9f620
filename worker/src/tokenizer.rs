//! The model's tokenizer (`tokenizer.json`) and chat template
//! (`tokenizer_config.json`), plus incremental detokenization with stop strings.
use std::path::Path;

use serde::Serialize;

use crate::LoadError;

/// One chat message to render with the chat template.
#[derive(Debug, Clone, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("this model has no chat template")]
    NoChatTemplate,
    #[error("chat template error: {0}")]
    Template(String),
}

/// Tokenizer plus the special tokens and chat template of a model.
pub struct TextTokenizer {
    tok: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_token: String,
    eos_token: String,
    eos_ids: Vec<u32>,
    /// The decoder maps bytes to printable characters (GPT-2 byte-level BPE).
    byte_level: bool,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("eos_ids", &self.eos_ids)
            .finish_non_exhaustive()
    }
}

/// `bos_token` may be a string or `{"content": "..."}`.
fn token_str(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and (if present) `tokenizer_config.json`.
    /// `config_eos` are the eos ids from `config.json`.
    pub fn load(dir: &Path, config_eos: &[u32]) -> Result<Self, LoadError> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(LoadError::Io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
            ));
        }
        let tok = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| LoadError::Tokenizer(path.clone(), e.to_string()))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path)
                .map_err(|e| LoadError::Io(cfg_path.clone(), e))?;
            serde_json::from_str(&text).map_err(|e| LoadError::Json(cfg_path.clone(), e))?
        } else {
            serde_json::Value::Null
        };
        let bos_token = token_str(cfg.get("bos_token")).unwrap_or_default();
        let eos_token = token_str(cfg.get("eos_token")).unwrap_or_default();
        let chat_template = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // A list of named templates: use "default".
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            _ => None,
        };
        let mut eos_ids = config_eos.to_vec();
        if let Some(id) = tok.token_to_id(&eos_token)
            && !eos_ids.contains(&id)
        {
            eos_ids.push(id);
        }
        let byte_level = tok
            .get_decoder()
            .and_then(|d| serde_json::to_string(d).ok())
            .is_some_and(|j| j.contains("\"ByteLevel\""));
        Ok(Self {
            byte_level,
            tok,
            chat_template,
            bos_token,
            eos_token,
            eos_ids,
        })
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    /// Tokenizes a raw prompt (with the tokenizer's own special tokens, e.g. BOS).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        self.encode(text, true)
    }

    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizeError> {
        self.tok
            .encode(text, add_special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizeError::Tokenizer(e.to_string()))
    }

    /// Renders chat messages with the chat template and tokenizes the result
    /// (special tokens come from the template, as in HF `apply_chat_template`).
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, TokenizeError> {
        let text = self.render_chat(messages)?;
        self.encode(&text, false)
    }

    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, TokenizeError> {
        let tpl = self
            .chat_template
            .as_deref()
            .ok_or(TokenizeError::NoChatTemplate)?;
        // As Hugging Face renders templates: trim_blocks and lstrip_blocks on,
        // trailing newline dropped (jinja2's default).
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", tpl)
            .map_err(|e| TokenizeError::Template(e.to_string()))?;
        let t = env
            .get_template("chat")
            .map_err(|e| TokenizeError::Template(e.to_string()))?;
        t.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| TokenizeError::Template(e.to_string()))
    }

    /// Decodes ids, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizeError> {
        self.tok
            .decode(ids, true)
            .map_err(|e| TokenizeError::Tokenizer(e.to_string()))
    }
}

impl TextTokenizer {
    /// The exact bytes one token stands for (for logprobs): byte-level BPE
    /// pieces are mapped back through the GPT-2 byte alphabet, `<0xHH>`
    /// byte-fallback pieces give their byte, SentencePiece's `▁` is a space,
    /// special tokens are their text. An unknown id gives no bytes.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(piece) = self.tok.id_to_token(id) else {
            return Vec::new();
        };
        if self.byte_level {
            let mut out = Vec::with_capacity(piece.len());
            for c in piece.chars() {
                match crate::logprobs::byte_of_char(c) {
                    Some(b) => out.push(b),
                    // Not from the byte alphabet (an added/special token).
                    None => return piece.into_bytes(),
                }
            }
            return out;
        }
        let hex = piece
            .strip_prefix("<0x")
            .and_then(|h| h.strip_suffix('>'))
            .filter(|h| h.len() == 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => vec![b],
            None => piece.replace('\u{2581}', " ").into_bytes(),
        }
    }
}

/// What one new token produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextDelta {
    /// Text that may be emitted now (possibly empty).
    pub text: String,
    /// A stop string was completed; `text` holds only what precedes it.
    pub stopped: bool,
}

/// Incremental detokenizer: decodes the generated ids and releases only the
/// new suffix, holding back text while it ends in an incomplete UTF-8
/// sequence (U+FFFD) or in a prefix of a stop string.
///
/// Each token decodes only a short window (the ids since the previous
/// release, with the ones before it as context, as text-generation-inference
/// does), so a generation of n tokens costs O(n), not O(n²).
#[derive(Debug, Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    /// `ids[prefix_offset..read_offset]` decodes to the context text whose
    /// continuation `ids[prefix_offset..]` yields the new text.
    prefix_offset: usize,
    read_offset: usize,
    /// Bytes of the decoded text already released.
    sent: usize,
    stop: Vec<String>,
    /// Last decoded text without a trailing incomplete sequence.
    text: String,
}

impl Detokenizer {
    pub fn new(stop: Vec<String>) -> Self {
        Self {
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            ..Self::default()
        }
    }

    /// Adds a token; returns the text that can be released.
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<TextDelta, TokenizeError> {
        self.ids.push(id);
        let context = tok.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let window = tok.decode(&self.ids[self.prefix_offset..])?;
        if window.ends_with('\u{FFFD}') {
            return Ok(TextDelta {
                text: String::new(),
                stopped: false,
            });
        }
        match window.strip_prefix(context.as_str()) {
            Some(new) => self.text.push_str(new),
            // A tokenizer whose window decodes differently from the whole
            // (never seen, but then be right rather than fast).
            None => self.text = tok.decode(&self.ids)?,
        }
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        if let Some(at) = self.stop_at() {
            let out = self.text.get(self.sent..at).unwrap_or("").to_string();
            self.sent = self.sent.max(at);
            return Ok(TextDelta {
                text: out,
                stopped: true,
            });
        }
        // Hold back the longest suffix that is a prefix of a stop string.
        let mut end = self.text.len();
        for s in &self.stop {
            for l in (1..s.len()).rev() {
                if s.is_char_boundary(l) && self.text.ends_with(&s[..l]) {
                    end = end.min(self.text.len() - l);
                    break;
                }
            }
        }
        Ok(self.release_to(end))
    }

    /// Releases everything held back (at the end of a generation),
    /// including tokens that end inside a UTF-8 character: their bytes come
    /// out as U+FFFD, as a whole decode would give them, so the final text
    /// carries every token reported.
    pub fn flush(&mut self, tok: &TextTokenizer) -> String {
        if self.read_offset < self.ids.len()
            && let (Ok(context), Ok(window)) = (
                tok.decode(&self.ids[self.prefix_offset..self.read_offset]),
                tok.decode(&self.ids[self.prefix_offset..]),
            )
        {
            match window.strip_prefix(context.as_str()) {
                Some(new) => self.text.push_str(new),
                None => {
                    if let Ok(all) = tok.decode(&self.ids) {
                        self.text = all;
                    }
                }
            }
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
        }
        // What came in last may complete a stop string: nothing from it on.
        let end = self.stop_at().unwrap_or(self.text.len());
        self.release_to(end).text
    }

    /// Where the first stop string starts in the unreleased text (or
    /// overlapping it), if one does.
    fn stop_at(&self) -> Option<usize> {
        let max_stop = self.stop.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.sent.saturating_sub(max_stop);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.stop
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| i + from))
            .min()
    }

    fn release_to(&mut self, mut end: usize) -> TextDelta {
        while end > self.sent && !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let out = self.text.get(self.sent..end).unwrap_or("").to_string();
        self.sent = self.sent.max(end);
        TextDelta {
            text: out,
            stopped: false,
        }
    }
}
