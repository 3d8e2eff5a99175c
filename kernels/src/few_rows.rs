//! Matrix products with few rows, `y [M, N] = x [M, K] · W`, for decoding (one row per sequence
//! being decoded, M ≤ [`MAX_ROWS`]), over plain `f32` slices.
//!
//! A general GEMM packs its right-hand side into panels before multiplying, which pays off when
//! many rows share each packed panel; with a handful of rows the packing (a read and a write of
//! every weight) is a large part of the work. Here every weight is read once, straight from
//! its row-major layout:
//! - `W [K, N]` ([`matmul`]): in register tiles of up to 4 rows of `x` × a strip of
//!   [`STRIP_AVX512`] (or [`STRIP`]) columns of `W`, walking down the strip one row of `W` at a
//!   time, the tile's sums held in registers; the last `N mod strip` columns row by row, each
//!   row of `x` adding its multiple of a piece of a row of `W` to accumulators in L1;
//! - `W` given as `[N, K]`, i.e. `x · Wᵀ` ([`matmul_transposed`], the tied embedding as the
//!   output head): as dot products in register tiles of up to 4 rows of `x` × 2 rows of `W`.
//!
//! Strips (or column blocks) run in parallel (rayon); each output is the same sum in the same
//! order on any number of threads and with any instruction set.

use crate::cpu::{SimdLevel, simd_kernel, simd_level};
use rayon::prelude::*;

/// The most rows these kernels take; more rows are a job for a GEMM.
pub const MAX_ROWS: usize = 16;

/// Rows per register tile of [`matmul_transposed`].
const R: usize = 4;
/// Lanes of the dot products of [`matmul_transposed`].
const LANES: usize = 8;
/// Output columns per parallel task of [`matmul_transposed`], and the row width of
/// [`kn_block`]'s accumulators.
const BLOCK: usize = 256;
/// Columns of a register tile of [`matmul`] with AVX-512: 4 rows × 6 vectors of 16 lanes keep
/// 24 of the 32 vector registers for the sums.
pub const STRIP_AVX512: usize = 96;
/// Columns of a register tile of [`matmul`] with AVX2 or the baseline: 2 rows × 4 vectors of 8
/// lanes (8 of the 16 vector registers).
pub const STRIP: usize = 32;

/// `x [m, k] · w [k, n]`, row-major; returns `[m, n]`.
pub fn matmul(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    check(x, w, m, k, n);
    let wide = simd_level() == SimdLevel::Avx512;
    // Half-width strips where the full ones would leave threads idle.
    let narrow = n < 2 * rayon::current_num_threads() * STRIP_AVX512;
    match (wide, narrow, m) {
        (true, false, 1) => tiled::<1, STRIP_AVX512>(x, w, m, k, n),
        (true, false, 2) => tiled::<2, STRIP_AVX512>(x, w, m, k, n),
        (true, false, _) => tiled::<4, STRIP_AVX512>(x, w, m, k, n),
        (true, true, 1) => tiled::<1, { STRIP_AVX512 / 2 }>(x, w, m, k, n),
        (true, true, 2) => tiled::<2, { STRIP_AVX512 / 2 }>(x, w, m, k, n),
        (true, true, _) => tiled::<4, { STRIP_AVX512 / 2 }>(x, w, m, k, n),
        (false, _, 1) => tiled::<1, STRIP>(x, w, m, k, n),
        (false, _, _) => tiled::<2, STRIP>(x, w, m, k, n),
    }
}

/// [`matmul`] in tiles of `RT` rows × `CW` columns: the rows of `x` in groups of `RT`
/// (interleaved, so that a tile reads its `RT` values of one column of `x` together; zero rows
/// pad the last group), each strip of `CW` columns one parallel task over every group; the last
/// `n mod CW` columns by [`kn_block`].
fn tiled<const RT: usize, const CW: usize>(
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    let groups = m.div_ceil(RT);
    let mut xt = vec![0.0f32; groups * k * RT];
    for (row, xr) in x.chunks_exact(k).enumerate() {
        let group = &mut xt[(row / RT) * k * RT..(row / RT + 1) * k * RT];
        for (c, &v) in xr.iter().enumerate() {
            group[c * RT + row % RT] = v;
        }
    }
    let strips = n / CW;
    let parts: Vec<Vec<f32>> = (0..strips)
        .into_par_iter()
        .map(|s| {
            let mut out = vec![0.0f32; groups * RT * CW];
            for (g, tile) in out.chunks_exact_mut(RT * CW).enumerate() {
                kn_tile_simd::<RT, CW>(&xt[g * k * RT..(g + 1) * k * RT], w, k, n, s * CW, tile);
            }
            out
        })
        .collect();
    let mut y = vec![0.0f32; m * n];
    for (s, part) in parts.iter().enumerate() {
        for (row, dst) in y.chunks_exact_mut(n).enumerate() {
            dst[s * CW..(s + 1) * CW].copy_from_slice(&part[row * CW..(row + 1) * CW]);
        }
    }
    let c0 = strips * CW;
    if c0 < n {
        let width = n - c0;
        let mut out = vec![0.0f32; m * BLOCK];
        kn_block_simd(x, w, k, n, c0, width, &mut out);
        for (row, dst) in y.chunks_exact_mut(n).enumerate() {
            dst[c0..].copy_from_slice(&out[row * BLOCK..row * BLOCK + width]);
        }
    }
    y
}

