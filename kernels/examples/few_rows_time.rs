//! Times the few-rows products against the CPU backend's own matmul (Burn's Flex, what a
//! product falls back to) on the decoding shapes of SmolLM2-135M (hidden 576, grouped k/v
//! 192, MLP 1536, vocabulary 49,152 as the tied output head), for 1 to 16 rows, inside the
//! thread pool as decoding runs: `cargo run --release -p rwkv-kernels --example
//! few_rows_time`. Each product reads a different copy of its weight (about 400 MB of copies
//! in all), so the weights come from memory as in a decoding step, not from the cache. Prints
//! the best of 3 passes: µs per product and the weight bytes read per second.
//! `SIMD=avx2` or `SIMD=base` caps the kernels' instruction set (the same results).
use burn::tensor::{Device, Tensor, TensorData};
use rwkv_kernels::cpu;
use rwkv_kernels::few_rows::{matmul, matmul_transposed};
use std::time::Instant;

/// The best of 3 passes over every copy: seconds per product.
fn best<W>(copies: &[W], f: &dyn Fn(&W) -> Vec<f32>) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            for w in copies {
                std::hint::black_box(f(w));
            }
            t.elapsed().as_secs_f64() / copies.len() as f64
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    // Inside the pool, as a decoding step runs (see the runner's `util::pool`).
    rayon::ThreadPoolBuilder::new()
        .build()
        .expect("a thread pool")
        .install(run);
}

fn run() {
    match std::env::var("SIMD").as_deref() {
        Ok("avx2") => cpu::cap_simd_level(Some(cpu::SimdLevel::Avx2Fma)),
        Ok("base") => cpu::cap_simd_level(Some(cpu::SimdLevel::Base)),
        Ok(other) if !other.is_empty() => panic!("SIMD is avx2 or base, not {other}"),
        _ => {}
    }
    println!(
        "{:>4} {:>6} {:>6} {:>5} {:>11} {:>11} {:>11} {:>11} {:>7}",
        "rows", "k", "n", "wᵀ", "few-rows µs", "GB/s", "backend µs", "GB/s", "ratio"
    );
    let shapes = [
        (576, 576, false),
        (576, 192, false),
        (576, 1536, false),
        (1536, 576, false),
        (576, 49152, true),
    ];
    for (k, n, transposed) in shapes {
        let copies: Vec<Vec<f32>> = (0..(400_000_000 / (k * n * 4)).max(2))
            .map(|c| {
                (0..k * n)
                    .map(|i| ((i + c) % 97) as f32 * 0.01 - 0.48)
                    .collect()
            })
            .collect();
        let d = Device::flex();
        let shape = if transposed { [n, k] } else { [k, n] };
        let tensors: Vec<Tensor<2>> = copies
            .iter()
            .map(|w| Tensor::from_data(TensorData::new(w.clone(), shape), &d))
            .collect();
        for m in [1, 2, 8, 16] {
            let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
            let ours = best(&copies, &|w| {
                if transposed {
                    matmul_transposed(&x, w, m, k, n)
                } else {
                    matmul(&x, w, m, k, n)
                }
            });
            let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &d);
            let theirs = best(&tensors, &|w| {
                let w = if transposed {
                    w.clone().transpose()
                } else {
                    w.clone()
                };
                xt.clone()
                    .matmul(w)
                    .into_data()
                    .try_to_vec::<f32>()
                    .expect("f32")
            });
            let gb_s = |s: f64| (k * n * 4) as f64 / s / 1e9;
            println!(
                "{m:>4} {k:>6} {n:>6} {:>5} {:>11.1} {:>11.1} {:>11.1} {:>11.1} {:>6.2}x",
                if transposed { "yes" } else { "no" },
                ours * 1e6,
                gb_s(ours),
                theirs * 1e6,
                gb_s(theirs),
                theirs / ours
            );
        }
    }
}
