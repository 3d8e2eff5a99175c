//! Times `few_rows` against the CPU backend's own matmul on decoding shapes (SmolLM2-135M's
//! MLP projections and its tied 49,152-row output head, 1 and 8 rows), with the weights cycled
//! through enough copies that they come from memory, not cache:
//! `cargo run --release -p rwkv-kernels --example few_rows_time`.
use burn::tensor::{Device, Tensor, TensorData};
use rwkv_kernels::few_rows;
use std::time::Instant;

fn main() {
    let d = Device::flex();
    // (m, k, n, transposed); 24 copies of each weight so they do not stay in cache.
    for &(m, k, n, tr) in &[
        (1usize, 576usize, 1536usize, false),
        (8, 576, 1536, false),
        (1, 1536, 576, false),
        (8, 1536, 576, false),
        (1, 576, 49152, true),
        (8, 576, 49152, true),
    ] {
        let copies = if n > 10000 { 2 } else { 24 };
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let ws: Vec<Vec<f32>> = (0..copies)
            .map(|c| {
                (0..k * n)
                    .map(|i| ((i + c) as f32 * 0.11).cos() * 0.05)
                    .collect()
            })
            .collect();
        let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &d);
        let wts: Vec<Tensor<2>> = ws
            .iter()
            .map(|w| {
                let shape = if tr { [n, k] } else { [k, n] };
                Tensor::<2>::from_data(TensorData::new(w.clone(), shape), &d)
            })
            .collect();
        let reps = if n > 10000 { 10 } else { 240 };
        for round in 0..2 {
            let t = Instant::now();
            let mut yb = Vec::new();
            for i in 0..reps {
                let w = wts[i % copies].clone();
                let w = if tr { w.transpose() } else { w };
                yb = xt
                    .clone()
                    .matmul(w)
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap();
            }
            let burn_us = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
            let t = Instant::now();
            let mut yn = Vec::new();
            for i in 0..reps {
                let w = &ws[i % copies];
                yn = if tr {
                    few_rows::matmul_transposed(&x, w, m, k, n)
                } else {
                    few_rows::matmul(&x, w, m, k, n)
                };
            }
            let ours_us = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
            let err = yb
                .iter()
                .zip(&yn)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let gb = (k * n * 4) as f64 / 1e3;
            println!(
                "r{round} m{m} k{k} n{n} tr={tr}: burn {burn_us:.0} us ({:.1} GB/s), ours {ours_us:.0} us ({:.1} GB/s), {:.2}x, max diff {err:e}",
                gb / burn_us,
                gb / ours_us,
                burn_us / ours_us
            );
        }
    }
}
