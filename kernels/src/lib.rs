//! Fused RWKV-7 (WKV-7) recurrence and causal attention for Burn.
//!
//! Per head, with state `S ∈ R^{N×N}` (f32), decay factor `w ∈ (0,1)^N`, removal vector
//! `α = −kk` and replacement vector `β = kk⊙a`:
//!
//! ```text
//! S_t = S_{t−1}·(diag(w_t) + α_t β_tᵀ) + v_t k_tᵀ,     y_t = S_t r_t
//! ```
//!
//! - [`reference`]: the per-token loop in Burn tensor ops — the oracle;
//! - [`cpu`]: the same math on slices, parallel over (batch, head), with its own backward;
//! - `cube` (feature `wgpu`): the same recurrence as CubeCL kernels for Burn's GPU backends;
//! - [`op`]: the Burn backend extension (Flex, Cube, Autodiff) that makes the kernels one
//!   graph node;
//! - [`wkv7`], [`wkv7_step`]: the functions models call.
//!
//! The attention layers kept from the teacher get the same treatment: [`attention_cpu`]
//! (causal softmax attention with grouped key/value heads, forward and backward),
//! [`attention_op`] (one graph node), [`causal_attention`] (the function models call; its
//! oracle is Burn's own attention built from tensor ops).
//!
//! And the SwiGLU gate of every MLP: [`activation`] (on slices, with a vectorised `exp`),
//! [`activation_op`] (one graph node), [`swiglu`] (the function models call; its oracle is
//! Burn's `silu(g) * u`). And the distillation loss's forward KL over the vocabulary: [`kl`]
//! (row by row, no vocabulary-sized temporaries), [`kl_op`] (one graph node), [`forward_kl`].
//! And the time mixer's element-wise stages around the recurrence — the token shift, the decay,
//! and GroupNorm with the bonus and the gate: [`mixer`] (on slices), [`mixer_op`] (one graph
//! node each), [`token_mix`], [`decay`], [`mixer_output`] (their oracles: the tensor ops they
//! replace, [`mixer_output_ops`] and the tests' own). And the dense layers' product,
//! [`matmul`] ([`matmul_op`]: the backend's `gemm`, minus its output buffer's extra copy).

pub mod activation;
pub mod activation_op;
pub mod attention_cpu;
#[cfg(feature = "wgpu")]
pub mod attention_cube;
pub mod attention_op;
mod backward_node;
pub mod chunked;
pub mod cpu;
#[cfg(feature = "wgpu")]
pub mod cube;
pub mod few_rows;
pub mod few_rows_op;
mod flex_io;
mod gemm_call;
pub mod kl;
pub mod kl_op;
pub mod matmul_op;
pub mod mixer;
pub mod mixer_op;
pub mod op;
pub mod reference;

use activation_op::SwigluOps;
use attention_op::AttentionOps;
use few_rows_op::FewRowsOps;
use kl_op::KlOps;
use matmul_op::MatmulOps;
use mixer_op::MixerOps;

use burn::tensor::Tensor;
use op::Wkv7Ops;

/// Inputs of the recurrence, each `[B, T, H, N]`.
#[derive(Debug, Clone)]
pub struct Wkv7Input {
    pub r: Tensor<4>,
    /// Decay factor in (0, 1): `exp(-exp(w_raw))`.
    pub w: Tensor<4>,
    pub k: Tensor<4>,
    pub v: Tensor<4>,
    /// α = −kk (removal key).
    pub a: Tensor<4>,
    /// β = kk ⊙ a (replacement weights).
    pub b: Tensor<4>,
}

/// The removal key and in-context terms of each head from raw keys `kk` and rates `icl`
/// (`[.., N]` rows): `α = −k̂`, `β = k̂ ⊙ icl` with `k̂` the row normalised to unit length — the
/// inputs a real layer gives [`wkv7`], for tests and benchmarks that make their own.
pub fn removal_terms(kk: &[f32], icl: &[f32], n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut a = vec![0.0; kk.len()];
    let mut b = vec![0.0; kk.len()];
    for (i, head) in kk.chunks(n).enumerate() {
        let norm = head.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
        for j in 0..n {
            let kkj = head[j] / norm;
            a[i * n + j] = -kkj;
            b[i * n + j] = kkj * icl[i * n + j];
        }
    }
    (a, b)
}

/// Which implementation [`wkv7`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wkv7Impl {
    /// The fused kernel where the backend has one (Flex, with or without autodiff).
    #[default]
    Fused,
    /// The per-token tensor-op loop.
    Reference,
}

