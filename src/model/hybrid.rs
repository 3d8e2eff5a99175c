//! The hybrid student: the teacher with softmax attention replaced by RWKV-7 time mixing in
//! chosen layers. Unconverted layers keep their attention (and KV cache); converted layers carry
//! a token-shift + WKV state, constant in size. `v_first` flows from the first converted layer
//! to the later ones as an ordinary tensor. Saved as a Hugging Face-style directory with
//! `model_type = "rwkv_hybrid"` (SPEC §7 key names).

use super::config::TransformerConfig;
use super::layers::{Attention, KvCache, Linear, Mlp, RmsNorm, Rotary};
use super::safetensors_io::{OwnedTensor, SafetensorsReader};
use super::time_mixer::{GateForm, LoraRanks, MixerShape, MixerState, TimeMixer, orthogonal};
use super::transformer::{
    DecoderLayer, LayerCapture, Transformer, layer_prefix, lm_head_logits, load_attention,
    load_head, load_linear, load_norm, load_norms_and_mlp, put, put_attention,
    put_final_norm_and_head, put_linear, put_norms_and_mlp,
};
use super::weights::WeightLoader;
use anyhow::{Context, Result, bail};
use burn::module::{Module, Param};
use burn::tensor::module::embedding;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rwkv_kernels::Wkv7Impl;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;

/// Which layers are converted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerSelection {
    /// `"all"` or `"none"`.
    Named(String),
    /// Explicit indices.
    List(Vec<usize>),
    /// Every k-th layer starting at `offset`.
    Every {
        every: usize,
        #[serde(default)]
        offset: usize,
    },
}

impl LayerSelection {
    pub fn resolve(&self, n_layers: usize) -> Result<Vec<usize>> {
        let layers: Vec<usize> = match self {
            LayerSelection::Named(s) if s == "all" => (0..n_layers).collect(),
            LayerSelection::Named(s) if s == "none" => Vec::new(),
            LayerSelection::Named(s) => {
                bail!("layers = \"{s}\": write \"all\", \"none\", a list or {{ every = K }}")
            }
            LayerSelection::List(l) => {
                let mut l = l.clone();
                l.sort_unstable();
                l.dedup();
                l
            }
            LayerSelection::Every { every, offset } => {
                if *every == 0 {
                    bail!("layers: `every` must be at least 1");
                }
                (*offset..n_layers).step_by(*every).collect()
            }
        };
        if let Some(bad) = layers.iter().find(|&&l| l >= n_layers) {
            bail!(
                "layer {bad} does not exist: the model has {n_layers} layers (0..{})",
                n_layers - 1
            );
        }
        Ok(layers)
    }
}

/// How grouped k/v projections of a GQA teacher become the mixer's k/v.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GqaMode {
    /// Keep the KV width and repeat each head for its group at run time.
    #[default]
    Repeat,
    /// Expand the projections to full width once, at initialisation.
    Expand,
}

/// How new mixers are initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InitMode {
    /// Copy W_q→W_r, W_k→W_k, W_v→W_v, W_o→W_o (and biases) from the teacher.
    #[default]
    Teacher,
    /// RWKV-LM's initialisation.
    Rwkv,
}

/// The conversion options: what a student is, beyond its teacher's architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StudentConfig {
    pub wkv_layers: Vec<usize>,
    pub lora: Option<LoraRanks>,
    pub gate: GateForm,
    pub group_norm: bool,
    pub rope: bool,
    pub gqa: GqaMode,
}

impl Default for StudentConfig {
    fn default() -> Self {
        Self {
            wkv_layers: Vec::new(),
            lora: None,
            gate: GateForm::Sigmoid,
            group_norm: true,
            rope: false,
            gqa: GqaMode::Repeat,
        }
    }
}

#[derive(Module, Debug)]
pub enum Mixer {
    Attention(Attention),
    Rwkv(TimeMixer),
}

