//! The machine's peaks, measured rather than assumed.
//!
//! - f32 arithmetic: every thread runs independent chains of fused multiply-adds on registers
//!   (12 vectors of the widest width the CPU has: 16 lanes with AVX-512, 8 with AVX2, so all
//!   chains fit in the register file — 24 AVX2 chains do not, and spill; written with the
//!   vector instructions themselves, see [`vector`]), and the best of three
//!   runs is the peak in GFLOP/s (2 FLOP per FMA). Benchmarks report their GFLOP/s as a
//!   fraction of it.
//! - memory reads: the pool's threads sum a buffer far larger than any cache; the best of
//!   three passes is the read bandwidth in GB/s. Decoding one token reads every weight once,
//!   so generation benchmarks compare their bytes per second with it.

use rayon::prelude::*;
use std::hint::black_box;
use std::time::Instant;

const CHAINS: usize = 12;

/// `CHAINS` chains of `L` lanes in plain arithmetic, for CPUs without the vector kernels below;
/// returns their sum (so nothing is optimised away).
fn chains_scalar<const L: usize>(iters: usize, seed: f32) -> f32 {
    let mut acc = [[seed; L]; CHAINS];
    let (m, a) = (black_box(0.999_f32), black_box(1e-3_f32));
    for _ in 0..iters {
        for c in acc.iter_mut() {
            for x in c.iter_mut() {
                *x = *x * m + a;
            }
        }
    }
    acc.iter().flatten().sum()
}

/// The chains as one vector register each, written with the instructions themselves: left to
/// the auto-vectoriser, an array of 12 × 16 lanes compiled for AVX-512 became gathers and
/// scatters across the chains (measured: 6 GFLOP/s on a CPU whose peak is over 300).
#[cfg(target_arch = "x86_64")]
mod vector {
    use super::CHAINS;
    use std::arch::x86_64::*;
    use std::hint::black_box;

    #[target_feature(enable = "avx512f")]
    pub(super) fn avx512(iters: usize, seed: f32) -> f32 {
        let mut acc = [_mm512_set1_ps(seed); CHAINS];
        let (m, a) = (
            _mm512_set1_ps(black_box(0.999)),
            _mm512_set1_ps(black_box(1e-3)),
        );
        for _ in 0..iters {
            for c in acc.iter_mut() {
                *c = _mm512_fmadd_ps(*c, m, a);
            }
        }
        acc.iter().map(|&c| _mm512_reduce_add_ps(c)).sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn avx2(iters: usize, seed: f32) -> f32 {
        let mut acc = [_mm256_set1_ps(seed); CHAINS];
        let (m, a) = (
            _mm256_set1_ps(black_box(0.999)),
            _mm256_set1_ps(black_box(1e-3)),
        );
        for _ in 0..iters {
            for c in acc.iter_mut() {
                *c = _mm256_fmadd_ps(*c, m, a);
            }
        }
        let mut lanes = [0.0f32; 8];
        let mut sum = 0.0;
        for c in acc {
            // SAFETY: `lanes` holds the 8 floats the unaligned store writes.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), c) };
            sum += lanes.iter().sum::<f32>();
        }
        sum
    }
}

/// The chains on the widest vectors this CPU has (one register per chain); returns the sum
/// and the lanes per chain. FMA counts 2 FLOP; the scalar fallback's multiply and add too.
fn chains_best_isa(iters: usize, seed: f32) -> (f32, usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature (checked just above).
            return (unsafe { vector::avx512(iters, seed) }, 16);
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return (unsafe { vector::avx2(iters, seed) }, 8);
        }
    }
    (chains_scalar::<4>(iters, seed), 4)
}

/// Peak f32 GFLOP/s of all the pool's threads together (best of three runs of ~0.1 s), and
/// the lanes per vector it used.
fn fma_peak(iters: usize) -> (f64, usize) {
    let threads = rayon::current_num_threads();
    let mut best = (0.0f64, 0);
    for run in 0..3 {
        let t0 = Instant::now();
        let (s, lanes): (f32, usize) = (0..threads)
            .into_par_iter()
            .map(|i| chains_best_isa(iters, (i + run) as f32 * 1e-3))
            .reduce(|| (0.0, 0), |a, b| (a.0 + b.0, a.1.max(b.1)));
        black_box(s);
        let flops = (threads * iters * CHAINS * lanes * 2) as f64;
        let gflops = flops / t0.elapsed().as_secs_f64() / 1e9;
        if gflops > best.0 {
            best = (gflops, lanes);
        }
    }
    best
}

/// Peak f32 GFLOP/s of all the pool's threads together (best of three runs of ~0.1 s).
pub fn fma_peak_gflops() -> f64 {
    fma_peak(8_000_000).0
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
        let (p, lanes) = super::fma_peak(2_000_000);
        let threads = rayon::current_num_threads();
        println!("measured peak: {p:.1} GFLOP/s on {threads} threads, {lanes} lanes");
        // Every core of any CPU this runs on issues at least one vector operation per cycle at
        // well over 0.25 GHz, even when other tests share it; none does 100 TFLOP/s. (A peak
        // loop the compiler turned into gathers measured 1 FLOP per cycle and fails this.)
        let floor = (threads * lanes * 2) as f64 * 0.25;
        assert!(p > floor && p < 1e5, "{p} GFLOP/s, floor {floor}");
    }
}
