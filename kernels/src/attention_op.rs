//! Fused causal attention as a Burn backend extension: the Flex (CPU) implementation calls
//! [`crate::attention_cpu`], the CubeCL one (GPUs, feature `wgpu`) `crate::attention_cube`;
//! the Autodiff implementation records one graph node (saving the inputs, the output and each
//! row's log-sum-exp) whose backward calls the fused backward.
//! Without it, autodiff builds attention from a dozen tensor ops over the full `[T, T]` score
//! matrix, forward and backward.

use crate::attention_cpu::{self, AttnDims};
use crate::backward_node::register_parent_grads;
use crate::flex_io::{contiguous_f32, flex};
use burn::backend::tensor::FloatTensor;
use burn::backend::{AutodiffBackend, Backend, Flex, TensorMetadata, backend_extension};
use burn::tensor::DType;
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::FlexTensor;

/// The op's name in error messages.
const OP: &str = "attention";

/// Causal attention with grouped key/value heads (see [`crate::attention_cpu`] for layouts
/// and which keys each query sees).
#[backend_extension(Flex, Cube: cfg(feature = "wgpu"), Autodiff)]
pub trait AttentionOps: Backend {
    /// `(o [B, H, Tq, D], lse [B, H, Tq])` for `q [B, H, Tq, D]`, `k`/`v` `[B, Hkv, Tk, D]`
    /// and `mask [B, Tk]` (1 real key, 0 padding).
    fn causal_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// `(dq, dk, dv)` given the forward's inputs, output `o`, `lse` and the output gradient.
    #[allow(clippy::too_many_arguments)]
    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        o: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        d_o: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

fn dims_of(q: &FlexTensor, k: &FlexTensor) -> AttnDims {
    let (qs, ks) = (q.shape(), k.shape());
    assert!(
        qs.num_dims() == 4 && ks.num_dims() == 4,
        "attention: q and k must be [B, heads, T, D], got {qs:?} and {ks:?}"
    );
    let [batch, heads, q_len, head_dim] = qs.dims::<4>();
    let [kb, kv_heads, k_len, kd] = ks.dims::<4>();
    assert!(
        kb == batch && kd == head_dim,
        "attention: q {qs:?} and k {ks:?} disagree on batch or head size"
    );
    let d = AttnDims {
        batch,
        heads,
        kv_heads,
        q_len,
        k_len,
        head_dim,
        kv_rows: k_len,
    };
    d.check();
    d
}

/// Rows allocated per key/value head when `t` `[B, Hkv, Tk, D]` is the first `Tk` rows (per
/// head) of a row-major `[B, Hkv, R, D]` f32 buffer — how a KV cache with room for more tokens
/// is passed — so the forward pass reads it in place instead of copying it on every decoded
/// token; `None` for any other layout (the tensor is then made contiguous).
fn rows_in_buffer(t: &FlexTensor) -> Option<usize> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let layout = t.layout();
    let [b, heads, len, d] = layout.shape().dims::<4>();
    let strides = layout.strides();
    if strides.iter().any(|&x| x < 0) || b * heads * len * d == 0 {
        return None;
    }
    let s: [usize; 4] = std::array::from_fn(|i| strides[i] as usize);
    // Strides of size-1 dimensions are free; the others must be those of [B, Hkv, R, D].
    if (d > 1 && s[3] != 1) || (len > 1 && s[2] != d) {
        return None;
    }
    let rows = if heads > 1 {
        s[1] / d
    } else if b > 1 {
        s[0] / d
    } else {
        len
    };
    let fits =
        rows >= len && (heads == 1 || s[1] == rows * d) && (b == 1 || s[0] == heads * rows * d);
    let end = layout.start_offset() + ((b * heads - 1) * rows + len) * d;
    (fits && end <= t.storage::<f32>().len()).then_some(rows)
}

/// The f32 elements from `t`'s first one on (`t` as [`rows_in_buffer`] accepted it).
fn from_start(t: &FlexTensor) -> &[f32] {
    &t.storage::<f32>()[t.layout().start_offset()..]
}

