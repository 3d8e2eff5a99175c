//! The Qwen2/Llama-family decoder: token embeddings, `L` pre-norm blocks of grouped-query
//! attention and SwiGLU MLP, a final RMSNorm and a tied or separate LM head. Loads from and
//! saves to Hugging Face safetensors names; exposes each layer's attention input and output
//! (stage 1 needs them) and a KV cache for generation.

use super::config::TransformerConfig;
use super::layers::{Attention, KvCache, Linear, Mlp, RmsNorm, Rotary};
use super::safetensors_io::{OwnedTensor, SafetensorsReader};
use super::weights::{WeightLoader, to_vec, transpose};
use anyhow::Result;
use burn::module::{Module, Param};
use burn::tensor::module::embedding;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use std::collections::BTreeMap;
use std::path::Path;

/// One pre-norm block: `x + attn(norm(x))`, then `x + mlp(norm(x))`.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub input_norm: RmsNorm,
    pub attn: Attention,
    pub post_norm: RmsNorm,
    pub mlp: Mlp,
}

/// A whole decoder-only model.
#[derive(Module, Debug)]
pub struct Transformer {
    /// `[vocab, C]`.
    pub embed: Param<Tensor<2>>,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// `[C, vocab]`; `None` when tied to the embeddings.
    pub lm_head: Option<Param<Tensor<2>>>,
    #[module(skip)]
    pub config: TransformerConfig,
}

/// The attention input (after the input norm) and output of one layer, `[B, T, C]` each.
#[derive(Debug, Clone)]
pub struct LayerCapture {
    pub layer: usize,
    pub attn_in: Tensor<3>,
    pub attn_out: Tensor<3>,
}

/// Per-layer KV caches of a generation in progress.
#[derive(Debug, Clone, Default)]
pub struct TransformerCache {
    pub layers: Vec<Option<KvCache>>,
}

impl TransformerCache {
    /// Tokens seen so far.
    pub fn len(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(KvCache::len)
            .next()
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> usize {
        self.layers.iter().flatten().map(KvCache::bytes).sum()
    }
}

/// Hugging Face tensor names of layer `i`.
pub fn layer_prefix(i: usize) -> String {
    format!("model.layers.{i}")
}

impl Transformer {
    /// Loads `DIR` (config.json + safetensors) onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = TransformerConfig::from_dir(dir)?;
        let reader = SafetensorsReader::open_dir(dir)?;
        let mut loader = WeightLoader::new(&reader, device);
        let model = Self::from_loader(config, &mut loader);
        loader.finish(dir)?;
        Ok(model)
    }