#[derive(Module, Debug)]
pub struct HybridLayer {
    pub input_norm: RmsNorm,
    pub mixer: Mixer,
    pub post_norm: RmsNorm,
    pub mlp: Mlp,
}

#[derive(Module, Debug)]
pub struct Hybrid {
    pub embed: Param<Tensor<2>>,
    pub layers: Vec<HybridLayer>,
    pub norm: RmsNorm,
    pub lm_head: Option<Param<Tensor<2>>>,
    #[module(skip)]
    pub config: TransformerConfig,
    #[module(skip)]
    pub student: StudentConfig,
}

/// State of one layer during generation.
#[derive(Debug, Clone)]
pub enum LayerState {
    Attention(Option<KvCache>),
    Rwkv(Option<MixerState>),
}

/// Everything a generation carries: per-layer caches/states and the position.
#[derive(Debug, Clone, Default)]
pub struct HybridState {
    pub pos: usize,
    pub layers: Vec<LayerState>,
}

impl HybridState {
    /// The state with each row repeated `n` times (all copies of row 0 first).
    pub fn repeat_rows(&self, n: usize) -> Self {
        use crate::model::layers::repeat_rows;
        Self {
            pos: self.pos,
            layers: self
                .layers
                .iter()
                .map(|l| match l {
                    LayerState::Attention(c) => {
                        LayerState::Attention(c.as_ref().map(|c| c.repeat_rows(n)))
                    }
                    LayerState::Rwkv(s) => LayerState::Rwkv(s.as_ref().map(|s| MixerState {
                        shift: repeat_rows(s.shift.clone(), n),
                        wkv: repeat_rows(s.wkv.clone(), n),
                    })),
                })
                .collect(),
        }
    }

    /// Bytes held by attention KV caches and by RWKV states.
    pub fn bytes(&self) -> (usize, usize) {
        let mut kv = 0;
        let mut rwkv = 0;
        for l in &self.layers {
            match l {
                LayerState::Attention(Some(c)) => kv += c.bytes(),
                LayerState::Rwkv(Some(s)) => rwkv += s.bytes(),
                _ => {}
            }
        }
        (kv, rwkv)
    }
}

fn vec_param(data: Vec<f32>, device: &Device) -> Param<Tensor<1>> {
    let n = data.len();
    Param::from_tensor(Tensor::from_data(TensorData::new(data, [n]), device))
}

/// Builds the shape description of a mixer.
fn mixer_shape(cfg: &TransformerConfig, st: &StudentConfig) -> MixerShape {
    let c = cfg.hidden_size;
    MixerShape {
        hidden: c,
        heads: cfg.num_attention_heads,
        head_size: cfg.head_dim,
        kv_heads: match st.gqa {
            GqaMode::Repeat => cfg.num_key_value_heads,
            GqaMode::Expand => cfg.num_attention_heads,
        },
        lora: st.lora.unwrap_or_else(|| LoraRanks::for_hidden(c)),
        gate: st.gate,
        group_norm: st.group_norm,
        rope: st.rope,
        rope_theta: cfg.rope_theta,
    }
}

