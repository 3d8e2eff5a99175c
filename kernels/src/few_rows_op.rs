//! [`crate::few_rows`] as a Burn backend extension for the CPU backend (Flex) without autodiff:
//! the products of decoding, where a few rows meet a whole weight matrix.

use crate::few_rows;
use crate::flex_io::{contiguous_f32, flex};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Flex, TensorMetadata, backend_extension};
use burn_flex::FlexTensor;

/// The op's name in error messages.
const OP: &str = "few-rows matmul";

/// `x [M, K] · w` with `w` `[K, N]`, or `[N, K]` when `transposed` (then `x · wᵀ`).
#[backend_extension(Flex)]
pub trait FewRowsOps: Backend {
    fn few_rows_matmul(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        transposed: bool,
    ) -> FloatTensor<Self>;
}

impl FewRowsOps for Flex {
    fn few_rows_matmul(x: FlexTensor, w: FlexTensor, transposed: bool) -> FlexTensor {
        let [m, k] = x.shape().dims::<2>();
        let [a, b] = w.shape().dims::<2>();
        let (wk, n) = if transposed { (b, a) } else { (a, b) };
        assert_eq!(
            k, wk,
            "{OP}: x is [{m}, {k}] but the weight is [{a}, {b}] (transposed: {transposed})"
        );
        let x = contiguous_f32(x, OP, "x");
        let w = contiguous_f32(w, OP, "w");
        let y = if transposed {
            few_rows::matmul_transposed(x.storage(), w.storage(), m, k, n)
        } else {
            few_rows::matmul(x.storage(), w.storage(), m, k, n)
        };
        flex(y, [m, n])
    }
}
