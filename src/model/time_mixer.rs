//! The RWKV-7 ("x070") time mixer that replaces attention in converted layers (SPEC §2): token
//! shift, six mixes, receptance/key/value projections, LoRA-parameterised decay, in-context
//! learning rate, value residual (`v_first`) and gate, the WKV-7 recurrence (the fused kernel),
//! optional per-head GroupNorm, the `r·k` bonus and the output projection.

use super::layers::{Attention, Linear, Rotary};
use super::weights::{TensorsOut, Weights};
use burn::module::{Module, Param};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rwkv_kernels::{MixerOutput, Wkv7Impl, Wkv7Input, wkv7};
use serde::{Deserialize, Serialize};

/// Form of the output gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GateForm {
    /// `g = σ(x_g G1) G2` (the original's inference form).
    #[default]
    Sigmoid,
    /// `g = 1 + σ(x_g G1) G2`.
    OnePlus,
    /// No gate: `y W_o`.
    None,
}

/// LoRA ranks of the decay, in-context rate, value residual and gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoraRanks {
    pub decay: usize,
    pub a: usize,
    pub v: usize,
    pub gate: usize,
}

impl LoraRanks {
    /// RWKV-LM's sizes for hidden size `c` (64, 64, 32, 128 at c = 896).
    pub fn for_hidden(c: usize) -> Self {
        let round32 = |x: f64| (((x / 32.0).round() as usize) * 32).max(32);
        let s = (c as f64).sqrt();
        Self {
            decay: round32(1.8 * s),
            a: round32(1.8 * s),
            v: round32(1.3 * s),
            gate: round32(0.6 * (c as f64).powf(0.8)),
        }
    }
}

/// The shape options of a time mixer (everything but its weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixerShape {
    pub hidden: usize,
    pub heads: usize,
    pub head_size: usize,
    /// Key/value heads of the projections; fewer than `heads` when the teacher's grouped k/v
    /// width is kept and repeated per group.
    pub kv_heads: usize,
    pub lora: LoraRanks,
    pub gate: GateForm,
    pub group_norm: bool,
    /// Rotary embeddings on r and k.
    pub rope: bool,
    pub rope_theta: f64,
}

/// Recurrent state of one time mixer: the last token's input (token shift) and the WKV state.
#[derive(Debug, Clone)]
pub struct MixerState {
    /// `[B, C]`.
    pub shift: Tensor<2>,
    /// `[B, H, N, N]`.
    pub wkv: Tensor<4>,
}

impl MixerState {
    pub fn bytes(&self) -> usize {
        (self.shift.dims().iter().product::<usize>() + self.wkv.dims().iter().product::<usize>())
            * 4
    }
}