    /// Builds the model from a loader (problems are collected in the loader).
    pub fn from_loader(config: TransformerConfig, w: &mut WeightLoader) -> Self {
        let c = config.hidden_size;
        let embed = w.param("model.embed_tokens.weight", [config.vocab_size, c]);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let (input_norm, post_norm, mlp) = load_norms_and_mlp(w, i, &config);
                let attn = load_attention(w, &format!("{}.self_attn", layer_prefix(i)), &config);
                DecoderLayer {
                    input_norm,
                    attn,
                    post_norm,
                    mlp,
                }
            })
            .collect();
        let norm = load_norm(w, "model.norm", &config);
        let lm_head = load_head(w, &config);
        Self {
            embed,
            layers,
            norm,
            lm_head,
            config,
        }
    }

    /// A randomly initialised model (tests and benchmarks).
    pub fn random(config: TransformerConfig, seed: u64, device: &Device) -> Self {
        let mut rng = TensorRng::new(seed, device);
        let c = config.hidden_size;
        let layers = (0..config.num_hidden_layers)
            .map(|_| DecoderLayer {
                input_norm: rng.norm(c, config.rms_norm_eps),
                attn: rng.attention(&config),
                post_norm: rng.norm(c, config.rms_norm_eps),
                mlp: rng.mlp(&config),
            })
            .collect();
        Self {
            embed: rng.param([config.vocab_size, c], 0.5),
            layers,
            norm: rng.norm(c, config.rms_norm_eps),
            lm_head: (!config.tie_word_embeddings).then(|| rng.param([c, config.vocab_size], 0.1)),
            config,
        }
    }

    /// Hidden states after the final norm, `[B, T, C]`, and the requested layers' captures.
    ///
    /// - `ids`: `[B, T]` token ids
    /// - `mask`: `[B, T]`, 1 for real tokens, 0 for padding (`None`: all real)
    /// - `cache`: continue from (and extend) a generation's KV caches
    /// - `capture`: layer indices whose attention input/output to return
    pub fn forward_hidden(
        &self,
        ids: Tensor<2, Int>,
        mask: Option<Tensor<2>>,
        cache: Option<&mut TransformerCache>,
        capture: &[usize],
    ) -> (Tensor<3>, Vec<LayerCapture>) {
        let (x, captures) = self.run_layers(ids, mask, cache, capture, None);
        (self.norm.forward(x), captures)
    }

    /// The attention input and output of each layer in `layers`, running only the layers up to
    /// the last one's attention (no later MLP or layer, no final norm): what stage 1 needs of
    /// the teacher.
    pub fn capture_attention(
        &self,
        ids: Tensor<2, Int>,
        mask: Option<Tensor<2>>,
        layers: &[usize],
    ) -> Vec<LayerCapture> {
        let last = layers.iter().copied().max();
        self.run_layers(ids, mask, None, layers, last).1
    }

    /// The residual stream after the decoder layers; with `stop_after = Some(l)` it stops right
    /// after layer `l`'s attention (the returned stream is then not a whole model's).
    fn run_layers(
        &self,
        ids: Tensor<2, Int>,
        mask: Option<Tensor<2>>,
        mut cache: Option<&mut TransformerCache>,
        capture: &[usize],
        stop_after: Option<usize>,
    ) -> (Tensor<3>, Vec<LayerCapture>) {
        let [_, t] = ids.dims();
        let device = ids.device();
        let start = cache.as_ref().map_or(0, |c| c.len());
        if let Some(c) = cache.as_mut() {
            c.layers.resize(self.layers.len(), None);
        }
        let cfg = &self.config;
        let rotary = Rotary::new(cfg.rope_theta, cfg.head_dim, start, t, &device);
        let mut x = embedding(self.embed.val(), ids);
        let mut captures = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.input_norm.forward(x.clone());
            let slot = cache.as_mut().map(|c| &mut c.layers[i]);
            let a = layer.attn.forward(h.clone(), &rotary, mask.clone(), slot);
            if capture.contains(&i) {
                captures.push(LayerCapture {
                    layer: i,
                    attn_in: h,
                    attn_out: a.clone(),
                });
            }
            x = x + a;
            if stop_after == Some(i) {
                break;
            }
            x = x.clone() + layer.mlp.forward(layer.post_norm.forward(x));
        }
        (x, captures)
    }

    /// Logits `[B, T, vocab]` of hidden states from [`Self::forward_hidden`].
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        lm_head_logits(hidden, &self.embed, self.lm_head.as_ref())
    }

    /// Logits `[B, T, vocab]` for `ids` `[B, T]`.
    pub fn forward(&self, ids: Tensor<2, Int>, mask: Option<Tensor<2>>) -> Tensor<3> {
        self.logits(self.forward_hidden(ids, mask, None, &[]).0)
    }

    /// The weights under their Hugging Face names and layouts.
    pub fn hf_tensors(&self) -> BTreeMap<String, OwnedTensor> {
        let mut out = BTreeMap::new();
        put(&mut out, "model.embed_tokens.weight", self.embed.val());
        for (i, layer) in self.layers.iter().enumerate() {
            put_norms_and_mlp(&mut out, i, &layer.input_norm, &layer.post_norm, &layer.mlp);
            put_attention(
                &mut out,
                &format!("{}.self_attn", layer_prefix(i)),
                &layer.attn,
            );
        }
        put_final_norm_and_head(&mut out, &self.norm, self.lm_head.as_ref());
        out
    }
}

/// `hidden · Eᵀ` (tied) or `hidden · W_head`.
pub fn lm_head_logits(
    hidden: Tensor<3>,
    embed: &Param<Tensor<2>>,
    head: Option<&Param<Tensor<2>>>,
) -> Tensor<3> {
    let [b, t, c] = hidden.dims();
    let flat = hidden.reshape([b * t, c]);
    let logits = match head {
        Some(w) => flat.matmul(w.val()),
        None => flat.matmul(embed.val().transpose()),
    };
    let v = logits.dims()[1];
    logits.reshape([b, t, v])
}

