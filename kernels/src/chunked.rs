//! The WKV-7 recurrence in chunked (matrix) form: forward and backward over chunks of
//! [`CHUNK`] tokens, with the state carried between chunks in f32. Same contract and layouts as
//! [`crate::cpu`] (inputs `[B, T, H, N]`, mask `[B, T]`, states `[B, H, N, N]` value-major);
//! its saved states are the value-major state at each chunk start plus the final one.
//!
//! Within a chunk starting from state `S` (rows: values i, columns: keys j), with per-channel
//! cumulative log-decays `c_t = Σ_{τ≤t} ln w_τ` (`c_{-1} = 0`), the recurrence
//! `S_t = S_{t−1} diag(w_t) + u_t β_tᵀ + v_t k_tᵀ`, `u_t = S_{t−1} α_t`, `y_t = S_t r_t` unrolls to
//!
//! ```text
//! A_t = α_t ⊙ e^{c_{t−1}}   B_s = β_s ⊙ e^{−c_s}   K_s = k_s ⊙ e^{−c_s}   R_t = r_t ⊙ e^{c_t}
//! U   = (I − L(A Bᵀ))⁻¹ (A Sᵀ + L(A Kᵀ) V)           (L: strictly lower triangle)
//! Y   = R Sᵀ + L̄(R Bᵀ) U + L̄(R Kᵀ) V                 (L̄: lower triangle with the diagonal)
//! S'  = (S + Uᵀ B + Vᵀ K) diag(e^{c_last})
//! ```
//!
//! so the work is small matrix products (L×N by N×N and L×L by L×N) instead of N×N updates per
//! token; the backward is the reverse of these products (and of the triangular solve), chunk by
//! chunk from the last, recomputing each chunk's `U` from its saved starting state. The decay
//! is at least 0.545 per token, so over a 16-token chunk `e^{−c}` stays below e^{9.7}: safe in
//! f32. A masked token is an identity step: `w = 1`, `α = β = k = v = r = 0` (output 0, zero
//! gradients).
//!
//! The products run through one small register-tiled kernel ([`mm`]: compile-time sizes, four
//! output rows by 32 columns (AVX-512) or 16 (AVX2) in named accumulators, the left operand
//! read row-major or transposed in place). Chunks past the end of the sequence are padded with
//! masked tokens, so every product has the same compile-time shape. The forward carries the state key-major (the
//! layout `R Sᵀ` and `A Sᵀ` read as a right operand) and saves it at each chunk start; the
//! backward transposes it back for the products that need it value-major.
//!
//! Measured (`cargo run --release -p rwkv-kernels --example cpu_kernel_time both 10 SEQ`, batch
//! 4, 9 heads of 64, 2 cores, side by side with the per-token kernel): backward about 1.2×
//! faster from 32 tokens on (T = 1024: 143–161 ms against 174–190 ms), forward about a tenth
//! slower, and only the chunk-start states saved. So [`crate::op`] uses this form for training
//! passes from 32 tokens on, and the per-token kernel for forwards without a backward. On an
//! AVX-512 CPU (2 cores) with 32-column tiles: forward 11.0–12.1 ms, backward 34.8–35.4 ms at
//! T = 1024 (16-column tiles: 12.5 / 40 ms; the per-token kernel's backward: 62–70 ms).

// Index loops walk several same-shaped rows at once; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use crate::cpu::{
    CHUNK, Dims, Grads, HeadGrads, HeadRows, Inputs, active, dispatch_n, tok, transpose,
};

/// Tokens per chunk.
const L: usize = CHUNK;
/// Two chunk matrices stacked: `[2L][N]` blocks, and the width of `[L][2L]` pairs.
const L2: usize = 2 * CHUNK;

/// Rows of the micro-kernel's output tile.
const MR: usize = 4;