/// RWKV-LM's initial values of the non-projection parameters of layer `l` of `n_layers`.
fn rwkv_init(
    shape: &MixerShape,
    l: usize,
    n_layers: usize,
    seed: u64,
    device: &Device,
) -> TimeMixer {
    let c = shape.hidden;
    let r01 = if n_layers > 1 {
        l as f64 / (n_layers - 1) as f64
    } else {
        0.0
    };
    let r10 = 1.0 - l as f64 / n_layers as f64;
    let ddd: Vec<f64> = (0..c).map(|i| i as f64 / c as f64).collect();
    let mk = |f: &dyn Fn(f64) -> f64| vec_param(ddd.iter().map(|&d| f(d) as f32).collect(), device);
    let mut rng =
        rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ (l as u64).wrapping_mul(0x9E37_79B9));
    let zeros = |r: usize, k: usize| Param::from_tensor(Tensor::<2>::zeros([r, k], device));
    let lr = shape.lora;
    let mut ortho =
        |r: usize, k: usize| Param::from_tensor(orthogonal(r, k, 0.1, &mut rng, device));
    let (w2, a2, v2) = (ortho(lr.decay, c), ortho(lr.a, c), ortho(lr.v, c));
    let g2 = (shape.gate != GateForm::None).then(|| ortho(lr.gate, c));
    let kv_width = shape.kv_heads * shape.head_size;
    let lin = |out: usize, inp: usize| Linear {
        weight: Param::from_tensor(Tensor::zeros([inp, out], device)),
        bias: None,
    };
    TimeMixer {
        x_r: mk(&|d| 1.0 - d.powf(0.2 * r10)),
        x_w: mk(&|d| 1.0 - d.powf(0.9 * r10)),
        x_k: mk(&|d| 1.0 - (d.powf(0.9 * r10) + 0.4 * r01)),
        x_v: mk(&|d| 1.0 - (d.powf(0.4 * r10) + 0.6 * r01)),
        x_a: mk(&|d| 1.0 - d.powf(0.9 * r10)),
        x_g: mk(&|d| 1.0 - d.powf(0.2 * r10)),
        w0: vec_param(
            (0..c)
                .map(|n| {
                    (-7.0 + 5.0 * (n as f64 / (c - 1) as f64).powf(0.85 + r01.sqrt()) + 0.5) as f32
                })
                .collect(),
            device,
        ),
        w1: zeros(c, lr.decay),
        w2,
        a0: vec_param(vec![0.0; c], device),
        a1: zeros(c, lr.a),
        a2,
        v0: vec_param(vec![1.0; c], device),
        v1: zeros(c, lr.v),
        v2,
        g1: (shape.gate != GateForm::None).then(|| zeros(c, lr.gate)),
        g2,
        k_k: vec_param(vec![0.85; c], device),
        k_a: vec_param(vec![1.0; c], device),
        r_k: Param::from_tensor(Tensor::zeros([shape.heads, shape.head_size], device)),
        receptance: lin(c, c),
        key: lin(kv_width, c),
        value: lin(kv_width, c),
        output: lin(c, c),
        ln_x_weight: shape.group_norm.then(|| vec_param(vec![1.0; c], device)),
        ln_x_bias: shape.group_norm.then(|| vec_param(vec![0.0; c], device)),
        shape: shape.clone(),
    }
}

/// Expands a grouped `[in, KV·N]` projection to `[in, H·N]` by repeating each head.
fn expand_linear(l: &Linear, kv: usize, heads: usize, n: usize) -> Linear {
    let rep = |t: Tensor<3>| {
        let [b, _, _] = t.dims();
        let g = heads / kv;
        t.reshape([b, kv, 1, n])
            .expand([b, kv, g, n])
            .reshape([b, 1, heads * n])
    };
    let w = l.weight.val();
    let [inp, _] = w.dims();
    let w = rep(w.reshape([inp, 1, kv * n])).reshape([inp, heads * n]);
    let bias = l
        .bias
        .as_ref()
        .map(|b| Param::from_tensor(rep(b.val().reshape([1, 1, kv * n])).reshape([heads * n])));
    Linear {
        weight: Param::from_tensor(w),
        bias,
    }
}

fn copy_linear(l: &Linear) -> Linear {
    Linear {
        weight: Param::from_tensor(l.weight.val()),
        bias: l.bias.as_ref().map(|b| Param::from_tensor(b.val())),
    }
}

