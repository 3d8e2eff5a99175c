//! Converts a Llama or Qwen2 GGUF into a Hugging Face model directory: `config.json`,
//! `model.safetensors` (dequantised; Llama's q/k rows un-permuted back to rotate-half order),
//! `tokenizer.json` and `tokenizer_config.json` rebuilt from the GGUF metadata (byte-level BPE
//! vocabulary, merges, special tokens, pre-tokenizer, chat template), `generation_config.json`.

use super::reader::{GgufFile, Value};
use crate::model::safetensors_io::{OwnedTensor, SaveDtype, write_safetensors};
use crate::util::fsx::atomic_write_json;
use anyhow::{Context, Result, bail};
use serde_json::{Value as Json, json};
use std::collections::BTreeMap;
use std::path::Path;

/// What an import produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportReport {
    pub architecture: String,
    pub tensors: usize,
    pub parameters: usize,
    /// Tensor count per GGML type in the source file.
    pub source_types: BTreeMap<String, usize>,
    pub vocab_size: usize,
    pub tied_embeddings: bool,
}

/// GGUF tensor name → Hugging Face name.
fn hf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (part, suffix) = rest.rsplit_once('.')?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Undoes llama.cpp's q/k row permutation: rows viewed as `[heads, head_dim/2, 2]` become
/// `[heads, 2, head_dim/2]` (interleaved rotary pairs back to rotate-half halves).
pub fn unpermute_rows(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let d = rows / heads;
    let half = d / 2;
    let mut out = vec![0.0; data.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * d + i * 2 + j;
                let dst = h * d + j * half + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The Qwen2 pre-tokenizer pattern.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn pre_tokenizer(pre: &str) -> Result<(Json, Json)> {
    let byte_level = |use_regex: bool, trim: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": trim, "use_regex": use_regex});
    Ok(match pre {
        "smollm" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true, true)]}),
        ),
        "default" | "gpt-2" | "gpt2" => (Json::Null, byte_level(true, true)),
        "qwen2" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": false},
                byte_level(false, false)]}),
        ),
        other => bail!(
            "tokenizer.ggml.pre = `{other}` is not supported; supported: smollm, default, gpt-2, qwen2"
        ),
    })
}

fn strings(file: &GgufFile, key: &str) -> Result<Vec<String>> {
    file.require(key)?
        .as_array()
        .with_context(|| format!("metadata `{key}` is not an array"))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(String::from)
                .with_context(|| format!("`{key}` holds a non-string"))
        })
        .collect()
}