/// The mixer's parameters. `C` is the hidden size, `H` the heads, `N` the head size (`C = H·N`),
/// `D`, `A`, `V`, `G` the LoRA ranks of decay, in-context rate, value residual and gate. Vectors
/// are `[C]` here (stored `[1, 1, C]` in checkpoints, as in RWKV-LM); linear weights are stored
/// `[in, out]` (see [`Linear`]).
#[derive(Module, Debug)]
pub struct TimeMixer {
    /// Token-shift mix of the receptance input `[C]`: `x_r = x + (x_{t−1} − x)·x_r`.
    pub x_r: Param<Tensor<1>>,
    /// Token-shift mix of the decay input `[C]`.
    pub x_w: Param<Tensor<1>>,
    /// Token-shift mix of the key input `[C]`.
    pub x_k: Param<Tensor<1>>,
    /// Token-shift mix of the value input `[C]`.
    pub x_v: Param<Tensor<1>>,
    /// Token-shift mix of the in-context-rate input `[C]`.
    pub x_a: Param<Tensor<1>>,
    /// Token-shift mix of the gate input `[C]`.
    pub x_g: Param<Tensor<1>>,
    /// Decay bias `[C]`.
    pub w0: Param<Tensor<1>>,
    /// Decay LoRA down `[C, D]`.
    pub w1: Param<Tensor<2>>,
    /// Decay LoRA up `[D, C]`.
    pub w2: Param<Tensor<2>>,
    /// In-context learning rate bias `[C]`.
    pub a0: Param<Tensor<1>>,
    /// In-context learning rate LoRA down `[C, A]`.
    pub a1: Param<Tensor<2>>,
    /// In-context learning rate LoRA up `[A, C]`.
    pub a2: Param<Tensor<2>>,
    /// Value-residual mix bias `[C]` (layers after the first converted one).
    pub v0: Param<Tensor<1>>,
    /// Value-residual LoRA down `[C, V]`.
    pub v1: Param<Tensor<2>>,
    /// Value-residual LoRA up `[V, C]`.
    pub v2: Param<Tensor<2>>,
    /// Gate LoRA down `[C, G]` (absent without a gate).
    pub g1: Option<Param<Tensor<2>>>,
    /// Gate LoRA up `[G, C]`.
    pub g2: Option<Param<Tensor<2>>>,
    /// Scale of the key before it is L2-normalised into the removal key `κ̂` `[C]`.
    pub k_k: Param<Tensor<1>>,
    /// How much the in-context rate scales the key `[C]`: `k·(1 + (a − 1)·k_a)`.
    pub k_a: Param<Tensor<1>>,
    /// Per-head weight of the `r·k` bonus `[H, N]`.
    pub r_k: Param<Tensor<2>>,
    /// `W_r`: `[C, C]`.
    pub receptance: Linear,
    /// `W_k`: `[C, KV·N]` (`KV` key/value heads, `H` unless grouped heads are repeated).
    pub key: Linear,
    /// `W_v`: `[C, KV·N]`.
    pub value: Linear,
    /// `W_o`: `[C, C]`.
    pub output: Linear,
    /// Per-head GroupNorm weight `[C]` (absent without GroupNorm).
    pub ln_x_weight: Option<Param<Tensor<1>>>,
    /// Per-head GroupNorm bias `[C]`.
    pub ln_x_bias: Option<Param<Tensor<1>>>,
    #[module(skip)]
    pub shape: MixerShape,
}

impl TimeMixer {
    /// Loads the mixer under `w` (`model.layers.{i}.self_attn.time_mixer`, SPEC §7): `[C]`
    /// vectors stored `[1, 1, C]`, LoRA matrices as they are, projections in Hugging Face's
    /// `[out, in]` layout; r/k/v biases when `bias` and the checkpoint has them.
    pub fn load(w: &Weights, shape: &MixerShape, bias: bool) -> Self {
        load_mixer(w, shape, bias)
    }

    /// Writes what [`TimeMixer::load`] reads.
    pub fn put(&self, t: &mut TensorsOut) {
        put_mixer(t, self)
    }

    /// RWKV-LM's initialisation for layer `l` of `n_layers` (`init = "rwkv"`): its decay,
    /// mixes and LoRAs, and orthogonal r/k/v projections (the output projection zero).
    pub fn init_rwkv(
        shape: &MixerShape,
        l: usize,
        n_layers: usize,
        seed: u64,
        device: &Device,
    ) -> Self {
        let mut m = rwkv_base(shape, l, n_layers, seed, device);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_add(1000 + l as u64));
        let c = shape.hidden;
        let kvw = shape.kv_heads * shape.head_size;
        let mut o = |r, k, g| Linear {
            weight: Param::from_tensor(orthogonal(r, k, g, &mut rng, device)),
            bias: None,
        };
        m.receptance = o(c, c, 1.0);
        m.key = o(c, kvw, 0.1);
        m.value = o(c, kvw, 1.0);
        m.output = Linear {
            weight: Param::from_tensor(Tensor::zeros([c, c], device)),
            bias: None,
        };
        m
    }

    /// Initialised from the teacher's attention of that layer (`init = "teacher"`): r, k, v
    /// and o are its q, k, v and o projections (grouped k/v heads repeated when `expand`), the
    /// rest as [`TimeMixer::init_rwkv`].
    pub fn from_attention(
        attn: &Attention,
        expand: bool,
        shape: &MixerShape,
        l: usize,
        n_layers: usize,
        seed: u64,
        device: &Device,
    ) -> Self {
        let mut m = rwkv_base(shape, l, n_layers, seed, device);
        let (kv, h, n) = (attn.kv_heads, attn.heads, attn.head_dim);
        m.receptance = copy_linear(&attn.q);
        m.output = copy_linear(&attn.o);
        (m.key, m.value) = if expand {
            (
                expand_linear(&attn.k, kv, h, n),
                expand_linear(&attn.v, kv, h, n),
            )
        } else {
            (copy_linear(&attn.k), copy_linear(&attn.v))
        };
        m
    }
}

