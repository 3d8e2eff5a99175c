//! The few-rows product through the Burn op, against the backend's own matmul on random inputs,
//! and where it is (not) used.

mod common;

use burn::tensor::{Device, Distribution, Tensor};
use common::max_rel_err;
use rwkv_kernels::{few_rows::MAX_ROWS, few_rows_matmul};

#[test]
fn matches_the_backend_matmul_in_both_layouts() {
    let d = Device::flex();
    for (k, n) in [(576, 1536), (37, 300), (64, 5)] {
        for m in 2..=MAX_ROWS {
            let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &d);
            let w = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 0.05), &d);
            let y = few_rows_matmul(&x, &w, false).expect("taken for 2..=16 rows on the CPU");
            let e = max_rel_err(y, x.clone().matmul(w.clone()));
            assert!(e < 1e-5, "m={m} k={k} n={n}: rel err {e}");
            let wt = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 0.05), &d);
            let y = few_rows_matmul(&x, &wt, true).expect("taken");
            let e = max_rel_err(y, x.clone().matmul(wt.clone().transpose()));
            assert!(e < 1e-5, "m={m} k={k} n={n} transposed: rel err {e}");
        }
    }
}

#[test]
fn one_row_many_rows_and_autodiff_are_left_to_the_backend() {
    let d = Device::flex();
    let w = Tensor::<2>::random([8, 4], Distribution::Default, &d);
    for m in [1, MAX_ROWS + 1] {
        let x = Tensor::<2>::random([m, 8], Distribution::Default, &d);
        assert!(few_rows_matmul(&x, &w, false).is_none(), "{m} rows");
    }
    let ad = d.autodiff();
    let x = Tensor::<2>::random([4, 8], Distribution::Default, &ad);
    let w = Tensor::<2>::random([8, 4], Distribution::Default, &ad);
    assert!(few_rows_matmul(&x, &w, false).is_none(), "autodiff");
}
