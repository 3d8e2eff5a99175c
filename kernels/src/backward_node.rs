//! What every fused op's autodiff node does in its backward: take its output's gradient,
//! compute its parents' gradients from the saved state, and register each with the parent
//! that tracks one. And the forward of the ops whose backward needs exactly their inputs.

use burn::backend::Backend;
use burn::backend::tensor::FloatTensor;
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};

/// The autodiff forward of a fused op whose backward needs exactly its `N` inputs: records
/// `node` with the inputs as its parents, runs `forward` on the inner tensors, and keeps them
/// as the node's state when any input tracks a gradient.
pub(crate) fn forward_keeping_inputs<B, C, Node, const N: usize>(
    node: Node,
    inputs: [FloatTensor<Autodiff<B, C>>; N],
    forward: impl FnOnce([FloatTensor<B>; N]) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>>
where
    B: Backend,
    C: CheckpointStrategy,
    Node: Backward<B, N, State = [FloatTensor<B>; N]>,
{
    let nodes = inputs.each_ref().map(|t| t.node());
    let inputs = inputs.map(|t| t.into_primitive());
    let prep = node.prepare::<C>(nodes).compute_bound().stateful();
    let out = forward(inputs.clone());
    match prep {
        OpsKind::Tracked(prep) => prep.finish(inputs, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// Runs `parent_grads(state, output_grad)` and registers its `N` results, in the order of the
/// node's parents.
pub(crate) fn register_parent_grads<B: Backend, S, const N: usize>(
    ops: Ops<S, N>,
    grads: &mut Gradients,
    parent_grads: impl FnOnce(S, FloatTensor<B>) -> [FloatTensor<B>; N],
) {
    let output_grad = grads.consume::<B>(&ops.node);
    let parent_grads = parent_grads(ops.state, output_grad);
    for (node, g) in ops.parents.into_iter().zip(parent_grads) {
        if let Some(node) = node {
            grads.register::<B>(node.id, g);
        }
    }
}
