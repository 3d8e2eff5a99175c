//! The machine's f32 arithmetic peak, measured rather than assumed: every thread runs
//! independent chains of fused multiply-adds on registers (12 vectors of 16 lanes, compiled
//! for AVX-512 or AVX2 when the CPU has them), and the best of three runs is the peak in
//! GFLOP/s (2 FLOP per FMA). Benchmarks report their GFLOP/s as a fraction of it.

use rayon::prelude::*;
use std::hint::black_box;
use std::time::Instant;

const CHAINS: usize = 12;
const LANES: usize = 16;

#[inline(always)]
fn chains(iters: usize, seed: f32) -> f32 {
    let mut acc = [[seed; LANES]; CHAINS];
    let (m, a) = (black_box(0.999_f32), black_box(1e-3_f32));
    for _ in 0..iters {
        for c in acc.iter_mut() {
            for x in c.iter_mut() {
                *x = x.mul_add(m, a);
            }
        }
    }
    acc.iter().flatten().sum()
}

/// Calls [`chains`] from functions compiled with AVX-512 / AVX2 + FMA, so `mul_add` is the
/// hardware instruction. Not the kernels' `with_simd`: a closure passed through it was not
/// inlined into the feature-enabled function, and `mul_add` compiled without FMA became a
/// software `fmaf` call per element (measured: 2 GFLOP/s instead of 117).
fn chains_best_isa(iters: usize, seed: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn avx512(iters: usize, seed: f32) -> f32 {
            chains(iters, seed)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(iters: usize, seed: f32) -> f32 {
            chains(iters, seed)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features (checked just above).
            return unsafe { avx512(iters, seed) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { avx2(iters, seed) };
        }
    }
    chains(iters, seed)
}

/// Peak f32 GFLOP/s of all the pool's threads together (best of three runs of ~0.1 s).
pub fn fma_peak_gflops() -> f64 {
    let threads = rayon::current_num_threads();
    let iters = 4_000_000;
    let flops = (threads * iters * CHAINS * LANES * 2) as f64;
    (0..3)
        .map(|run| {
            let t0 = Instant::now();
            let s: f32 = (0..threads)
                .into_par_iter()
                .map(|i| chains_best_isa(iters, (i + run) as f32 * 1e-3))
                .sum();
            black_box(s);
            flops / t0.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_peak_is_a_plausible_number() {
        let p = super::fma_peak_gflops();
        println!("measured peak: {p:.1} GFLOP/s");
        // A scalar-only machine still does > 1 GFLOP/s; none does 100 TFLOP/s on its CPU.
        assert!(p > 1.0 && p < 1e5, "{p}");
    }
}