impl Hybrid {
    /// Converts `teacher` (consumed) into a student.
    pub fn from_teacher(
        teacher: Transformer,
        mut student: StudentConfig,
        init: InitMode,
        seed: u64,
    ) -> Result<Self> {
        let cfg = teacher.config.clone();
        let n_layers = cfg.num_hidden_layers;
        if let Some(bad) = student.wkv_layers.iter().find(|&&l| l >= n_layers) {
            bail!("layer {bad} does not exist: the model has {n_layers} layers");
        }
        let device = teacher.embed.val().device();
        let shape = mixer_shape(&cfg, &student);
        student.lora = Some(shape.lora);
        let layers = teacher
            .layers
            .into_iter()
            .enumerate()
            .map(
                |(
                    i,
                    DecoderLayer {
                        input_norm,
                        attn,
                        post_norm,
                        mlp,
                    },
                )| {
                    let mixer = if student.wkv_layers.contains(&i) {
                        let mut m = rwkv_init(&shape, i, n_layers, seed, &device);
                        if init == InitMode::Teacher {
                            let (kv, h, n) = (
                                cfg.num_key_value_heads,
                                cfg.num_attention_heads,
                                cfg.head_dim,
                            );
                            m.receptance = copy_linear(&attn.q);
                            m.output = copy_linear(&attn.o);
                            (m.key, m.value) = match student.gqa {
                                GqaMode::Repeat => (copy_linear(&attn.k), copy_linear(&attn.v)),
                                GqaMode::Expand => (
                                    expand_linear(&attn.k, kv, h, n),
                                    expand_linear(&attn.v, kv, h, n),
                                ),
                            };
                        } else {
                            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                                seed.wrapping_add(1000 + i as u64),
                            );
                            let c = cfg.hidden_size;
                            let kvw = shape.kv_heads * shape.head_size;
                            let mut o = |r, k, g| Linear {
                                weight: Param::from_tensor(orthogonal(r, k, g, &mut rng, &device)),
                                bias: None,
                            };
                            m.receptance = o(c, c, 1.0);
                            m.key = o(c, kvw, 0.1);
                            m.value = o(c, kvw, 1.0);
                            m.output = Linear {
                                weight: Param::from_tensor(Tensor::zeros([c, c], &device)),
                                bias: None,
                            };
                        }
                        Mixer::Rwkv(m)
                    } else {
                        Mixer::Attention(attn)
                    };
                    HybridLayer {
                        input_norm,
                        mixer,
                        post_norm,
                        mlp,
                    }
                },
            )
            .collect();
        Ok(Self {
            embed: teacher.embed,
            layers,
            norm: teacher.norm,
            lm_head: teacher.lm_head,
            config: cfg,
            student,
        })
    }

    pub fn new_state(&self) -> HybridState {
        HybridState {
            pos: 0,
            layers: self
                .layers
                .iter()
                .map(|l| match l.mixer {
                    Mixer::Attention(_) => LayerState::Attention(None),
                    Mixer::Rwkv(_) => LayerState::Rwkv(None),
                })
                .collect(),
        }
    }

    /// Same contract as [`Transformer::forward_hidden`]; `capture` returns each requested
    /// layer's mixer input and output.
    pub fn forward_hidden(
        &self,
        ids: Tensor<2, Int>,
        mask: Option<Tensor<2>>,
        mut state: Option<&mut HybridState>,
        capture: &[usize],
    ) -> (Tensor<3>, Vec<LayerCapture>) {
        let [_, t] = ids.dims();
        let device = ids.device();
        let start = state.as_ref().map_or(0, |s| s.pos);
        if let Some(s) = state.as_mut()
            && s.layers.len() != self.layers.len()
        {
            **s = self.new_state();
        }
        let cfg = &self.config;
        let rotary = Rotary::new(cfg.rope_theta, cfg.head_dim, start, t, &device);
        let mut x = embedding(self.embed.val(), ids);
        let mut v_first: Option<Tensor<3>> = None;
        let mut captures = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.input_norm.forward(x.clone());
            let a = match (&layer.mixer, state.as_mut().map(|s| &mut s.layers[i])) {
                (Mixer::Attention(attn), Some(LayerState::Attention(cache))) => {
                    attn.forward(h.clone(), &rotary, mask.clone(), Some(cache))
                }
                (Mixer::Attention(attn), _) => attn.forward(h.clone(), &rotary, mask.clone(), None),
                (Mixer::Rwkv(m), slot) => {
                    let carried = match &slot {
                        Some(LayerState::Rwkv(s)) => s.clone(),
                        _ => None,
                    };
                    let (out, vf, new_state) = m.forward(
                        h.clone(),
                        v_first.take(),
                        carried,
                        mask.clone(),
                        start,
                        Wkv7Impl::Fused,
                    );
                    v_first = Some(vf);
                    if let Some(slot) = slot {
                        *slot = LayerState::Rwkv(Some(new_state));
                    }
                    out
                }
            };
            if capture.contains(&i) {
                captures.push(LayerCapture {
                    layer: i,
                    attn_in: h,
                    attn_out: a.clone(),
                });
            }
            x = x + a;
            x = x.clone() + layer.mlp.forward(layer.post_norm.forward(x));
        }
        if let Some(s) = state {
            s.pos += t;
        }
        (self.norm.forward(x), captures)
    }

    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        lm_head_logits(hidden, &self.embed, self.lm_head.as_ref())
    }

    pub fn forward(&self, ids: Tensor<2, Int>, mask: Option<Tensor<2>>) -> Tensor<3> {
        self.logits(self.forward_hidden(ids, mask, None, &[]).0)
    }

    /// `config.json` of the student (SPEC §7).
    pub fn config_json(&self) -> Value {
        let mut v = self.config.to_json();
        let shape = mixer_shape(&self.config, &self.student);
        let base = self
            .config
            .raw
            .get("base_model_type")
            .cloned()
            .unwrap_or(json!(self.config.model_type));
        let o = v.as_object_mut().expect("object");
        o.insert("base_model_type".into(), base);
        o.insert("model_type".into(), json!("rwkv_hybrid"));
        o.insert("architectures".into(), json!(["RwkvHybridForCausalLM"]));
        o.insert("head_size".into(), json!(self.config.head_dim));
        o.insert("head_size_divisor".into(), json!(8));
        o.insert("wkv_version".into(), json!(7));
        o.insert(
            "wkv_has_gate".into(),
            json!(self.student.gate != GateForm::None),
        );
        o.insert("wkv_gate_form".into(), json!(self.student.gate));
        o.insert("wkv_has_group_norm".into(), json!(self.student.group_norm));
        o.insert("wkv_rope".into(), json!(self.student.rope));
        o.insert("wkv_gqa".into(), json!(self.student.gqa));
        o.insert("wkv_lora".into(), json!(shape.lora));
        o.insert("wkv_layers".into(), json!(self.student.wkv_layers));
        o.insert("tie_word_embeddings".into(), json!(self.lm_head.is_none()));
        v
    }

    /// Weights under SPEC §7 names.
    pub fn hf_tensors(&self) -> BTreeMap<String, OwnedTensor> {
        let mut out = BTreeMap::new();
        put(&mut out, "model.embed_tokens.weight", self.embed.val());
        for (i, layer) in self.layers.iter().enumerate() {
            put_norms_and_mlp(&mut out, i, &layer.input_norm, &layer.post_norm, &layer.mlp);
            let p = layer_prefix(i);
            match &layer.mixer {
                Mixer::Attention(a) => put_attention(&mut out, &format!("{p}.self_attn"), a),
                Mixer::Rwkv(m) => put_time_mixer(&mut out, &format!("{p}.self_attn.time_mixer"), m),
            }
        }
        put_final_norm_and_head(&mut out, &self.norm, self.lm_head.as_ref());
        out
    }

    /// Writes `config.json` and `model.safetensors` to `dir`.
    pub fn save(&self, dir: &Path, dtype: super::safetensors_io::SaveDtype) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        super::safetensors_io::write_safetensors(
            &dir.join("model.safetensors"),
            &self.hf_tensors(),
            dtype,
        )?;
        let mut config = self.config_json();
        config["torch_dtype"] = json!(dtype.torch_name());
        crate::util::fsx::atomic_write_json(&dir.join("config.json"), &config)?;
        Ok(())
    }

    /// Loads a student directory (`model_type = "rwkv_hybrid"`).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = TransformerConfig::from_dir(dir)?;
        if config.model_type != "rwkv_hybrid" {
            bail!(
                "{} holds a `{}` model, not an RWKV hybrid student",
                dir.display(),
                config.model_type
            );
        }
        let student = student_config_from(&config.raw)
            .with_context(|| format!("in {}/config.json", dir.display()))?;
        if let Some(&l) = student
            .wkv_layers
            .iter()
            .find(|&&l| l >= config.num_hidden_layers)
        {
            bail!(
                "in {}/config.json: `wkv_layers` names layer {l}, but the model has {} layers",
                dir.display(),
                config.num_hidden_layers
            );
        }
        if let Some(l) = student.lora
            && [l.decay, l.a, l.v, l.gate]
                .iter()
                .any(|&r| r == 0 || r > config.hidden_size)
        {
            bail!(
                "in {}/config.json: `wkv_lora` ranks must be between 1 and hidden_size ({}), got {l:?}",
                dir.display(),
                config.hidden_size
            );
        }
        let reader = SafetensorsReader::open_dir(dir)?;
        let mut w = WeightLoader::new(&reader, device);
        let shape = mixer_shape(&config, &student);
        let c = config.hidden_size;
        let embed = w.param("model.embed_tokens.weight", [config.vocab_size, c]);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = layer_prefix(i);
                let mixer = if student.wkv_layers.contains(&i) {
                    Mixer::Rwkv(load_time_mixer(
                        &mut w,
                        &format!("{p}.self_attn.time_mixer"),
                        &shape,
                        config.attention_bias,
                    ))
                } else {
                    Mixer::Attention(load_attention(&mut w, &format!("{p}.self_attn"), &config))
                };
                let (input_norm, post_norm, mlp) = load_norms_and_mlp(&mut w, i, &config);
                HybridLayer {
                    input_norm,
                    mixer,
                    post_norm,
                    mlp,
                }
            })
            .collect();
        let norm = load_norm(&mut w, "model.norm", &config);
        let lm_head = load_head(&mut w, &config);
        w.finish(dir)?;
        Ok(Self {
            embed,
            layers,
            norm,
            lm_head,
            config,
            student,
        })
    }
}

