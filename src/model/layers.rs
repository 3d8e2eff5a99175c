//! The building blocks shared by the teacher and the hybrid student: linear projections (weights
//! stored `[in, out]`), RMSNorm, rotary embeddings (rotate-half, as Hugging Face), grouped-query
//! attention with an optional KV cache, and the SwiGLU MLP.

use super::config::TransformerConfig;
use super::weights::{TensorsOut, Weights};
use burn::module::{Module, Param};
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use rwkv_kernels::{attention_fused_available, causal_attention};

/// Seeded random parameters for tests and benchmarks (each layer's `init`).
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
}

/// `y = x W + b` with `W` stored `[in, out]` (the transpose of Hugging Face's `[out, in]`).
#[derive(Module, Debug)]
pub struct Linear {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    /// `weight` (Hugging Face `[out, in]`) and, with `bias`, `bias` `[out]` under `w`.
    pub fn load(w: &Weights, out: usize, inp: usize, bias: bool) -> Self {
        Self {
            weight: w.param_transposed("weight", out, inp),
            bias: bias.then(|| w.param("bias", [out])),
        }
    }

    /// Writes what [`Linear::load`] reads.
    pub fn put(&self, t: &mut TensorsOut) {
        t.put_transposed("weight", self.weight.val());
        if let Some(b) = &self.bias {
            t.put("bias", b.val());
        }
    }

