//! Element-wise stages of the RWKV-7 time mixer on `f32` slices, each one pass instead of the
//! chain of full-size tensor ops (and their backward nodes) the model would otherwise build:
//!
//! - **token shift** of one mix: `out = x + (prev − x)·μ` over rows `[B, T, C]`, where `prev`
//!   is the previous token's row (`shift[b]` before the first token) and `μ` a `[C]` vector.
//!   Its gradients:
//!
//!   ```text
//!   dx[b, t]  = d[b, t]·(1 − μ) + d[b, t+1]·μ      (the second term for t + 1 < T)
//!   dshift[b] = d[b, 0]·μ
//!   dμ        = Σ_{b,t} d[b, t]·(prev[b, t] − x[b, t])
//!   ```
//!
//! - **decay**: `w = exp(−exp(ω))` with `ω = −softplus(−(z + w0)) − 0.5`. Since
//!   `−softplus(−u) = ln σ(u)`, `exp(ω) = e^{−1/2}·σ(u)` and `w = exp(−e^{−1/2}·σ(u))` — no
//!   logarithm, two exponentials. With `s = σ(u)`:
//!
//!   ```text
//!   dz  = d·(−e^{−1/2})·w·s·(1 − s)
//!   dw0 = Σ_rows dz
//!   ```
//!
//! - **output stage**: per token and head (rows of `N` of `[B, T, H·N]`), GroupNorm of the
//!   recurrence's output `y`, the `r·k` bonus and the gate:
//!
//!   ```text
//!   ŷ = (y − mean(y)) / √(var(y) + ε)        β = Σ_N r·k·r_k
//!   z = ŷ·lw + lb + β·v                       out = z·g
//!   ```
//!
//!   and its gradients, with `dz = d·g`, `dŷ = dz·lw`:
//!
//!   ```text
//!   dg = d·z    dlw = Σ dz·ŷ    dlb = Σ dz    dv = dz·β
//!   dy = (dŷ − mean(dŷ) − ŷ·mean(dŷ·ŷ)) / √(var(y) + ε)
//!   dβ = Σ_N dz·v    dr = dβ·k·r_k    dk = dβ·r·r_k    dr_k = Σ dβ·r·k
//!   ```
//!
//! Rows are split among threads in blocks; the `[C]` gradients are summed per block and then
//! over blocks.

use crate::activation::exp;
use crate::cpu::simd_kernel;
use rayon::prelude::*;

/// Elements per rayon task (whole rows of at least this many elements).
const PART: usize = 1 << 14;

/// `e^{−1/2}`: the decay's `exp(ω)` is this times `σ(z + w0)`.
const DECAY_SCALE: f32 = 0.606_530_66;