/// Runs the recurrence over a sequence.
///
/// # Shapes
/// - inputs: `[B, T, H, N]`
/// - `mask`: `[B, T]`, 1 for tokens to process, 0 for tokens to skip (state unchanged, output 0);
///   `None` processes every token
/// - `state`: initial `[B, H, N, N]`; `None` is zero
/// - returns `(y [B, T, H, N], final state [B, H, N, N])`
pub fn wkv7(
    x: Wkv7Input,
    mask: Option<Tensor<2>>,
    state: Option<Tensor<4>>,
    imp: Wkv7Impl,
) -> (Tensor<4>, Tensor<4>) {
    let [batch, seq, heads, n] = x.r.dims();
    let device = x.r.device();
    let mask = mask.unwrap_or_else(|| Tensor::ones([batch, seq], &device));
    let state = state.unwrap_or_else(|| Tensor::zeros([batch, heads, n, n], &device));
    if imp == Wkv7Impl::Reference || !wkv7_fused_available(&device, n) {
        return reference::wkv7(x, mask, state);
    }
    let (y, s, _) = <burn::backend::Dispatch as Wkv7Ops>::wkv7_forward(
        x.r.into_dispatch(),
        x.w.into_dispatch(),
        x.k.into_dispatch(),
        x.v.into_dispatch(),
        x.a.into_dispatch(),
        x.b.into_dispatch(),
        mask.into_dispatch(),
        state.into_dispatch(),
        false,
    );
    (Tensor::from_dispatch(y), Tensor::from_dispatch(s))
}

/// One token for generation: inputs `[B, H, N]`, state `[B, H, N, N]`; returns `(y, new state)`.
#[allow(clippy::too_many_arguments)] // the six inputs, the state and the implementation
pub fn wkv7_step(
    r: Tensor<3>,
    w: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    a: Tensor<3>,
    b: Tensor<3>,
    state: Tensor<4>,
    imp: Wkv7Impl,
) -> (Tensor<3>, Tensor<4>) {
    let [batch, heads, n] = r.dims();
    let lift = |t: Tensor<3>| t.reshape([batch, 1, heads, n]);
    let x = Wkv7Input {
        r: lift(r),
        w: lift(w),
        k: lift(k),
        v: lift(v),
        a: lift(a),
        b: lift(b),
    };
    let (y, s) = wkv7(x, None, Some(state), imp);
    (y.reshape([batch, heads, n]), s)
}

/// Whether this device is the CPU backend, Flex (with or without autodiff), where every fused
/// op runs.
pub fn fused_available(device: &burn::tensor::Device) -> bool {
    matches!(
        device.clone().without_autodiff().as_dispatch(),
        burn::backend::DispatchDevice::Flex(_)
    )
}

/// Whether this device is a CubeCL GPU the kernels are compiled for (feature `wgpu`).
#[cfg(feature = "wgpu")]
fn on_cube(device: &burn::tensor::Device) -> bool {
    matches!(
        device.clone().without_autodiff().as_dispatch(),
        burn::backend::DispatchDevice::Cube(_)
    )
}

/// Whether [`causal_attention`] runs as one fused op on this device for head size `d`: on the
/// CPU, and on a CubeCL GPU up to `attention_cube::MAX_HEAD_DIM`.
pub fn attention_fused_available(device: &burn::tensor::Device, d: usize) -> bool {
    #[cfg(feature = "wgpu")]
    if on_cube(device) {
        return d <= attention_cube::MAX_HEAD_DIM;
    }
    let _ = d;
    fused_available(device)
}

/// Whether the fused WKV-7 op runs on this device for head size `n`: on the CPU for every
/// compiled head size, on a CubeCL GPU (feature `wgpu`) up to `cube::MAX_HEAD_SIZE`.
pub fn wkv7_fused_available(device: &burn::tensor::Device, n: usize) -> bool {
    #[cfg(feature = "wgpu")]
    if on_cube(device) {
        return n <= cube::MAX_HEAD_SIZE;
    }
    fused_available(device) && cpu::HEAD_SIZES.contains(&n)
}

/// Causal softmax attention: `q [B, H, Tq, D]`, `k`/`v` `[B, Hkv, Tk, D]` with `H` a multiple
/// of `Hkv` (grouped heads are not repeated), `key_mask [B, Tk]` (1 real, 0 padding; `None`:
/// all real). The queries are the last `Tq` positions; a padded key is hidden from every query
/// but its own. Returns `[B, H, Tq, D]`.
///
/// The fused op runs where [`attention_fused_available`] says; elsewhere, `None`: the caller
/// uses its tensor-op path.
pub fn causal_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    key_mask: Option<Tensor<2>>,
    scale: f64,
) -> Option<Tensor<4>> {
    let device = q.device();
    let [batch, _, _, head_dim] = q.dims();
    if !attention_fused_available(&device, head_dim) {
        return None;
    }
    let k_len = k.dims()[2];
    let mask = key_mask.unwrap_or_else(|| Tensor::ones([batch, k_len], &device));
    let (o, _) = <burn::backend::Dispatch as AttentionOps>::causal_attention_forward(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        mask.into_dispatch(),
        scale as f32,
    );
    Some(Tensor::from_dispatch(o))
}