/// `x [m, k] · wᵀ` with `w` row-major `[n, k]`; returns `[m, n]`.
pub fn matmul_transposed(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    check(x, w, m, k, n);
    // Row tiles of 1, 2 or 4 (padded with zero rows): one row is not padded to four.
    let rt = m.next_power_of_two().min(R);
    let xp = padded_rows(x, m, k, rt);
    let mp = xp.len() / k;
    blocks(m, mp, n, |c0, width, out| match rt {
        1 => nk_block_simd::<1>(&xp, w, k, c0, width, out),
        2 => nk_block_simd::<2>(&xp, w, k, c0, width, out),
        _ => nk_block_simd::<R>(&xp, w, k, c0, width, out),
    })
}

fn check(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) {
    assert!(
        (1..=MAX_ROWS).contains(&m),
        "few-rows matmul: {m} rows (1..={MAX_ROWS})"
    );
    assert_eq!(x.len(), m * k, "few-rows matmul: x must be [{m}, {k}]");
    assert_eq!(
        w.len(),
        k * n,
        "few-rows matmul: w must hold {k}×{n} values"
    );
}

/// `x` with zero rows appended up to a multiple of `rt` (a tile always has `rt` rows).
fn padded_rows(x: &[f32], m: usize, k: usize, rt: usize) -> Vec<f32> {
    let mut xp = x.to_vec();
    xp.resize(m.next_multiple_of(rt) * k, 0.0);
    xp
}

/// Runs `block(c0, width, out)` for every block of [`BLOCK`] output columns in parallel, `out`
/// being the block's `[mp, BLOCK]` rows (`mp ≥ m`: padded rows), and assembles `[m, n]`.
fn blocks(
    m: usize,
    mp: usize,
    n: usize,
    block: impl Fn(usize, usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let parts: Vec<Vec<f32>> = (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let c0 = b * BLOCK;
            let mut out = vec![0.0f32; mp * BLOCK];
            block(c0, BLOCK.min(n - c0), &mut out);
            out
        })
        .collect();
    let mut y = vec![0.0f32; m * n];
    for (b, part) in parts.iter().enumerate() {
        let c0 = b * BLOCK;
        let width = BLOCK.min(n - c0);
        for (row, dst) in y.chunks_exact_mut(n).enumerate() {
            dst[c0..c0 + width].copy_from_slice(&part[row * BLOCK..row * BLOCK + width]);
        }
    }
    y
}

simd_kernel!(
    /// [`kn_tile`] for the best instruction set.
    kn_tile_simd<RT, CW> => kn_tile(
        xt: &[f32],
        w: &[f32],
        k: usize,
        n: usize,
        c0: usize,
        out: &mut [f32],
    )
);

simd_kernel!(
    /// [`kn_block`] for the best instruction set.
    kn_block_simd<> => kn_block(
        x: &[f32],
        w: &[f32],
        k: usize,
        n: usize,
        c0: usize,
        width: usize,
        out: &mut [f32],
    )
);

simd_kernel!(
    /// [`nk_block`] for the best instruction set.
    nk_block_simd<RT> => nk_block(
        x: &[f32],
        w: &[f32],
        k: usize,
        c0: usize,
        width: usize,
        out: &mut [f32],
    )
);

/// Columns `c0..c0 + CW` of `x · w` (`w [k, n]`) for `RT` rows of `x` given interleaved (`xt
/// [k, RT]`), into `out` `[RT, CW]`: down the strip one row of `w` at a time, every row adding
/// its multiple of that row's `CW` values to its sums, which stay in registers. Each sum is
/// the products in the order of `k`, as in [`kn_block`].
#[inline(always)]
fn kn_tile<const RT: usize, const CW: usize>(
    xt: &[f32],
    w: &[f32],
    k: usize,
    n: usize,
    c0: usize,
    out: &mut [f32],
) {
    let mut acc = [[0.0f32; CW]; RT];
    for kk in 0..k {
        let wv: &[f32; CW] = w[kk * n + c0..kk * n + c0 + CW].try_into().expect("strip");
        let xs: &[f32; RT] = xt[kk * RT..(kk + 1) * RT].try_into().expect("rows");
        for (a, &xv) in acc.iter_mut().zip(xs) {
            for q in 0..CW {
                a[q] += xv * wv[q];
            }
        }
    }
    for (o, a) in out.chunks_exact_mut(CW).zip(&acc) {
        o.copy_from_slice(a);
    }
}