/// Rows per task for rows of `c` elements.
fn rows_per_task(c: usize) -> usize {
    PART.div_ceil(c.max(1))
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Checks `[B, T, C]` sizes of the token shift's slices.
fn check_shift(op: &str, x: &[f32], shift: &[f32], mu: &[f32], b: usize, t: usize, c: usize) {
    assert_eq!(
        x.len(),
        b * t * c,
        "{op}: `x` must be [B, T, C] = [{b}, {t}, {c}]"
    );
    assert_eq!(
        shift.len(),
        b * c,
        "{op}: `shift` must be [B, C] = [{b}, {c}]"
    );
    assert_eq!(mu.len(), c, "{op}: `mu` must be [C] = [{c}]");
}

#[inline(always)]
fn mix_row(x: &[f32], prev: &[f32], mu: &[f32], out: &mut [f32]) {
    for (((o, &x), &p), &m) in out.iter_mut().zip(x).zip(prev).zip(mu) {
        *o = x + (p - x) * m;
    }
}

simd_kernel!(
    /// [`mix_row`] for the best instruction set.
    mix_row_simd<> => mix_row(x: &[f32], prev: &[f32], mu: &[f32], out: &mut [f32])
);

/// The row before row `r` of `x [B, T, C]` in its sequence: `shift[b]` before the first.
#[inline]
fn prev_row<'a>(x: &'a [f32], shift: &'a [f32], r: usize, t: usize, c: usize) -> &'a [f32] {
    if r.is_multiple_of(t) {
        &shift[(r / t) * c..][..c]
    } else {
        &x[(r - 1) * c..][..c]
    }
}

/// The element-wise sum of per-task partial `[C]` sums.
fn sum_parts<'a>(parts: impl Iterator<Item = &'a [f32]>, c: usize) -> Vec<f32> {
    let mut sum = vec![0.0f32; c];
    for p in parts {
        sum.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    sum
}

/// `x + (prev − x)·μ` for rows `x [B, T, C]`, `shift [B, C]` the row before each sequence's
/// first, `mu [C]`.
pub fn token_mix(x: &[f32], shift: &[f32], mu: &[f32], b: usize, t: usize, c: usize) -> Vec<f32> {
    check_shift("token mix", x, shift, mu, b, t, c);
    let mut out = vec![0.0f32; x.len()];
    let rows = rows_per_task(c);
    out.par_chunks_mut(rows * c)
        .enumerate()
        .for_each(|(task, out)| {
            for (i, o) in out.chunks_exact_mut(c).enumerate() {
                let r = task * rows + i;
                mix_row_simd(&x[r * c..][..c], prev_row(x, shift, r, t, c), mu, o);
            }
        });
    out
}

/// One row's gradients: `dx` (when given) from this row's and the next row's output gradient,
/// and `dμ += d·(prev − x)`.
#[inline(always)]
fn mix_backward_row(
    x: &[f32],
    prev: &[f32],
    mu: &[f32],
    d: &[f32],
    d_next: Option<&[f32]>,
    dx: Option<&mut [f32]>,
    dmu: &mut [f32],
) {
    for i in 0..c_of(x, prev, mu, d, dmu) {
        dmu[i] += d[i] * (prev[i] - x[i]);
    }
    if let Some(dx) = dx {
        match d_next {
            Some(dn) => {
                for i in 0..c_of(x, prev, mu, d, dx).min(dn.len()) {
                    dx[i] = d[i] * (1.0 - mu[i]) + dn[i] * mu[i];
                }
            }
            None => {
                for i in 0..c_of(x, prev, mu, d, dx) {
                    dx[i] = d[i] * (1.0 - mu[i]);
                }
            }
        }
    }
}

/// The common length of a row's slices (lets the compiler drop the bounds checks).
#[inline(always)]
fn c_of(a: &[f32], b: &[f32], c: &[f32], d: &[f32], e: &[f32]) -> usize {
    a.len().min(b.len()).min(c.len()).min(d.len()).min(e.len())
}

simd_kernel!(
    /// [`mix_backward_row`] for the best instruction set.
    mix_backward_row_simd<> => mix_backward_row(
        x: &[f32],
        prev: &[f32],
        mu: &[f32],
        d: &[f32],
        d_next: Option<&[f32]>,
        dx: Option<&mut [f32]>,
        dmu: &mut [f32],
    )
);

/// The gradients `(dx, dshift, dμ)` of [`token_mix`] given its output's gradient `dout`;
/// `dx` is empty unless `need_dx` (an input that tracks no gradient needs none computed).
pub fn token_mix_backward(
    x: &[f32],
    shift: &[f32],
    mu: &[f32],
    dout: &[f32],
    (b, t, c): (usize, usize, usize),
    need_dx: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    check_shift("token mix backward", x, shift, mu, b, t, c);
    assert_eq!(
        dout.len(),
        x.len(),
        "token mix backward: `dout` must have x's shape"
    );
    let rows = rows_per_task(c);
    let tasks = (b * t).div_ceil(rows);
    let mut dx = if need_dx {
        vec![0.0f32; x.len()]
    } else {
        Vec::new()
    };
    // One block of dx rows per task (none when dx is not needed).
    let mut blocks: Vec<Option<&mut [f32]>> = if need_dx {
        dx.chunks_mut(rows * c).map(Some).collect()
    } else {
        (0..tasks).map(|_| None).collect()
    };
    let partials: Vec<Vec<f32>> = blocks
        .par_iter_mut()
        .enumerate()
        .map(|(task, block)| {
            let mut dmu = vec![0.0f32; c];
            let first = task * rows;
            let last = (first + rows).min(b * t);
            for r in first..last {
                let prev = prev_row(x, shift, r, t, c);
                let d_next = (r % t + 1 < t).then(|| &dout[(r + 1) * c..][..c]);
                let dx_row = block
                    .as_deref_mut()
                    .map(|blk| &mut blk[(r - first) * c..][..c]);
                mix_backward_row_simd(
                    &x[r * c..][..c],
                    prev,
                    mu,
                    &dout[r * c..][..c],
                    d_next,
                    dx_row,
                    &mut dmu,
                );
            }
            dmu
        })
        .collect();
    drop(blocks);
    let dmu = sum_parts(partials.iter().map(Vec::as_slice), c);
    let mut dshift = vec![0.0f32; b * c];
    for (bi, ds) in dshift.chunks_exact_mut(c).enumerate() {
        let d0 = &dout[bi * t * c..][..c];
        for ((ds, &d), &m) in ds.iter_mut().zip(d0).zip(mu) {
            *ds = d * m;
        }
    }
    (dx, dshift, dmu)
}

#[inline(always)]
fn decay_row(z: &[f32], w0: &[f32], w: &mut [f32]) {
    for ((w, &z), &w0) in w.iter_mut().zip(z).zip(w0) {
        *w = exp(-DECAY_SCALE * sigmoid(z + w0));
    }
}

#[inline(always)]
fn decay_backward_row(z: &[f32], w0: &[f32], d: &[f32], dz: &mut [f32], dw0: &mut [f32]) {
    for i in 0..c_of(z, w0, d, dz, dw0) {
        let s = sigmoid(z[i] + w0[i]);
        let w = exp(-DECAY_SCALE * s);
        let g = -d[i] * DECAY_SCALE * w * s * (1.0 - s);
        dz[i] = g;
        dw0[i] += g;
    }
}

simd_kernel!(
    /// [`decay_row`] for the best instruction set.
    decay_row_simd<> => decay_row(z: &[f32], w0: &[f32], w: &mut [f32])
);

simd_kernel!(
    /// [`decay_backward_row`] for the best instruction set.
    decay_backward_row_simd<> => decay_backward_row(
        z: &[f32],
        w0: &[f32],
        d: &[f32],
        dz: &mut [f32],
        dw0: &mut [f32],
    )
);

fn check_decay(op: &str, z: &[f32], w0: &[f32]) {
    let c = w0.len();
    assert!(
        c > 0 && z.len().is_multiple_of(c),
        "{op}: `z` ({} elements) must be rows of `w0`'s length {c}",
        z.len()
    );
}

/// The decay `exp(−exp(−softplus(−(z + w0)) − 0.5))` for rows `z [.., C]` and `w0 [C]`.
pub fn decay(z: &[f32], w0: &[f32]) -> Vec<f32> {
    check_decay("decay", z, w0);
    let c = w0.len();
    let mut w = vec![0.0f32; z.len()];
    let rows = rows_per_task(c);
    w.par_chunks_mut(rows * c)
        .zip(z.par_chunks(rows * c))
        .for_each(|(w, z)| {
            for (w, z) in w.chunks_exact_mut(c).zip(z.chunks_exact(c)) {
                decay_row_simd(z, w0, w);
            }
        });
    w
}

/// The gradients `(dz, dw0)` of [`decay`] given its output's gradient `dout`.
pub fn decay_backward(z: &[f32], w0: &[f32], dout: &[f32]) -> (Vec<f32>, Vec<f32>) {
    check_decay("decay backward", z, w0);
    assert_eq!(
        dout.len(),
        z.len(),
        "decay backward: `dout` must have z's shape"
    );
    let c = w0.len();
    let rows = rows_per_task(c);
    let mut dz = vec![0.0f32; z.len()];
    let partials: Vec<Vec<f32>> = dz
        .par_chunks_mut(rows * c)
        .zip(z.par_chunks(rows * c).zip(dout.par_chunks(rows * c)))
        .map(|(dz, (z, d))| {
            let mut dw0 = vec![0.0f32; c];
            for ((dz, z), d) in dz
                .chunks_exact_mut(c)
                .zip(z.chunks_exact(c))
                .zip(d.chunks_exact(c))
            {
                decay_backward_row_simd(z, w0, d, dz, &mut dw0);
            }
            dw0
        })
        .collect();
    (dz, sum_parts(partials.iter().map(Vec::as_slice), c))
}

/// The output stage's per-token inputs, rows of `C = H·N` (`y` the recurrence's output, `r`,
/// `k`, `v` as it took them, `g` the gate), for a block of rows or all of them.
#[derive(Clone, Copy)]
pub struct OutputRows<'a> {
    pub y: &'a [f32],
    pub r: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub g: &'a [f32],
}

