//! The building blocks shared by the teacher and the hybrid student: linear projections (weights
//! stored `[in, out]`), RMSNorm, rotary embeddings (rotate-half, as Hugging Face), grouped-query
//! attention with an optional KV cache, and the SwiGLU MLP.

use burn::module::{Module, Param};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::module::{attention, linear};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor, TensorData};
use rwkv_kernels::{causal_attention, fused_available};

/// `y = x W + b` with `W` stored `[in, out]` (the transpose of Hugging Face's `[out, in]`).
#[derive(Module, Debug)]
pub struct Linear {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }

    pub fn d_in(&self) -> usize {
        self.weight.val().dims()[0]
    }

    pub fn d_out(&self) -> usize {
        self.weight.val().dims()[1]
    }
}

/// Root-mean-square normalisation with a learned scale.
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    #[module(skip)]
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let inv = x
            .clone()
            .square()
            .mean_dim(2)
            .add_scalar(self.eps)
            .sqrt()
            .recip();
        x * inv * self.weight.val().unsqueeze::<3>()
    }
}

/// SwiGLU feed-forward: `down(silu(gate(x)) ⊙ up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.down
            .forward(silu(self.gate.forward(x.clone())) * self.up.forward(x))
    }
}

/// Cosine and sine tables for a run of positions, `[T, head_dim]` each (halves repeated).
#[derive(Debug, Clone)]
pub struct Rotary {
    pub cos: Tensor<2>,
    pub sin: Tensor<2>,
}

impl Rotary {
    /// Tables for positions `start .. start + len`.
    pub fn new(theta: f64, head_dim: usize, start: usize, len: usize, device: &Device) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(len * head_dim);
        let mut sin = Vec::with_capacity(len * head_dim);
        for t in start..start + len {
            let row: Vec<f64> = (0..half)
                .map(|i| {
                    // Same f32 rounding of the inverse frequency as the reference implementations.
                    let inv_freq = (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32;
                    (t as f32 * inv_freq) as f64
                })
                .collect();
            for _ in 0..2 {
                cos.extend(row.iter().map(|a| a.cos() as f32));
                sin.extend(row.iter().map(|a| a.sin() as f32));
            }
        }
        let shape = [len, head_dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }

    /// Rotates `x` `[B, H, T, D]`: `x ⊙ cos + rotate_half(x) ⊙ sin`.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, h, t, d] = x.dims();
        let x1 = x.clone().narrow(3, 0, d / 2);
        let x2 = x.clone().narrow(3, d / 2, d / 2);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        let cos = self.cos.clone().unsqueeze::<4>().expand([b, h, t, d]);
        let sin = self.sin.clone().unsqueeze::<4>().expand([b, h, t, d]);
        x * cos + rotated * sin
    }
}

/// Keys and values of the tokens seen so far, `[B, KV heads, T, D]`, plus their padding mask.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub k: Tensor<4>,
    pub v: Tensor<4>,
    /// `[B, T]`, 1 for real tokens; `None` when no padding was ever given.
    pub mask: Option<Tensor<2>>,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.k.dims()[2]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cache with each row repeated `n` times (all copies of row 0 first).
    pub fn repeat_rows(&self, n: usize) -> Self {
        Self {
            k: repeat_rows(self.k.clone(), n),
            v: repeat_rows(self.v.clone(), n),
            mask: self.mask.clone().map(|m| repeat_rows(m, n)),
        }
    }

    /// Bytes held by this cache (f32 keys and values).
    pub fn bytes(&self) -> usize {
        2 * self.k.dims().iter().product::<usize>() * 4
    }
}

/// Repeats each row (first dimension) of `x` `n` times, keeping copies together:
/// rows `[a, b]` become `[a, a, b, b]` for `n = 2`.
pub fn repeat_rows<const D: usize>(x: Tensor<D>, n: usize) -> Tensor<D> {
    let dims = x.dims();
    let b = dims[0];
    let rows: Vec<Tensor<D>> = (0..b)
        .flat_map(|i| std::iter::repeat_n(x.clone().narrow(0, i, 1), n))
        .collect();
    Tensor::cat(rows, 0)
}

/// Causal grouped-query self-attention with rotary embeddings.
#[derive(Module, Debug)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    #[module(skip)]
    pub heads: usize,
    #[module(skip)]
    pub kv_heads: usize,
    #[module(skip)]
    pub head_dim: usize,
}