/// Reads the conversion options stored in a student's `config.json`.
fn student_config_from(raw: &serde_json::Map<String, Value>) -> Result<StudentConfig> {
    let get = |k: &str| {
        raw.get(k)
            .cloned()
            .with_context(|| format!("missing key `{k}`"))
    };
    let wkv_version = raw.get("wkv_version").and_then(Value::as_u64).unwrap_or(7);
    if wkv_version != 7 {
        bail!("wkv_version {wkv_version} is not supported (7 is)");
    }
    let gate: GateForm = match raw.get("wkv_gate_form") {
        Some(v) => serde_json::from_value(v.clone())?,
        None if raw.get("wkv_has_gate").and_then(Value::as_bool) == Some(false) => GateForm::None,
        None => GateForm::Sigmoid,
    };
    Ok(StudentConfig {
        wkv_layers: serde_json::from_value(get("wkv_layers")?)?,
        lora: raw
            .get("wkv_lora")
            .map(|v| serde_json::from_value(v.clone()))
            .transpose()?,
        gate,
        group_norm: raw
            .get("wkv_has_group_norm")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        rope: raw
            .get("wkv_rope")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        gqa: raw
            .get("wkv_gqa")
            .map(|v| serde_json::from_value(v.clone()))
            .transpose()?
            .unwrap_or_default(),
    })
}