impl<'a> OutputRows<'a> {
    /// Rows `first..first + count` of rows of `c`.
    fn block(&self, first: usize, count: usize, c: usize) -> OutputRows<'a> {
        let s = |x: &'a [f32]| &x[first * c..(first + count) * c];
        OutputRows {
            y: s(self.y),
            r: s(self.r),
            k: s(self.k),
            v: s(self.v),
            g: s(self.g),
        }
    }
}

/// The output stage's parameters, each `[C]`: the bonus weights `r_k` and GroupNorm's weight
/// `lw` and bias `lb`, with its `eps` and the head size `n`.
#[derive(Clone, Copy)]
pub struct OutputParams<'a> {
    pub r_k: &'a [f32],
    pub lw: &'a [f32],
    pub lb: &'a [f32],
    pub n: usize,
    pub eps: f32,
}

/// The gradients of [`output`]'s inputs and parameters.
pub struct OutputGrads {
    pub dy: Vec<f32>,
    pub dr: Vec<f32>,
    pub dk: Vec<f32>,
    pub dv: Vec<f32>,
    pub dg: Vec<f32>,
    pub dr_k: Vec<f32>,
    pub dlw: Vec<f32>,
    pub dlb: Vec<f32>,
}

/// One head's mean, `1/√(var + ε)` and bonus `Σ r·k·r_k`.
#[inline(always)]
fn head_stats(y: &[f32], r: &[f32], k: &[f32], r_k: &[f32], eps: f32) -> (f32, f32, f32) {
    let n = y.len();
    let mean = y.iter().sum::<f32>() / n as f32;
    let var = y.iter().map(|&y| (y - mean) * (y - mean)).sum::<f32>() / n as f32;
    let bonus = r
        .iter()
        .zip(k)
        .zip(r_k)
        .map(|((&r, &k), &w)| r * k * w)
        .sum::<f32>();
    (mean, 1.0 / (var + eps).sqrt(), bonus)
}

