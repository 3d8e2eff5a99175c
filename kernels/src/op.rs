//! The fused WKV-7 op as a Burn backend extension: the Flex (CPU) implementation calls
//! [`crate::cpu`] or, for training passes over longer sequences, [`crate::chunked`]; the CubeCL
//! one (GPUs, with the `wgpu` feature) `crate::cube`; the Autodiff implementation records one
//! graph node whose backward calls the fused backward. Backends without an implementation use
//! [`crate::reference`] (see [`crate::wkv7`]).

use crate::backward_node::register_parent_grads;
use crate::cpu::{self, Dims, Inputs};
use crate::flex_io::{contiguous_f32, flex};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{AutodiffBackend, Backend, Flex, TensorMetadata, backend_extension};
use burn::tensor::Shape;
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::FlexTensor;

/// The op's name in error messages.
const OP: &str = "wkv7";

/// Sequences from this length run on the CPU in the chunked (matrix) form when the forward
/// saves for a backward: that form's backward is about 1.2× faster than the per-token kernel's
/// from 32 tokens on, its forward about a tenth slower, and it saves less (see
/// `kernels/examples/cpu_kernel_time`). Forwards without a backward (generation, evaluation)
/// and shorter sequences use the per-token kernel, whose forward alone is faster.
pub const CHUNKED_MIN_SEQ: usize = 2 * cpu::CHUNK;

/// Whether a CPU pass over `d` uses [`crate::chunked`] (a backward always follows a saving
/// forward of the same dimensions, so both agree on the form and its saved layout).
fn chunked_form(d: Dims, save: bool) -> bool {
    save && d.seq >= CHUNKED_MIN_SEQ
}

/// Fused WKV-7 recurrence (see the crate docs for the math and layouts). The ops take one
/// parameter per tensor (hence the `too_many_arguments` allows): `backend_extension` generates
/// the backend dispatch from the tensor parameters of these signatures.
#[backend_extension(Flex, Cube: cfg(feature = "wgpu"), Autodiff)]
pub trait Wkv7Ops: Backend {
    /// Returns `(y [B,T,H,N], final state [B,H,N,N], saved states)`; `saved` is empty unless
    /// `save` is set. `mask` is `[B,T]` (1 keep, 0 skip); `s0` is `[B,H,N,N]`.
    #[allow(clippy::too_many_arguments)]
    fn wkv7_forward(
        r: FloatTensor<Self>,
        w: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        s0: FloatTensor<Self>,
        save: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients `(dr, dw, dk, dv, da, db, ds0)` given `dy` `[B,T,H,N]` and `ds` `[B,H,N,N]`.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn wkv7_backward(
        r: FloatTensor<Self>,
        w: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        saved: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        ds: FloatTensor<Self>,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );
}

fn dims_of(r: &FlexTensor) -> Dims {
    let s = r.shape();
    assert_eq!(
        s.num_dims(),
        4,
        "wkv7: inputs must be [B, T, H, N], got {:?}",
        s.dims::<4>()
    );
    let [batch, seq, heads, head_size] = s.dims::<4>();
    Dims {
        batch,
        seq,
        heads,
        head_size,
    }
}

/// The kernel's per-token inputs and mask, held contiguous so they can be borrowed as slices.
struct Loaded {
    d: Dims,
    t: [FlexTensor; 7],
}

impl Loaded {
    /// `[r, w, k, v, a, b, mask]`.
    fn new([r, w, k, v, a, b, mask]: [FlexTensor; 7]) -> Self {
        let d = dims_of(&r);
        let t = [
            contiguous_f32(r, OP, "r"),
            contiguous_f32(w, OP, "w"),
            contiguous_f32(k, OP, "k"),
            contiguous_f32(v, OP, "v"),
            contiguous_f32(a, OP, "a"),
            contiguous_f32(b, OP, "b"),
            contiguous_f32(mask, OP, "mask"),
        ];
        Loaded { d, t }
    }

    fn inputs(&self) -> Inputs<'_> {
        let [r, w, k, v, a, b, mask] = &self.t;
        Inputs {
            r: r.storage(),
            w: w.storage(),
            k: k.storage(),
            v: v.storage(),
            a: a.storage(),
            b: b.storage(),
            mask: mask.storage(),
        }
    }
}

impl Wkv7Ops for Flex {
    fn wkv7_forward(
        r: FlexTensor,
        w: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        a: FlexTensor,
        b: FlexTensor,
        mask: FlexTensor,
        s0: FlexTensor,
        save: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let x = Loaded::new([r, w, k, v, a, b, mask]);
        let mut s0 = contiguous_f32(s0, OP, "state");
        let d = x.d;
        if d.seq == 1 && !save {
            // Decoding: the state is updated in place (copied first only if it is shared).
            let y = cpu::step(d, x.inputs(), s0.storage_mut());
            return (
                flex(y, [d.batch, 1, d.heads, d.head_size]),
                s0,
                flex(Vec::new(), [0]),
            );
        }
        let (y, s, saved) = if chunked_form(d, save) {
            crate::chunked::forward(d, x.inputs(), s0.storage(), save)
        } else {
            cpu::forward(d, x.inputs(), s0.storage(), save)
        };
        let n = d.head_size;
        let saved_len = saved.len();
        (
            flex(y, [d.batch, d.seq, d.heads, n]),
            flex(s, [d.batch, d.heads, n, n]),
            flex(saved, [saved_len]),
        )
    }

