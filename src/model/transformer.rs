//! The Qwen2/Llama-family decoder: token embeddings, `L` pre-norm blocks of grouped-query
//! attention and SwiGLU MLP, a final RMSNorm and a tied or separate LM head. Loads from and
//! saves to Hugging Face safetensors names; exposes each layer's attention input and output
//! (stage 1 needs them) and a KV cache for generation.

use super::config::TransformerConfig;
use super::layers::{Attention, KvCache, Mlp, RmsNorm, Rotary, TensorRng};
use super::safetensors_io::{OwnedTensor, SafetensorsReader};
use super::weights::{TensorsOut, WeightLoader, Weights};
use anyhow::Result;
use burn::module::{Module, Param};
use burn::tensor::module::embedding;
use burn::tensor::{Device, Int, Tensor, TensorData};
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

impl DecoderLayer {
    /// `input_layernorm`, `self_attn`, `post_attention_layernorm` and `mlp` under `w` (a
    /// `model.layers.{i}` prefix).
    pub fn load(w: &Weights, cfg: &TransformerConfig) -> Self {
        let c = cfg.hidden_size;
        Self {
            input_norm: RmsNorm::load(&w.pp("input_layernorm"), c, cfg.rms_norm_eps),
            attn: Attention::load(&w.pp("self_attn"), cfg),
            post_norm: RmsNorm::load(&w.pp("post_attention_layernorm"), c, cfg.rms_norm_eps),
            mlp: Mlp::load(&w.pp("mlp"), cfg),
        }
    }

    /// Writes what [`DecoderLayer::load`] reads.
    pub fn put(&self, t: &mut TensorsOut) {
        self.input_norm.put(&mut t.pp("input_layernorm"));
        self.attn.put(&mut t.pp("self_attn"));
        self.post_norm.put(&mut t.pp("post_attention_layernorm"));
        self.mlp.put(&mut t.pp("mlp"));
    }

    pub fn init(rng: &mut TensorRng, cfg: &TransformerConfig) -> Self {
        let c = cfg.hidden_size;
        Self {
            input_norm: RmsNorm::init(rng, c, cfg.rms_norm_eps),
            attn: Attention::init(rng, cfg),
            post_norm: RmsNorm::init(rng, c, cfg.rms_norm_eps),
            mlp: Mlp::init(rng, cfg),
        }
    }
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

/// One layer's residual stream on entry, and its attention input (after the input norm) and
/// output, `[B, T, C]` each.
#[derive(Debug, Clone)]
pub struct LayerCapture {
    pub layer: usize,
    pub residual_in: Tensor<3>,
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

    /// Makes room in every layer's KV cache for `additional` more tokens (see
    /// [`KvCache::reserve`]).
    pub fn reserve(&mut self, additional: usize) {
        self.layers
            .iter_mut()
            .flatten()
            .for_each(|c| c.reserve(additional));
    }

    pub fn bytes(&self) -> usize {
        self.layers.iter().flatten().map(KvCache::bytes).sum()
    }
}

/// Hugging Face tensor names of layer `i`.
impl Transformer {
    /// Loads `DIR` (config.json + safetensors) onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = TransformerConfig::from_dir(dir)?;
        let reader = SafetensorsReader::open_dir(dir)?;
        let loader = WeightLoader::new(&reader, device);
        let model = Self::from_weights(config, &loader.root());
        loader.finish(dir)?;
        Ok(model)
    }