/// The left operand of [`mm`]: an `M×K` matrix `A` stored row-major with leading dimension
/// `ld` (`A[m][k] = a[m·ld + k]`), or stored transposed (`A[m][k] = a[k·ld + m]`), so a
/// transposed operand costs no copy.
#[derive(Clone, Copy)]
enum Lhs<'a> {
    Rows(&'a [f32], usize),
    Cols(&'a [f32], usize),
}

/// `c (+)= A · b` for `A` `m×K` (see [`Lhs`]), `b` `[K][NC]` and `c` `[m][NC]` row-major. The
/// inner and row sizes are compile-time constants, so each tile's accumulators are registers
/// and its loads need no bounds checks. Every output element is summed over `k` in order with
/// separate multiplies and adds, in every instruction set alike.
#[inline(always)]
fn mm<const K: usize, const NC: usize>(
    c: &mut [f32],
    m: usize,
    a: Lhs,
    b: &[f32],
    accumulate: bool,
) {
    assert!(
        m.is_multiple_of(MR) && NC.is_multiple_of(4),
        "mm: operand shapes"
    );
    mm_simd::<K, NC>(&mut c[..m * NC], a, &b[..K * NC], accumulate);
}

/// [`mm_width`] for the best instruction set, with tiles as wide as its registers allow: up to
/// 32 columns (8 accumulators of 16 lanes) with AVX-512's 32 registers, 16 (8 of 8 lanes) with
/// AVX2's 16 (64 columns measured slower). The dispatch is `simd_kernel!`'s, written out
/// because the tile width differs per level. Not inlined: one copy per shape and instruction set. Inlined into the head
/// kernels, the twenty-odd products made functions so large that the crate took ten minutes to
/// build instead of one (the backward was then 1.5× the per-token kernel's speed instead of
/// 1.2×).
#[inline(never)]
fn mm_simd<const K: usize, const NC: usize>(
    c: &mut [f32],
    a: Lhs<'_>,
    b: &[f32],
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn avx512<const K: usize, const NC: usize>(c: &mut [f32], a: Lhs, b: &[f32], acc: bool) {
            mm_width::<K, NC, 32>(c, a, b, acc)
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2<const K: usize, const NC: usize>(c: &mut [f32], a: Lhs, b: &[f32], acc: bool) {
            mm_width::<K, NC, 16>(c, a, b, acc)
        }
        match crate::cpu::simd_level() {
            // SAFETY: the CPU has the enabled features (simd_level checked them).
            crate::cpu::SimdLevel::Avx512 => {
                return unsafe { avx512::<K, NC>(c, a, b, accumulate) };
            }
            crate::cpu::SimdLevel::Avx2Fma => return unsafe { avx2::<K, NC>(c, a, b, accumulate) },
            crate::cpu::SimdLevel::Base => {}
        }
    }
    mm_width::<K, NC, 16>(c, a, b, accumulate)
}

/// [`mm`]'s tiles as wide as `NC` and `MAXW` allow.
#[inline(always)]
fn mm_width<const K: usize, const NC: usize, const MAXW: usize>(
    c: &mut [f32],
    a: Lhs,
    b: &[f32],
    accumulate: bool,
) {
    if MAXW >= 32 && NC.is_multiple_of(32) {
        mm_tiles::<K, NC, 32>(c, a, b, accumulate);
    } else if NC.is_multiple_of(16) {
        mm_tiles::<K, NC, 16>(c, a, b, accumulate);
    } else if NC.is_multiple_of(8) {
        mm_tiles::<K, NC, 8>(c, a, b, accumulate);
    } else {
        mm_tiles::<K, NC, 4>(c, a, b, accumulate);
    }
}

/// [`mm`] over `MR × TW` output tiles, each summed in four named accumulator rows (a 2-D array
/// here was left in memory, scalar, by the compiler).
#[inline(always)]
fn mm_tiles<const K: usize, const NC: usize, const TW: usize>(
    c: &mut [f32],
    a: Lhs,
    b: &[f32],
    accumulate: bool,
) {
    for m0 in (0..c.len() / NC).step_by(MR) {
        for j0 in (0..NC).step_by(TW) {
            let mut c0 = tile_row::<TW>(c, m0 * NC + j0, accumulate);
            let mut c1 = tile_row::<TW>(c, (m0 + 1) * NC + j0, accumulate);
            let mut c2 = tile_row::<TW>(c, (m0 + 2) * NC + j0, accumulate);
            let mut c3 = tile_row::<TW>(c, (m0 + 3) * NC + j0, accumulate);
            match a {
                Lhs::Rows(a, ld) => {
                    let (a0, a1, a2, a3) = (
                        tile_of::<K>(a, m0 * ld),
                        tile_of::<K>(a, (m0 + 1) * ld),
                        tile_of::<K>(a, (m0 + 2) * ld),
                        tile_of::<K>(a, (m0 + 3) * ld),
                    );
                    for kk in 0..K {
                        let br = tile_of::<TW>(b, kk * NC + j0);
                        axpy::<TW>(&mut c0, a0[kk], br);
                        axpy::<TW>(&mut c1, a1[kk], br);
                        axpy::<TW>(&mut c2, a2[kk], br);
                        axpy::<TW>(&mut c3, a3[kk], br);
                    }
                }
                Lhs::Cols(a, ld) => {
                    for kk in 0..K {
                        let br = tile_of::<TW>(b, kk * NC + j0);
                        let ak = tile_of::<MR>(a, kk * ld + m0);
                        axpy::<TW>(&mut c0, ak[0], br);
                        axpy::<TW>(&mut c1, ak[1], br);
                        axpy::<TW>(&mut c2, ak[2], br);
                        axpy::<TW>(&mut c3, ak[3], br);
                    }
                }
            }
            for (r, acc) in [c0, c1, c2, c3].iter().enumerate() {
                c[(m0 + r) * NC + j0..][..TW].copy_from_slice(acc);
            }
        }
    }
}

/// The `W` values of `x` at `at`.
#[inline(always)]
fn tile_of<const W: usize>(x: &[f32], at: usize) -> &[f32; W] {
    x[at..at + W].try_into().expect("tile")
}

/// The `TW` values of `c` at `at`, or zeros.
#[inline(always)]
fn tile_row<const TW: usize>(c: &[f32], at: usize, accumulate: bool) -> [f32; TW] {
    if accumulate {
        c[at..at + TW].try_into().expect("tile")
    } else {
        [0.0; TW]
    }
}

/// Zeroes the upper triangle of both `[L][L]` halves of an `[L][2L]` pair: above the diagonal,
/// and the diagonal too when `strict`.
#[inline(always)]
fn keep_lower(m: &mut [f32], strict: bool) {
    for t in 0..L {
        let first = if strict { t } else { t + 1 };
        for s in first..L {
            m[t * L2 + s] = 0.0;
            m[t * L2 + L + s] = 0.0;
        }
    }
}

#[inline(always)]
fn row<const N: usize>(x: &[f32], m: usize) -> &[f32; N] {
    x[m * N..(m + 1) * N].try_into().expect("row")
}

#[inline(always)]
fn row_mut<const N: usize>(x: &mut [f32], m: usize) -> &mut [f32; N] {
    (&mut x[m * N..(m + 1) * N]).try_into().expect("row")
}

/// `y += s·x`
#[inline(always)]
fn axpy<const N: usize>(y: &mut [f32; N], s: f32, x: &[f32; N]) {
    for i in 0..N {
        y[i] += s * x[i];
    }
}

/// The `[L][N]` rows of one input for the chunk of (batch `b`, head `h`) starting at token
/// `t0`, times `scale`'s rows if given; zero on masked rows.
#[inline(always)]
fn load_rows<const N: usize>(
    dst: &mut [f32],
    src: &[f32],
    (d, b, h, t0): (Dims, usize, usize, usize),
    active: &[bool; L],
    scale: Option<&[f32]>,
) {
    for m in 0..L {
        let out = row_mut::<N>(dst, m);
        if !active[m] {
            *out = [0.0; N];
            continue;
        }
        let xs = tok::<N>(src, d, b, t0 + m, h);
        match scale {
            Some(sc) => {
                let sc = row::<N>(sc, m);
                for j in 0..N {
                    out[j] = xs[j] * sc[j];
                }
            }
            None => out.copy_from_slice(xs),
        }
    }
}

/// One head's chunk in decayed form and the products both passes need, reused chunk after
/// chunk. A chunk always has [`L`] rows: past the end of the sequence it is padded with masked
/// (identity) tokens.
struct Chunk<const N: usize> {
    /// `[R; A]`: `r ⊙ e^{c}` and `α ⊙ e^{c_{t−1}}`, `[2L][N]`.
    ra: Vec<f32>,
    /// `[B; K]`: `β ⊙ e^{−c}` and `k ⊙ e^{−c}`, `[2L][N]`; `bkt` its transpose `[N][2L]`.
    bk: Vec<f32>,
    bkt: Vec<f32>,
    /// `[U; V]`, `[2L][N]`.
    uv: Vec<f32>,
    /// `[L(A Bᵀ) | L(A Kᵀ)]` and `[L̄(R Bᵀ) | L̄(R Kᵀ)]`, `[L][2L]`.
    mabk: Vec<f32>,
    pq: Vec<f32>,
    /// `[Y; X]`: `R Sᵀ` (then `Y`) and `A Sᵀ` (then `X`), `[2L][N]`.
    yx: Vec<f32>,
    /// The raw decays (1 on masked rows), `e^{c_t}`, `e^{−c_t}` and `e^{c_{t−1}}`, `[L][N]`.
    w: Vec<f32>,
    ec: Vec<f32>,
    iec: Vec<f32>,
    ec_prev: Vec<f32>,
    active: [bool; L],
    /// `e^{c_last}`.
    g: [f32; N],
}

impl<const N: usize> Chunk<N> {
    fn new() -> Self {
        let z = |n: usize| vec![0.0f32; n];
        Chunk {
            ra: z(L2 * N),
            bk: z(L2 * N),
            bkt: z(L2 * N),
            uv: z(L2 * N),
            mabk: z(L * L2),
            pq: z(L * L2),
            yx: z(L2 * N),
            w: z(L * N),
            ec: z(L * N),
            iec: z(L * N),
            ec_prev: z(L * N),
            active: [false; L],
            g: [1.0; N],
        }
    }

    /// Loads the chunk of (batch `b`, head `h`) starting at token `t0`; returns its length.
    #[inline(always)]
    fn load(&mut self, d: Dims, x: &Inputs, b: usize, h: usize, t0: usize) -> usize {
        let len = L.min(d.seq - t0);
        for m in 0..L {
            self.active[m] = m < len && active(x.mask, d, b, t0 + m);
        }
        // e^{c_t} as a running product of the decays (at most 16 of them, each ≥ 0.545).
        let mut e = [1.0f32; N];
        for m in 0..L {
            row_mut::<N>(&mut self.ec_prev, m).copy_from_slice(&e);
            let wm = row_mut::<N>(&mut self.w, m);
            if self.active[m] {
                wm.copy_from_slice(tok::<N>(x.w, d, b, t0 + m, h));
                for j in 0..N {
                    e[j] *= wm[j];
                }
            } else {
                *wm = [1.0; N];
            }
            row_mut::<N>(&mut self.ec, m).copy_from_slice(&e);
            let ie = row_mut::<N>(&mut self.iec, m);
            for j in 0..N {
                ie[j] = 1.0 / e[j];
            }
        }
        self.g = e;
        // One input at a time, each a stream of rows.
        let at = (d, b, h, t0);
        let (r, a) = self.ra.split_at_mut(L * N);
        load_rows::<N>(r, x.r, at, &self.active, Some(&self.ec));
        load_rows::<N>(a, x.a, at, &self.active, Some(&self.ec_prev));
        let (bb, k) = self.bk.split_at_mut(L * N);
        load_rows::<N>(bb, x.b, at, &self.active, Some(&self.iec));
        load_rows::<N>(k, x.k, at, &self.active, Some(&self.iec));
        load_rows::<N>(&mut self.uv[L * N..], x.v, at, &self.active, None);
        transpose::<L2, N>(&self.bk, &mut self.bkt);
        len
    }

    /// The triangular products and `U` from the chunk's key-major starting state `st`; with
    /// `with_y`, also `R Sᵀ` in the first rows of `yx`.
    #[inline(always)]
    fn products(&mut self, st: &[f32], with_y: bool) {
        let (a, r) = (&self.ra[L * N..], &self.ra[..L * N]);
        mm::<N, L2>(&mut self.mabk, L, Lhs::Rows(a, N), &self.bkt, false);
        keep_lower(&mut self.mabk, true);
        mm::<N, L2>(&mut self.pq, L, Lhs::Rows(r, N), &self.bkt, false);
        keep_lower(&mut self.pq, false);
        let (y0, x) = self.yx.split_at_mut(L * N);
        if with_y {
            mm::<N, N>(y0, L, Lhs::Rows(r, N), st, false);
        }
        mm::<N, N>(x, L, Lhs::Rows(a, N), st, false);
        let (u, v) = self.uv.split_at_mut(L * N);
        // X = A Sᵀ + L(A Kᵀ) V
        mm::<L, N>(x, L, Lhs::Rows(&self.mabk[L..], L2), v, true);
        // U = X + L(A Bᵀ) U, row by row
        for t in 0..L {
            let mut ut = *row::<N>(x, t);
            for s in 0..t {
                axpy::<N>(&mut ut, self.mabk[t * L2 + s], row::<N>(u, s));
            }
            row_mut::<N>(u, t).copy_from_slice(&ut);
        }
    }

    /// One chunk forward: `st` (key-major) advances over it, its outputs go to `ys` from
    /// token `t0`.
    #[inline(always)]
    fn forward(&mut self, st: &mut [f32], ys: &mut HeadRows<'_, N>, t0: usize, len: usize) {
        self.products(st, true);
        // Y = R Sᵀ + [P | Q] [U; V]
        let y = &mut self.yx[..L * N];
        mm::<L2, N>(y, L, Lhs::Rows(&self.pq, L2), &self.uv, true);
        for m in 0..len {
            // Masked tokens' outputs stay 0.
            if self.active[m] {
                ys.row(t0 + m).copy_from_slice(row::<N>(y, m));
            }
        }
        // Sᵀ ← diag(g) (Sᵀ + [B; K]ᵀ [U; V])
        mm::<L2, N>(st, N, Lhs::Cols(&self.bk, N), &self.uv, true);
        for j in 0..N {
            let gj = self.g[j];
            for v in row_mut::<N>(st, j) {
                *v *= gj;
            }
        }
    }

    /// One chunk backward from its key-major starting state `st`, with `dY` in the first rows
    /// of `w.dyx`: `ds` holds dL/dS' (value-major) on entry and dL/dS on exit; the chunk's
    /// token gradients are left in `w.grads`.
    #[inline(always)]
    fn backward(&mut self, w: &mut BackWork<N>, st: &[f32], ds: &mut [f32]) {
        self.products(st, false);
        let BackWork {
            s,
            z,
            dzt,
            uvt,
            duv,
            dbk,
            dra,
            dyx,
            dpq,
            dm,
            grads,
        } = w;
        transpose::<N, N>(st, s);
        // Z = S + [U; V]ᵀ [B; K]; S' = Z diag(g): dg_j = Σ_i dS'_ij Z_ij, dZ = dS' diag(g).
        z.copy_from_slice(s);
        mm::<L2, N>(z, N, Lhs::Cols(&self.uv, N), &self.bk, true);
        let mut dg = [0.0f32; N];
        for i in 0..N {
            let (dsi, zi) = (row::<N>(ds, i), row_mut::<N>(z, i));
            for j in 0..N {
                dg[j] += dsi[j] * zi[j];
                zi[j] = dsi[j] * self.g[j];
            }
        }
        let dz = z; // dL/dZ, then dL/dS
        transpose::<N, N>(dz, dzt);
        // [dU; dV] = [B; K] dZᵀ, [dB; dK] = [U; V] dZ
        mm::<N, N>(duv, L2, Lhs::Rows(&self.bk, N), dzt, false);
        mm::<N, N>(dbk, L2, Lhs::Rows(&self.uv, N), dz, false);
        // Y = R Sᵀ + [P | Q] [U; V]
        transpose::<L2, N>(&self.uv, uvt);
        let (r, a) = self.ra.split_at(L * N);
        {
            let dy = &dyx[..L * N];
            mm::<N, L2>(dpq, L, Lhs::Rows(dy, N), uvt, false);
            keep_lower(dpq, false);
            mm::<L, N>(duv, L2, Lhs::Cols(&self.pq, L2), dy, true);
        }
        let (dr, da) = dra.split_at_mut(L * N);
        mm::<L2, N>(dr, L, Lhs::Rows(dpq, L2), &self.bk, false);
        mm::<L, N>(dbk, L2, Lhs::Cols(dpq, L2), r, true);
        // U = X + L(A Bᵀ) U: dX = (I − L(A Bᵀ))⁻ᵀ dU, by back substitution.
        let dx = &mut dyx[L * N..];
        for t in (0..L).rev() {
            let mut v = *row::<N>(duv, t);
            for t2 in t + 1..L {
                axpy::<N>(&mut v, self.mabk[t2 * L2 + t], row::<N>(dx, t2));
            }
            row_mut::<N>(dx, t).copy_from_slice(&v);
        }
        // X = A Sᵀ + L(A Kᵀ) V, and the products L(A Bᵀ), L(A Kᵀ).
        mm::<N, L2>(dm, L, Lhs::Rows(dx, N), uvt, false);
        keep_lower(dm, true);
        mm::<L, N>(
            &mut duv[L * N..],
            L,
            Lhs::Cols(&self.mabk[L..], L2),
            dx,
            true,
        );
        mm::<L2, N>(da, L, Lhs::Rows(dm, L2), &self.bk, false);
        mm::<L, N>(dbk, L2, Lhs::Cols(dm, L2), a, true);
        // The starting state's share: [dR; dA] += [dY; dX] S, dS = dZ + [dY; dX]ᵀ [R; A].
        mm::<N, N>(dra, L2, Lhs::Rows(dyx, N), s, true);
        mm::<L2, N>(dz, N, Lhs::Cols(dyx, N), &self.ra, true);
        ds.copy_from_slice(dz);

        // Back to the raw inputs through the decays: dc_t collects every use of c_t (e^{c_t}
        // scales r_t, e^{−c_t} scales β_t and k_t, e^{c_t} scales α_{t+1}, and e^{c_last} the
        // state), and ln w_τ feeds every c_t with t ≥ τ.
        let (dr, da) = dra.split_at(L * N);
        let (db, dk) = dbk.split_at(L * N);
        let dv = &duv[L * N..];
        let (b, k) = self.bk.split_at(L * N);
        let mut run = [0.0f32; N]; // Σ_{t ≥ τ} dc_t
        for m in (0..L).rev() {
            let next: [f32; N] = if m + 1 < L {
                let (dan, an) = (row::<N>(da, m + 1), row::<N>(a, m + 1));
                std::array::from_fn(|j| dan[j] * an[j])
            } else {
                std::array::from_fn(|j| dg[j] * self.g[j])
            };
            let (drm, rm) = (row::<N>(dr, m), row::<N>(r, m));
            let (dbm, bm, dkm, km) = (
                row::<N>(db, m),
                row::<N>(b, m),
                row::<N>(dk, m),
                row::<N>(k, m),
            );
            for j in 0..N {
                run[j] += drm[j] * rm[j] - dbm[j] * bm[j] - dkm[j] * km[j] + next[j];
            }
            if !self.active[m] {
                for g in grads.iter_mut() {
                    *row_mut::<N>(g, m) = [0.0; N];
                }
                continue;
            }
            let (ec, iec, ecp, w) = (
                row::<N>(&self.ec, m),
                row::<N>(&self.iec, m),
                row::<N>(&self.ec_prev, m),
                row::<N>(&self.w, m),
            );
            let dam = row::<N>(da, m);
            // Each row computed in registers, then stored (computed in place, the six output
            // rows were not known apart and stayed scalar).
            let rows: [[f32; N]; 6] = [
                std::array::from_fn(|j| drm[j] * ec[j]),
                std::array::from_fn(|j| run[j] / w[j]),
                std::array::from_fn(|j| dkm[j] * iec[j]),
                *row::<N>(dv, m),
                std::array::from_fn(|j| dam[j] * ecp[j]),
                std::array::from_fn(|j| dbm[j] * iec[j]),
            ];
            for (g, v) in grads.iter_mut().zip(rows.iter()) {
                row_mut::<N>(g, m).copy_from_slice(v);
            }
        }
    }
}

/// The backward's buffers for one head, reused chunk after chunk.
struct BackWork<const N: usize> {
    /// The chunk's starting state, value-major.
    s: Vec<f32>,
    /// `Z`, then dL/dZ, then dL/dS; `dzt` is dL/dZ transposed.
    z: Vec<f32>,
    dzt: Vec<f32>,
    /// `[U; V]` transposed, `[N][2L]`.
    uvt: Vec<f32>,
    /// Gradients of `[U; V]`, `[B; K]`, `[R; A]` and, given, `[Y; X]`, `[2L][N]`.
    duv: Vec<f32>,
    dbk: Vec<f32>,
    dra: Vec<f32>,
    dyx: Vec<f32>,
    /// Gradients of `[P | Q]` and `[L(A Bᵀ) | L(A Kᵀ)]`, `[L][2L]`.
    dpq: Vec<f32>,
    dm: Vec<f32>,
    /// The chunk's token gradients (r, w, k, v, α, β), `[L][N]` each.
    grads: [Vec<f32>; 6],
}

impl<const N: usize> BackWork<N> {
    fn new() -> Self {
        let z = |n: usize| vec![0.0f32; n];
        BackWork {
            s: z(N * N),
            z: z(N * N),
            dzt: z(N * N),
            uvt: z(L2 * N),
            duv: z(L2 * N),
            dbk: z(L2 * N),
            dra: z(L2 * N),
            dyx: z(L2 * N),
            dpq: z(L * L2),
            dm: z(L * L2),
            grads: std::array::from_fn(|_| z(L * N)),
        }
    }
}

/// Forward pass; the same contract as [`crate::cpu::forward`].
pub fn forward(d: Dims, x: Inputs, s0: &[f32], save: bool) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    crate::cpu::check(d, &x, s0);
    dispatch_n!(d.head_size, forward_n, d, x, s0, save)
}

