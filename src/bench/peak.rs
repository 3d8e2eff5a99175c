//! The machine's peaks, measured rather than assumed.
//!
//! - f32 arithmetic: every thread runs independent chains of fused multiply-adds on registers
//!   (12 vectors of the widest width the CPU has: 16 lanes with AVX-512, 8 with AVX2, so all
//!   chains fit in the register file — 24 AVX2 chains do not, and spill), and the best of three
//!   runs is the peak in GFLOP/s (2 FLOP per FMA). Benchmarks report their GFLOP/s as a
//!   fraction of it.
//! - memory reads: the pool's threads sum a buffer far larger than any cache; the best of
//!   three passes is the read bandwidth in GB/s. Decoding one token reads every weight once,
//!   so generation benchmarks compare their bytes per second with it.

use rayon::prelude::*;
use std::hint::black_box;
use std::time::Instant;

const CHAINS: usize = 12;

/// `CHAINS` chains of `L` lanes; returns their sum (so nothing is optimised away).
#[inline(always)]
fn chains<const L: usize>(iters: usize, seed: f32) -> f32 {
    let mut acc = [[seed; L]; CHAINS];
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
/// hardware instruction (the kernels' `simd_kernel` does the same for their named kernels).
/// A closure called through such a function is not inlined into it, and `mul_add` compiled
/// without FMA is a software `fmaf` call per element (measured: 2 GFLOP/s instead of 117).
/// Returns the sum and the lanes per chain.
fn chains_best_isa(iters: usize, seed: f32) -> (f32, usize) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn avx512(iters: usize, seed: f32) -> f32 {
            chains::<16>(iters, seed)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(iters: usize, seed: f32) -> f32 {
            chains::<8>(iters, seed)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features (checked just above).
            return (unsafe { avx512(iters, seed) }, 16);
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return (unsafe { avx2(iters, seed) }, 8);
        }
    }
    (chains::<4>(iters, seed), 4)
}

/// Peak f32 GFLOP/s of all the pool's threads together (best of three runs of ~0.1 s).
pub fn fma_peak_gflops() -> f64 {
    let threads = rayon::current_num_threads();
    let iters = 8_000_000;
    (0..3)
        .map(|run| {
            let t0 = Instant::now();
            let (s, lanes): (f32, usize) = (0..threads)
                .into_par_iter()
                .map(|i| chains_best_isa(iters, (i + run) as f32 * 1e-3))
                .reduce(|| (0.0, 0), |a, b| (a.0 + b.0, a.1.max(b.1)));
            black_box(s);
            let flops = (threads * iters * CHAINS * lanes * 2) as f64;
            flops / t0.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// Bytes of the buffer [`read_bandwidth_gb_s`] sums (larger than any CPU cache).
const READ_BYTES: usize = 512 << 20;

/// Sum of a slice with 16 independent accumulators (so it vectorises; the order of the
/// additions does not matter here).
fn sum16(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// Read bandwidth of all the pool's threads together, GB/s (best of three passes over a
/// 512 MiB buffer).
pub fn read_bandwidth_gb_s() -> f64 {
    // Filled with ones, so its pages are really allocated before the timed passes.
    let buf = vec![1.0f32; READ_BYTES / 4];
    (0..3)
        .map(|_| {
            let t0 = Instant::now();
            let s: f32 = buf.par_chunks(1 << 16).map(sum16).sum();
            black_box(s);
            READ_BYTES as f64 / t0.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_read_bandwidth_is_a_plausible_number() {
        let b = super::read_bandwidth_gb_s();
        println!("measured read bandwidth: {b:.1} GB/s");
        // Even a slow machine reads > 0.1 GB/s; no CPU's memory reads 10 TB/s.
        assert!(b > 0.1 && b < 1e4, "{b}");
        let x: Vec<f32> = (0..100).map(|i| i as f32).collect();
        assert_eq!(super::sum16(&x), 4950.0);
    }

    #[test]
    fn the_peak_is_a_plausible_number() {
        let p = super::fma_peak_gflops();
        println!("measured peak: {p:.1} GFLOP/s");
        // A scalar-only machine still does > 1 GFLOP/s; none does 100 TFLOP/s on its CPU.
        assert!(p > 1.0 && p < 1e5, "{p}");
    }
}
