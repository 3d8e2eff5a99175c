//! The few-rows product through the Burn op, against the backend's own matmul on random inputs,
//! where it is (not) used, and its bits on every instruction set.

mod common;

use burn::tensor::{Device, Distribution, Tensor};
use common::max_rel_err;
use rwkv_kernels::{FEW_ROWS_TAKEN, few_rows::MAX_ROWS, few_rows_matmul};

#[test]
fn matches_the_backend_matmul_in_both_layouts() {
    let d = Device::flex();
    for (k, n) in [(576, 1536), (37, 300), (64, 257)] {
        for m in 1..=FEW_ROWS_TAKEN {
            let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &d);
            let w = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 0.05), &d);
            let y = few_rows_matmul(&x, &w, false).expect("taken: 1..=8 rows, 256+ columns");
            let e = max_rel_err(y, x.clone().matmul(w.clone()));
            assert!(e < 1e-5, "m={m} k={k} n={n}: rel err {e}");
            if m == 1 {
                continue;
            }
            let wt = Tensor::<2>::random([n, k], Distribution::Normal(0.0, 0.05), &d);
            let y = few_rows_matmul(&x, &wt, true).expect("taken");
            let e = max_rel_err(y, x.clone().matmul(wt.clone().transpose()));
            assert!(e < 1e-5, "m={m} k={k} n={n} transposed: rel err {e}");
        }
    }
}

#[test]
fn what_is_left_to_the_backend() {
    let d = Device::flex();
    let w = Tensor::<2>::random([8, 64], Distribution::Default, &d);
    let x = |m: usize| Tensor::<2>::random([m, 8], Distribution::Default, &d);
    assert!(
        few_rows_matmul(&x(FEW_ROWS_TAKEN + 1), &w, false).is_none(),
        "9 rows"
    );
    let narrow = Tensor::<2>::random([8, 63], Distribution::Default, &d);
    assert!(
        few_rows_matmul(&x(4), &narrow, false).is_none(),
        "63 columns"
    );
    let wt = Tensor::<2>::random([64, 8], Distribution::Default, &d);
    assert!(
        few_rows_matmul(&x(1), &wt, true).is_none(),
        "one row, transposed"
    );
    assert!(
        few_rows_matmul(&x(2), &wt, true).is_some(),
        "two rows, transposed"
    );
    let ad = d.autodiff();
    let x = Tensor::<2>::random([4, 8], Distribution::Default, &ad);
    let w = Tensor::<2>::random([8, 256], Distribution::Default, &ad);
    assert!(few_rows_matmul(&x, &w, false).is_none(), "autodiff");
}

/// Every instruction set gives the same bits: the tile shapes differ (strips of 96 or 48
/// columns and 4 rows with AVX-512, 32 columns and 2 rows otherwise, the ragged columns row by
/// row), but every sum adds its products in the order of `k`, without fused multiply-adds.
#[test]
fn every_instruction_set_gives_the_same_bits() {
    use rwkv_kernels::cpu::{self, SimdLevel};
    use rwkv_kernels::few_rows::{matmul, matmul_transposed};
    let values = |len: usize, seed: u64| -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    };
    let levels: Vec<SimdLevel> = [SimdLevel::Base, SimdLevel::Avx2Fma, SimdLevel::Avx512]
        .into_iter()
        .filter(|l| *l <= cpu::detected_simd_level())
        .collect();
    for (k, n) in [(576, 576), (64, 1000), (33, 97)] {
        for m in [1, 2, 3, 5, 8, MAX_ROWS] {
            let x = values(m * k, (m * 1000 + k) as u64);
            let w = values(k * n, n as u64);
            let run = |level: SimdLevel| {
                cpu::cap_simd_level(Some(level));
                let y = (matmul(&x, &w, m, k, n), matmul_transposed(&x, &w, m, k, n));
                cpu::cap_simd_level(None);
                y
            };
            let want = run(SimdLevel::Base);
            for &level in &levels[1..] {
                let got = run(level);
                assert!(
                    got.0
                        .iter()
                        .zip(&want.0)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "m={m} k={k} n={n}: x·w differs at {level:?}"
                );
                assert!(
                    got.1
                        .iter()
                        .zip(&want.1)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "m={m} k={k} n={n}: x·wᵀ differs at {level:?}"
                );
            }
        }
    }
}