#[inline(always)]
fn output_block(x: &OutputRows, p: &OutputParams, out: &mut [f32]) {
    let (c, n) = (p.lw.len(), p.n);
    for (row, o) in out.chunks_exact_mut(c).enumerate() {
        let at = row * c;
        for h in (0..c).step_by(n) {
            let (i, hd) = (at + h, h..h + n);
            let (y, v, g) = (&x.y[i..i + n], &x.v[i..i + n], &x.g[i..i + n]);
            let (mean, inv, bonus) =
                head_stats(y, &x.r[i..i + n], &x.k[i..i + n], &p.r_k[hd.clone()], p.eps);
            let (lw, lb) = (&p.lw[hd.clone()], &p.lb[hd.clone()]);
            for (j, o) in o[hd].iter_mut().enumerate() {
                *o = ((y[j] - mean) * inv * lw[j] + lb[j] + bonus * v[j]) * g[j];
            }
        }
    }
}

simd_kernel!(
    /// [`output_block`] for the best instruction set.
    output_block_simd<> => output_block(x: &OutputRows, p: &OutputParams, out: &mut [f32])
);

/// One block's gradient outputs: full-size rows, and the block's partial `[C]` sums.
struct OutputGradBlock<'a> {
    dy: &'a mut [f32],
    dr: &'a mut [f32],
    dk: &'a mut [f32],
    dv: &'a mut [f32],
    dg: &'a mut [f32],
    dr_k: Vec<f32>,
    dlw: Vec<f32>,
    dlb: Vec<f32>,
}

#[inline(always)]
fn output_backward_block(x: &OutputRows, p: &OutputParams, dout: &[f32], gr: &mut OutputGradBlock) {
    let (c, n) = (p.lw.len(), p.n);
    let nf = n as f32;
    for row in 0..dout.len() / c {
        for h in (0..c).step_by(n) {
            let i = row * c + h;
            let hd = h..h + n;
            let (y, r, k, v, g) = (
                &x.y[i..i + n],
                &x.r[i..i + n],
                &x.k[i..i + n],
                &x.v[i..i + n],
                &x.g[i..i + n],
            );
            let (r_k, lw, lb) = (&p.r_k[hd.clone()], &p.lw[hd.clone()], &p.lb[hd.clone()]);
            let d = &dout[i..i + n];
            let (mean, inv, bonus) = head_stats(y, r, k, r_k, p.eps);
            // dz = d·g (kept in dy until dy is computed), dg = d·z, the parameters' sums,
            // dβ and the two means dy needs.
            let (mut dbeta, mut m1, mut m2) = (0.0f32, 0.0f32, 0.0f32);
            {
                let dz = &mut gr.dy[i..i + n];
                let dg = &mut gr.dg[i..i + n];
                let dv = &mut gr.dv[i..i + n];
                let (dlw, dlb) = (&mut gr.dlw[hd.clone()], &mut gr.dlb[hd.clone()]);
                for j in 0..n {
                    let yn = (y[j] - mean) * inv;
                    let z = yn * lw[j] + lb[j] + bonus * v[j];
                    let dzj = d[j] * g[j];
                    dg[j] = d[j] * z;
                    dlw[j] += dzj * yn;
                    dlb[j] += dzj;
                    dv[j] = dzj * bonus;
                    dbeta += dzj * v[j];
                    let dyn_ = dzj * lw[j];
                    m1 += dyn_;
                    m2 += dyn_ * yn;
                    dz[j] = dyn_;
                }
            }
            let (m1, m2) = (m1 / nf, m2 / nf);
            let dy = &mut gr.dy[i..i + n];
            for j in 0..n {
                let yn = (y[j] - mean) * inv;
                dy[j] = (dy[j] - m1 - yn * m2) * inv;
            }
            let (dr, dk) = (&mut gr.dr[i..i + n], &mut gr.dk[i..i + n]);
            let dr_k = &mut gr.dr_k[hd];
            for j in 0..n {
                dr[j] = dbeta * k[j] * r_k[j];
                dk[j] = dbeta * r[j] * r_k[j];
                dr_k[j] += dbeta * r[j] * k[j];
            }
        }
    }
}