fn forward_n<const N: usize>(
    d: Dims,
    x: Inputs,
    s0: &[f32],
    save: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    crate::cpu::forward_heads::<N>(d, s0, save, d.states_per_head(), |b, h, s, sv, ys| {
        head_forward_simd::<N>(d, &x, b, h, s, sv, ys)
    })
}

crate::cpu::simd_head_kernels!();

/// Forward over one (batch, head), chunk by chunk; `s` is value-major on entry and exit, the
/// state is carried (and saved) key-major.
#[inline(always)]
fn head_forward<const N: usize>(
    d: Dims,
    x: &Inputs,
    b: usize,
    h: usize,
    s: &mut [f32],
    mut sv: Option<&mut [f32]>,
    mut ys: HeadRows<'_, N>,
) {
    let mut c = Chunk::<N>::new();
    let mut st = vec![0.0f32; N * N];
    transpose::<N, N>(s, &mut st);
    for (ci, t0) in (0..d.seq).step_by(L).enumerate() {
        if let Some(sv) = sv.as_deref_mut() {
            sv[ci * N * N..(ci + 1) * N * N].copy_from_slice(&st);
        }
        let len = c.load(d, x, b, h, t0);
        c.forward(&mut st, &mut ys, t0, len);
    }
    if let Some(sv) = sv {
        let last = d.n_saved() - 1;
        sv[last * N * N..(last + 1) * N * N].copy_from_slice(&st);
    }
    transpose::<N, N>(&st, s);
}