/// `[B, T, heads·D]` → `[B, heads, T, D]`.
pub fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [b, t, c] = x.dims();
    x.reshape([b, t, heads, c / heads]).swap_dims(1, 2)
}

/// `[B, heads, T, D]` → `[B, T, heads·D]`.
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [b, h, t, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, t, h * d])
}

/// Repeats each of the KV heads `group` times: `[B, KV, T, D]` → `[B, KV·group, T, D]`.
pub fn repeat_kv(x: Tensor<4>, group: usize) -> Tensor<4> {
    if group == 1 {
        return x;
    }
    let [b, kv, t, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, kv, group, t, d])
        .reshape([b, kv * group, t, d])
}

impl Attention {
    /// Attends `x` `[B, T, C]` (already normalised) to itself and to the cached tokens.
    ///
    /// `mask` is `[B, T]` (1 real, 0 padding) for the new tokens. A padded key is hidden from
    /// every query except itself, so no softmax row is empty.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rotary: &Rotary,
        mask: Option<Tensor<2>>,
        cache: Option<&mut Option<KvCache>>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let q = rotary.apply(split_heads(self.q.forward(x.clone()), self.heads));
        let mut k = rotary.apply(split_heads(self.k.forward(x.clone()), self.kv_heads));
        let mut v = split_heads(self.v.forward(x), self.kv_heads);
        let mut key_mask = mask;
        if let Some(slot) = cache {
            if let Some(prev) = slot.take() {
                let past = prev.len();
                key_mask = match (prev.mask, key_mask) {
                    (None, None) => None,
                    (p, n) => {
                        let device = k.device();
                        let p = p.unwrap_or_else(|| Tensor::ones([b, past], &device));
                        let n = n.unwrap_or_else(|| Tensor::ones([b, t], &device));
                        Some(Tensor::cat(vec![p, n], 1))
                    }
                };
                k = Tensor::cat(vec![prev.k, k], 2);
                v = Tensor::cat(vec![prev.v, v], 2);
            }
            *slot = Some(KvCache {
                k: k.clone(),
                v: v.clone(),
                mask: key_mask.clone(),
            });
        }
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        // The fused op (one graph node, grouped heads read in place) where the backend has it.
        if fused_available(&q.device()) {
            let y = causal_attention(q, k, v, key_mask, scale).expect("fused attention");
            return self.o.forward(merge_heads(y));
        }
        let group = self.heads / self.kv_heads;
        let k = repeat_kv(k, group);
        let v = repeat_kv(v, group);
        let options = AttentionModuleOptions {
            scale: Some(scale),
            softcap: None,
            is_causal: true,
        };
        let mask = key_mask.map(|m| padding_mask(m, self.heads, t));
        let y = attention(q, k, v, mask, None, options);
        self.o.forward(merge_heads(y))
    }
}

/// Boolean attention mask `[B, H, Tq, Tk]`, true where a query must not see a key: the key is
/// padding and is not the query's own position (the last `Tq` keys are the queries).
fn padding_mask(key_mask: Tensor<2>, heads: usize, tq: usize) -> Tensor<4, burn::tensor::Bool> {
    let [b, tk] = key_mask.dims();
    let device = key_mask.device();
    let offset = tk - tq;
    let own: Vec<f32> = (0..tq)
        .flat_map(|q| (0..tk).map(move |k| if k == q + offset { 1.0 } else { 0.0 }))
        .collect();
    let own = Tensor::<2>::from_data(TensorData::new(own, [tq, tk]), &device);
    let hidden = key_mask
        .neg()
        .add_scalar(1.0)
        .reshape([b, 1, 1, tk])
        .expand([b, 1, tq, tk])
        * own
            .neg()
            .add_scalar(1.0)
            .unsqueeze::<4>()
            .expand([b, 1, tq, tk]);
    hidden.greater_elem(0.5).expand([b, heads, tq, tk])
}

/// Plain softmax attention from tensor ops (the oracle for the backend's fused attention).
pub fn attention_reference(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    causal_offset: usize,
) -> Tensor<4> {
    let [_, _, tq, d] = q.dims();
    let tk = k.dims()[2];
    let device = q.device();
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .mul_scalar(1.0 / (d as f64).sqrt());
    let bias: Vec<f32> = (0..tq)
        .flat_map(|i| {
            (0..tk).map(move |j| {
                if j > i + causal_offset {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    let bias = Tensor::<2>::from_data(TensorData::new(bias, [tq, tk]), &device).unsqueeze::<4>();
    softmax(scores + bias, 3).matmul(v)
}