/// Columns `c0..c0 + width` of `x · w` (`w [k, n]`) for every row of `x`, into `out`
/// `[rows, BLOCK]` (`width ≤ BLOCK`): row by row of `w` (its piece of each row read once,
/// contiguously), every row of `x` adding its multiple of it to its accumulators (`out`, in
/// L1). The ragged last columns of [`matmul`].
#[inline(always)]
fn kn_block(x: &[f32], w: &[f32], k: usize, n: usize, c0: usize, width: usize, out: &mut [f32]) {
    let rows = x.len() / k;
    for kk in 0..k {
        let wv = &w[kk * n + c0..kk * n + c0 + width];
        for (r, acc) in out.chunks_exact_mut(BLOCK).take(rows).enumerate() {
            let xv = x[r * k + kk];
            for (a, &wq) in acc[..width].iter_mut().zip(wv) {
                *a += xv * wq;
            }
        }
    }
}

/// Columns `c0..c0 + width` of `x · wᵀ` (`w [n, k]`): each is a dot product of a row of `x`
/// with a row of `w`, two of `w`'s rows and `RT` of `x`'s at a time.
#[inline(always)]
fn nk_block<const RT: usize>(
    x: &[f32],
    w: &[f32],
    k: usize,
    c0: usize,
    width: usize,
    out: &mut [f32],
) {
    let rows = x.len() / k;
    let kv = k - k % LANES;
    for j0 in (0..width).step_by(2) {
        let pair = 2.min(width - j0);
        // A lone last column is paired with itself (its result written once).
        let v0 = c0 + j0;
        let v1 = c0 + j0 + pair - 1;
        let (w0, w1) = (&w[v0 * k..(v0 + 1) * k], &w[v1 * k..(v1 + 1) * k]);
        for r0 in (0..rows).step_by(RT) {
            let mut acc = [[[0.0f32; LANES]; 2]; RT];
            for c in (0..kv).step_by(LANES) {
                let e0: [f32; LANES] = w0[c..c + LANES].try_into().expect("lanes");
                let e1: [f32; LANES] = w1[c..c + LANES].try_into().expect("lanes");
                for (r, a) in acc.iter_mut().enumerate() {
                    let o = (r0 + r) * k + c;
                    let xv: [f32; LANES] = x[o..o + LANES].try_into().expect("lanes");
                    for l in 0..LANES {
                        a[0][l] += xv[l] * e0[l];
                        a[1][l] += xv[l] * e1[l];
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                let xr = &x[(r0 + r) * k..(r0 + r + 1) * k];
                for (p, (lanes, wr)) in a.iter().zip([w0, w1]).enumerate().take(pair) {
                    let mut s = sum_lanes(lanes);
                    for c in kv..k {
                        s += xr[c] * wr[c];
                    }
                    out[(r0 + r) * BLOCK + j0 + p] = s;
                }
            }
        }
    }
}

/// The sum of 8 lanes as a tree (3 dependent additions).
#[inline(always)]
fn sum_lanes(a: &[f32; LANES]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(x: &[f32], w: &[f32], m: usize, k: usize, n: usize, transposed: bool) -> Vec<f64> {
        let mut y = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for c in 0..k {
                    let wv = if transposed {
                        w[j * k + c]
                    } else {
                        w[c * n + j]
                    };
                    y[i * n + j] += x[i * k + c] as f64 * wv as f64;
                }
            }
        }
        y
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        // A small deterministic generator: the kernels crate's tests need no RNG crate here.
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn both_layouts_match_a_plain_loop_for_every_row_count_and_ragged_sizes() {
        for (k, n) in [(64, 48), (37, 19), (576, 300), (8, 1), (3, 257)] {
            for m in 1..=MAX_ROWS {
                let x = values(m * k, (m * 31 + k) as u32);
                let w = values(k * n, (n * 7 + k) as u32);
                for transposed in [false, true] {
                    let y = if transposed {
                        matmul_transposed(&x, &w, m, k, n)
                    } else {
                        matmul(&x, &w, m, k, n)
                    };
                    let want = plain(&x, &w, m, k, n, transposed);
                    for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                        assert!(
                            (*a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()) * (k as f64).sqrt(),
                            "m={m} k={k} n={n} transposed={transposed}: y[{i}] = {a}, want {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "rows")]
    fn too_many_rows_are_refused() {
        let m = MAX_ROWS + 1;
        matmul(&vec![0.0; m * 4], &[0.0; 8], m, 4, 2);
    }
}