fn vec_param(data: Vec<f32>, device: &Device) -> Param<Tensor<1>> {
    let n = data.len();
    Param::from_tensor(Tensor::from_data(TensorData::new(data, [n]), device))
}

/// RWKV-LM's initial values of the non-projection parameters of layer `l` of `n_layers`
/// (projections zero).
fn rwkv_base(
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

/// `[C]` vectors are stored `[1, 1, C]` as in RWKV-LM.
const VECTORS: [&str; 11] = [
    "x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a",
];

fn vectors(m: &TimeMixer) -> [&Param<Tensor<1>>; 11] {
    [
        &m.x_r, &m.x_w, &m.x_k, &m.x_v, &m.x_a, &m.x_g, &m.w0, &m.a0, &m.v0, &m.k_k, &m.k_a,
    ]
}

fn put_mixer(t: &mut TensorsOut, m: &TimeMixer) {
    let c = m.shape.hidden;
    for (name, p) in VECTORS.iter().zip(vectors(m)) {
        t.put(name, p.val().reshape([1, 1, c]));
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
        t.put(name, p.val());
    }
    for (name, l) in [
        ("receptance", &m.receptance),
        ("key", &m.key),
        ("value", &m.value),
        ("output", &m.output),
    ] {
        l.put(&mut t.pp(name));
    }
    if let (Some(w), Some(b)) = (&m.ln_x_weight, &m.ln_x_bias) {
        t.put("ln_x.weight", w.val());
        t.put("ln_x.bias", b.val());
    }
}

fn load_mixer(w: &Weights, shape: &MixerShape, bias: bool) -> TimeMixer {
    let c = shape.hidden;
    let lr = shape.lora;
    let kvw = shape.kv_heads * shape.head_size;
    let device = w.device().clone();
    let vec = |name: &str| -> Param<Tensor<1>> { vec_param(w.take(name, &[1, 1, c]), &device) };
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
        w1: w.param("w1", [c, lr.decay]),
        w2: w.param("w2", [lr.decay, c]),
        a1: w.param("a1", [c, lr.a]),
        a2: w.param("a2", [lr.a, c]),
        v1: w.param("v1", [c, lr.v]),
        v2: w.param("v2", [lr.v, c]),
        g1: gated.then(|| w.param("g1", [c, lr.gate])),
        g2: gated.then(|| w.param("g2", [lr.gate, c])),
        r_k: w.param("r_k", [shape.heads, shape.head_size]),
        receptance: load_linear_opt_bias(&w.pp("receptance"), c, c, bias),
        key: load_linear_opt_bias(&w.pp("key"), kvw, c, bias),
        value: load_linear_opt_bias(&w.pp("value"), kvw, c, bias),
        output: Linear::load(&w.pp("output"), c, c, false),
        ln_x_weight: shape.group_norm.then(|| w.param("ln_x.weight", [c])),
        ln_x_bias: shape.group_norm.then(|| w.param("ln_x.bias", [c])),
        shape: shape.clone(),
    }
}

/// A projection whose bias is present only when the checkpoint has it (copied teacher biases).
fn load_linear_opt_bias(w: &Weights, out: usize, inp: usize, bias: bool) -> Linear {
    Linear::load(w, out, inp, bias && w.contains("bias"))
}

/// Per-head L2 normalisation of `[B, T, H, N]` over N: `x / max(‖x‖, 1e-12)`.
///
/// The floor is applied to the sum of squares before the square root (`1e-24`, the same value
/// forward): at a zero vector — a padded position, whose mixer input is zeroed — the square
/// root's derivative is infinite, and the clamp's zero gradient times it would be NaN.
fn l2_normalize(x: Tensor<4>) -> Tensor<4> {
    let norm = x.clone().square().sum_dim(3).clamp_min(1e-24).sqrt();
    x / norm
}

