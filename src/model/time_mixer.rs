//! The RWKV-7 ("x070") time mixer that replaces attention in converted layers (SPEC §2): token
//! shift, six mixes, receptance/key/value projections, LoRA-parameterised decay, in-context
//! learning rate, value residual (`v_first`) and gate, the WKV-7 recurrence (the fused kernel),
//! optional per-head GroupNorm, the `r·k` bonus and the output projection.

use super::layers::{Linear, Rotary};
use burn::module::{Module, Param};
use burn::tensor::activation::{sigmoid, softplus};
use burn::tensor::{Device, Tensor, TensorData};
use rwkv_kernels::{Wkv7Impl, Wkv7Input, wkv7};
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

/// Per-head L2 normalisation of `[B, T, H, N]` over N.
fn l2_normalize(x: Tensor<4>) -> Tensor<4> {
    let norm = x.clone().square().sum_dim(3).sqrt().clamp_min(1e-12);
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
    /// - `mask`: `[B, T]`, 0 for padding (state unchanged, output 0 from the recurrence).
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
        let prev = if t > 1 {
            Tensor::cat(
                vec![shift.unsqueeze_dim(1), x.clone().narrow(1, 0, t - 1)],
                1,
            )
        } else {
            shift.unsqueeze_dim(1)
        };
        let new_shift = x.clone().narrow(1, t - 1, 1).reshape([b, c]);
        // 1. Token shift.
        let xx = prev - x.clone();
        let mix = |p: &Param<Tensor<1>>| x.clone() + xx.clone() * bcast(p);
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
        let w_raw = softplus((bcast(&self.w0) + decay_lora).neg(), 1.0).neg() - 0.5;
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
        let w = w_raw.exp().neg().exp();
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
        let mut y = y; // [B, T, H, N]
        // 8. GroupNorm per head (ε = 64e-5), the r·k bonus, the gate and the output projection.
        if let (Some(wt), Some(bias)) = (&self.ln_x_weight, &self.ln_x_bias) {
            let mean = y.clone().mean_dim(3);
            let centered = y - mean;
            let var = centered.clone().square().mean_dim(3);
            y = centered / var.add_scalar(64e-5).sqrt();
            y = y
                .reshape([b, t, c])
                .mul(bcast(wt))
                .add(bcast(bias))
                .reshape([b, t, h, n]);
        }
        let bonus = (heads(r) * heads(k) * self.r_k.val().unsqueeze::<4>()).sum_dim(3) * heads(v);
        let y = (y + bonus).reshape([b, t, c]);
        let out = match g {
            Some(g) => self.output.forward(y * g),
            None => self.output.forward(y),
        };
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