/// Layer `i`'s input norm, post-attention norm and MLP (every decoder layer has them,
/// whatever mixes its tokens).
pub fn load_norms_and_mlp(
    w: &mut WeightLoader,
    i: usize,
    cfg: &TransformerConfig,
) -> (RmsNorm, RmsNorm, Mlp) {
    let p = layer_prefix(i);
    (
        load_norm(w, &format!("{p}.input_layernorm"), cfg),
        load_norm(w, &format!("{p}.post_attention_layernorm"), cfg),
        load_mlp(w, &format!("{p}.mlp"), cfg),
    )
}

/// The separate LM head, or `None` when tied to the embeddings (a stray `lm_head.weight` in a
/// tied checkpoint is then ignored).
pub fn load_head(w: &mut WeightLoader, cfg: &TransformerConfig) -> Option<Param<Tensor<2>>> {
    if cfg.tie_word_embeddings {
        w.ignore("lm_head.weight");
        None
    } else {
        Some(w.param_transposed("lm_head.weight", cfg.vocab_size, cfg.hidden_size))
    }
}

/// Writes what [`load_norms_and_mlp`] reads.
pub fn put_norms_and_mlp(
    out: &mut BTreeMap<String, OwnedTensor>,
    i: usize,
    input_norm: &RmsNorm,
    post_norm: &RmsNorm,
    mlp: &Mlp,
) {
    let p = layer_prefix(i);
    put(
        out,
        &format!("{p}.input_layernorm.weight"),
        input_norm.weight.val(),
    );
    put(
        out,
        &format!("{p}.post_attention_layernorm.weight"),
        post_norm.weight.val(),
    );
    put_mlp(out, &format!("{p}.mlp"), mlp);
}

/// Writes the final norm and, when not tied, the LM head.
pub fn put_final_norm_and_head(
    out: &mut BTreeMap<String, OwnedTensor>,
    norm: &RmsNorm,
    head: Option<&Param<Tensor<2>>>,
) {
    put(out, "model.norm.weight", norm.weight.val());
    if let Some(head) = head {
        put_linear_weight(out, "lm_head.weight", head.val());
    }
}

pub fn load_norm(w: &mut WeightLoader, prefix: &str, cfg: &TransformerConfig) -> RmsNorm {
    RmsNorm {
        weight: w.param(&format!("{prefix}.weight"), [cfg.hidden_size]),
        eps: cfg.rms_norm_eps,
    }
}

pub fn load_linear(
    w: &mut WeightLoader,
    prefix: &str,
    out: usize,
    inp: usize,
    bias: bool,
) -> Linear {
    Linear {
        weight: w.param_transposed(&format!("{prefix}.weight"), out, inp),
        bias: bias.then(|| w.param(&format!("{prefix}.bias"), [out])),
    }
}

pub fn load_attention(w: &mut WeightLoader, prefix: &str, cfg: &TransformerConfig) -> Attention {
    let (c, d) = (cfg.hidden_size, cfg.head_dim);
    let (q_out, kv_out) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
    let bias = cfg.attention_bias;
    Attention {
        q: load_linear(w, &format!("{prefix}.q_proj"), q_out, c, bias),
        k: load_linear(w, &format!("{prefix}.k_proj"), kv_out, c, bias),
        v: load_linear(w, &format!("{prefix}.v_proj"), kv_out, c, bias),
        o: load_linear(w, &format!("{prefix}.o_proj"), c, q_out, false),
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        head_dim: d,
    }
}

pub fn load_mlp(w: &mut WeightLoader, prefix: &str, cfg: &TransformerConfig) -> Mlp {
    let (c, f) = (cfg.hidden_size, cfg.intermediate_size);
    Mlp {
        gate: load_linear(w, &format!("{prefix}.gate_proj"), f, c, false),
        up: load_linear(w, &format!("{prefix}.up_proj"), f, c, false),
        down: load_linear(w, &format!("{prefix}.down_proj"), c, f, false),
    }
}

