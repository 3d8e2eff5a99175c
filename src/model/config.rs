//! The transformer's hyperparameters, read from (and written to) a Hugging Face `config.json`.
//! One struct serves the Llama family (SmolLM2, Llama) and Qwen2 (Llama plus q/k/v biases).

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};
use std::path::Path;

/// The architecture of a Qwen2/Llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformerConfig {
    /// `llama` or `qwen2` (also `mistral`, which is Llama without sliding windows here).
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Biases on the q/k/v projections (Qwen2 has them, Llama does not).
    pub attention_bias: bool,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// Every field of the original file, so an export can keep what we do not interpret.
    pub raw: Map<String, Value>,
}

impl TransformerConfig {
    /// Reads `DIR/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        if !dir.is_dir() {
            bail!("model directory {} does not exist", dir.display());
        }
        if !path.is_file() {
            bail!(
                "{} has no config.json: a model directory in Hugging Face layout needs config.json, \
                 model.safetensors (or shards with model.safetensors.index.json) and tokenizer.json",
                dir.display()
            );
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        Self::from_json(value).with_context(|| format!("in {}", path.display()))
    }

    /// Interprets the JSON object of a `config.json`.
    pub fn from_json(value: Value) -> Result<Self> {
        let Value::Object(raw) = value else {
            bail!("config.json must hold a JSON object")
        };
        let model_type = raw
            .get("model_type")
            .and_then(Value::as_str)
            .context("missing key `model_type`")?
            .to_string();
        let supported = ["llama", "qwen2", "mistral", "rwkv_hybrid"];
        if !supported.contains(&model_type.as_str()) {
            bail!(
                "model_type `{model_type}` is not supported: expected one of {} (Qwen2/Llama family)",
                supported.join(", ")
            );
        }
        let usize_key = |key: &str| -> Result<usize> {
            raw.get(key)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .with_context(|| format!("missing or non-integer key `{key}`"))
        };
        let hidden_size = usize_key("hidden_size")?;
        let num_attention_heads = usize_key("num_attention_heads")?;
        let num_key_value_heads = match raw.get("num_key_value_heads") {
            Some(Value::Null) | None => num_attention_heads,
            Some(_) => usize_key("num_key_value_heads")?,
        };
        let head_dim = match raw.get("head_dim") {
            Some(v) if !v.is_null() => usize_key("head_dim")?,
            _ => hidden_size / num_attention_heads.max(1),
        };
        let f64_key =
            |key: &str, default: f64| raw.get(key).and_then(Value::as_f64).unwrap_or(default);
        // Sizes are checked before anything is allocated from them; the weights must then
        // match them tensor by tensor (see `WeightLoader`).
        let limits: [(&str, usize, usize); 7] = [
            ("hidden_size", hidden_size, 1 << 20),
            ("num_attention_heads", num_attention_heads, 1 << 12),
            ("num_key_value_heads", num_key_value_heads, 1 << 12),
            ("head_dim", head_dim, 1 << 12),
            ("vocab_size", usize_key("vocab_size")?, 1 << 24),
            (
                "intermediate_size",
                usize_key("intermediate_size")?,
                1 << 22,
            ),
            (
                "num_hidden_layers",
                usize_key("num_hidden_layers")?,
                1 << 12,
            ),
        ];
        for (key, value, max) in limits {
            if value == 0 || value > max {
                bail!("`{key}` = {value} is out of range (1 to {max})");
            }
        }
        for (key, default) in [("rms_norm_eps", 1e-6), ("rope_theta", 10_000.0)] {
            let v = f64_key(key, default);
            if !(v > 0.0 && v.is_finite()) {
                bail!("`{key}` = {v} must be a positive number");
            }
        }
        if let Some(v) = raw.get("max_position_embeddings")
            && !v.as_u64().is_some_and(|n| (1..=1 << 24).contains(&n))
        {
            bail!(
                "`max_position_embeddings` = {v} is out of range (1 to {})",
                1u64 << 24
            );
        }
        if num_attention_heads == 0 || num_key_value_heads == 0 || hidden_size == 0 {
            bail!("hidden_size, num_attention_heads and num_key_value_heads must be positive");
        }
        if num_attention_heads % num_key_value_heads != 0 {
            bail!(
                "num_attention_heads ({num_attention_heads}) must be a multiple of \
                 num_key_value_heads ({num_key_value_heads})"
            );
        }
        if head_dim % 2 != 0 {
            bail!("head_dim ({head_dim}) must be even for rotary embeddings");
        }
        if let Some(scaling) = raw.get("rope_scaling")
            && !scaling.is_null()
        {
            bail!("rope_scaling {scaling} is not supported (plain rotary embeddings only)");
        }
        let bool_key =
            |key: &str, default: bool| raw.get(key).and_then(Value::as_bool).unwrap_or(default);
        let eos_token_ids = match raw.get("eos_token_id") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect(),
            Some(v) => v.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(Self {
            vocab_size: usize_key("vocab_size")?,
            intermediate_size: usize_key("intermediate_size")?,
            num_hidden_layers: usize_key("num_hidden_layers")?,
            hidden_size,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f64_key("rms_norm_eps", 1e-6),
            rope_theta: f64_key("rope_theta", 10_000.0),
            attention_bias: bool_key("attention_bias", model_type == "qwen2"),
            tie_word_embeddings: bool_key("tie_word_embeddings", false),
            max_position_embeddings: raw
                .get("max_position_embeddings")
                .and_then(Value::as_u64)
                .unwrap_or(32_768) as usize,
            bos_token_id: raw
                .get("bos_token_id")
                .and_then(Value::as_u64)
                .map(|v| v as u32),
            eos_token_ids,
            model_type,
            raw,
        })
    }

    /// The `config.json` object: the original fields with ours written over them.
    pub fn to_json(&self) -> Value {
        let mut out = self.raw.clone();
        let ours = json!({
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "attention_bias": self.attention_bias,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
        });
        for (k, v) in ours.as_object().expect("object") {
            out.insert(k.clone(), v.clone());
        }
        if let Some(bos) = self.bos_token_id {
            out.insert("bos_token_id".into(), json!(bos));
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => {
                out.insert("eos_token_id".into(), json!(one));
            }
            many => {
                out.insert("eos_token_id".into(), json!(many));
            }
        }
        Value::Object(out)
    }

    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> Value {
        json!({
            "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
            "tie_word_embeddings": true, "eos_token_id": 2, "bos_token_id": 1,
            "architectures": ["LlamaForCausalLM"]
        })
    }

    #[test]
    fn reads_llama_and_round_trips() {
        let cfg = TransformerConfig::from_json(smollm2()).unwrap();
        assert_eq!(cfg.head_dim, 64);
        assert_eq!(cfg.group_size(), 3);
        assert!(!cfg.attention_bias);
        assert_eq!(cfg.eos_token_ids, vec![2]);
        let again = TransformerConfig::from_json(cfg.to_json()).unwrap();
        assert_eq!(cfg.to_json(), again.to_json());
        assert_eq!(
            (cfg.head_dim, cfg.rope_theta, cfg.eos_token_ids.clone()),
            (
                again.head_dim,
                again.rope_theta,
                again.eos_token_ids.clone()
            )
        );
        assert_eq!(again.raw["architectures"], json!(["LlamaForCausalLM"]));
    }

    #[test]
    fn impossible_sizes_are_refused_before_anything_is_allocated() {
        for (key, value) in [
            ("hidden_size", json!(1u64 << 40)),
            ("vocab_size", json!(1_000_000_000_000u64)),
            ("vocab_size", json!(0)),
            ("intermediate_size", json!(1u64 << 40)),
            ("num_hidden_layers", json!(1u64 << 40)),
            ("head_dim", json!(0)),
            ("rms_norm_eps", json!(0.0)),
            ("rms_norm_eps", json!(-1e-5)),
            ("rope_theta", json!(-1.0)),
            ("max_position_embeddings", json!(0)),
        ] {
            let mut v = smollm2();
            v[key] = value.clone();
            let err = TransformerConfig::from_json(v).unwrap_err().to_string();
            assert!(err.contains(key), "{key} = {value}: {err}");
        }
    }

    #[test]
    fn qwen2_has_biases_by_default() {
        let mut v = smollm2();
        v["model_type"] = json!("qwen2");
        assert!(TransformerConfig::from_json(v).unwrap().attention_bias);
    }

    #[test]
    fn rejects_bad_configs() {
        let mut v = smollm2();
        v["model_type"] = json!("gpt2");
        let err = TransformerConfig::from_json(v).unwrap_err().to_string();
        assert!(err.contains("gpt2") && err.contains("qwen2"), "{err}");
        let mut v = smollm2();
        v["num_key_value_heads"] = json!(2);
        assert!(
            TransformerConfig::from_json(v)
                .unwrap_err()
                .to_string()
                .contains("multiple")
        );
        let mut v = smollm2();
        v.as_object_mut().unwrap().remove("hidden_size");
        assert!(
            TransformerConfig::from_json(v)
                .unwrap_err()
                .to_string()
                .contains("hidden_size")
        );
    }
}
