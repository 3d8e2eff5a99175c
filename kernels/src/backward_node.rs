//! What every fused op's autodiff node does in its backward: take its output's gradient,
//! compute its parents' gradients from the saved state, and register each with the parent
//! that tracks one.

use burn::backend::Backend;
use burn::backend::tensor::FloatTensor;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::Ops;

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