/// `x @ A @ B` for a LoRA pair.
fn lora(x: Tensor<3>, a: &Param<Tensor<2>>, b: &Param<Tensor<2>>) -> Tensor<3> {
    x.matmul(a.val().unsqueeze()).matmul(b.val().unsqueeze())
}

fn bcast(p: &Param<Tensor<1>>) -> Tensor<3> {
    p.val().unsqueeze::<3>()
}

/// Repeats groups of heads: `[B, T, KV·N]` → `[B, T, H·N]`.
fn repeat_heads(x: Tensor<3>, kv: usize, heads: usize, n: usize) -> Tensor<3> {
    if kv == heads {
        return x;
    }
    let [b, t, _] = x.dims();
    let g = heads / kv;
    x.reshape([b, t, kv, 1, n])
        .expand([b, t, kv, g, n])
        .reshape([b, t, heads * n])
}

impl TimeMixer {
    /// Runs the mixer over `x` `[B, T, C]` (after the layer's input norm).
    ///
    /// - `v_first`: the first converted layer's values `[B, T, C]`; `None` in that layer, which
    ///   returns its own `v` as the new `v_first`.
    /// - `state`: carried token-shift and WKV state (`None`: zeros, as in training).
    /// - `mask`: `[B, T]`, 0 for padding (state unchanged, output 0 from the recurrence; the
    ///   token shift reads a padded position as zeros, so a row padded on the left starts as a
    ///   fresh state does).
    /// - `start`: position of the first token (for rotary embeddings on r/k).
    ///
    /// Returns `(output [B, T, C], v_first, new state)`.
    ///
    /// The stages (SPEC §2; `σ` the logistic function):
    /// 1. token shift: `x_* = x + (x_{t−1} − x)·μ_*` for r, w, k, v, a, g;
    /// 2. projections: `r = x_r W_r`, `k = x_k W_k`, `v = x_v W_v` (grouped k/v heads repeated);
    /// 3. decay: `w = exp(−exp(ω))` with `ω = −softplus(−(w0 + tanh(x_w W1) W2)) − 0.5 < −0.5`,
    ///    so `w ∈ (e^{−e^{−0.5}}, 1) ≈ (0.545, 1)`: the `− 0.5` keeps any one step from erasing
    ///    more than ~45 % of the state (RWKV-LM's bound; it keeps the recurrence and its
    ///    backward numerically tame);
    /// 4. value residual: `v ← v + (v_first − v)·σ(v0 + (x_v V1) V2)` (not in the first layer);
    /// 5. in-context rate `a = σ(a0 + (x_a A1) A2)`, removal key `κ̂ = L2norm(k·k_k)` per head,
    ///    and `k ← k·(1 + (a − 1)·k_a)`;
    /// 6. gate `g = σ(x_g G1) G2` (or `1 + …`, or none); optional rotary embedding of r and k;
    /// 7. WKV-7: `S_t = S_{t−1}(diag(w_t) − κ̂_tᵀ(a_t·κ̂_t)) + v_tᵀ k_t`, `y_t = S_t r_t`;
    /// 8. per-head GroupNorm with ε = 64e-5 (RWKV-LM's `1e-5 · head_size_divisor²`, with the
    ///    divisor 8), then the bonus `y += (Σ_N r·k·r_k)·v` and `out = (y·g) W_o`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        v_first: Option<Tensor<3>>,
        state: Option<MixerState>,
        mask: Option<Tensor<2>>,
        start: usize,
        imp: Wkv7Impl,
    ) -> (Tensor<3>, Tensor<3>, MixerState) {
        let s = &self.shape;
        let [b, t, c] = x.dims();
        let (h, n) = (s.heads, s.head_size);
        let device = x.device();
        let (shift, wkv_state) = match state {
            Some(st) => (st.shift, Some(st.wkv)),
            None => (Tensor::zeros([b, c], &device), None),
        };
        let x = match &mask {
            Some(m) => x * m.clone().unsqueeze_dim::<3>(2),
            None => x,
        };
        let new_shift = x.clone().narrow(1, t - 1, 1).reshape([b, c]);
        // 1. Token shift (one fused op per mix on the CPU).
        let mix = |p: &Param<Tensor<1>>| rwkv_kernels::token_mix(x.clone(), shift.clone(), p.val());
        let (xr, xw, xk, xv, xa, xg) = (
            mix(&self.x_r),
            mix(&self.x_w),
            mix(&self.x_k),
            mix(&self.x_v),
            mix(&self.x_a),
            mix(&self.x_g),
        );

        // 2. Projections; 3. decay (log-decay below −0.5).
        let mut r = self.receptance.forward(xr);
        let decay_lora = xw
            .matmul(self.w1.val().unsqueeze())
            .tanh()
            .matmul(self.w2.val().unsqueeze());
        // w = exp(−exp(−softplus(−(w0 + lora)) − 0.5)), one fused op on the CPU.
        let w = rwkv_kernels::decay(decay_lora, self.w0.val());
        let mut k = repeat_heads(self.key.forward(xk), s.kv_heads, h, n);
        let mut v = repeat_heads(self.value.forward(xv.clone()), s.kv_heads, h, n);
        // 4. Value residual towards the first converted layer's values.
        let v_first = match v_first {
            None => v.clone(),
            Some(vf) => {
                let mix = sigmoid(bcast(&self.v0) + lora(xv, &self.v1, &self.v2));
                v = v.clone() + (vf.clone() - v) * mix;
                vf
            }
        };
        // 5. In-context learning rate; 6. gate.
        let a = sigmoid(bcast(&self.a0) + lora(xa, &self.a1, &self.a2));
        let g = match (&self.g1, &self.g2, s.gate) {
            (Some(g1), Some(g2), GateForm::Sigmoid) => {
                Some(sigmoid(xg.matmul(g1.val().unsqueeze())).matmul(g2.val().unsqueeze()))
            }
            (Some(g1), Some(g2), GateForm::OnePlus) => Some(
                sigmoid(xg.matmul(g1.val().unsqueeze()))
                    .matmul(g2.val().unsqueeze())
                    .add_scalar(1.0),
            ),
            _ => None,
        };
        if s.rope {
            let rot = Rotary::new(s.rope_theta, n, start, t, &device);
            let heads4 = |z: Tensor<3>| z.reshape([b, t, h, n]).swap_dims(1, 2);
            let back = |z: Tensor<4>| z.swap_dims(1, 2).reshape([b, t, c]);
            r = back(rot.apply(heads4(r)));
            k = back(rot.apply(heads4(k)));
        }
        let kk = l2_normalize((k.clone() * bcast(&self.k_k)).reshape([b, t, h, n]));
        let k = k * (a.clone() - 1.0).mul(bcast(&self.k_a)).add_scalar(1.0);
        let heads = |z: Tensor<3>| z.reshape([b, t, h, n]);
        let input = Wkv7Input {
            r: heads(r.clone()),
            w: heads(w),
            k: heads(k.clone()),
            v: heads(v.clone()),
            a: kk.clone().neg(),
            b: kk * heads(a),
        };
        // 7. The WKV-7 recurrence (fused kernel).
        let (y, wkv_state) = wkv7(input, mask, wkv_state, imp);
        // 8. GroupNorm per head (ε = 64e-5), the r·k bonus and the gate (one fused op on the
        //    CPU), then the output projection.
        let group_norm = match (&self.ln_x_weight, &self.ln_x_bias) {
            (Some(wt), Some(bias)) => Some((wt.val(), bias.val())),
            _ => None,
        };
        let y = rwkv_kernels::mixer_output(
            MixerOutput {
                y,
                r,
                k,
                v,
                r_k: self.r_k.val(),
                group_norm,
                gate: g,
            },
            64e-5,
        );
        let out = self.output.forward(y);
        (
            out,
            v_first,
            MixerState {
                shift: new_shift,
                wkv: wkv_state,
            },
        )
    }

    /// A zero state for `batch` sequences.
    pub fn zero_state(&self, batch: usize, device: &Device) -> MixerState {
        let s = &self.shape;
        MixerState {
            shift: Tensor::zeros([batch, s.hidden], device),
            wkv: Tensor::zeros([batch, s.heads, s.head_size, s.head_size], device),
        }
    }
}