/// Backward pass; the same contract as [`crate::cpu::backward`], with `saved` from this
/// module's [`forward`].
pub fn backward(d: Dims, x: Inputs, saved: &[f32], dy: &[f32], ds_final: &[f32]) -> Grads {
    crate::cpu::check_backward(d, &x, dy, ds_final);
    dispatch_n!(d.head_size, backward_n, d, x, saved, dy, ds_final)
}

fn backward_n<const N: usize>(
    d: Dims,
    x: Inputs,
    saved: &[f32],
    dy: &[f32],
    ds_final: &[f32],
) -> Grads {
    crate::cpu::backward_heads::<N>(
        d,
        saved,
        d.states_per_head(),
        ds_final,
        |b, h, sv, ds, out| head_backward_simd::<N>(d, &x, b, h, sv, dy, ds, out),
    )
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn head_backward<const N: usize>(
    d: Dims,
    x: &Inputs,
    b: usize,
    h: usize,
    saved: &[f32],
    dy_all: &[f32],
    ds: &mut [f32],
    mut out: HeadGrads<'_, N>,
) {
    let (mut c, mut w) = (Chunk::<N>::new(), BackWork::<N>::new());
    for ci in (0..d.seq.div_ceil(L)).rev() {
        let t0 = ci * L;
        let len = c.load(d, x, b, h, t0);
        for m in 0..L {
            let dym = row_mut::<N>(&mut w.dyx, m);
            if c.active[m] {
                dym.copy_from_slice(tok::<N>(dy_all, d, b, t0 + m, h));
            } else {
                *dym = [0.0; N];
            }
        }
        c.backward(&mut w, &saved[ci * N * N..(ci + 1) * N * N], ds);
        for (dst, src) in out.iter_mut().zip(w.grads.iter()) {
            for m in 0..len {
                dst.row(t0 + m).copy_from_slice(row::<N>(src, m));
            }
        }
    }
}