simd_kernel!(
    /// [`output_backward_block`] for the best instruction set.
    output_backward_block_simd<> => output_backward_block(
        x: &OutputRows,
        p: &OutputParams,
        dout: &[f32],
        gr: &mut OutputGradBlock,
    )
);

fn check_output(op: &str, x: &OutputRows, p: &OutputParams) -> usize {
    let c = p.lw.len();
    assert!(
        p.n > 0 && c.is_multiple_of(p.n) && p.r_k.len() == c && p.lb.len() == c,
        "{op}: `r_k`, `lw`, `lb` must be [C] with C a multiple of the head size {}",
        p.n
    );
    let len = x.y.len();
    for (name, z) in [("r", x.r), ("k", x.k), ("v", x.v), ("g", x.g)] {
        assert_eq!(z.len(), len, "{op}: `{name}` must have y's shape");
    }
    assert_eq!(len % c, 0, "{op}: `y` must be rows of C = {c}");
    len / c
}

/// The output stage `(GroupNorm(y)·lw + lb + (Σ_N r·k·r_k)·v)·g`, rows `[.., C]`.
pub fn output(x: &OutputRows, p: &OutputParams) -> Vec<f32> {
    let c = p.lw.len();
    let rows = check_output("mixer output", x, p);
    let per = rows_per_task(c);
    let mut out = vec![0.0f32; rows * c];
    out.par_chunks_mut(per * c)
        .enumerate()
        .for_each(|(task, o)| {
            let xb = x.block(task * per, o.len() / c, c);
            output_block_simd(&xb, p, o);
        });
    out
}