    fn wkv7_backward(
        r: FlexTensor,
        w: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        a: FlexTensor,
        b: FlexTensor,
        mask: FlexTensor,
        saved: FlexTensor,
        dy: FlexTensor,
        ds: FlexTensor,
    ) -> (
        FlexTensor,
        FlexTensor,
        FlexTensor,
        FlexTensor,
        FlexTensor,
        FlexTensor,
        FlexTensor,
    ) {
        let x = Loaded::new([r, w, k, v, a, b, mask]);
        let (saved, dy, ds) = (
            contiguous_f32(saved, OP, "saved"),
            contiguous_f32(dy, OP, "dy"),
            contiguous_f32(ds, OP, "ds"),
        );
        let d = x.d;
        let backward = if chunked_form(d, true) {
            crate::chunked::backward
        } else {
            cpu::backward
        };
        let g = backward(d, x.inputs(), saved.storage(), dy.storage(), ds.storage());
        let seq = [d.batch, d.seq, d.heads, d.head_size];
        (
            flex(g.r, seq),
            flex(g.w, seq),
            flex(g.k, seq),
            flex(g.v, seq),
            flex(g.a, seq),
            flex(g.b, seq),
            flex(g.s0, [d.batch, d.heads, d.head_size, d.head_size]),
        )
    }
}

#[cfg(feature = "wgpu")]
impl Wkv7Ops for burn_cubecl::CubeBackend {
    fn wkv7_forward(
        r: FloatTensor<Self>,
        w: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        s0: FloatTensor<Self>,
        save: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        crate::cube::forward(r, w, k, v, a, b, mask, s0, save)
    }

    fn wkv7_backward(
        r: FloatTensor<Self>,
        w: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        saved: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        ds: FloatTensor<Self>,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        crate::cube::backward(r, w, k, v, a, b, mask, saved, dy, ds)
    }
}

/// Backward node of the fused op. Its single output is `[y.flatten(), state.flatten()]`
/// (autodiff nodes have one output; the wrapper slices the two apart).
#[derive(Debug)]
struct Wkv7Backward;

impl<B: Backend + Wkv7Ops> Backward<B, 7> for Wkv7Backward {
    /// r, w, k, v, a, b, mask, saved states, and the sizes of y and the state.
    type State = (Vec<FloatTensor<B>>, Shape, Shape);

    fn backward(
        self,
        ops: Ops<Self::State, 7>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        register_parent_grads::<B, _, 7>(ops, grads, |(tensors, y_shape, s_shape), grad| {
            let y_len = y_shape.num_elements();
            let s_len = s_shape.num_elements();
            let dy = B::float_reshape(
                B::float_slice(grad.clone(), &[burn::tensor::Slice::from(0..y_len)]),
                y_shape,
            );
            let ds = B::float_reshape(
                B::float_slice(grad, &[burn::tensor::Slice::from(y_len..y_len + s_len)]),
                s_shape,
            );
            let mut it = tensors.into_iter();
            let mut next = || it.next().expect("saved tensor");
            let (r, w, k, v, a, b, mask, saved) = (
                next(),
                next(),
                next(),
                next(),
                next(),
                next(),
                next(),
                next(),
            );
            let (dr, dw, dk, dv, da, db, ds0) =
                B::wkv7_backward(r, w, k, v, a, b, mask, saved, dy, ds);
            [dr, dw, dk, dv, da, db, ds0]
        });
    }
}

impl<B: Backend + Wkv7Ops, C: CheckpointStrategy> Wkv7Ops for Autodiff<B, C> {
    fn wkv7_forward(
        r: FloatTensor<Self>,
        w: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        s0: FloatTensor<Self>,
        _save: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let nodes = [
            r.node(),
            w.node(),
            k.node(),
            v.node(),
            a.node(),
            b.node(),
            s0.node(),
        ];
        let (r, w, k, v, a, b) = (
            r.into_primitive(),
            w.into_primitive(),
            k.into_primitive(),
            v.into_primitive(),
            a.into_primitive(),
            b.into_primitive(),
        );
        let (mask, s0) = (mask.into_primitive(), s0.into_primitive());
        let prep = Wkv7Backward.prepare::<C>(nodes).compute_bound().stateful();
        let tracked = matches!(prep, OpsKind::Tracked(_));
        let (y, s, saved) = B::wkv7_forward(
            r.clone(),
            w.clone(),
            k.clone(),
            v.clone(),
            a.clone(),
            b.clone(),
            mask.clone(),
            s0,
            tracked,
        );
        let (y_shape, s_shape) = (y.shape(), s.shape());
        let y_len = y_shape.num_elements();
        let s_len = s_shape.num_elements();
        let joined = B::float_cat(
            vec![
                B::float_reshape(y, Shape::new([y_len])),
                B::float_reshape(s, Shape::new([s_len])),
            ],
            0,
        );
        let out = match prep {
            OpsKind::Tracked(prep) => {
                let state = (
                    vec![r, w, k, v, a, b, mask, saved.clone()],
                    y_shape.clone(),
                    s_shape.clone(),
                );
                prep.finish(state, joined)
            }
            OpsKind::UnTracked(prep) => prep.finish(joined),
        };
        let y = Self::float_reshape(
            Self::float_slice(out.clone(), &[burn::tensor::Slice::from(0..y_len)]),
            y_shape,
        );
        let s = Self::float_reshape(
            Self::float_slice(out, &[burn::tensor::Slice::from(y_len..y_len + s_len)]),
            s_shape,
        );
        (y, s, Self::from_inner(saved))
    }

    fn wkv7_backward(
        _r: FloatTensor<Self>,
        _w: FloatTensor<Self>,
        _k: FloatTensor<Self>,
        _v: FloatTensor<Self>,
        _a: FloatTensor<Self>,
        _b: FloatTensor<Self>,
        _mask: FloatTensor<Self>,
        _saved: FloatTensor<Self>,
        _dy: FloatTensor<Self>,
        _ds: FloatTensor<Self>,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        unimplemented!(
            "wkv7_backward is called by the autodiff node on the inner backend, never on Autodiff itself"
        )
    }
}
