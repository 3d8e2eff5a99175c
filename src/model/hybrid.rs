//! The hybrid student: the teacher with softmax attention replaced by RWKV-7 time mixing in
//! chosen layers. Unconverted layers keep their attention (and KV cache); converted layers carry
//! a token-shift + WKV state, constant in size. `v_first` flows from the first converted layer
//! to the later ones as an ordinary tensor. Saved as a Hugging Face-style directory with
//! `model_type = "rwkv_hybrid"` (SPEC §7 key names).

use super::config::TransformerConfig;
use super::layers::{Attention, KvCache, Mlp, RmsNorm, Rotary};
use super::safetensors_io::{OwnedTensor, SafetensorsReader};
use super::time_mixer::{GateForm, LoraRanks, MixerShape, MixerState, TimeMixer};
use super::transformer::{
    DecoderLayer, LayerCapture, Transformer, decoder_stack, lm_head_logits, load_head, put_head,
};
use super::weights::{TensorsOut, WeightLoader};
use anyhow::{Context, Result, bail};
use burn::module::{Module, Param};
use burn::tensor::module::embedding;
use burn::tensor::{Device, Int, Tensor};
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
    /// The `auto` layers whose replacement costs least, measured by the step that converts
    /// them (stage 1's layer probe).
    Auto { auto: usize },
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
            LayerSelection::Auto { auto } => bail!(
                "layers = {{ auto = {auto} }} is chosen by measurement, which only a stage1 step does"
            ),
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

/// Every parameter path of a converted layer's mixer contains this fragment (the variant's name
/// below, as the module paths spell it).
pub const MIXER_PARAMS: &str = ".Rwkv.";

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

    /// Makes room in every attention layer's KV cache for `additional` more tokens (see
    /// [`KvCache::reserve`]); RWKV states do not grow.
    pub fn reserve(&mut self, additional: usize) {
        for l in &mut self.layers {
            if let LayerState::Attention(Some(c)) = l {
                c.reserve(additional);
            }
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
                    let mixer = if !student.wkv_layers.contains(&i) {
                        Mixer::Attention(attn)
                    } else if init == InitMode::Teacher {
                        let expand = student.gqa == GqaMode::Expand;
                        Mixer::Rwkv(TimeMixer::from_attention(
                            &attn, expand, &shape, i, n_layers, seed, &device,
                        ))
                    } else {
                        Mixer::Rwkv(TimeMixer::init_rwkv(&shape, i, n_layers, seed, &device))
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
        let mut v_first: Option<Tensor<3>> = None;
        let blocks = self
            .layers
            .iter()
            .map(|l| (&l.input_norm, &l.post_norm, &l.mlp));
        let mix = |i: usize, h: Tensor<3>| match (
            &self.layers[i].mixer,
            state.as_mut().map(|s| &mut s.layers[i]),
        ) {
            (Mixer::Attention(attn), Some(LayerState::Attention(cache))) => {
                attn.forward(h, &rotary, mask.clone(), Some(cache))
            }
            (Mixer::Attention(attn), _) => attn.forward(h, &rotary, mask.clone(), None),
            (Mixer::Rwkv(m), slot) => {
                let carried = match &slot {
                    Some(LayerState::Rwkv(s)) => s.clone(),
                    _ => None,
                };
                let (out, vf, new_state) = m.forward(
                    h,
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
        let (x, captures) =
            decoder_stack(embedding(self.embed.val(), ids), blocks, mix, capture, None);
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
        let wkv_bias = self.layers.iter().any(|l| match &l.mixer {
            Mixer::Rwkv(m) => m.receptance.bias.is_some(),
            Mixer::Attention(_) => false,
        });
        o.insert("wkv_bias".into(), json!(wkv_bias));
        o.insert("tie_word_embeddings".into(), json!(self.lm_head.is_none()));
        o.insert("auto_map".into(), super::remote_code::auto_map());
        v
    }

    /// Weights under SPEC §7 names.
    pub fn hf_tensors(&self) -> BTreeMap<String, OwnedTensor> {
        let mut out = BTreeMap::new();
        let mut t = TensorsOut::new(&mut out);
        let mut model = t.pp("model");
        model.pp("embed_tokens").put("weight", self.embed.val());
        for (i, layer) in self.layers.iter().enumerate() {
            let mut l = model.pp("layers");
            let mut l = l.pp(i);
            layer.input_norm.put(&mut l.pp("input_layernorm"));
            match &layer.mixer {
                Mixer::Attention(a) => a.put(&mut l.pp("self_attn")),
                Mixer::Rwkv(m) => m.put(&mut l.pp("self_attn").pp("time_mixer")),
            }
            layer.post_norm.put(&mut l.pp("post_attention_layernorm"));
            layer.mlp.put(&mut l.pp("mlp"));
        }
        self.norm.put(&mut model.pp("norm"));
        put_head(&mut t, self.lm_head.as_ref());
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
        super::remote_code::write(dir)?;
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
        let loader = WeightLoader::new(&reader, device);
        let root = loader.root();
        let model = root.pp("model");
        let shape = mixer_shape(&config, &student);
        let c = config.hidden_size;
        let eps = config.rms_norm_eps;
        let embed = model
            .pp("embed_tokens")
            .param("weight", [config.vocab_size, c]);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let w = model.pp("layers").pp(i);
                let mixer = if student.wkv_layers.contains(&i) {
                    let m = w.pp("self_attn").pp("time_mixer");
                    Mixer::Rwkv(TimeMixer::load(&m, &shape, config.attention_bias))
                } else {
                    Mixer::Attention(Attention::load(&w.pp("self_attn"), &config))
                };
                HybridLayer {
                    input_norm: RmsNorm::load(&w.pp("input_layernorm"), c, eps),
                    mixer,
                    post_norm: RmsNorm::load(&w.pp("post_attention_layernorm"), c, eps),
                    mlp: Mlp::load(&w.pp("mlp"), &config),
                }
            })
            .collect();
        let norm = RmsNorm::load(&model.pp("norm"), c, eps);
        let lm_head = load_head(&root, &config);
        loader.finish(dir)?;
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
        let device = crate::testing::device();
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
        let m = TimeMixer::init_rwkv(&shape, 0, 2, 0, &device);
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
