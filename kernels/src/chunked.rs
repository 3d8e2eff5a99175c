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
//! Status: exact (tests/chunked.rs: every output and gradient within 1e-4 of the per-token
//! kernel), but not yet faster: at B=4, T=1024, H=9, N=64 on 2 cores this loop form takes
//! ~94 ms forward and ~227 ms backward against the per-token kernel's ~42 ms and ~193 ms
//! (`cargo run -p rwkv-kernels --example cpu_kernel_time`). At N = 64 and 16-token chunks
//! the matrix form does about twice the arithmetic of the recurrence, so it only wins once its
//! products run near GEMM speed (register-blocked micro-kernels; the `gemm` crate's per-call
//! overhead at these sizes gave ~80 ms forward). Until then models use [`crate::cpu`].

// Index loops walk several same-shaped rows at once; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use crate::cpu::{CHUNK, Dims, Grads, HeadGrads, Inputs, dispatch_n};

/// One chunk's inputs and their decayed forms, `[L][N]` rows.
struct ChunkData<const N: usize> {
    len: usize,
    w: Vec<f32>,
    v: Vec<f32>,
    active: Vec<bool>,
    /// `α ⊙ e^{c_{t−1}}`, `β ⊙ e^{−c}`, `k ⊙ e^{−c}`, `r ⊙ e^{c}`.
    a: Vec<f32>,
    b: Vec<f32>,
    k: Vec<f32>,
    r: Vec<f32>,
    /// `e^{c_t}` and `e^{c_{t−1}}`.
    ec: Vec<f32>,
    ec_prev: Vec<f32>,
    /// `e^{c_last}`.
    g: [f32; N],
}

#[inline(always)]
fn row<const N: usize>(x: &[f32], m: usize) -> &[f32; N] {
    x[m * N..(m + 1) * N].try_into().expect("row")
}

#[inline(always)]
fn row_mut<const N: usize>(x: &mut [f32], m: usize) -> &mut [f32; N] {
    (&mut x[m * N..(m + 1) * N]).try_into().expect("row")
}

#[inline(always)]
fn dot<const N: usize>(x: &[f32; N], y: &[f32; N]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut j = 0;
    while j + 8 <= N {
        for l in 0..8 {
            acc[l] += x[j + l] * y[j + l];
        }
        j += 8;
    }
    let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    while j < N {
        s += x[j] * y[j];
        j += 1;
    }
    s
}

/// `y += s·x`
#[inline(always)]
fn axpy<const N: usize>(y: &mut [f32; N], s: f32, x: &[f32; N]) {
    for i in 0..N {
        y[i] += s * x[i];
    }
}

#[inline(always)]
fn tok_offset<const N: usize>(d: Dims, b: usize, t: usize, h: usize) -> usize {
    ((b * d.seq + t) * d.heads + h) * N
}

#[inline(always)]
fn load_chunk<const N: usize>(
    d: Dims,
    x: &Inputs,
    b: usize,
    h: usize,
    t0: usize,
    len: usize,
) -> ChunkData<N> {
    let z = || vec![0.0f32; len * N];
    let mut c = ChunkData {
        len,
        w: z(),
        v: z(),
        active: vec![false; len],
        a: z(),
        b: z(),
        k: z(),
        r: z(),
        ec: z(),
        ec_prev: z(),
        g: [1.0; N],
    };
    let mut cum = [0.0f32; N];
    let mut ecp = [1.0f32; N];
    for m in 0..len {
        let t = t0 + m;
        let o = tok_offset::<N>(d, b, t, h);
        let on = x.mask.is_empty() || x.mask[b * d.seq + t] != 0.0;
        c.active[m] = on;
        row_mut::<N>(&mut c.ec_prev, m).copy_from_slice(&ecp);
        if on {
            for j in 0..N {
                cum[j] += x.w[o + j].ln();
            }
        }
        for j in 0..N {
            let prev = ecp[j];
            let e = if on { cum[j].exp() } else { prev };
            let ie = 1.0 / e;
            ecp[j] = e;
            c.ec[m * N + j] = e;
            if on {
                c.w[m * N + j] = x.w[o + j];
                c.v[m * N + j] = x.v[o + j];
                c.a[m * N + j] = x.a[o + j] * prev;
                c.b[m * N + j] = x.b[o + j] * ie;
                c.k[m * N + j] = x.k[o + j] * ie;
                c.r[m * N + j] = x.r[o + j] * e;
            } else {
                c.w[m * N + j] = 1.0;
            }
        }
    }
    c.g = ecp;
    c
}