/// `silu(g) ⊙ u` for `g` and `u` of one shape: one fused op (with its own backward) on the
/// CPU backend, Burn's `silu(g) * u` elsewhere.
pub fn swiglu<const D: usize>(g: Tensor<D>, u: Tensor<D>) -> Tensor<D> {
    if !fused_available(&g.device()) {
        return burn::tensor::activation::silu(g) * u;
    }
    Tensor::from_dispatch(<burn::backend::Dispatch as SwigluOps>::swiglu_forward(
        g.into_dispatch(),
        u.into_dispatch(),
    ))
}

/// `x [M, K] · w [K, N]`: one op on the CPU backend for f32 (written straight into the
/// result's buffer, with its own backward; see [`matmul_op`]), the backend's `matmul` elsewhere.
pub fn matmul(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    let f32s = x.dtype() == burn::tensor::DType::F32 && w.dtype() == burn::tensor::DType::F32;
    if !(f32s && fused_available(&x.device()) && fused_available(&w.device())) {
        return x.matmul(w);
    }
    Tensor::from_dispatch(<burn::backend::Dispatch as MatmulOps>::matmul_forward(
        x.into_dispatch(),
        w.into_dispatch(),
    ))
}

/// The time mixer's token shift for one mix: `x + (prev − x)·μ` with `x [B, T, C]`, `prev`
/// the previous token's row (`shift [B, C]` before each sequence's first), `mu [C]`. One fused
/// op (with its own backward) on the CPU backend, [`token_mix_ops`] elsewhere.
pub fn token_mix(x: Tensor<3>, shift: Tensor<2>, mu: Tensor<1>) -> Tensor<3> {
    if !fused_available(&x.device()) {
        return token_mix_ops(x, shift, mu);
    }
    Tensor::from_dispatch(<burn::backend::Dispatch as MixerOps>::token_mix_forward(
        x.into_dispatch(),
        shift.into_dispatch(),
        mu.into_dispatch(),
    ))
}

/// [`token_mix`] in tensor ops: the form on other backends and the fused op's oracle.
pub fn token_mix_ops(x: Tensor<3>, shift: Tensor<2>, mu: Tensor<1>) -> Tensor<3> {
    let [b, t, c] = x.dims();
    let prev = if t > 1 {
        Tensor::cat(
            vec![shift.unsqueeze_dim(1), x.clone().narrow(1, 0, t - 1)],
            1,
        )
    } else {
        shift.reshape([b, 1, c])
    };
    x.clone() + (prev - x) * mu.unsqueeze::<3>()
}

/// The RWKV-7 decay `w = exp(−exp(ω))`, `ω = −softplus(−(z + w0)) − 0.5`, for `z [B, T, C]`
/// and `w0 [C]`: `w ∈ (e^{−e^{−1/2}}, 1) ≈ (0.545, 1)`. One fused op (with its own backward) on
/// the CPU backend, [`decay_ops`] elsewhere.
pub fn decay(z: Tensor<3>, w0: Tensor<1>) -> Tensor<3> {
    if !fused_available(&z.device()) {
        return decay_ops(z, w0);
    }
    Tensor::from_dispatch(<burn::backend::Dispatch as MixerOps>::decay_forward(
        z.into_dispatch(),
        w0.into_dispatch(),
    ))
}

/// [`decay`] in tensor ops, the specification's formula: the form on other backends and the
/// fused op's oracle.
pub fn decay_ops(z: Tensor<3>, w0: Tensor<1>) -> Tensor<3> {
    let u = w0.unsqueeze::<3>() + z;
    let omega = burn::tensor::activation::softplus(u.neg(), 1.0).neg() - 0.5;
    omega.exp().neg().exp()
}

/// The inputs of the time mixer's output stage ([`mixer_output`]).
#[derive(Debug, Clone)]
pub struct MixerOutput {
    /// The recurrence's output `[B, T, H, N]`.
    pub y: Tensor<4>,
    /// Receptance, key and value `[B, T, C]` as the recurrence took them.
    pub r: Tensor<3>,
    pub k: Tensor<3>,
    pub v: Tensor<3>,
    /// The bonus weights `[H, N]`.
    pub r_k: Tensor<2>,
    /// Per-head GroupNorm's weight and bias `[C]`, when the layer has one.
    pub group_norm: Option<(Tensor<1>, Tensor<1>)>,
    /// The gate `[B, T, C]`, when the layer has one.
    pub gate: Option<Tensor<3>>,
}

