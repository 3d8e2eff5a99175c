//! A model directory's tokenizer: `tokenizer.json` (the `tokenizers` crate), the special tokens
//! and chat template of `tokenizer_config.json`, and the end-of-sequence ids generation stops at.

use super::chat::{ChatMessage, ChatTemplate};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::Path;

pub struct TextTokenizer {
    pub inner: tokenizers::Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    /// Token ids that end a generation.
    pub stop_ids: Vec<u32>,
}

/// A special-token entry is either a string or `{"content": "..."}`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

impl TextTokenizer {
    /// Loads `DIR/tokenizer.json` and, when present, `tokenizer_config.json` and
    /// `generation_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            bail!("{} has no tokenizer.json", dir.display());
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow::anyhow!("{} does not load: {e}", path.display()))?;
        let config = match dir.join("tokenizer_config.json") {
            p if p.is_file() => read_json(&p)?,
            _ => Value::Null,
        };
        let template_source = match config.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: use "default".
            Some(Value::Array(items)) => items
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(String::from),
            _ => None,
        };
        let chat_template = template_source
            .map(|s| ChatTemplate::new(&s))
            .transpose()
            .with_context(|| format!("in {}", dir.join("tokenizer_config.json").display()))?;
        let mut tok = Self {
            inner,
            chat_template,
            bos_token: token_string(config.get("bos_token")),
            eos_token: token_string(config.get("eos_token")),
            pad_token: token_string(config.get("pad_token")),
            stop_ids: Vec::new(),
        };
        let mut stops: Vec<u32> = Vec::new();
        if let Some(eos) = &tok.eos_token {
            stops.extend(tok.inner.token_to_id(eos));
        }
        if let Ok(gen_cfg) = read_json(&dir.join("generation_config.json")) {
            match gen_cfg.get("eos_token_id") {
                Some(Value::Array(ids)) => {
                    stops.extend(ids.iter().filter_map(Value::as_u64).map(|v| v as u32))
                }
                Some(v) => stops.extend(v.as_u64().map(|v| v as u32)),
                None => {}
            }
        }
        // ChatML turns end with <|im_end|> whatever the configured eos is.
        if tok
            .chat_template
            .as_ref()
            .is_some_and(|t| t.source.contains("<|im_end|>"))
        {
            stops.extend(tok.inner.token_to_id("<|im_end|>"));
        }
        stops.sort_unstable();
        stops.dedup();
        tok.stop_ids = stops;
        Ok(tok)
    }

    /// Token ids of `text`; special tokens written in the text are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| anyhow::anyhow!("decoding: {e}"))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The prompt text of a conversation with the model's chat template.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_ref()
            .context("the tokenizer has no chat template (tokenizer_config.json: chat_template)")?;
        template.render(
            messages,
            add_generation_prompt,
            self.bos_token.as_deref(),
            self.eos_token.as_deref(),
        )
    }
}

/// Copies the tokenizer and generation files of a model directory.
pub fn copy_tokenizer_files(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        if from.join(f).exists() {
            std::fs::copy(from.join(f), to.join(f))?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub mod tests_support {
    use super::TextTokenizer;

    /// A word-level tokenizer over the words `t0` … `t7` with the given stop ids.
    pub fn byte_tokenizer(stop_ids: Vec<u32>) -> TextTokenizer {
        let vocab: serde_json::Map<String, serde_json::Value> = (0..8)
            .map(|i| (format!("t{i}"), serde_json::json!(i)))
            .collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
            "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}
        });
        let inner: tokenizers::Tokenizer = json.to_string().parse().expect("a valid tokenizer");
        TextTokenizer {
            inner,
            chat_template: None,
            bos_token: None,
            eos_token: None,
            pad_token: None,
            stop_ids,
        }
    }
}
