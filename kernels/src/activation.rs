//! Element-wise functions the models spend time in, on `f32` slices: an `exp` in plain
//! arithmetic that the compiler vectorises, and the SwiGLU gate `silu(g) ⊙ u` with its
//! backward. The C library's `expf`, called once per element (by the backend's `exp`, `sigmoid`
//! and `silu`, and by the attention softmax), was 5–9 % of a training step's samples.
//!
//! SwiGLU, with `s = σ(g) = 1 / (1 + e^{−g})`:
//!
//! ```text
//! out = g·s·u
//! ∂out/∂u = g·s
//! ∂out/∂g = u·s·(1 + g·(1 − s))
//! ```

use crate::cpu::simd_kernel;
use rayon::prelude::*;

/// Elements per rayon task.
const PART: usize = 1 << 14;

/// `e^x`, within 2 ulp of the correctly rounded value for `x` in `[−87.3, 88.7]` (tested
/// against `f32::exp`); 0 below (where the result would be subnormal, and at −∞), +∞ above,
/// NaN for NaN. Branch-free, so a loop over it vectorises.
///
/// `x = n·ln 2 + r` with `n` the nearest integer to `x·log₂e` and `|r| ≤ ln 2 / 2`; `e^r` is
/// its Taylor polynomial of degree 7 (truncation error below 6e-9 relative), and `2^n` is
/// built in the exponent bits, as two factors so that each stays a normal number.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LO: f32 = -87.33;
    const HI: f32 = 88.72;
    // 1.5·2²³: adding it rounds a float of magnitude below 2²² to an integer (ties to even),
    // readable from the low bits.
    const SHIFT: f32 = 12_582_912.0;
    // ln 2 in two parts: n·LN2_HI is exact for |n| < 2¹⁵.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(LO, HI);
    let t = xc * std::f32::consts::LOG2_E + SHIFT;
    let n = t.to_bits() as i32 - SHIFT.to_bits() as i32;
    let nf = t - SHIFT;
    let r = (xc - nf * LN2_HI) - nf * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let half = n >> 1;
    let scale_a = f32::from_bits(((half + 127) as u32) << 23);
    let scale_b = f32::from_bits(((n - half + 127) as u32) << 23);
    let y = p * scale_a * scale_b;
    if x.is_nan() {
        x
    } else if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        y
    }
}

/// `σ(x) = 1 / (1 + e^{−x})`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
fn swiglu_part(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = g * sigmoid(g) * u;
    }
}

#[inline(always)]
fn swiglu_backward_part(g: &[f32], u: &[f32], dout: &[f32], dg: &mut [f32], du: &mut [f32]) {
    for i in 0..dout
        .len()
        .min(g.len())
        .min(u.len())
        .min(dg.len())
        .min(du.len())
    {
        let (g, u, d) = (g[i], u[i], dout[i]);
        let s = sigmoid(g);
        du[i] = d * g * s;
        dg[i] = d * u * s * (1.0 + g * (1.0 - s));
    }
}

simd_kernel!(
    /// [`swiglu_part`] for the best instruction set.
    swiglu_simd<> => swiglu_part(g: &[f32], u: &[f32], out: &mut [f32])
);

simd_kernel!(
    /// [`swiglu_backward_part`] for the best instruction set.
    swiglu_backward_simd<> => swiglu_backward_part(
        g: &[f32],
        u: &[f32],
        dout: &[f32],
        dg: &mut [f32],
        du: &mut [f32],
    )
);

fn check(op: &str, g: &[f32], others: &[(&str, &[f32])]) {
    for (name, x) in others {
        assert_eq!(
            x.len(),
            g.len(),
            "{op}: `{name}` has {} elements but the gate has {}",
            x.len(),
            g.len()
        );
    }
}

/// `silu(g) ⊙ u`, element by element.
pub fn swiglu(g: &[f32], u: &[f32]) -> Vec<f32> {
    check("swiglu", g, &[("u", u)]);
    let mut out = vec![0.0f32; g.len()];
    out.par_chunks_mut(PART)
        .zip(g.par_chunks(PART).zip(u.par_chunks(PART)))
        .for_each(|(o, (g, u))| swiglu_simd(g, u, o));
    out
}

/// The gradients `(dg, du)` of [`swiglu`] given its output's gradient `dout`.
pub fn swiglu_backward(g: &[f32], u: &[f32], dout: &[f32]) -> (Vec<f32>, Vec<f32>) {
    check("swiglu backward", g, &[("u", u), ("dout", dout)]);
    let mut dg = vec![0.0f32; g.len()];
    let mut du = vec![0.0f32; g.len()];
    dg.par_chunks_mut(PART)
        .zip(du.par_chunks_mut(PART))
        .zip(g.par_chunks(PART).zip(u.par_chunks(PART)))
        .zip(dout.par_chunks(PART))
        .for_each(|(((dg, du), (g, u)), d)| swiglu_backward_simd(g, u, d, dg, du));
    (dg, du)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_library_over_its_range() {
        let mut worst = (0u32, 0.0f32);
        let mut x = -87.3f32;
        while x < 88.7 {
            let e = ulps(exp(x), x.exp());
            if e > worst.0 {
                worst = (e, x);
            }
            x += 1.7e-4;
        }
        for x in [
            0.0f32, -0.0, 1e-30, -1e-30, 0.5, -0.5, 1.0, -1.0, 20.0, -20.0,
        ] {
            assert!(ulps(exp(x), x.exp()) <= 2, "x = {x}");
        }
        assert!(worst.0 <= 2, "{} ulp at x = {}", worst.0, worst.1);
    }

    #[test]
    fn exp_limits_and_nan() {
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn swiglu_and_its_gradients_match_the_formulas_in_f64() {
        let n = 3 * PART + 17; // several tasks and a ragged end
        let g: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin() * 12.0).collect();
        let u: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.11).cos() * 3.0).collect();
        let d: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.05).sin()).collect();
        let out = swiglu(&g, &u);
        let (dg, du) = swiglu_backward(&g, &u, &d);
        for i in 0..n {
            let (g, u, d) = (g[i] as f64, u[i] as f64, d[i] as f64);
            let s = 1.0 / (1.0 + (-g).exp());
            let want = [g * s * u, d * u * s * (1.0 + g * (1.0 - s)), d * g * s];
            for (got, want) in [out[i], dg[i], du[i]].into_iter().zip(want) {
                let err = (got as f64 - want).abs() / want.abs().max(1.0);
                assert!(err < 1e-6, "element {i}: {got} against {want}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "`u` has 3 elements but the gate has 4")]
    fn swiglu_rejects_mismatched_lengths() {
        swiglu(&[0.0; 4], &[0.0; 3]);
    }
}