/// `[C]` vectors are stored `[1, 1, C]` as in RWKV-LM.
const VECTORS: [&str; 11] = [
    "x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a",
];

fn vectors(m: &TimeMixer) -> [&Param<Tensor<1>>; 11] {
    [
        &m.x_r, &m.x_w, &m.x_k, &m.x_v, &m.x_a, &m.x_g, &m.w0, &m.a0, &m.v0, &m.k_k, &m.k_a,
    ]
}

pub fn put_time_mixer(out: &mut BTreeMap<String, OwnedTensor>, prefix: &str, m: &TimeMixer) {
    let c = m.shape.hidden;
    for (name, p) in VECTORS.iter().zip(vectors(m)) {
        put(out, &format!("{prefix}.{name}"), p.val().reshape([1, 1, c]));
    }
    let mut mats = vec![
        ("w1", &m.w1),
        ("w2", &m.w2),
        ("a1", &m.a1),
        ("a2", &m.a2),
        ("v1", &m.v1),
        ("v2", &m.v2),
        ("r_k", &m.r_k),
    ];
    if let (Some(g1), Some(g2)) = (&m.g1, &m.g2) {
        mats.push(("g1", g1));
        mats.push(("g2", g2));
    }
    for (name, p) in mats {
        put(out, &format!("{prefix}.{name}"), p.val());
    }
    for (name, l) in [
        ("receptance", &m.receptance),
        ("key", &m.key),
        ("value", &m.value),
        ("output", &m.output),
    ] {
        put_linear(out, &format!("{prefix}.{name}"), l);
    }
    if let (Some(w), Some(b)) = (&m.ln_x_weight, &m.ln_x_bias) {
        put(out, &format!("{prefix}.ln_x.weight"), w.val());
        put(out, &format!("{prefix}.ln_x.bias"), b.val());
    }
}