    /// Builds the model from a checkpoint's weights (problems are collected in their loader).
    pub fn from_weights(config: TransformerConfig, root: &Weights) -> Self {
        let c = config.hidden_size;
        let model = root.pp("model");
        let embed = model
            .pp("embed_tokens")
            .param("weight", [config.vocab_size, c]);
        let layers = (0..config.num_hidden_layers)
            .map(|i| DecoderLayer::load(&model.pp("layers").pp(i), &config))
            .collect();
        let norm = RmsNorm::load(&model.pp("norm"), c, config.rms_norm_eps);
        let lm_head = load_head(root, &config);
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
            .map(|_| DecoderLayer::init(&mut rng, &config))
            .collect();
        Self {
            embed: rng.param([config.vocab_size, c], 0.5),
            layers,
            norm: RmsNorm::init(&mut rng, c, config.rms_norm_eps),
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
        let blocks = self
            .layers
            .iter()
            .map(|l| (&l.input_norm, &l.post_norm, &l.mlp));
        decoder_stack(
            embedding(self.embed.val(), ids),
            blocks,
            |i, h| {
                let slot = cache.as_mut().map(|c| &mut c.layers[i]);
                self.layers[i].attn.forward(h, &rotary, mask.clone(), slot)
            },
            capture,
            stop_after,
        )
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
        let mut t = TensorsOut::new(&mut out);
        let mut model = t.pp("model");
        model.pp("embed_tokens").put("weight", self.embed.val());
        for (i, layer) in self.layers.iter().enumerate() {
            layer.put(&mut model.pp("layers").pp(i));
        }
        self.norm.put(&mut model.pp("norm"));
        put_head(&mut t, self.lm_head.as_ref());
        out
    }
}

/// The decoder stack every model here shares (teacher and hybrid student): for each layer,
/// `x + mix_i(norm₁(x))` then `x + mlp(norm₂(x))`, where `mix(i, h)` is layer `i`'s token mixer
/// (attention or RWKV-7). Returns the residual stream (before the final norm) and, for the
/// layers in `capture`, the stream entering the layer and the mixer's input and output; with
/// `stop_after = Some(l)` it stops right after layer `l`'s mixer.
pub fn decoder_stack<'a>(
    mut x: Tensor<3>,
    blocks: impl Iterator<Item = (&'a RmsNorm, &'a RmsNorm, &'a Mlp)>,
    mut mix: impl FnMut(usize, Tensor<3>) -> Tensor<3>,
    capture: &[usize],
    stop_after: Option<usize>,
) -> (Tensor<3>, Vec<LayerCapture>) {
    let mut captures = Vec::new();
    for (i, (input_norm, post_norm, mlp)) in blocks.enumerate() {
        let h = input_norm.forward(x.clone());
        let a = mix(i, h.clone());
        if capture.contains(&i) {
            captures.push(LayerCapture {
                layer: i,
                residual_in: x.clone(),
                attn_in: h,
                attn_out: a.clone(),
            });
        }
        x = x + a;
        if stop_after == Some(i) {
            break;
        }
        x = x.clone() + mlp.forward(post_norm.forward(x));
    }
    (x, captures)
}

/// `hidden · Eᵀ` (tied) or `hidden · W_head`.
pub fn lm_head_logits(
    hidden: Tensor<3>,
    embed: &Param<Tensor<2>>,
    head: Option<&Param<Tensor<2>>>,
) -> Tensor<3> {
    let [b, t, c] = hidden.dims();
    let flat = hidden.reshape([b * t, c]);
    // Decoding a few sequences: see `rwkv_kernels::few_rows_matmul`.
    let logits = match head {
        Some(w) => rwkv_kernels::few_rows_matmul(&flat, &w.val(), false)
            .unwrap_or_else(|| flat.matmul(w.val())),
        None => rwkv_kernels::few_rows_matmul(&flat, &embed.val(), true)
            .unwrap_or_else(|| flat.matmul(embed.val().transpose())),
    };
    let v = logits.dims()[1];
    logits.reshape([b, t, v])
}

/// The separate LM head, or `None` when tied to the embeddings (a stray `lm_head.weight` in a
/// tied checkpoint is then ignored).
pub fn load_head(root: &Weights, cfg: &TransformerConfig) -> Option<Param<Tensor<2>>> {
    if cfg.tie_word_embeddings {
        root.ignore("lm_head.weight");
        None
    } else {
        Some(root.param_transposed("lm_head.weight", cfg.vocab_size, cfg.hidden_size))
    }
}

/// Writes what [`load_head`] reads.
pub fn put_head(t: &mut TensorsOut, head: Option<&Param<Tensor<2>>>) {
    if let Some(head) = head {
        t.put_transposed("lm_head.weight", head.val());
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
