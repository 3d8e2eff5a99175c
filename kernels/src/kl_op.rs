//! [`crate::kl`] as a Burn backend extension for the CPU backend (Flex), with and without
//! autodiff: one graph node from teacher and student logits `[B, T, V]` to each position's
//! `KL(p_t ‖ p_s)` `[B, T]`, differentiable in the student's logits (the teacher's are
//! constants: see [`crate::forward_kl`]).

use crate::backward_node::register_parent_grads;
use crate::flex_io::{contiguous_f32, flex};
use crate::kl;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Flex, TensorMetadata, backend_extension};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::FlexTensor;

/// The op's name in error messages.
const OP: &str = "forward KL";

/// Per-position forward KL divergence at temperature `tau`.
#[backend_extension(Flex, Autodiff)]
pub trait KlOps: Backend {
    /// `(kl [B, T], lse [B, T, 2])` for logits `t` and `s` `[B, T, V]`.
    fn forward_kl(
        t: FloatTensor<Self>,
        s: FloatTensor<Self>,
        tau: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The gradient of the student's logits given the forward's inputs, `lse` and the
    /// gradient of `kl`.
    fn forward_kl_backward(
        t: FloatTensor<Self>,
        s: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        tau: f32,
    ) -> FloatTensor<Self>;
}

/// `[B, T, V]` of the student's logits, checked against the teacher's.
fn dims(t: &FlexTensor, s: &FlexTensor) -> [usize; 3] {
    assert!(
        s.shape().num_dims() == 3 && t.shape() == s.shape(),
        "{OP}: teacher and student logits must both be [B, T, V], got {:?} and {:?}",
        t.shape(),
        s.shape()
    );
    s.shape().dims::<3>()
}

impl KlOps for Flex {
    fn forward_kl(t: FlexTensor, s: FlexTensor, tau: f32) -> (FlexTensor, FlexTensor) {
        let [b, n, v] = dims(&t, &s);
        let (t, s) = (contiguous_f32(t, OP, "t"), contiguous_f32(s, OP, "s"));
        let (kl, lse) = kl::forward(t.storage(), s.storage(), v, tau);
        (flex(kl, [b, n]), flex(lse, [b, n, 2]))
    }

    fn forward_kl_backward(
        t: FlexTensor,
        s: FlexTensor,
        lse: FlexTensor,
        grad: FlexTensor,
        tau: f32,
    ) -> FlexTensor {
        let [b, n, v] = dims(&t, &s);
        let [t, s, lse, grad] = [
            contiguous_f32(t, OP, "t"),
            contiguous_f32(s, OP, "s"),
            contiguous_f32(lse, OP, "lse"),
            contiguous_f32(grad, OP, "grad"),
        ];
        let ds = kl::backward(
            t.storage(),
            s.storage(),
            lse.storage(),
            grad.storage(),
            v,
            tau,
        );
        flex(ds, [b, n, v])
    }
}

/// Backward node of the fused op; its one parent is the student's logits.
#[derive(Debug)]
struct KlBackward;

impl<B: Backend + KlOps> Backward<B, 1> for KlBackward {
    /// t, s, lse and the temperature.
    type State = ([FloatTensor<B>; 3], f32);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        register_parent_grads::<B, _, 1>(ops, grads, |([t, s, lse], tau), grad| {
            [B::forward_kl_backward(t, s, lse, grad, tau)]
        });
    }
}

impl<B: Backend + KlOps, C: CheckpointStrategy> KlOps for Autodiff<B, C> {
    fn forward_kl(
        t: FloatTensor<Self>,
        s: FloatTensor<Self>,
        tau: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let prep = KlBackward
            .prepare::<C>([s.node()])
            .compute_bound()
            .stateful();
        let (t, s) = (t.into_primitive(), s.into_primitive());
        let (kl, lse) = B::forward_kl(t.clone(), s.clone(), tau);
        let out = match prep {
            OpsKind::Tracked(prep) => prep.finish(([t, s, lse.clone()], tau), kl),
            OpsKind::UnTracked(prep) => prep.finish(kl),
        };
        (
            out,
            <Self as burn::backend::AutodiffBackend>::from_inner(lse),
        )
    }

    fn forward_kl_backward(
        _t: FloatTensor<Self>,
        _s: FloatTensor<Self>,
        _lse: FloatTensor<Self>,
        _grad: FloatTensor<Self>,
        _tau: f32,
    ) -> FloatTensor<Self> {
        unimplemented!(
            "forward_kl_backward is called by the autodiff node on the inner backend, never on Autodiff itself"
        )
    }
}
