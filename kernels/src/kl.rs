//! The distillation loss's forward KL divergence, row by row over a vocabulary, on `f32`
//! slices: `KL(p_t ‖ p_s)` per position for teacher and student logits at temperature τ, and
//! its gradient with respect to the student's logits. Built from tensor ops the same loss
//! makes about ten vocabulary-sized temporaries (two log-softmaxes, an exponential, a
//! difference, a product, and their gradients), each ~100 MB at 512 positions of a
//! 49,152-token vocabulary; here a row (~200 KB) stays in cache and only the gradient is
//! vocabulary-sized.
//!
//! With `a = t/τ`, `b = s/τ`, `p_t = softmax(a)`, `p_s = softmax(b)`:
//!
//! ```text
//! KL      = Σ_j p_t[j] · ((a[j] − lse(a)) − (b[j] − lse(b)))
//! ∂KL/∂s  = (p_s − p_t) / τ
//! ```

use crate::activation::exp;
use crate::cpu::simd_kernel;
use rayon::prelude::*;

/// `Σ x`, in eight interleaved partial sums (one vector register of them).
#[inline(always)]
fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// `ln Σ_j e^{x[j]·inv_tau}`, the terms written to `scratch` on the way (a loop that only
/// maps vectorises; one that also sums does not).
#[inline(always)]
fn log_sum_exp(x: &[f32], inv_tau: f32, scratch: &mut [f32]) -> f32 {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * inv_tau;
    if max == f32::NEG_INFINITY {
        return max;
    }
    for (e, &v) in scratch.iter_mut().zip(x) {
        *e = exp(v * inv_tau - max);
    }
    max + lane_sum(&scratch[..x.len()]).ln()
}

/// One row: `(KL, lse(t/τ), lse(s/τ))`; `scratch` holds a row.
#[inline(always)]
fn row_forward(t: &[f32], s: &[f32], inv_tau: f32, scratch: &mut [f32]) -> (f32, f32, f32) {
    let n = t.len().min(s.len()).min(scratch.len());
    let (t, s, scratch) = (&t[..n], &s[..n], &mut scratch[..n]);
    let lt = log_sum_exp(t, inv_tau, scratch);
    let ls = log_sum_exp(s, inv_tau, scratch);
    for ((e, &tj), &sj) in scratch.iter_mut().zip(t).zip(s) {
        let (a, b) = (tj * inv_tau - lt, sj * inv_tau - ls);
        let p = exp(a);
        // 0 · (−∞) is 0 here: a token the teacher rules out adds nothing.
        *e = if p == 0.0 { 0.0 } else { p * (a - b) };
    }
    (lane_sum(scratch), lt, ls)
}

/// One row's gradient `g · (p_s − p_t) / τ` into `ds`.
#[inline(always)]
fn row_backward(t: &[f32], s: &[f32], (lt, ls): (f32, f32), g: f32, inv_tau: f32, ds: &mut [f32]) {
    let n = t.len().min(s.len()).min(ds.len());
    let scale = g * inv_tau;
    for j in 0..n {
        ds[j] = scale * (exp(s[j] * inv_tau - ls) - exp(t[j] * inv_tau - lt));
    }
}

simd_kernel!(
    /// [`row_forward`] for the best instruction set.
    row_forward_simd<> => row_forward(
        t: &[f32],
        s: &[f32],
        inv_tau: f32,
        scratch: &mut [f32],
    ) -> (f32, f32, f32)
);

simd_kernel!(
    /// [`row_backward`] for the best instruction set.
    row_backward_simd<> => row_backward(
        t: &[f32],
        s: &[f32],
        lse: (f32, f32),
        g: f32,
        inv_tau: f32,
        ds: &mut [f32],
    )
);

fn check(t: &[f32], s: &[f32], vocab: usize, tau: f32) -> usize {
    assert!(vocab > 0, "kl: empty vocabulary");
    assert!(
        tau.is_finite() && tau > 0.0,
        "kl: the temperature must be positive, got {tau}"
    );
    assert_eq!(
        t.len(),
        s.len(),
        "kl: teacher and student logits differ in size ({} and {})",
        t.len(),
        s.len()
    );
    assert!(
        t.len().is_multiple_of(vocab),
        "kl: {} logits are not rows of {vocab}",
        t.len()
    );
    t.len() / vocab
}