    /// Uniform in ±1/√in (bias ±0.1): tests and benchmarks.
    pub fn init(rng: &mut TensorRng, out: usize, inp: usize, bias: bool) -> Self {
        let scale = 1.0 / (inp as f64).sqrt();
        Self {
            weight: rng.param([inp, out], scale),
            bias: bias.then(|| rng.param([out], 0.1)),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let rows: usize = dims[..D - 1].iter().product();
        if rows <= rwkv_kernels::FEW_ROWS_TAKEN {
            // Decoding a few sequences: see `rwkv_kernels::few_rows_matmul`.
            let flat = x.clone().reshape([rows, dims[D - 1]]);
            if let Some(y) = rwkv_kernels::few_rows_matmul(&flat, &self.weight.val(), false) {
                let mut out = dims;
                out[D - 1] = y.dims()[1];
                let y = y.reshape(out);
                return match &self.bias {
                    Some(b) => y + b.val().unsqueeze(),
                    None => y,
                };
            }
        }
        // The rows as one matrix through `rwkv_kernels::matmul` (one op on the CPU).
        let mut out = dims;
        out[D - 1] = self.d_out();
        let y =
            rwkv_kernels::matmul(x.reshape([rows, dims[D - 1]]), self.weight.val()).reshape(out);
        match &self.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        }
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
    /// `weight` `[c]` under `w`.
    pub fn load(w: &Weights, c: usize, eps: f64) -> Self {
        Self {
            weight: w.param("weight", [c]),
            eps,
        }
    }

    pub fn put(&self, t: &mut TensorsOut) {
        t.put("weight", self.weight.val());
    }

    /// Scales uniform in [0.8, 1.2]: tests and benchmarks.
    pub fn init(rng: &mut TensorRng, c: usize, eps: f64) -> Self {
        let w = Tensor::random([c], Distribution::Uniform(0.8, 1.2), &rng.device);
        Self {
            weight: Param::from_tensor(w),
            eps,
        }
    }

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
    /// `gate_proj`, `up_proj`, `down_proj` under `w`.
    pub fn load(w: &Weights, cfg: &TransformerConfig) -> Self {
        let (c, f) = (cfg.hidden_size, cfg.intermediate_size);
        Self {
            gate: Linear::load(&w.pp("gate_proj"), f, c, false),
            up: Linear::load(&w.pp("up_proj"), f, c, false),
            down: Linear::load(&w.pp("down_proj"), c, f, false),
        }
    }

    pub fn put(&self, t: &mut TensorsOut) {
        for (name, l) in [
            ("gate_proj", &self.gate),
            ("up_proj", &self.up),
            ("down_proj", &self.down),
        ] {
            l.put(&mut t.pp(name));
        }
    }

    pub fn init(rng: &mut TensorRng, cfg: &TransformerConfig) -> Self {
        let (c, f) = (cfg.hidden_size, cfg.intermediate_size);
        Self {
            gate: Linear::init(rng, f, c, false),
            up: Linear::init(rng, f, c, false),
            down: Linear::init(rng, c, f, false),
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.down.forward(rwkv_kernels::swiglu(
            self.gate.forward(x.clone()),
            self.up.forward(x),
        ))
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

/// Keys and values of the tokens seen so far, plus their padding mask, in buffers with room for
/// more tokens: a decoded token is written in place and attention reads the filled part in place,
/// so a token costs time proportional to the context, not a copy of the whole cache. A full
/// buffer grows by a quarter (at least [`KvCache::MIN_GROWTH`] tokens); [`KvCache::reserve`]
/// makes room ahead when the length of a generation is known (like `Vec`'s).
#[derive(Debug, Clone)]
pub struct KvCache {
    /// `[B, KV heads, capacity, D]`; positions `..len` are filled.
    k: Tensor<4>,
    v: Tensor<4>,
    /// `[B, capacity]`, 1 for real tokens; `None` when no padding was ever given.
    mask: Option<Tensor<2>>,
    len: usize,
}

impl KvCache {
    /// The fewest tokens a full cache grows by.
    pub const MIN_GROWTH: usize = 64;

    /// A cache holding exactly `k` and `v` `[B, KV heads, T, D]` (and their `[B, T]` mask).
    pub fn new(k: Tensor<4>, v: Tensor<4>, mask: Option<Tensor<2>>) -> Self {
        let len = k.dims()[2];
        Self { k, v, mask, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens the buffers hold room for.
    pub fn capacity(&self) -> usize {
        self.k.dims()[2]
    }

    /// The cached keys `[B, KV heads, len, D]` (a view of the buffer).
    pub fn keys(&self) -> Tensor<4> {
        self.k.clone().narrow(2, 0, self.len)
    }

    /// The cached values `[B, KV heads, len, D]` (a view of the buffer).
    pub fn values(&self) -> Tensor<4> {
        self.v.clone().narrow(2, 0, self.len)
    }

    /// The padding mask of the cached tokens, `[B, len]`.
    pub fn mask(&self) -> Option<Tensor<2>> {
        self.mask.clone().map(|m| m.narrow(1, 0, self.len))
    }

    /// Makes room for at least `additional` tokens after the filled ones (no effect when there
    /// is room already).
    pub fn reserve(&mut self, additional: usize) {
        self.grow_to(self.len + additional);
    }

    /// Grows the buffers to room for `tokens` in all (no effect when they have it).
    fn grow_to(&mut self, tokens: usize) {
        let cap = self.capacity();
        if tokens <= cap {
            return;
        }
        let grow = |x: Tensor<4>| {
            let [b, h, _, d] = x.dims();
            let room = Tensor::zeros([b, h, tokens - cap, d], &x.device());
            Tensor::cat(vec![x, room], 2)
        };
        self.k = grow(self.k.clone());
        self.v = grow(self.v.clone());
        self.mask = self.mask.take().map(|m| {
            let [b, _] = m.dims();
            let room = Tensor::ones([b, tokens - cap], &m.device());
            Tensor::cat(vec![m, room], 1)
        });
    }

    /// Appends `k`, `v` `[B, KV heads, T, D]` and their mask `[B, T]` (`None`: all real).
    pub fn append(mut self, k: Tensor<4>, v: Tensor<4>, mask: Option<Tensor<2>>) -> Self {
        let [b, h, t, d] = k.dims();
        let end = self.len + t;
        if end > self.capacity() {
            let cap = self.capacity();
            self.grow_to(end.max(cap + (cap / 4).max(Self::MIN_GROWTH)));
        }
        let Self {
            k: k_buf,
            v: v_buf,
            mask: mask_buf,
            len,
        } = self;
        let cap = k_buf.dims()[2];
        let device = k.device();
        let mask = match (mask_buf, mask) {
            (None, None) => None,
            (old, new) => {
                let old = old.unwrap_or_else(|| Tensor::ones([b, cap], &device));
                let new = new.unwrap_or_else(|| Tensor::ones([b, t], &device));
                Some(old.slice_assign([0..b, len..end], new))
            }
        };
        let rows = [0..b, 0..h, len..end, 0..d];
        // The buffers are moved, not cloned, into the writes: held by this cache alone (the
        // views given to attention are gone), they are written in place; a buffer shared with a
        // clone of the cache is copied on its first write.
        Self {
            k: k_buf.slice_assign(rows.clone(), k),
            v: v_buf.slice_assign(rows, v),
            mask,
            len: end,
        }
    }

    /// The cache with each row repeated `n` times (all copies of row 0 first), holding exactly
    /// the filled tokens.
    pub fn repeat_rows(&self, n: usize) -> Self {
        Self::new(
            repeat_rows(self.keys(), n),
            repeat_rows(self.values(), n),
            self.mask().map(|m| repeat_rows(m, n)),
        )
    }

    /// Bytes held by this cache's buffers (f32 keys and values, the room for more included).
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
    /// `q_proj`, `k_proj`, `v_proj` (biases when the config has them) and `o_proj` under `w`.
    pub fn load(w: &Weights, cfg: &TransformerConfig) -> Self {
        let (c, d) = (cfg.hidden_size, cfg.head_dim);
        let (q_out, kv_out) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
        let bias = cfg.attention_bias;
        Self {
            q: Linear::load(&w.pp("q_proj"), q_out, c, bias),
            k: Linear::load(&w.pp("k_proj"), kv_out, c, bias),
            v: Linear::load(&w.pp("v_proj"), kv_out, c, bias),
            o: Linear::load(&w.pp("o_proj"), c, q_out, false),
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: d,
        }
    }

    pub fn put(&self, t: &mut TensorsOut) {
        for (name, l) in [
            ("q_proj", &self.q),
            ("k_proj", &self.k),
            ("v_proj", &self.v),
            ("o_proj", &self.o),
        ] {
            l.put(&mut t.pp(name));
        }
    }

    pub fn init(rng: &mut TensorRng, cfg: &TransformerConfig) -> Self {
        let (c, d) = (cfg.hidden_size, cfg.head_dim);
        let (q_out, kv_out) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
        Self {
            q: Linear::init(rng, q_out, c, cfg.attention_bias),
            k: Linear::init(rng, kv_out, c, cfg.attention_bias),
            v: Linear::init(rng, kv_out, c, cfg.attention_bias),
            o: Linear::init(rng, c, q_out, false),
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: d,
        }
    }

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
        let [_, t, _] = x.dims();
        let q = rotary.apply(split_heads(self.q.forward(x.clone()), self.heads));
        let mut k = rotary.apply(split_heads(self.k.forward(x.clone()), self.kv_heads));
        let mut v = split_heads(self.v.forward(x), self.kv_heads);
        let mut key_mask = mask;
        if let Some(slot) = cache {
            *slot = Some(match slot.take() {
                Some(c) => c.append(k, v, key_mask),
                None => KvCache::new(k, v, key_mask),
            });
            let c = slot.as_ref().expect("the cache was just filled");
            (k, v, key_mask) = (c.keys(), c.values(), c.mask());
        }
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        // The fused op (one graph node, grouped heads read in place) where the backend has it.
        if attention_fused_available(&q.device(), self.head_dim) {
            let y = causal_attention(q, k, v, key_mask, scale).expect("fused attention");
            return self.o.forward(merge_heads(y));
        }
        let group = self.heads / self.kv_heads;
        let k = repeat_kv(k, group);
        let v = repeat_kv(v, group);
        let y = match key_mask {
            // Backends' own attention ops disagree on mask conventions (LibTorch's SDPA reads
            // `true` as "attend", and aligns a causal mask top-left when Tq < Tk): with
            // padding, or a query shorter than the keys (decoding after a cache), use tensor
            // ops whose meaning is ours.
            Some(m) => masked_attention(q, k, v, Some(m), scale),
            None if k.dims()[2] != t => masked_attention(q, k, v, None, scale),
            None => {
                let options = AttentionModuleOptions {
                    scale: Some(scale),
                    softcap: None,
                    is_causal: true,
                };
                attention(q, k, v, None, None, options)
            }
        };
        self.o.forward(merge_heads(y))
    }
}

/// Causal softmax attention from tensor ops (what backends without the fused op use, and its
/// oracle in the tests): `q [B, H, Tq, D]` are the last `Tq` of the
/// `Tk` positions of `k`/`v` `[B, H, Tk, D]`; `key_mask [B, Tk]` (1 real, 0 padding) hides a
/// padded key from every query but its own.
pub fn masked_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    key_mask: Option<Tensor<2>>,
    scale: f64,
) -> Tensor<4> {
    let [b, h, tq, _] = q.dims();
    let tk = k.dims()[2];
    let device = q.device();
    let offset = tk - tq;
    let causal: Vec<f32> = (0..tq)
        .flat_map(|i| {
            (0..tk).map(move |j| {
                if j > i + offset {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    let causal = Tensor::<2>::from_data(TensorData::new(causal, [tq, tk]), &device);
    let mut scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale) + causal.unsqueeze::<4>();
    if let Some(m) = key_mask {
        scores = scores.mask_fill(
            padding_mask(m, h, tq).expand([b, h, tq, tk]),
            f32::NEG_INFINITY,
        );
    }
    softmax(scores, 3).matmul(v)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::testing::assert_round_trip;

    fn config(bias: bool) -> TransformerConfig {
        TransformerConfig::from_json(serde_json::json!({
            "model_type": if bias { "qwen2" } else { "llama" }, "vocab_size": 16,
            "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1
        }))
        .unwrap()
    }

    /// The tensor-op attention other backends use equals the fused op, with padding and with
    /// queries after cached keys.
    #[test]
    fn masked_attention_equals_the_fused_op() {
        let device = crate::testing::device();
        device.seed(9);
        let r =
            |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        for (tq, tk) in [(5, 5), (1, 6), (3, 7)] {
            let (q, k, v) = (r([2, 2, tq, 4]), r([2, 2, tk, 4]), r([2, 2, tk, 4]));
            let mut m = vec![1.0f32; 2 * tk];
            m[tk] = 0.0; // left padding in the second sequence
            m[tk + 1] = 0.0;
            let mask = Tensor::<2>::from_data(TensorData::new(m, [2, tk]), &device);
            for key_mask in [None, Some(mask)] {
                let want = crate::model::weights::to_vec(
                    causal_attention(q.clone(), k.clone(), v.clone(), key_mask.clone(), 0.5)
                        .unwrap(),
                );
                let got = crate::model::weights::to_vec(masked_attention(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    key_mask,
                    0.5,
                ));
                let err = want
                    .iter()
                    .zip(&got)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(err < 1e-5, "tq {tq} tk {tk}: {err}");
            }
        }
    }

    #[test]
    fn every_layer_loads_what_it_puts() {
        let mut rng = TensorRng::new(3, &crate::testing::device());
        for bias in [false, true] {
            let l = Linear::init(&mut rng, 5, 3, bias);
            assert_round_trip(Linear::put, &l, |w| Linear::load(w, 5, 3, bias));
        }
        let n = RmsNorm::init(&mut rng, 8, 1e-6);
        assert_round_trip(RmsNorm::put, &n, |w| RmsNorm::load(w, 8, 1e-6));
        for bias in [false, true] {
            let cfg = config(bias);
            let a = Attention::init(&mut rng, &cfg);
            assert_round_trip(Attention::put, &a, |w| Attention::load(w, &cfg));
            let m = Mlp::init(&mut rng, &cfg);
            assert_round_trip(Mlp::put, &m, |w| Mlp::load(w, &cfg));
        }
    }

    #[test]
    fn hugging_face_names_and_layouts() {
        let mut rng = TensorRng::new(4, &crate::testing::device());
        let a = Attention::init(&mut rng, &config(true));
        let (_dir, reader, out) =
            crate::model::weights::testing::written(|t| a.put(&mut t.pp("self_attn")));
        // `[out, in]` as Hugging Face stores them; biases only on q/k/v.
        assert_eq!(reader.shape("m.self_attn.q_proj.weight"), Some(&[8, 8][..]));
        assert_eq!(reader.shape("m.self_attn.k_proj.weight"), Some(&[4, 8][..]));
        assert!(out.contains_key("m.self_attn.v_proj.bias"));
        assert!(!out.contains_key("m.self_attn.o_proj.bias"));
    }
}