/// `out[t][s] = x_t · y_s` for `s < t` (`strict`) or `s ≤ t`.
#[inline(always)]
fn lower_products<const N: usize>(x: &[f32], y: &[f32], len: usize, strict: bool) -> Vec<f32> {
    let mut out = vec![0.0f32; len * len];
    for t in 0..len {
        let end = if strict { t } else { t + 1 };
        for s in 0..end {
            out[t * len + s] = dot::<N>(row::<N>(x, t), row::<N>(y, s));
        }
    }
    out
}

/// `out[t][i] = Σ_j S[i][j] x[t][j]` (rows of `x` through `Sᵀ`).
#[inline(always)]
fn through_state<const N: usize>(s: &[f32], x: &[f32], len: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; len * N];
    for t in 0..len {
        let xt = row::<N>(x, t);
        let o = row_mut::<N>(&mut out, t);
        for i in 0..N {
            o[i] = dot::<N>(row::<N>(s, i), xt);
        }
    }
    out
}

/// The chunk's `U` (the `S_{t−1} α_t` of each token) from the starting state `s`.
#[inline(always)]
fn solve_u<const N: usize>(c: &ChunkData<N>, s: &[f32], mab: &[f32], mak: &[f32]) -> Vec<f32> {
    let len = c.len;
    let mut u = through_state::<N>(s, &c.a, len);
    for t in 0..len {
        let mut ut = *row::<N>(&u, t);
        for sidx in 0..t {
            axpy::<N>(&mut ut, mak[t * len + sidx], row::<N>(&c.v, sidx));
            axpy::<N>(&mut ut, mab[t * len + sidx], row::<N>(&u, sidx));
        }
        row_mut::<N>(&mut u, t).copy_from_slice(&ut);
    }
    u
}

/// `S ← (S + Uᵀ B + Vᵀ K) diag(g)` (or without the decay when `g` is `None`: the `Z` of the
/// backward).
#[inline(always)]
fn state_update<const N: usize>(c: &ChunkData<N>, s: &mut [f32], u: &[f32], decay: bool) {
    for i in 0..N {
        let si = row_mut::<N>(s, i);
        for m in 0..c.len {
            axpy::<N>(si, u[m * N + i], row::<N>(&c.b, m));
            axpy::<N>(si, c.v[m * N + i], row::<N>(&c.k, m));
        }
        if decay {
            for j in 0..N {
                si[j] *= c.g[j];
            }
        }
    }
}

/// A chunk's `L × L` products and its `U`, from its starting state `s`.
struct Products {
    /// `L(A Bᵀ)`, `L(A Kᵀ)` (strictly lower), `L̄(R Bᵀ)`, `L̄(R Kᵀ)` (with the diagonal).
    mab: Vec<f32>,
    mak: Vec<f32>,
    p: Vec<f32>,
    q: Vec<f32>,
    u: Vec<f32>,
}

#[inline(always)]
fn products<const N: usize>(c: &ChunkData<N>, s: &[f32]) -> Products {
    let len = c.len;
    let mab = lower_products::<N>(&c.a, &c.b, len, true);
    let mak = lower_products::<N>(&c.a, &c.k, len, true);
    let u = solve_u::<N>(c, s, &mab, &mak);
    Products {
        p: lower_products::<N>(&c.r, &c.b, len, false),
        q: lower_products::<N>(&c.r, &c.k, len, false),
        mab,
        mak,
        u,
    }
}

#[inline(always)]
fn forward_chunk<const N: usize>(c: &ChunkData<N>, s: &mut [f32], ys: &mut [f32]) {
    let len = c.len;
    let Products { p, q, u, .. } = products::<N>(c, s);
    let y0 = through_state::<N>(s, &c.r, len);
    for t in 0..len {
        let mut yt = *row::<N>(&y0, t);
        if c.active[t] {
            for sidx in 0..=t {
                axpy::<N>(&mut yt, p[t * len + sidx], row::<N>(&u, sidx));
                axpy::<N>(&mut yt, q[t * len + sidx], row::<N>(&c.v, sidx));
            }
        } else {
            yt = [0.0; N];
        }
        row_mut::<N>(ys, t).copy_from_slice(&yt);
    }
    state_update::<N>(c, s, &u, true);
}

/// Forward pass; the same contract as [`crate::cpu::forward`].
pub fn forward(d: Dims, x: Inputs, s0: &[f32], save: bool) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
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

/// Forward over one (batch, head), chunk by chunk.
#[inline(always)]
fn head_forward<const N: usize>(
    d: Dims,
    x: &Inputs,
    b: usize,
    h: usize,
    s: &mut [f32],
    mut sv: Option<&mut [f32]>,
    ys: &mut [f32],
) {
    for (ci, t0) in (0..d.seq).step_by(CHUNK).enumerate() {
        if let Some(sv) = sv.as_deref_mut() {
            sv[ci * N * N..(ci + 1) * N * N].copy_from_slice(s);
        }
        let len = CHUNK.min(d.seq - t0);
        let c = load_chunk::<N>(d, x, b, h, t0, len);
        forward_chunk::<N>(&c, s, &mut ys[t0 * N..(t0 + len) * N]);
    }
    if let Some(sv) = sv {
        let last = d.n_saved() - 1;
        sv[last * N * N..(last + 1) * N * N].copy_from_slice(s);
    }
}