/// `KL(softmax(t/τ) ‖ softmax(s/τ))` of each row of `vocab` logits, and what [`backward`]
/// needs: each row's two log-sum-exps, `[rows, 2]`.
pub fn forward(t: &[f32], s: &[f32], vocab: usize, tau: f32) -> (Vec<f32>, Vec<f32>) {
    let rows = check(t, s, vocab, tau);
    let mut kl = vec![0.0f32; rows];
    let mut lse = vec![0.0f32; 2 * rows];
    kl.par_iter_mut()
        .zip(lse.par_chunks_mut(2))
        .zip(t.par_chunks(vocab).zip(s.par_chunks(vocab)))
        .for_each_init(
            || vec![0.0f32; vocab],
            |scratch, ((kl, lse), (t, s))| {
                let (k, lt, ls) = row_forward_simd(t, s, 1.0 / tau, scratch);
                *kl = k;
                lse.copy_from_slice(&[lt, ls]);
            },
        );
    (kl, lse)
}

/// The gradient with respect to the student's logits `s`, given each row's gradient `grad`
/// and the forward's `lse`.
pub fn backward(
    t: &[f32],
    s: &[f32],
    lse: &[f32],
    grad: &[f32],
    vocab: usize,
    tau: f32,
) -> Vec<f32> {
    let rows = check(t, s, vocab, tau);
    assert_eq!(lse.len(), 2 * rows, "kl backward: lse must be [rows, 2]");
    assert_eq!(grad.len(), rows, "kl backward: one gradient per row");
    let mut ds = vec![0.0f32; t.len()];
    ds.par_chunks_mut(vocab)
        .zip(t.par_chunks(vocab).zip(s.par_chunks(vocab)))
        .zip(lse.par_chunks(2).zip(grad.par_iter()))
        .for_each(|((ds, (t, s)), (lse, &g))| {
            row_backward_simd(t, s, (lse[0], lse[1]), g, 1.0 / tau, ds)
        });
    ds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(t: &[f32], s: &[f32], tau: f64) -> (f64, Vec<f64>) {
        let softmax = |x: &[f32]| {
            let m = x.iter().map(|&v| v as f64 / tau).fold(f64::MIN, f64::max);
            let e: Vec<f64> = x.iter().map(|&v| (v as f64 / tau - m).exp()).collect();
            let z: f64 = e.iter().sum();
            e.into_iter().map(|v| v / z).collect::<Vec<_>>()
        };
        let (pt, ps) = (softmax(t), softmax(s));
        let kl = pt.iter().zip(&ps).map(|(a, b)| a * (a / b).ln()).sum();
        let ds = pt.iter().zip(&ps).map(|(a, b)| (b - a) / tau).collect();
        (kl, ds)
    }

    #[test]
    fn matches_an_f64_reference_per_row() {
        let vocab = 1003; // not a multiple of the lanes
        let rows = 5;
        let t: Vec<f32> = (0..rows * vocab)
            .map(|i| ((i as f32) * 0.37).sin() * 6.0)
            .collect();
        let s: Vec<f32> = (0..rows * vocab)
            .map(|i| ((i as f32) * 0.23).cos() * 5.0)
            .collect();
        let grad: Vec<f32> = (0..rows).map(|r| 0.5 + r as f32).collect();
        for tau in [1.0f32, 2.0] {
            let (kl, lse) = forward(&t, &s, vocab, tau);
            let ds = backward(&t, &s, &lse, &grad, vocab, tau);
            for r in 0..rows {
                let row = r * vocab..(r + 1) * vocab;
                let (want, want_ds) = reference(&t[row.clone()], &s[row.clone()], tau as f64);
                assert!(
                    (kl[r] as f64 - want).abs() < 1e-5 * want.max(1.0),
                    "row {r}, τ {tau}: {} against {want}",
                    kl[r]
                );
                let big = want_ds.iter().fold(0f64, |m, x| m.max(x.abs()));
                for (j, (&got, w)) in ds[row].iter().zip(want_ds).enumerate() {
                    let err = (got as f64 - grad[r] as f64 * w).abs();
                    assert!(
                        err < 1e-5 * big * grad[r] as f64,
                        "row {r}, τ {tau}, token {j}: error {err:e}, largest {big:e}"
                    );
                }
            }
        }
    }

    #[test]
    fn equal_rows_have_zero_divergence_and_gradient() {
        let t: Vec<f32> = (0..64).map(|i| i as f32 * 0.1).collect();
        let (kl, lse) = forward(&t, &t, 64, 1.0);
        assert!(kl[0].abs() < 1e-6, "{}", kl[0]);
        let ds = backward(&t, &t, &lse, &[1.0], 64, 1.0);
        assert!(ds.iter().all(|d| d.abs() < 1e-7));
    }

    #[test]
    #[should_panic(expected = "are not rows of 7")]
    fn rejects_ragged_rows() {
        forward(&[0.0; 10], &[0.0; 10], 7, 1.0);
    }
}
