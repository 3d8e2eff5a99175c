//! [`crate::mixer`]'s token shift, decay and output stage as a Burn backend extension for the
//! CPU backend (Flex), with and without autodiff: each one graph node with its own backward, in
//! place of a chain of full-size tensor ops (the token shift's concatenation, difference,
//! product and sum; the decay's softplus, negations and two exponentials; GroupNorm's means,
//! differences and divisions, the bonus and the gate) and their backward nodes.

use crate::backward_node::{forward_keeping_inputs, register_parent_grads};
use crate::flex_io::{contiguous_f32, flex};
use crate::mixer::{self, OutputParams, OutputRows};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Flex, TensorMetadata, backend_extension};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::FlexTensor;

/// The time mixer's element-wise stages.
#[backend_extension(Flex, Autodiff)]
pub trait MixerOps: Backend {
    /// `x + (prev − x)·μ` for `x [B, T, C]`, `shift [B, C]` (the row before each sequence's
    /// first), `mu [C]`.
    fn token_mix_forward(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        mu: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `(dx, dshift, dmu)` given the forward's inputs and its output's gradient; `dx` is an
    /// empty tensor unless `need_dx`.
    fn token_mix_backward(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        mu: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        need_dx: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// `exp(−exp(−softplus(−(z + w0)) − 0.5))` for `z [.., C]`, `w0 [C]`.
    fn decay_forward(z: FloatTensor<Self>, w0: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `(dz, dw0)` given the forward's inputs and its output's gradient.
    fn decay_backward(
        z: FloatTensor<Self>,
        w0: FloatTensor<Self>,
        dout: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// `(GroupNorm(y)·lw + lb + (Σ_N r·k·r_k)·v)·g` `[B, T, C]` for `y [B, T, H, N]`, `r`, `k`,
    /// `v`, `g` `[B, T, C]` and `r_k`, `lw`, `lb` of `C` elements (any shape).
    #[allow(clippy::too_many_arguments)]
    fn mixer_output_forward(
        y: FloatTensor<Self>,
        r: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        g: FloatTensor<Self>,
        r_k: FloatTensor<Self>,
        lw: FloatTensor<Self>,
        lb: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self>;

    /// The gradients of `(y, r, k, v, g, r_k, lw, lb)`, each of its input's shape.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn mixer_output_backward(
        y: FloatTensor<Self>,
        r: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        g: FloatTensor<Self>,
        r_k: FloatTensor<Self>,
        lw: FloatTensor<Self>,
        lb: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        eps: f32,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );
}

/// The output stage's eight inputs, contiguous, and `[B, T, H, N]` of `y`.
struct OutputInputs {
    t: [FlexTensor; 8],
    dims: [usize; 4],
}

impl OutputInputs {
    fn new(t: [FlexTensor; 8], op: &str) -> Self {
        const NAMES: [&str; 8] = ["y", "r", "k", "v", "g", "r_k", "lw", "lb"];
        assert_eq!(
            t[0].shape().num_dims(),
            4,
            "{op}: `y` must be [B, T, H, N], got {:?}",
            t[0].shape()
        );
        let dims = t[0].shape().dims::<4>();
        let c = dims[2] * dims[3];
        for (i, x) in t.iter().enumerate().skip(1) {
            let want = if i < 5 { dims[0] * dims[1] * c } else { c };
            assert_eq!(
                x.shape().num_elements(),
                want,
                "{op}: `{}` must have {want} elements for `y` of {dims:?}, got {:?}",
                NAMES[i],
                x.shape()
            );
        }
        let mut i = 0;
        let t = t.map(|x| {
            i += 1;
            contiguous_f32(x, op, NAMES[i - 1])
        });
        Self { t, dims }
    }

    fn rows(&self) -> OutputRows<'_> {
        let [y, r, k, v, g, ..] = &self.t;
        OutputRows {
            y: y.storage(),
            r: r.storage(),
            k: k.storage(),
            v: v.storage(),
            g: g.storage(),
        }
    }

    fn params(&self, eps: f32) -> OutputParams<'_> {
        let [.., r_k, lw, lb] = &self.t;
        OutputParams {
            r_k: r_k.storage(),
            lw: lw.storage(),
            lb: lb.storage(),
            n: self.dims[3],
            eps,
        }
    }
}

/// `[B, T, C]` of the token shift's input, checked against `shift` and `mu`.
fn mix_dims(x: &FlexTensor, shift: &FlexTensor, mu: &FlexTensor) -> [usize; 3] {
    let ok = x.shape().num_dims() == 3 && shift.shape().num_dims() == 2;
    assert!(
        ok,
        "token mix: `x` must be [B, T, C] and `shift` [B, C], got {:?} and {:?}",
        x.shape(),
        shift.shape()
    );
    let [b, t, c] = x.shape().dims::<3>();
    assert!(
        shift.shape().dims::<2>() == [b, c] && mu.shape().dims::<1>() == [c],
        "token mix: for `x` {:?}, `shift` must be [{b}, {c}] and `mu` [{c}], got {:?} and {:?}",
        x.shape(),
        shift.shape(),
        mu.shape()
    );
    [b, t, c]
}

impl MixerOps for Flex {
    fn token_mix_forward(x: FlexTensor, shift: FlexTensor, mu: FlexTensor) -> FlexTensor {
        const OP: &str = "token mix";
        let [b, t, c] = mix_dims(&x, &shift, &mu);
        let shape = x.shape();
        let [x, shift, mu] = [
            contiguous_f32(x, OP, "x"),
            contiguous_f32(shift, OP, "shift"),
            contiguous_f32(mu, OP, "mu"),
        ];
        let out = mixer::token_mix(x.storage(), shift.storage(), mu.storage(), b, t, c);
        flex(out, shape)
    }

    fn token_mix_backward(
        x: FlexTensor,
        shift: FlexTensor,
        mu: FlexTensor,
        dout: FlexTensor,
        need_dx: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        const OP: &str = "token mix backward";
        let [b, t, c] = mix_dims(&x, &shift, &mu);
        let [x, shift, mu, dout] = [
            contiguous_f32(x, OP, "x"),
            contiguous_f32(shift, OP, "shift"),
            contiguous_f32(mu, OP, "mu"),
            contiguous_f32(dout, OP, "grad"),
        ];
        let (dx, dshift, dmu) = mixer::token_mix_backward(
            x.storage(),
            shift.storage(),
            mu.storage(),
            dout.storage(),
            (b, t, c),
            need_dx,
        );
        let dx_shape = if need_dx { vec![b, t, c] } else { vec![0] };
        (flex(dx, dx_shape), flex(dshift, [b, c]), flex(dmu, [c]))
    }

    fn decay_forward(z: FlexTensor, w0: FlexTensor) -> FlexTensor {
        const OP: &str = "decay";
        let shape = z.shape();
        let (z, w0) = (contiguous_f32(z, OP, "z"), contiguous_f32(w0, OP, "w0"));
        flex(mixer::decay(z.storage(), w0.storage()), shape)
    }

    fn decay_backward(z: FlexTensor, w0: FlexTensor, dout: FlexTensor) -> (FlexTensor, FlexTensor) {
        const OP: &str = "decay backward";
        let (shape, w0_shape) = (z.shape(), w0.shape());
        let [z, w0, dout] = [
            contiguous_f32(z, OP, "z"),
            contiguous_f32(w0, OP, "w0"),
            contiguous_f32(dout, OP, "grad"),
        ];
        let (dz, dw0) = mixer::decay_backward(z.storage(), w0.storage(), dout.storage());
        (flex(dz, shape), flex(dw0, w0_shape))
    }

    fn mixer_output_forward(
        y: FlexTensor,
        r: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        g: FlexTensor,
        r_k: FlexTensor,
        lw: FlexTensor,
        lb: FlexTensor,
        eps: f32,
    ) -> FlexTensor {
        let x = OutputInputs::new([y, r, k, v, g, r_k, lw, lb], "mixer output");
        let [b, t, h, n] = x.dims;
        flex(mixer::output(&x.rows(), &x.params(eps)), [b, t, h * n])
    }

    fn mixer_output_backward(
        y: FlexTensor,
        r: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        g: FlexTensor,
        r_k: FlexTensor,
        lw: FlexTensor,
        lb: FlexTensor,
        dout: FlexTensor,
        eps: f32,
    ) -> (
        FlexTensor,
        FlexTensor,
        FlexTensor,
        FlexTensor,
        FlexTensor,
        FlexTensor,
        FlexTensor,
        FlexTensor,
    ) {
        const OP: &str = "mixer output backward";
        let x = OutputInputs::new([y, r, k, v, g, r_k, lw, lb], OP);
        let [b, t, h, n] = x.dims;
        assert_eq!(
            dout.shape().num_elements(),
            b * t * h * n,
            "{OP}: the gradient must be [B, T, C] = [{b}, {t}, {}]",
            h * n
        );
        let dout = contiguous_f32(dout, OP, "grad");
        let gr = mixer::output_backward(&x.rows(), &x.params(eps), dout.storage());
        let shape = |i: usize| x.t[i].shape();
        (
            flex(gr.dy, shape(0)),
            flex(gr.dr, shape(1)),
            flex(gr.dk, shape(2)),
            flex(gr.dv, shape(3)),
            flex(gr.dg, shape(4)),
            flex(gr.dr_k, shape(5)),
            flex(gr.dlw, shape(6)),
            flex(gr.dlb, shape(7)),
        )
    }
}

/// Backward node of the output stage; its parents are `y, r, k, v, g, r_k, lw, lb`.
#[derive(Debug)]
struct MixerOutputBackward;

impl<B: Backend + MixerOps> Backward<B, 8> for MixerOutputBackward {
    /// The eight inputs and ε.
    type State = ([FloatTensor<B>; 8], f32);

    fn backward(
        self,
        ops: Ops<Self::State, 8>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        register_parent_grads::<B, _, 8>(ops, grads, |(x, eps), dout| {
            let [y, r, k, v, g, r_k, lw, lb] = x;
            let (dy, dr, dk, dv, dg, dr_k, dlw, dlb) =
                B::mixer_output_backward(y, r, k, v, g, r_k, lw, lb, dout, eps);
            [dy, dr, dk, dv, dg, dr_k, dlw, dlb]
        });
    }
}

/// Backward node of the token shift; its parents are `x`, `shift` and `mu`.
#[derive(Debug)]
struct TokenMixBackward;

impl<B: Backend + MixerOps> Backward<B, 3> for TokenMixBackward {
    type State = [FloatTensor<B>; 3];

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        // x's gradient is the costly one; an input that tracks none (stage 1's teacher
        // activations) gets none computed.
        let need_dx = ops.parents[0].is_some();
        register_parent_grads::<B, _, 3>(ops, grads, |[x, shift, mu], dout| {
            let (dx, dshift, dmu) = B::token_mix_backward(x, shift, mu, dout, need_dx);
            [dx, dshift, dmu]
        });
    }
}

/// Backward node of the decay; its parents are `z` and `w0`.
#[derive(Debug)]
struct DecayBackward;

impl<B: Backend + MixerOps> Backward<B, 2> for DecayBackward {
    type State = [FloatTensor<B>; 2];

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        register_parent_grads::<B, _, 2>(ops, grads, |[z, w0], dout| {
            let (dz, dw0) = B::decay_backward(z, w0, dout);
            [dz, dw0]
        });
    }
}