/// Backward pass; the same contract as [`crate::cpu::backward`], with `saved` from this
/// module's [`forward`].
pub fn backward(d: Dims, x: Inputs, saved: &[f32], dy: &[f32], ds_final: &[f32]) -> Grads {
    dispatch_n!(d.head_size, backward_n, d, x, saved, dy, ds_final)
}

fn backward_n<const N: usize>(
    d: Dims,
    x: Inputs,
    saved: &[f32],
    dy: &[f32],
    ds_final: &[f32],
) -> Grads {
    crate::cpu::backward_heads::<N>(d, saved, d.states_per_head(), ds_final, |b, h, sv, ds| {
        head_backward_simd::<N>(d, &x, b, h, sv, dy, ds)
    })
}

#[inline(always)]
fn head_backward<const N: usize>(
    d: Dims,
    x: &Inputs,
    b: usize,
    h: usize,
    saved: &[f32],
    dy_all: &[f32],
    ds: &mut [f32],
) -> HeadGrads {
    let mut out: HeadGrads = std::array::from_fn(|_| vec![0.0f32; d.seq * N]);
    let n_chunks = d.seq.div_ceil(CHUNK);
    for ci in (0..n_chunks).rev() {
        let t0 = ci * CHUNK;
        let len = CHUNK.min(d.seq - t0);
        let c = load_chunk::<N>(d, x, b, h, t0, len);
        let s = &saved[ci * N * N..(ci + 1) * N * N];
        let mut dyc = vec![0.0f32; len * N];
        for m in 0..len {
            if c.active[m] {
                let o = tok_offset::<N>(d, b, t0 + m, h);
                dyc[m * N..(m + 1) * N].copy_from_slice(&dy_all[o..o + N]);
            }
        }
        let grads = chunk_backward::<N>(&c, s, &dyc, ds);
        for (dst, src) in out.iter_mut().zip(grads.iter()) {
            dst[t0 * N..(t0 + len) * N].copy_from_slice(src);
        }
    }
    out
}

