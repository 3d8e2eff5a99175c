//! [`crate::activation`]'s SwiGLU as a Burn backend extension for the CPU backend (Flex), with
//! and without autodiff: one pass over the gate and the up projection instead of the backend's
//! `silu` (an `exp`, a `log1p` and several full-size temporaries) and a product, and a
//! backward that saves only its two inputs.

use crate::activation;
use crate::backward_node::{forward_keeping_inputs, register_parent_grads};
use crate::flex_io::{contiguous_f32, flex};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Flex, TensorMetadata, backend_extension};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops};
use burn_flex::FlexTensor;

/// The op's name in error messages.
const OP: &str = "swiglu";

/// `silu(g) ⊙ u` for `g` and `u` of one shape.
#[backend_extension(Flex, Autodiff)]
pub trait SwigluOps: Backend {
    fn swiglu_forward(g: FloatTensor<Self>, u: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `(dg, du)` given the forward's inputs and its output's gradient.
    fn swiglu_backward(
        g: FloatTensor<Self>,
        u: FloatTensor<Self>,
        dout: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

fn same_shape(g: &FlexTensor, other: &FlexTensor, name: &str) {
    assert_eq!(
        g.shape(),
        other.shape(),
        "{OP}: `{name}` must have the gate's shape"
    );
}

impl SwigluOps for Flex {
    fn swiglu_forward(g: FlexTensor, u: FlexTensor) -> FlexTensor {
        same_shape(&g, &u, "u");
        let shape = g.shape();
        let (g, u) = (contiguous_f32(g, OP, "g"), contiguous_f32(u, OP, "u"));
        flex(activation::swiglu(g.storage(), u.storage()), shape)
    }

    fn swiglu_backward(g: FlexTensor, u: FlexTensor, dout: FlexTensor) -> (FlexTensor, FlexTensor) {
        same_shape(&g, &u, "u");
        same_shape(&g, &dout, "grad");
        let shape = g.shape();
        let [g, u, dout] = [
            contiguous_f32(g, OP, "g"),
            contiguous_f32(u, OP, "u"),
            contiguous_f32(dout, OP, "grad"),
        ];
        let (dg, du) = activation::swiglu_backward(g.storage(), u.storage(), dout.storage());
        (flex(dg, shape.clone()), flex(du, shape))
    }
}

/// Backward node of the fused op; its parents are `g` and `u`.
#[derive(Debug)]
struct SwigluBackward;

impl<B: Backend + SwigluOps> Backward<B, 2> for SwigluBackward {
    type State = [FloatTensor<B>; 2];

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        register_parent_grads::<B, _, 2>(ops, grads, |[g, u], dout| {
            let (dg, du) = B::swiglu_backward(g, u, dout);
            [dg, du]
        });
    }
}

impl<B: Backend + SwigluOps, C: CheckpointStrategy> SwigluOps for Autodiff<B, C> {
    fn swiglu_forward(g: FloatTensor<Self>, u: FloatTensor<Self>) -> FloatTensor<Self> {
        forward_keeping_inputs::<B, C, _, 2>(SwigluBackward, [g, u], |[g, u]| {
            B::swiglu_forward(g, u)
        })
    }

    fn swiglu_backward(
        _g: FloatTensor<Self>,
        _u: FloatTensor<Self>,
        _dout: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        unimplemented!(
            "swiglu_backward is called by the autodiff node on the inner backend, never on Autodiff itself"
        )
    }
}