impl<B: Backend + MixerOps, C: CheckpointStrategy> MixerOps for Autodiff<B, C> {
    fn token_mix_forward(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        mu: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        forward_keeping_inputs::<B, C, _, 3>(TokenMixBackward, [x, shift, mu], |[x, s, mu]| {
            B::token_mix_forward(x, s, mu)
        })
    }

    fn token_mix_backward(
        _x: FloatTensor<Self>,
        _shift: FloatTensor<Self>,
        _mu: FloatTensor<Self>,
        _dout: FloatTensor<Self>,
        _need_dx: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        unimplemented!(
            "token_mix_backward is called by the autodiff node on the inner backend, never on Autodiff itself"
        )
    }

    fn decay_forward(z: FloatTensor<Self>, w0: FloatTensor<Self>) -> FloatTensor<Self> {
        forward_keeping_inputs::<B, C, _, 2>(DecayBackward, [z, w0], |[z, w0]| {
            B::decay_forward(z, w0)
        })
    }

    fn decay_backward(
        _z: FloatTensor<Self>,
        _w0: FloatTensor<Self>,
        _dout: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        unimplemented!(
            "decay_backward is called by the autodiff node on the inner backend, never on Autodiff itself"
        )
    }

    fn mixer_output_forward(
        y: FloatTensor<Self>,
        r: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        g: FloatTensor<Self>,
        r_k: FloatTensor<Self>,
        lw: FloatTensor<Self>,
        lb: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        let x = [y, r, k, v, g, r_k, lw, lb];
        let nodes = [0, 1, 2, 3, 4, 5, 6, 7].map(|i| x[i].node());
        let x = x.map(|t| t.into_primitive());
        let prep = MixerOutputBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful();
        let [y, r, k, v, g, r_k, lw, lb] = x.clone();
        let out = B::mixer_output_forward(y, r, k, v, g, r_k, lw, lb, eps);
        match prep {
            OpsKind::Tracked(prep) => prep.finish((x, eps), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn mixer_output_backward(
        _y: FloatTensor<Self>,
        _r: FloatTensor<Self>,
        _k: FloatTensor<Self>,
        _v: FloatTensor<Self>,
        _g: FloatTensor<Self>,
        _r_k: FloatTensor<Self>,
        _lw: FloatTensor<Self>,
        _lb: FloatTensor<Self>,
        _dout: FloatTensor<Self>,
        _eps: f32,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        unimplemented!(
            "mixer_output_backward is called by the autodiff node on the inner backend, never on Autodiff itself"
        )
    }
}