/// The gradients of [`output`] given its output's gradient `dout`.
pub fn output_backward(x: &OutputRows, p: &OutputParams, dout: &[f32]) -> OutputGrads {
    let c = p.lw.len();
    let rows = check_output("mixer output backward", x, p);
    assert_eq!(
        dout.len(),
        rows * c,
        "mixer output backward: `dout` must have y's shape"
    );
    let per = rows_per_task(c);
    let full = || vec![0.0f32; rows * c];
    let (mut dy, mut dr, mut dk, mut dv, mut dg) = (full(), full(), full(), full(), full());
    let partials: Vec<[Vec<f32>; 3]> = dy
        .par_chunks_mut(per * c)
        .zip(dr.par_chunks_mut(per * c))
        .zip(dk.par_chunks_mut(per * c))
        .zip(dv.par_chunks_mut(per * c))
        .zip(dg.par_chunks_mut(per * c))
        .enumerate()
        .map(|(task, ((((dy, dr), dk), dv), dg))| {
            let count = dy.len() / c;
            let xb = x.block(task * per, count, c);
            let mut gr = OutputGradBlock {
                dy,
                dr,
                dk,
                dv,
                dg,
                dr_k: vec![0.0; c],
                dlw: vec![0.0; c],
                dlb: vec![0.0; c],
            };
            output_backward_block_simd(&xb, p, &dout[task * per * c..][..count * c], &mut gr);
            [gr.dr_k, gr.dlw, gr.dlb]
        })
        .collect();
    let [dr_k, dlw, dlb] = [0, 1, 2].map(|j| sum_parts(partials.iter().map(|p| &p[j][..]), c));
    OutputGrads {
        dy,
        dr,
        dk,
        dv,
        dg,
        dr_k,
        dlw,
        dlb,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(n: usize, f: f32, amp: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32) * f).sin() * amp).collect()
    }

    fn close(got: f32, want: f64, what: &str) {
        let err = (got as f64 - want).abs() / want.abs().max(1.0);
        assert!(err < 2e-6, "{what}: {got} against {want}");
    }

    #[test]
    fn token_mix_and_its_gradients_match_the_formulas_in_f64() {
        // Rows of 37 so that tasks end mid-sequence; 3 sequences of 700 tokens.
        let (b, t, c) = (3, 700, 37);
        let x = wave(b * t * c, 0.37, 2.0);
        let shift = wave(b * c, 0.91, 1.0);
        let mu = wave(c, 0.29, 1.0);
        let d = wave(b * t * c, 0.05, 1.0);
        let out = token_mix(&x, &shift, &mu, b, t, c);
        let (dx, dshift, dmu) = token_mix_backward(&x, &shift, &mu, &d, (b, t, c), true);
        let (none, _, dmu2) = token_mix_backward(&x, &shift, &mu, &d, (b, t, c), false);
        assert!(none.is_empty());
        let prev = |bi: usize, ti: usize, j: usize| -> f64 {
            if ti == 0 {
                shift[bi * c + j] as f64
            } else {
                x[(bi * t + ti - 1) * c + j] as f64
            }
        };
        let mut want_dmu = vec![0.0f64; c];
        for bi in 0..b {
            for ti in 0..t {
                for j in 0..c {
                    let i = (bi * t + ti) * c + j;
                    let (xv, m, dv) = (x[i] as f64, mu[j] as f64, d[i] as f64);
                    close(out[i], xv + (prev(bi, ti, j) - xv) * m, "out");
                    let next = if ti + 1 < t { d[i + c] as f64 * m } else { 0.0 };
                    close(dx[i], dv * (1.0 - m) + next, "dx");
                    want_dmu[j] += dv * (prev(bi, ti, j) - xv);
                }
            }
            for j in 0..c {
                close(
                    dshift[bi * c + j],
                    d[bi * t * c + j] as f64 * mu[j] as f64,
                    "dshift",
                );
            }
        }
        for j in 0..c {
            let err = (dmu[j] as f64 - want_dmu[j]).abs() / want_dmu[j].abs().max(1.0);
            assert!(err < 1e-5, "dmu[{j}]: {} against {}", dmu[j], want_dmu[j]);
            assert_eq!(
                dmu[j], dmu2[j],
                "dmu does not depend on whether dx is computed"
            );
        }
    }

    #[test]
    fn decay_and_its_gradients_match_the_formulas_in_f64() {
        let c = 53;
        let rows = 3 * rows_per_task(c) + 5;
        // z + w0 from about −30 to 30: both tails of the sigmoid.
        let z = wave(rows * c, 0.37, 24.0);
        let w0 = wave(c, 0.7, 6.0);
        let d = wave(rows * c, 0.05, 1.0);
        let w = decay(&z, &w0);
        let (dz, dw0) = decay_backward(&z, &w0, &d);
        let mut want_dw0 = vec![0.0f64; c];
        for r in 0..rows {
            for j in 0..c {
                let i = r * c + j;
                let u = z[i] as f64 + w0[j] as f64;
                // The defining formula, with softplus(y) = ln(1 + e^y).
                let omega = -(1.0 + (-u).exp()).ln() - 0.5;
                let want = (-omega.exp()).exp();
                close(w[i], want, "w");
                let s = 1.0 / (1.0 + (-u).exp());
                let g = -(d[i] as f64) * (-0.5f64).exp() * want * s * (1.0 - s);
                close(dz[i], g, "dz");
                want_dw0[j] += g;
            }
        }
        for j in 0..c {
            let err = (dw0[j] as f64 - want_dw0[j]).abs() / want_dw0[j].abs().max(1.0);
            assert!(err < 1e-5, "dw0[{j}]: {} against {}", dw0[j], want_dw0[j]);
        }
        // The bounds the recurrence relies on: w in (e^{−e^{−1/2}}, 1).
        assert!(w.iter().all(|&w| w > 0.5452 && w <= 1.0));
    }

    #[test]
    #[should_panic(expected = "`shift` must be [B, C]")]
    fn token_mix_rejects_a_wrong_shift() {
        token_mix(&[0.0; 12], &[0.0; 3], &[0.0; 3], 2, 2, 3);
    }
}