impl AttentionOps for Flex {
    fn causal_attention_forward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        mask: FlexTensor,
        scale: f32,
    ) -> (FlexTensor, FlexTensor) {
        let mut d = dims_of(&q, &k);
        let (k, v) = match (rows_in_buffer(&k), rows_in_buffer(&v)) {
            (Some(rk), Some(rv)) if rk == rv && v.shape() == k.shape() => {
                d.kv_rows = rk;
                (k, v)
            }
            _ => (contiguous_f32(k, OP, "k"), contiguous_f32(v, OP, "v")),
        };
        let q = contiguous_f32(q, OP, "q");
        let mask = contiguous_f32(mask, OP, "mask");
        let (o, lse) = attention_cpu::forward(
            d,
            q.storage(),
            from_start(&k),
            from_start(&v),
            mask.storage(),
            scale,
        );
        (
            flex(o, [d.batch, d.heads, d.q_len, d.head_dim]),
            flex(lse, [d.batch, d.heads, d.q_len]),
        )
    }

    fn causal_attention_backward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        mask: FlexTensor,
        o: FlexTensor,
        lse: FlexTensor,
        d_o: FlexTensor,
        scale: f32,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let d = dims_of(&q, &k);
        let [q, k, v, mask, o, lse, d_o] = [
            contiguous_f32(q, OP, "q"),
            contiguous_f32(k, OP, "k"),
            contiguous_f32(v, OP, "v"),
            contiguous_f32(mask, OP, "mask"),
            contiguous_f32(o, OP, "o"),
            contiguous_f32(lse, OP, "lse"),
            contiguous_f32(d_o, OP, "grad"),
        ];
        let inputs = attention_cpu::BackwardInputs {
            q: q.storage(),
            k: k.storage(),
            v: v.storage(),
            mask: mask.storage(),
            o: o.storage(),
            lse: lse.storage(),
            d_o: d_o.storage(),
        };
        let (dq, dk, dv) = attention_cpu::backward(d, inputs, scale);
        let kv = [d.batch, d.kv_heads, d.k_len, d.head_dim];
        (
            flex(dq, [d.batch, d.heads, d.q_len, d.head_dim]),
            flex(dk, kv),
            flex(dv, kv),
        )
    }
}

#[cfg(feature = "wgpu")]
impl AttentionOps for burn_cubecl::CubeBackend {
    fn causal_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        crate::attention_cube::forward(q, k, v, mask, scale)
    }

    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        o: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        d_o: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        crate::attention_cube::backward(q, k, v, mask, o, lse, d_o, scale)
    }
}

/// Backward node of the fused op; its parents are `q`, `k`, `v`.
#[derive(Debug)]
struct AttentionBackward;

impl<B: Backend + AttentionOps> Backward<B, 3> for AttentionBackward {
    /// q, k, v, mask, o, lse and the scale.
    type State = ([FloatTensor<B>; 6], f32);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        register_parent_grads::<B, _, 3>(ops, grads, |([q, k, v, mask, o, lse], scale), d_o| {
            let (dq, dk, dv) = B::causal_attention_backward(q, k, v, mask, o, lse, d_o, scale);
            [dq, dk, dv]
        });
    }
}

impl<B: Backend + AttentionOps, C: CheckpointStrategy> AttentionOps for Autodiff<B, C> {
    fn causal_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let nodes = [q.node(), k.node(), v.node()];
        let (q, k, v, mask) = (
            q.into_primitive(),
            k.into_primitive(),
            v.into_primitive(),
            mask.into_primitive(),
        );
        let prep = AttentionBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful();
        let (o, lse) =
            B::causal_attention_forward(q.clone(), k.clone(), v.clone(), mask.clone(), scale);
        let out = match prep {
            OpsKind::Tracked(prep) => {
                let state = ([q, k, v, mask, o.clone(), lse.clone()], scale);
                prep.finish(state, o)
            }
            OpsKind::UnTracked(prep) => prep.finish(o),
        };
        (out, Self::from_inner(lse))
    }

    fn causal_attention_backward(
        _q: FloatTensor<Self>,
        _k: FloatTensor<Self>,
        _v: FloatTensor<Self>,
        _mask: FloatTensor<Self>,
        _o: FloatTensor<Self>,
        _lse: FloatTensor<Self>,
        _d_o: FloatTensor<Self>,
        _scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        unimplemented!(
            "causal_attention_backward is called by the autodiff node on the inner backend, never on Autodiff itself"
        )
    }
}