/// One chunk's backward: `ds` holds dL/dS' on entry and dL/dS (the chunk's starting state) on
/// exit; returns the chunk's token gradients (r, w, k, v, α, β).
#[inline(always)]
fn chunk_backward<const N: usize>(
    c: &ChunkData<N>,
    s: &[f32],
    dy: &[f32],
    ds: &mut [f32],
) -> HeadGrads {
    let len = c.len;
    let Products { mab, mak, p, q, u } = products::<N>(c, s);
    let mut zst = s.to_vec();
    state_update::<N>(c, &mut zst, &u, false);
    let z = || vec![0.0f32; len * N];
    let (mut da, mut db, mut dk, mut dr, mut du, mut dv) = (z(), z(), z(), z(), z(), z());

    // S' = Z diag(g): dZ = dS' diag(g), dg_j = Σ_i dS'_ij Z_ij.
    let mut dg = [0.0f32; N];
    let mut dz = vec![0.0f32; N * N];
    for i in 0..N {
        let dsi = row::<N>(ds, i);
        let zi = row::<N>(&zst, i);
        let dzi = row_mut::<N>(&mut dz, i);
        for j in 0..N {
            dg[j] += dsi[j] * zi[j];
            dzi[j] = dsi[j] * c.g[j];
        }
    }
    // Z = S + Uᵀ B + Vᵀ K.
    let mut dsn = dz.clone(); // dL/dS, accumulated below
    for m in 0..len {
        let (bm, km) = (row::<N>(&c.b, m), row::<N>(&c.k, m));
        let (um, vm) = (*row::<N>(&u, m), *row::<N>(&c.v, m));
        let (dum, dvm) = (row_mut::<N>(&mut du, m), &mut [0.0f32; N]);
        for i in 0..N {
            let dzi = row::<N>(&dz, i);
            dum[i] += dot::<N>(dzi, bm);
            dvm[i] += dot::<N>(dzi, km);
        }
        row_mut::<N>(&mut dv, m).copy_from_slice(dvm);
        let (dbm, dkm) = (row_mut::<N>(&mut db, m), &mut [0.0f32; N]);
        for i in 0..N {
            let dzi = row::<N>(&dz, i);
            axpy::<N>(dbm, um[i], dzi);
            axpy::<N>(dkm, vm[i], dzi);
        }
        row_mut::<N>(&mut dk, m).copy_from_slice(dkm);
    }
    // Y = R Sᵀ + L̄(R Bᵀ) U + L̄(R Kᵀ) V.
    let mut dp = vec![0.0f32; len * len];
    let mut dq = vec![0.0f32; len * len];
    for t in 0..len {
        let dyt = *row::<N>(dy, t);
        // dR_t += S dy_t (over i): dR[t][j] = Σ_i dy_t[i] S[i][j]; dS += dy_t R_tᵀ.
        let rt = *row::<N>(&c.r, t);
        let drt = row_mut::<N>(&mut dr, t);
        for i in 0..N {
            axpy::<N>(drt, dyt[i], row::<N>(s, i));
            axpy::<N>(row_mut::<N>(&mut dsn, i), dyt[i], &rt);
        }
        for sidx in 0..=t {
            dp[t * len + sidx] = dot::<N>(&dyt, row::<N>(&u, sidx));
            dq[t * len + sidx] = dot::<N>(&dyt, row::<N>(&c.v, sidx));
            axpy::<N>(row_mut::<N>(&mut du, sidx), p[t * len + sidx], &dyt);
            axpy::<N>(row_mut::<N>(&mut dv, sidx), q[t * len + sidx], &dyt);
        }
    }
    for t in 0..len {
        for sidx in 0..=t {
            let (gp, gq) = (dp[t * len + sidx], dq[t * len + sidx]);
            let (bs, ks) = (*row::<N>(&c.b, sidx), *row::<N>(&c.k, sidx));
            let rt = *row::<N>(&c.r, t);
            let drt = row_mut::<N>(&mut dr, t);
            axpy::<N>(drt, gp, &bs);
            axpy::<N>(drt, gq, &ks);
            axpy::<N>(row_mut::<N>(&mut db, sidx), gp, &rt);
            axpy::<N>(row_mut::<N>(&mut dk, sidx), gq, &rt);
        }
    }
    // U = X + L(A Bᵀ) U: dX = (I − L(A Bᵀ))⁻ᵀ dU, by back substitution.
    let mut dx = du.clone();
    for t in (0..len).rev() {
        let mut dxt = *row::<N>(&dx, t);
        for t2 in t + 1..len {
            axpy::<N>(&mut dxt, mab[t2 * len + t], row::<N>(&dx, t2));
        }
        row_mut::<N>(&mut dx, t).copy_from_slice(&dxt);
    }
    // X = A Sᵀ + L(A Kᵀ) V; the products L(A Bᵀ) and L(A Kᵀ).
    for t in 0..len {
        let dxt = *row::<N>(&dx, t);
        let at = *row::<N>(&c.a, t);
        let dat = row_mut::<N>(&mut da, t);
        for i in 0..N {
            axpy::<N>(dat, dxt[i], row::<N>(s, i));
            axpy::<N>(row_mut::<N>(&mut dsn, i), dxt[i], &at);
        }
        for sidx in 0..t {
            let gab = dot::<N>(&dxt, row::<N>(&u, sidx));
            let gak = dot::<N>(&dxt, row::<N>(&c.v, sidx));
            axpy::<N>(row_mut::<N>(&mut dv, sidx), mak[t * len + sidx], &dxt);
            let (bs, ks) = (*row::<N>(&c.b, sidx), *row::<N>(&c.k, sidx));
            let dat = row_mut::<N>(&mut da, t);
            axpy::<N>(dat, gab, &bs);
            axpy::<N>(dat, gak, &ks);
            axpy::<N>(row_mut::<N>(&mut db, sidx), gab, &at);
            axpy::<N>(row_mut::<N>(&mut dk, sidx), gak, &at);
        }
    }
    ds.copy_from_slice(&dsn);

    // Back to the raw inputs through the decays: dc_t collects every use of c_t.
    let mut dc = vec![0.0f32; len * N];
    for m in 0..len {
        for j in 0..N {
            let o = m * N + j;
            dc[o] += dr[o] * c.r[o] - db[o] * c.b[o] - dk[o] * c.k[o];
            if m > 0 {
                dc[o - N] += da[o] * c.a[o];
            }
        }
    }
    for j in 0..N {
        dc[(len - 1) * N + j] += dg[j] * c.g[j];
    }
    let mut g: HeadGrads = std::array::from_fn(|_| vec![0.0f32; len * N]);
    let mut run = [0.0f32; N]; // Σ_{t ≥ τ} dc_t
    for m in (0..len).rev() {
        for j in 0..N {
            run[j] += dc[m * N + j];
        }
        if !c.active[m] {
            continue;
        }
        for j in 0..N {
            let o = m * N + j;
            g[0][o] = dr[o] * c.ec[o];
            g[1][o] = run[j] / c.w[o];
            g[2][o] = dk[o] / c.ec[o];
            g[3][o] = dv[o];
            g[4][o] = da[o] * c.ec_prev[o];
            g[5][o] = db[o] / c.ec[o];
        }
    }
    g
}