fn load_time_mixer(
    w: &mut WeightLoader,
    prefix: &str,
    shape: &MixerShape,
    bias: bool,
) -> TimeMixer {
    let c = shape.hidden;
    let lr = shape.lora;
    let kvw = shape.kv_heads * shape.head_size;
    let device = w.device().clone();
    let mut vec = |name: &str| -> Param<Tensor<1>> {
        vec_param(w.take(&format!("{prefix}.{name}"), &[1, 1, c]), &device)
    };
    let (x_r, x_w, x_k, x_v, x_a, x_g) = (
        vec("x_r"),
        vec("x_w"),
        vec("x_k"),
        vec("x_v"),
        vec("x_a"),
        vec("x_g"),
    );
    let (w0, a0, v0, k_k, k_a) = (vec("w0"), vec("a0"), vec("v0"), vec("k_k"), vec("k_a"));
    let gated = shape.gate != GateForm::None;
    TimeMixer {
        x_r,
        x_w,
        x_k,
        x_v,
        x_a,
        x_g,
        w0,
        a0,
        v0,
        k_k,
        k_a,
        w1: w.param(&format!("{prefix}.w1"), [c, lr.decay]),
        w2: w.param(&format!("{prefix}.w2"), [lr.decay, c]),
        a1: w.param(&format!("{prefix}.a1"), [c, lr.a]),
        a2: w.param(&format!("{prefix}.a2"), [lr.a, c]),
        v1: w.param(&format!("{prefix}.v1"), [c, lr.v]),
        v2: w.param(&format!("{prefix}.v2"), [lr.v, c]),
        g1: gated.then(|| w.param(&format!("{prefix}.g1"), [c, lr.gate])),
        g2: gated.then(|| w.param(&format!("{prefix}.g2"), [lr.gate, c])),
        r_k: w.param(&format!("{prefix}.r_k"), [shape.heads, shape.head_size]),
        receptance: load_linear_opt_bias(w, &format!("{prefix}.receptance"), c, c, bias),
        key: load_linear_opt_bias(w, &format!("{prefix}.key"), kvw, c, bias),
        value: load_linear_opt_bias(w, &format!("{prefix}.value"), kvw, c, bias),
        output: load_linear(w, &format!("{prefix}.output"), c, c, false),
        ln_x_weight: shape
            .group_norm
            .then(|| w.param(&format!("{prefix}.ln_x.weight"), [c])),
        ln_x_bias: shape
            .group_norm
            .then(|| w.param(&format!("{prefix}.ln_x.bias"), [c])),
        shape: shape.clone(),
    }
}