/// Adds a tensor under `name` as is.
pub fn put<const D: usize>(out: &mut BTreeMap<String, OwnedTensor>, name: &str, t: Tensor<D>) {
    let shape = t.dims().to_vec();
    out.insert(
        name.to_string(),
        OwnedTensor {
            shape,
            data: to_vec(t),
        },
    );
}

/// Adds an `[in, out]` weight in Hugging Face's `[out, in]` layout.
pub fn put_linear_weight(out: &mut BTreeMap<String, OwnedTensor>, name: &str, w: Tensor<2>) {
    let [inp, o] = w.dims();
    out.insert(
        name.to_string(),
        OwnedTensor {
            shape: vec![o, inp],
            data: transpose(&to_vec(w), inp, o),
        },
    );
}

pub fn put_linear(out: &mut BTreeMap<String, OwnedTensor>, prefix: &str, l: &Linear) {
    put_linear_weight(out, &format!("{prefix}.weight"), l.weight.val());
    if let Some(b) = &l.bias {
        put(out, &format!("{prefix}.bias"), b.val());
    }
}

pub fn put_attention(out: &mut BTreeMap<String, OwnedTensor>, prefix: &str, a: &Attention) {
    for (name, l) in [
        ("q_proj", &a.q),
        ("k_proj", &a.k),
        ("v_proj", &a.v),
        ("o_proj", &a.o),
    ] {
        put_linear(out, &format!("{prefix}.{name}"), l);
    }
}

pub fn put_mlp(out: &mut BTreeMap<String, OwnedTensor>, prefix: &str, m: &Mlp) {
    for (name, l) in [
        ("gate_proj", &m.gate),
        ("up_proj", &m.up),
        ("down_proj", &m.down),
    ] {
        put_linear(out, &format!("{prefix}.{name}"), l);
    }
}

/// Seeded random parameters for tests and benchmarks.
pub struct TensorRng {
    device: Device,
}

impl TensorRng {
    pub fn new(seed: u64, device: &Device) -> Self {
        device.seed(seed);
        Self {
            device: device.clone(),
        }
    }

    pub fn param<const D: usize>(&mut self, shape: [usize; D], scale: f64) -> Param<Tensor<D>> {
        Param::from_tensor(Tensor::random(
            shape,
            Distribution::Uniform(-scale, scale),
            &self.device,
        ))
    }

    pub fn linear(&mut self, out: usize, inp: usize, bias: bool) -> Linear {
        let scale = 1.0 / (inp as f64).sqrt();
        Linear {
            weight: self.param([inp, out], scale),
            bias: bias.then(|| self.param([out], 0.1)),
        }
    }

    pub fn norm(&mut self, c: usize, eps: f64) -> RmsNorm {
        let w = Tensor::random([c], Distribution::Uniform(0.8, 1.2), &self.device);
        RmsNorm {
            weight: Param::from_tensor(w),
            eps,
        }
    }

    pub fn attention(&mut self, cfg: &TransformerConfig) -> Attention {
        let (c, d) = (cfg.hidden_size, cfg.head_dim);
        let (q_out, kv_out) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
        Attention {
            q: self.linear(q_out, c, cfg.attention_bias),
            k: self.linear(kv_out, c, cfg.attention_bias),
            v: self.linear(kv_out, c, cfg.attention_bias),
            o: self.linear(c, q_out, false),
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: d,
        }
    }

    pub fn mlp(&mut self, cfg: &TransformerConfig) -> Mlp {
        let (c, f) = (cfg.hidden_size, cfg.intermediate_size);
        Mlp {
            gate: self.linear(f, c, false),
            up: self.linear(f, c, false),
            down: self.linear(c, f, false),
        }
    }
}

/// Token ids as an `[B, T]` tensor.
pub fn ids_tensor(ids: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let b = ids.len();
    let t = ids.first().map_or(0, Vec::len);
    assert!(
        ids.iter().all(|r| r.len() == t),
        "all rows must have the same length"
    );
    let flat: Vec<i64> = ids.iter().flatten().map(|&v| v as i64).collect();
    Tensor::from_data(TensorData::new(flat, [b, t]), device)
}