/// Builds `tokenizer.json` and `tokenizer_config.json` from the GGUF metadata.
fn tokenizer_files(file: &GgufFile) -> Result<(Json, Json)> {
    let model = file.require("tokenizer.ggml.model")?.as_str().unwrap_or("");
    if model != "gpt2" {
        bail!(
            "tokenizer.ggml.model = `{model}`: only byte-level BPE (`gpt2`) tokenizers are supported"
        );
    }
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let merges = strings(file, "tokenizer.ggml.merges")?;
    let types: Vec<u64> = match file
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
    {
        Some(a) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let (normalizer, pre_tokenizer) = pre_tokenizer(pre)?;
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    // Control (3) and user-defined (4) tokens are matched before BPE; control tokens are special.
    let added: Vec<Json> = types
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == 3 || **t == 4)
        .map(|(i, t)| {
            json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": *t == 3})
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    let token_of = |key: &str| -> Json {
        file.get(key)
            .and_then(Value::as_u64)
            .and_then(|id| tokens.get(id as usize))
            .map_or(Json::Null, |t| json!(t))
    };
    let mut config = json!({
        "bos_token": token_of("tokenizer.ggml.bos_token_id"),
        "eos_token": token_of("tokenizer.ggml.eos_token_id"),
        "pad_token": token_of("tokenizer.ggml.padding_token_id"),
        "unk_token": token_of("tokenizer.ggml.unknown_token_id"),
        "add_bos_token": file.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(false),
        "add_prefix_space": false,
        "clean_up_tokenization_spaces": false,
        "tokenizer_class": "GPT2Tokenizer",
    });
    if let Some(t) = file.get("tokenizer.chat_template").and_then(Value::as_str) {
        config["chat_template"] = json!(t);
    }
    Ok((tokenizer, config))
}

/// Converts `gguf` into a Hugging Face directory at `out`.
pub fn import_gguf(gguf: &Path, out: &Path, dtype: SaveDtype) -> Result<ImportReport> {
    let file = GgufFile::open(gguf)?;
    let arch = file
        .require("general.architecture")?
        .as_str()
        .unwrap_or("")
        .to_string();
    if arch != "llama" && arch != "qwen2" {
        bail!(
            "general.architecture = `{arch}`: only `llama` and `qwen2` GGUF files can be imported"
        );
    }
    let key = |k: &str| format!("{arch}.{k}");
    let layers = file.require_u64(&key("block_count"))? as usize;
    let hidden = file.require_u64(&key("embedding_length"))? as usize;
    let heads = file.require_u64(&key("attention.head_count"))? as usize;
    let kv_heads = file
        .get(&key("attention.head_count_kv"))
        .and_then(Value::as_u64)
        .unwrap_or(heads as u64) as usize;
    let embed = file
        .tensor("token_embd.weight")
        .context("the GGUF has no token_embd.weight")?;
    let vocab = embed.shape()[0];
    let tied = file.tensor("output.weight").is_none();

    // Check every tensor's name and type before converting anything.
    let mut source_types = BTreeMap::new();
    for t in &file.tensors {
        if hf_name(&t.name).is_none() {
            bail!(
                "tensor `{}` in {} has no Hugging Face equivalent",
                t.name,
                gguf.display()
            );
        }
        super::quant::GgmlType::from_id(t.ggml_type, &t.name)?;
        *source_types
            .entry(format!(
                "{:?}",
                super::quant::GgmlType::from_id(t.ggml_type, &t.name)?
            ))
            .or_insert(0) += 1;
    }
    let bar = crate::progress::bar(file.tensors.len() as u64, "dequantise", "tensors");
    let mut tensors = BTreeMap::new();
    let mut parameters = 0;
    for t in &file.tensors {
        let name = hf_name(&t.name).expect("checked above");
        let shape = t.shape();
        let mut data = file.read_f32(t)?;
        if arch == "llama" && shape.len() == 2 {
            if t.name.ends_with("attn_q.weight") {
                data = unpermute_rows(&data, shape[0], shape[1], heads);
            } else if t.name.ends_with("attn_k.weight") {
                data = unpermute_rows(&data, shape[0], shape[1], kv_heads);
            }
        }
        parameters += data.len();
        tensors.insert(name, OwnedTensor { shape, data });
        bar.inc(1);
    }
    bar.finish_and_clear();

    let head_dim = hidden / heads;
    let eos: Vec<u64> = file
        .get("tokenizer.ggml.eos_token_id")
        .and_then(Value::as_u64)
        .into_iter()
        .collect();
    let config = json!({
        "architectures": [if arch == "llama" { "LlamaForCausalLM" } else { "Qwen2ForCausalLM" }],
        "model_type": arch,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": file.require_u64(&key("feed_forward_length"))?,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": file.get(&key("context_length")).and_then(Value::as_u64).unwrap_or(4096),
        "rms_norm_eps": file.require_f64(&key("attention.layer_norm_rms_epsilon"))?,
        "rope_theta": file.get(&key("rope.freq_base")).and_then(Value::as_f64).unwrap_or(10000.0),
        "attention_bias": file.tensor("blk.0.attn_q.bias").is_some(),
        "tie_word_embeddings": tied,
        "bos_token_id": file.get("tokenizer.ggml.bos_token_id").and_then(Value::as_u64),
        "eos_token_id": eos.first(),
        "torch_dtype": if dtype == SaveDtype::F32 { "float32" } else { "bfloat16" },
        "rope_scaling": null,
    });
    let (tokenizer, tokenizer_config) = tokenizer_files(&file)?;
    // Fail here, not at first use, if the rebuilt tokenizer does not load.
    tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&tokenizer)?)
        .map_err(|e| anyhow::anyhow!("the tokenizer rebuilt from the GGUF does not load: {e}"))?;

    std::fs::create_dir_all(out)?;
    write_safetensors(&out.join("model.safetensors"), &tensors, dtype)?;
    atomic_write_json(&out.join("config.json"), &config)?;
    atomic_write_json(&out.join("tokenizer.json"), &tokenizer)?;
    atomic_write_json(&out.join("tokenizer_config.json"), &tokenizer_config)?;
    atomic_write_json(
        &out.join("generation_config.json"),
        &json!({"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}),
    )?;
    Ok(ImportReport {
        architecture: arch,
        tensors: tensors.len(),
        parameters,
        source_types,
        vocab_size: vocab,
        tied_embeddings: tied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("blk.3.attn_q.weight").unwrap(),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.attn_k.bias").unwrap(),
            "model.layers.0.self_attn.k_proj.bias"
        );
        assert_eq!(
            hf_name("blk.12.ffn_norm.weight").unwrap(),
            "model.layers.12.post_attention_layernorm.weight"
        );
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert!(hf_name("rope_freqs.weight").is_none());
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp's converter: rows [heads, 2, d/2] -> [heads, d/2, 2].
        let (heads, d, cols) = (2, 8, 3);
        let rows = heads * d;
        let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let mut permuted = vec![0.0; hf.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..d / 2 {
                    let src = h * d + j * (d / 2) + i;
                    let dst = h * d + i * 2 + j;
                    permuted[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_ne!(permuted, hf);
        assert_eq!(unpermute_rows(&permuted, rows, cols, heads), hf);
    }
}