/// A projection whose bias is present only when the checkpoint has it (copied teacher biases).
fn load_linear_opt_bias(
    w: &mut WeightLoader,
    prefix: &str,
    out: usize,
    inp: usize,
    bias: bool,
) -> Linear {
    let has = bias && w.contains(&format!("{prefix}.bias"));
    load_linear(w, prefix, out, inp, has)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_selections() {
        let parse = |s: &str| -> LayerSelection {
            #[derive(Deserialize)]
            struct W {
                layers: LayerSelection,
            }
            toml::from_str::<W>(s).unwrap().layers
        };
        assert_eq!(parse("layers = \"all\"").resolve(3).unwrap(), vec![0, 1, 2]);
        assert_eq!(
            parse("layers = \"none\"").resolve(3).unwrap(),
            Vec::<usize>::new()
        );
        assert_eq!(parse("layers = [4, 0, 4]").resolve(5).unwrap(), vec![0, 4]);
        assert_eq!(
            parse("layers = { every = 2, offset = 1 }")
                .resolve(6)
                .unwrap(),
            vec![1, 3, 5]
        );
        assert!(
            parse("layers = [9]")
                .resolve(5)
                .unwrap_err()
                .to_string()
                .contains("0..4")
        );
        assert!(parse("layers = \"most\"").resolve(5).is_err());
        assert!(parse("layers = { every = 0 }").resolve(5).is_err());
    }

    #[test]
    fn lora_ranks_follow_rwkv_lm() {
        assert_eq!(
            LoraRanks::for_hidden(896),
            LoraRanks {
                decay: 64,
                a: 64,
                v: 32,
                gate: 128
            }
        );
    }

    #[test]
    fn rwkv_init_values() {
        let device = Device::flex();
        let cfg = TransformerConfig::from_json(json!({
            "model_type": "llama", "vocab_size": 32, "hidden_size": 64, "intermediate_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1
        }))
        .unwrap();
        let st = StudentConfig {
            wkv_layers: vec![0, 1],
            ..Default::default()
        };
        let shape = mixer_shape(&cfg, &st);
        let m = rwkv_init(&shape, 0, 2, 0, &device);
        let w0 = crate::model::weights::to_vec(m.w0.val());
        // Layer 0: w0_n = -7 + 5 (n/(C-1))^0.85 + 0.5.
        assert!(
            (w0[0] + 6.5).abs() < 1e-6 && (w0[63] + 1.5).abs() < 1e-5,
            "{w0:?}"
        );
        let w2 = m.w2.val();
        let gram = crate::model::weights::to_vec(w2.clone().matmul(w2.transpose()));
        let r = shape.lora.decay;
        for i in 0..r {
            for j in 0..r {
                let want = if i == j { 0.01 } else { 0.0 };
                assert!(
                    (gram[i * r + j] - want).abs() < 1e-5,
                    "W2 rows are orthogonal with gain 0.1"
                );
            }
        }
        let teacher = Transformer::random(cfg, 1, &device);
        let h = Hybrid::from_teacher(teacher, st, InitMode::Rwkv, 0).unwrap();
        let ids = crate::model::transformer::ids_tensor(&[vec![1, 2, 3]], &device);
        assert!(
            crate::model::weights::to_vec(h.forward(ids, None))
                .iter()
                .all(|v| v.is_finite())
        );
    }
}
