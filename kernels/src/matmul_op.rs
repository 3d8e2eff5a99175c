//! The dense layers' matrix product `x [M, K] · w [K, N]` as a Burn backend extension for the
//! CPU backend (Flex), with and without autodiff, on the same `gemm` crate the backend uses.
//!
//! Why not the backend's own: its output buffer (`FlexTensor::empty`) is allocated as zeroed
//! bytes, whose recorded alignment of 1 then makes the byte container re-allocate it aligned
//! and copy it — a zeroing, a second allocation and a full copy of every product (3–4 % of a
//! training step's samples). Here the product is written straight into an `f32` buffer that
//! becomes the tensor. The backward computes `dx = dy · wᵀ` and `dw = xᵀ · dy` with the
//! transposes read in place, each only for an input that tracks a gradient.

use crate::backward_node::{forward_keeping_inputs, register_parent_grads};
use crate::flex_io::{contiguous_f32, flex};
use crate::gemm_call::{View, gemm_f32};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Flex, TensorMetadata, backend_extension};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops};
use burn_flex::FlexTensor;

/// The op's name in error messages.
const OP: &str = "matmul";

/// Products with at least this many multiply-adds run on every thread (the backend's rule).
const PARALLEL_MIN: usize = 192 * 192 * 192;

/// `lhs [m, k] · rhs [k, n]` as a new row-major `[m, n]` buffer.
fn product(m: usize, k: usize, n: usize, lhs: View, rhs: View) -> Vec<f32> {
    if k == 0 {
        return vec![0.0; m * n];
    }
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let parallel = m.saturating_mul(n).saturating_mul(k) >= PARALLEL_MIN;
    // SAFETY: `out` has room for m·n values, row stride n, and does not overlap the inputs;
    // without accumulation and with k > 0, gemm writes every one of them and reads none, so
    // the buffer is fully initialised before its length is set.
    unsafe {
        gemm_f32(m, n, k, out.as_mut_ptr(), n, false, lhs, rhs, parallel);
        out.set_len(m * n);
    }
    out
}

/// `x [M, K] · w [K, N]`.
#[backend_extension(Flex, Autodiff)]
pub trait MatmulOps: Backend {
    fn matmul_forward(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `(dx, dw)` given the inputs and the product's gradient; each an empty tensor unless
    /// asked for.
    fn matmul_backward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        need_dx: bool,
        need_dw: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// `[M, K, N]` of the product, checked.
fn dims(x: &FlexTensor, w: &FlexTensor) -> [usize; 3] {
    assert!(
        x.shape().num_dims() == 2 && w.shape().num_dims() == 2,
        "{OP}: x and w must be matrices, got {:?} and {:?}",
        x.shape(),
        w.shape()
    );
    let ([m, k], [wk, n]) = (x.shape().dims::<2>(), w.shape().dims::<2>());
    assert_eq!(k, wk, "{OP}: x is [{m}, {k}] but w is [{wk}, {n}]");
    [m, k, n]
}

impl MatmulOps for Flex {
    fn matmul_forward(x: FlexTensor, w: FlexTensor) -> FlexTensor {
        let [m, k, n] = dims(&x, &w);
        let (x, w) = (contiguous_f32(x, OP, "x"), contiguous_f32(w, OP, "w"));
        let (xs, ws) = (x.storage(), w.storage());
        let y = product(
            m,
            k,
            n,
            View {
                data: xs,
                rs: k,
                cs: 1,
            },
            View {
                data: ws,
                rs: n,
                cs: 1,
            },
        );
        flex(y, [m, n])
    }

    fn matmul_backward(
        x: FlexTensor,
        w: FlexTensor,
        dy: FlexTensor,
        need_dx: bool,
        need_dw: bool,
    ) -> (FlexTensor, FlexTensor) {
        let [m, k, n] = dims(&x, &w);
        assert_eq!(
            dy.shape().dims::<2>(),
            [m, n],
            "{OP}: the gradient must be [{m}, {n}]"
        );
        let [x, w, dy] = [
            contiguous_f32(x, OP, "x"),
            contiguous_f32(w, OP, "w"),
            contiguous_f32(dy, OP, "grad"),
        ];
        let (xs, ws, ds) = (x.storage(), w.storage(), dy.storage());
        let dy_view = View {
            data: ds,
            rs: n,
            cs: 1,
        };
        // `lhs [rows, inner] · rhs [inner, cols]`, or an empty tensor for an input that tracks no
        // gradient.
        let grad = |need: bool, [rows, inner, cols]: [usize; 3], lhs: View, rhs: View| {
            if need {
                flex(product(rows, inner, cols, lhs, rhs), [rows, cols])
            } else {
                flex(Vec::new(), [0])
            }
        };
        // dy [m, n] · wᵀ [n, k]: wᵀ(i, j) = w(j, i) = w[j·n + i].
        let wt = View {
            data: ws,
            rs: 1,
            cs: n,
        };
        // xᵀ [k, m] · dy [m, n]: xᵀ(i, j) = x[j·k + i].
        let xt = View {
            data: xs,
            rs: 1,
            cs: k,
        };
        (
            grad(need_dx, [m, n, k], dy_view, wt),
            grad(need_dw, [k, m, n], xt, dy_view),
        )
    }
}

/// Backward node of the product; its parents are `x` and `w`.
#[derive(Debug)]
struct MatmulBackward;

impl<B: Backend + MatmulOps> Backward<B, 2> for MatmulBackward {
    type State = [FloatTensor<B>; 2];

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let need = [ops.parents[0].is_some(), ops.parents[1].is_some()];
        register_parent_grads::<B, _, 2>(ops, grads, |[x, w], dy| {
            let (dx, dw) = B::matmul_backward(x, w, dy, need[0], need[1]);
            [dx, dw]
        });
    }
}

impl<B: Backend + MatmulOps, C: CheckpointStrategy> MatmulOps for Autodiff<B, C> {
    fn matmul_forward(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        forward_keeping_inputs::<B, C, _, 2>(MatmulBackward, [x, w], |[x, w]| {
            B::matmul_forward(x, w)
        })
    }

    fn matmul_backward(
        _x: FloatTensor<Self>,
        _w: FloatTensor<Self>,
        _dy: FloatTensor<Self>,
        _need_dx: bool,
        _need_dw: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        unimplemented!(
            "matmul_backward is called by the autodiff node on the inner backend, never on Autodiff itself"
        )
    }
}