/// The time mixer's output stage, `[B, T, C]`: per head, GroupNorm of `y` (ε = `eps`; when the
/// layer has one), plus the bonus `(Σ_N r·k·r_k)·v`, times the gate (when there is one). One
/// fused op (with its own backward) on the CPU backend when the layer has both GroupNorm and
/// a gate; [`mixer_output_ops`] otherwise.
pub fn mixer_output(x: MixerOutput, eps: f64) -> Tensor<3> {
    if !fused_available(&x.y.device()) {
        return mixer_output_ops(x, eps);
    }
    let MixerOutput {
        y,
        r,
        k,
        v,
        r_k,
        group_norm: Some((lw, lb)),
        gate: Some(g),
    } = x
    else {
        return mixer_output_ops(x, eps);
    };
    Tensor::from_dispatch(<burn::backend::Dispatch as MixerOps>::mixer_output_forward(
        y.into_dispatch(),
        r.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        g.into_dispatch(),
        r_k.into_dispatch(),
        lw.into_dispatch(),
        lb.into_dispatch(),
        eps as f32,
    ))
}

/// [`mixer_output`] in tensor ops: the form on other backends and the fused op's oracle.
pub fn mixer_output_ops(x: MixerOutput, eps: f64) -> Tensor<3> {
    let [b, t, h, n] = x.y.dims();
    let c = h * n;
    let heads = |z: Tensor<3>| z.reshape([b, t, h, n]);
    let mut y = x.y;
    if let Some((lw, lb)) = x.group_norm {
        let mean = y.clone().mean_dim(3);
        let centered = y - mean;
        let var = centered.clone().square().mean_dim(3);
        y = (centered / var.add_scalar(eps).sqrt())
            .reshape([b, t, c])
            .mul(lw.unsqueeze::<3>())
            .add(lb.unsqueeze::<3>())
            .reshape([b, t, h, n]);
    }
    let bonus = (heads(x.r) * heads(x.k) * x.r_k.unsqueeze::<4>()).sum_dim(3) * heads(x.v);
    let y = (y + bonus).reshape([b, t, c]);
    match x.gate {
        Some(g) => y * g,
        None => y,
    }
}

/// `KL(softmax(t/τ) ‖ softmax(s/τ))` of each position of teacher and student logits
/// `[B, T, V]` (the same vocabulary), as `[B, T]`, differentiable in the student's logits: one
/// fused op on the CPU backend. `None` where it does not run — another backend, or teacher
/// logits that require a gradient (the op treats them as constants) — and the caller builds
/// the loss from tensor ops.
pub fn forward_kl(t: &Tensor<3>, s: &Tensor<3>, tau: f64) -> Option<Tensor<2>> {
    if !fused_available(&s.device()) || t.is_require_grad() || t.dims() != s.dims() {
        return None;
    }
    let (kl, _) = <burn::backend::Dispatch as KlOps>::forward_kl(
        t.clone().into_dispatch(),
        s.clone().into_dispatch(),
        tau as f32,
    );
    Some(Tensor::from_dispatch(kl))
}

/// Most rows [`few_rows_matmul`] takes: from 9 rows on the backend's GEMM was as fast or
/// faster (the `few_rows_time` example).
pub const FEW_ROWS_TAKEN: usize = 8;

/// `x [M, K] · w` (`w [K, N]`), or `x · wᵀ` when `transposed` (`w [N, K]`), by
/// [`few_rows`] where that measured faster than the backend's matmul (the `few_rows_time`
/// example, run inside the thread pool as decoding is): on the CPU backend without autodiff
/// (decoding, not training), for one row of `x · w`, 2 to [`FEW_ROWS_TAKEN`] rows of `x · w`
/// with at least 256 columns (narrower, the backend's was faster: its strips keep both cores
/// busy), and 2 to [`FEW_ROWS_TAKEN`] rows of `x · wᵀ` (for one row, the tied output head, the
/// backend's matrix–vector product reads faster). `None`: the caller multiplies.
pub fn few_rows_matmul(x: &Tensor<2>, w: &Tensor<2>, transposed: bool) -> Option<Tensor<2>> {
    let m = x.dims()[0];
    let n = w.dims()[if transposed { 0 } else { 1 }];
    let plain_cpu =
        |d: burn::tensor::Device| matches!(d.as_dispatch(), burn::backend::DispatchDevice::Flex(_));
    let taken = if transposed {
        (2..=FEW_ROWS_TAKEN).contains(&m)
    } else {
        m == 1 || ((2..=FEW_ROWS_TAKEN).contains(&m) && n >= 256)
    };
    if !taken || !plain_cpu(x.device()) || !plain_cpu(w.device()) {
        return None;
    }
    let y = <burn::backend::Dispatch as FewRowsOps>::few_rows_matmul(
        x.clone().into_dispatch(),
        w.clone().into_dispatch(),
        transposed,
    );
    Some(Tensor::from_dispatch(y))
}