/// Orthogonal `[rows, cols]` matrix (rows or columns orthonormal, whichever are fewer) times
/// `gain`, by Gram–Schmidt on seeded Gaussian vectors.
pub fn orthogonal(
    rows: usize,
    cols: usize,
    gain: f32,
    rng: &mut impl rand::Rng,
    device: &Device,
) -> Tensor<2> {
    let (n_vec, len) = if rows <= cols {
        (rows, cols)
    } else {
        (cols, rows)
    };
    let mut vecs: Vec<Vec<f64>> = Vec::with_capacity(n_vec);
    while vecs.len() < n_vec {
        let mut v: Vec<f64> = (0..len)
            .map(|_| {
                // Box–Muller.
                let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random::<f64>());
                (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
            })
            .collect();
        for u in &vecs {
            let d: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= d * b);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 1e-6 {
            vecs.push(v.into_iter().map(|a| a / norm).collect());
        }
    }
    let mut data = vec![0f32; rows * cols];
    for (i, v) in vecs.iter().enumerate() {
        for (j, x) in v.iter().enumerate() {
            let (r, c) = if rows <= cols { (i, j) } else { (j, i) };
            data[r * cols + c] = (*x as f32) * gain;
        }
    }
    Tensor::from_data(TensorData::new(data, [rows, cols]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::testing::{assert_round_trip, written};
    use crate::train::optim::collect_grads;
    use burn::tensor::Distribution;

    fn shape(gate: GateForm, group_norm: bool) -> MixerShape {
        MixerShape {
            hidden: 64,
            heads: 2,
            head_size: 32,
            kv_heads: 1,
            lora: LoraRanks::for_hidden(64),
            gate,
            group_norm,
            rope: false,
            rope_theta: 10_000.0,
        }
    }

    #[test]
    fn the_mixer_loads_what_it_puts() {
        let device = crate::testing::device();
        for (gate, gn) in [(GateForm::Sigmoid, true), (GateForm::None, false)] {
            let s = shape(gate, gn);
            let m = TimeMixer::init_rwkv(&s, 1, 3, 5, &device);
            assert_round_trip(TimeMixer::put, &m, |w| TimeMixer::load(w, &s, false));
        }
        // Vectors are stored `[1, 1, C]` (SPEC §7), the gate only when there is one.
        let m = TimeMixer::init_rwkv(&shape(GateForm::None, true), 0, 1, 0, &device);
        let (_dir, reader, out) = written(|t| m.put(t));
        assert_eq!(reader.shape("m.x_r"), Some(&[1, 1, 64][..]));
        assert!(!out.contains_key("m.g1") && out.contains_key("m.ln_x.bias"));
    }

    /// Padded positions enter the mixer as zeros, so their removal key `k·k_k` is a zero vector
    /// (no key bias): every parameter's gradient must still be finite.
    #[test]
    fn padded_positions_keep_every_gradient_finite() {
        let device = crate::testing::device().autodiff();
        let m = TimeMixer::init_rwkv(&shape(GateForm::Sigmoid, true), 1, 2, 7, &device);
        let x = Tensor::<3>::random([2, 6, 64], Distribution::Normal(0.0, 1.0), &device);
        // Row 0 padded on the right (as in training), row 1 on the left (as in batched decoding).
        let keep = [1., 1., 1., 1., 0., 0., 0., 0., 1., 1., 1., 1.];
        let mask = Tensor::<2>::from_data(TensorData::new(keep.to_vec(), [2, 6]), &device);
        let (y, v_first, _) = m.forward(x, None, None, Some(mask), 0, Wkv7Impl::Fused);
        let grads = (y.sum() + v_first.sum()).backward();
        let g = collect_grads(&m, &grads);
        assert!(g.grads.len() > 10, "{:?}", g.grads.keys());
        assert!(g.non_finite().is_empty(), "{:?}", g.non_finite());
    }
}
