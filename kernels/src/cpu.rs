//! The WKV-7 recurrence on the CPU over plain `f32` slices: forward, backward, single step.
//!
//! Layout: r, w, k, v, α, β are `[B, T, H, N]` row-major; the mask is `[B, T]` (1 = process,
//! 0 = skip: state unchanged, output 0, zero gradient); states are `[B, H, N, N]` with
//! `S[i][j]`, i the value index, j the key index. Per head:
//!
//! ```text
//! sa   = S·α                                   (sa[i] = Σ_j S[i,j] α[j])
//! S    = S·diag(w) + sa βᵀ + v kᵀ              (S[i,j] = S[i,j] w[j] + sa[i] β[j] + v[i] k[j])
//! y    = S·r                                   (y[i] = Σ_j S[i,j] r[j])
//! ```
//!
//! `w` is the per-channel decay factor in (0, 1) (the model computes `exp(-exp(w_raw))`).
//! Work is split over (batch, head) with rayon; the head size is a compile-time constant so
//! the 64-wide row loops vectorise, and an AVX-512/AVX2 build of each loop is chosen at run time.
//! Internally the state is kept key-major (`ST[j][i] = S[i][j]`): the forward step is then
//! made of vertical multiply-adds over i only (no horizontal reductions); the public layout
//! (inputs and outputs of states) stays value-major.
//!
//! Backward keeps the state every [`CHUNK`] tokens from the forward pass and recomputes the
//! states inside each chunk from the saved one, so a rounding difference cannot grow over more
//! than [`CHUNK`] tokens (no backstepping division, whose rounding error grows by 1/w per
//! token). The forward also saves every token's `sa = S_{t−1}·α`, so recomputing a state is a
//! stream of multiply-adds with no dot product. The backward works on value-major matrices (see
//! [`head_backward`]): the recomputed states are exactly the forward's, transposed.
//!
//! Decoding one token without a backward ([`step`]) skips the key-major round trip (two
//! transposes of every state, which cost several times the token's arithmetic): it updates
//! the value-major state in place, row by row, with the two sums over j as dot products.

use rayon::prelude::*;

/// Tokens between saved states for the backward pass.
pub const CHUNK: usize = 16;

/// Head sizes compiled in.
pub const HEAD_SIZES: &[usize] = &[4, 8, 16, 32, 64, 128];

/// Problem dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_size: usize,
}

impl Dims {
    pub fn seq_len(&self) -> usize {
        self.batch * self.seq * self.heads * self.head_size
    }
    pub fn state_len(&self) -> usize {
        self.batch * self.heads * self.head_size * self.head_size
    }
    /// Number of saved states per (batch, head): one per chunk start, plus the final state.
    pub fn n_saved(&self) -> usize {
        self.seq.div_ceil(CHUNK) + 1
    }
    /// The saved states of one (batch, head): `[n_saved, N, N]`.
    pub fn states_per_head(&self) -> usize {
        self.n_saved() * self.head_size * self.head_size
    }
    /// What the per-token forward saves per (batch, head) for its backward: the saved states
    /// (key-major), then every token's `sa = S_{t−1}·α` (`[T, N]`).
    pub fn saved_per_head(&self) -> usize {
        self.states_per_head() + self.seq * self.head_size
    }
}

/// The six per-token inputs.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub r: &'a [f32],
    pub w: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub a: &'a [f32],
    pub b: &'a [f32],
    /// `[B, T]`, or empty for "all tokens".
    pub mask: &'a [f32],
}

/// Gradients of the inputs and of the initial state.
pub struct Grads {
    pub r: Vec<f32>,
    pub w: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub s0: Vec<f32>,
}

/// Panics with what is wrong unless the inputs and state fit `d`.
pub(crate) fn check(d: Dims, x: &Inputs, s0: &[f32]) {
    assert!(
        HEAD_SIZES.contains(&d.head_size),
        "head size {} is not one of {HEAD_SIZES:?}",
        d.head_size
    );
    for (name, t) in [
        ("r", x.r),
        ("w", x.w),
        ("k", x.k),
        ("v", x.v),
        ("a", x.a),
        ("b", x.b),
    ] {
        assert_eq!(
            t.len(),
            d.seq_len(),
            "wkv7: `{name}` has {} elements, expected B*T*H*N = {}",
            t.len(),
            d.seq_len()
        );
    }
    assert!(
        x.mask.is_empty() || x.mask.len() == d.batch * d.seq,
        "wkv7: mask must be [B, T]"
    );
    assert!(
        s0.is_empty() || s0.len() == d.state_len(),
        "wkv7: state must be [B, H, N, N]"
    );
}

macro_rules! dispatch_n {
    ($n:expr, $f:ident, $($arg:expr),*) => {
        match $n {
            4 => $f::<4>($($arg),*),
            8 => $f::<8>($($arg),*),
            16 => $f::<16>($($arg),*),
            32 => $f::<32>($($arg),*),
            64 => $f::<64>($($arg),*),
            128 => $f::<128>($($arg),*),
            n => panic!("head size {n} is not supported"),
        }
    };
}
pub(crate) use dispatch_n;

/// An instruction set the kernels are compiled for, from the widest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum SimdLevel {
    /// The target's baseline (SSE2 on x86-64).
    Base = 0,
    Avx2Fma = 1,
    Avx512 = 2,
}

/// The widest instruction set this CPU has among those the kernels are compiled for.
pub fn detected_simd_level() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return SimdLevel::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return SimdLevel::Avx2Fma;
        }
    }
    SimdLevel::Base
}

/// The widest level the kernels may use ([`cap_simd_level`]); `u8::MAX` for no cap.
static SIMD_CAP: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

/// Makes the kernels use at most `cap` from now on, in every thread (`None`: the CPU's best
/// again). For tests and side-by-side measurements: results are the same at every level (see
/// [`simd_kernel`]), only the speed differs.
pub fn cap_simd_level(cap: Option<SimdLevel>) {
    let v = cap.map_or(u8::MAX, |c| c as u8);
    SIMD_CAP.store(v, std::sync::atomic::Ordering::Relaxed);
}

/// The instruction set the kernels use now: the CPU's best, at most the cap.
pub(crate) fn simd_level() -> SimdLevel {
    static DETECTED: std::sync::OnceLock<SimdLevel> = std::sync::OnceLock::new();
    let best = *DETECTED.get_or_init(detected_simd_level);
    match SIMD_CAP.load(std::sync::atomic::Ordering::Relaxed) {
        0 => best.min(SimdLevel::Base),
        1 => best.min(SimdLevel::Avx2Fma),
        _ => best,
    }
}

/// Defines `$name::<G…>` (its const generics listed after the name, `usize` each), which runs
/// the `#[inline(always)]` kernel `$kernel::<G…>` compiled for the best instruction set this
/// CPU has (attributes given before the name, such as `#[inline(never)]`, go to `$name`): the kernel (and the `#[inline(always)]` helpers
/// it calls) is inlined into functions built with those features. A closure called through
/// such a function is not compiled with them — it keeps the baseline (measured: SSE `mulps`
/// where AVX2 was meant) — so the kernels are named functions, wrapped here. The arithmetic is
/// the same in every build (no reassociation, no fused multiply-adds): results are identical.
macro_rules! simd_kernel {
    ($(#[$doc:meta])* $name:ident<$($g:ident),*> => $kernel:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        fn $name<$(const $g: usize),*>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512<$(const $g: usize),*>($($arg: $ty),*) $(-> $ret)? {
                    $kernel::<$($g),*>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2<$(const $g: usize),*>($($arg: $ty),*) $(-> $ret)? {
                    $kernel::<$($g),*>($($arg),*)
                }
                match $crate::cpu::simd_level() {
                    // SAFETY: the CPU has the enabled features (simd_level checked them).
                    $crate::cpu::SimdLevel::Avx512 => return unsafe { avx512::<$($g),*>($($arg),*) },
                    $crate::cpu::SimdLevel::Avx2Fma => return unsafe { avx2::<$($g),*>($($arg),*) },
                    $crate::cpu::SimdLevel::Base => {}
                }
            }
            $kernel::<$($g),*>($($arg),*)
        }
    };
}
pub(crate) use simd_kernel;

/// Defines `head_forward_simd` and `head_backward_simd` over the calling module's
/// `head_forward` and `head_backward` (the per-token and the chunked forms share the contract).
macro_rules! simd_head_kernels {
    () => {
        $crate::cpu::simd_kernel!(
            /// `head_forward` for the best instruction set.
            head_forward_simd<N> => head_forward(
                d: $crate::cpu::Dims,
                x: &$crate::cpu::Inputs,
                b: usize,
                h: usize,
                s: &mut [f32],
                saved: Option<&mut [f32]>,
                ys: $crate::cpu::HeadRows<'_, N>,
            )
        );
        $crate::cpu::simd_kernel!(
            /// `head_backward` for the best instruction set.
            head_backward_simd<N> => head_backward(
                d: $crate::cpu::Dims,
                x: &$crate::cpu::Inputs,
                b: usize,
                h: usize,
                saved: &[f32],
                dy_all: &[f32],
                ds: &mut [f32],
                out: $crate::cpu::HeadGrads<'_, N>,
            )
        );
    };
}
pub(crate) use simd_head_kernels;

simd_head_kernels!();

/// Forward pass. Returns `y` `[B,T,H,N]`, the final state `[B,H,N,N]`, and, when `save` is set,
/// what the backward needs, `[B, H, saved_per_head]` (see [`Dims::saved_per_head`]; internal
/// to this module).
/// `s0` empty means a zero initial state.
pub fn forward(d: Dims, x: Inputs, s0: &[f32], save: bool) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    check(d, &x, s0);
    dispatch_n!(d.head_size, forward_n, d, x, s0, save)
}

/// One token (`T = 1`) without saving for a backward, the decoding step: updates the
/// value-major state `s` `[B,H,N,N]` in place and returns `y` `[B,1,H,N]`. A masked row
/// keeps its state and outputs 0. The same values as [`forward`] up to rounding: its sums
/// over j run in another order (see [`head_step`]).
pub fn step(d: Dims, x: Inputs, s: &mut [f32]) -> Vec<f32> {
    assert_eq!(d.seq, 1, "wkv7 step: one token (got {})", d.seq);
    assert_eq!(s.len(), d.state_len(), "wkv7 step: state must be [B,H,N,N]");
    check(d, &x, s);
    dispatch_n!(d.head_size, step_n, d, x, s)
}

fn step_n<const N: usize>(d: Dims, x: Inputs, s: &mut [f32]) -> Vec<f32> {
    let mut y = vec![0.0f32; d.seq_len()];
    s.par_chunks_mut(N * N)
        .zip(y.par_chunks_mut(N))
        .enumerate()
        .for_each(|(bh, (st, yh))| {
            let (b, h) = (bh / d.heads, bh % d.heads);
            if active(x.mask, d, b, 0) {
                head_step_simd::<N>(d, &x, b, h, st, yh);
            }
        });
    y
}

simd_kernel!(
    /// [`head_step`] for the best instruction set.
    head_step_simd<N> => head_step(
        d: Dims,
        x: &Inputs,
        b: usize,
        h: usize,
        s: &mut [f32],
        y: &mut [f32],
    )
);

/// One token of one (batch, head) on its value-major state, one pass over the rows: row i is
/// read, gives `sa[i] = S[i]·α` (a dot product), is updated to
/// `S[i,j] w[j] + sa[i] β[j] + v[i] k[j]` and written back, then gives `y[i] = S[i]·r`.
#[inline(always)]
fn head_step<const N: usize>(
    d: Dims,
    x: &Inputs,
    b: usize,
    h: usize,
    s: &mut [f32],
    y: &mut [f32],
) {
    let r = tok::<N>(x.r, d, b, 0, h);
    let w = tok::<N>(x.w, d, b, 0, h);
    let k = tok::<N>(x.k, d, b, 0, h);
    let v = tok::<N>(x.v, d, b, 0, h);
    let a = tok::<N>(x.a, d, b, 0, h);
    let beta = tok::<N>(x.b, d, b, 0, h);
    for (i, (row, yi)) in s.chunks_exact_mut(N).zip(y.iter_mut()).enumerate() {
        let sa = dot(row, a);
        let vi = v[i];
        for (((x, &wj), &bj), &kj) in row.iter_mut().zip(w).zip(beta).zip(k) {
            *x = *x * wj + sa * bj + vi * kj;
        }
        *yi = dot(row, r);
    }
}

fn forward_n<const N: usize>(
    d: Dims,
    x: Inputs,
    s0: &[f32],
    save: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    forward_heads::<N>(d, s0, save, d.saved_per_head(), |b, h, s, sv, ys| {
        head_forward_simd::<N>(d, &x, b, h, s, sv, ys)
    })
}

/// The forward driver both forms share: one rayon task per (batch, head), each given its state
/// (value-major, updated in place), its `per_saved` values of the saved buffer when `save` is
/// set, and its rows of `y`, written in place.
pub(crate) fn forward_heads<const N: usize>(
    d: Dims,
    s0: &[f32],
    save: bool,
    per_saved: usize,
    head: impl Fn(usize, usize, &mut [f32], Option<&mut [f32]>, HeadRows<'_, N>) + Sync,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (bsz, hs) = (d.batch, d.heads);
    let mut y = vec![0.0f32; d.seq_len()];
    let mut state = if s0.is_empty() {
        vec![0.0f32; d.state_len()]
    } else {
        s0.to_vec()
    };
    let mut saved = if save {
        vec![0.0f32; bsz * hs * per_saved]
    } else {
        Vec::new()
    };
    let saved_parts: Vec<Option<&mut [f32]>> = if save {
        saved.chunks_mut(per_saved).map(Some).collect()
    } else {
        (0..bsz * hs).map(|_| None).collect()
    };
    state
        .par_chunks_mut(N * N)
        .zip(saved_parts)
        .zip(head_rows::<N>(&mut y, d))
        .enumerate()
        .for_each(|(bh, ((s, sv), ys))| head(bh / hs, bh % hs, s, sv, ys));
    (y, state, saved)
}

/// One (batch, head)'s `[T, N]` rows inside a `[B, T, H, N]` buffer, `H·N` apart: where a
/// head's task writes its outputs or gradients, in place. (Per-head buffers gathered
/// afterwards cost a fifth of both forms' time: a second copy of every output, its pages
/// touched for the first time, then read again.)
pub(crate) struct HeadRows<'a, const N: usize> {
    first: *mut f32,
    seq: usize,
    stride: usize,
    _buffer: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: a `HeadRows` is the only access to its rows (see `head_rows`), like a `&mut` to them.
unsafe impl<const N: usize> Send for HeadRows<'_, N> {}

impl<const N: usize> HeadRows<'_, N> {
    /// Token `t`'s row.
    #[inline(always)]
    pub(crate) fn row(&mut self, t: usize) -> &mut [f32; N] {
        assert!(t < self.seq, "token {t} of a {}-token head", self.seq);
        // SAFETY: `head_rows` checked that every row `t < seq` lies inside the buffer, which
        // this value borrows mutably; no other `HeadRows` of it reaches this (batch, head)'s
        // rows, and `&mut self` keeps this row the only reference through this one.
        unsafe { &mut *self.first.add(t * self.stride).cast::<[f32; N]>() }
    }
}

/// Splits a `[B, T, H, N]` buffer into its B·H heads' rows, in (batch, head) order.
pub(crate) fn head_rows<const N: usize>(buffer: &mut [f32], d: Dims) -> Vec<HeadRows<'_, N>> {
    assert_eq!(d.head_size, N, "head rows: head size");
    assert_eq!(
        buffer.len(),
        d.seq_len(),
        "head rows: the buffer must be [B,T,H,N]"
    );
    let base = buffer.as_mut_ptr();
    let stride = d.heads * N;
    (0..d.batch * d.heads)
        .map(|bh| HeadRows {
            // In bounds whenever a row exists (seq > 0); never dereferenced otherwise.
            first: base.wrapping_add((bh / d.heads) * d.seq * stride + (bh % d.heads) * N),
            seq: d.seq,
            stride,
            _buffer: std::marker::PhantomData,
        })
        .collect()
}

/// Token `t`'s row of head `h`, batch `b` in a `[B, T, H, N]` input.
#[inline(always)]
pub(crate) fn tok<const N: usize>(x: &[f32], d: Dims, b: usize, t: usize, h: usize) -> &[f32; N] {
    let o = ((b * d.seq + t) * d.heads + h) * N;
    x[o..o + N].try_into().expect("N-sized slice")
}

/// Whether token `t` of batch `b` is kept (an empty mask keeps every token).
#[inline(always)]
pub(crate) fn active(mask: &[f32], d: Dims, b: usize, t: usize) -> bool {
    mask.is_empty() || mask[b * d.seq + t] != 0.0
}

/// `Σ_j x[j]·y[j]` with 16 independent accumulators, so the loop vectorises (a single
/// running sum is a serial dependency the compiler may not reorder), then a tree over them: 4
/// dependent adds instead of 15; values past the last 16 (all of them below 16) are summed
/// after. Over slices with no early return: the `[f32; N]` form with a branch for `N < 16`
/// compiled to scalar code in the decoding step (1.5× its time).
#[inline(always)]
fn dot(x: &[f32], y: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let (xc, yc) = (x.chunks_exact(L), y.chunks_exact(L));
    let (xt, yt) = (xc.remainder(), yc.remainder());
    for (xs, ys) in xc.zip(yc) {
        for l in 0..L {
            acc[l] += xs[l] * ys[l];
        }
    }
    let mut width = L / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
        width /= 2;
    }
    acc[0] + xt.iter().zip(yt).map(|(a, b)| a * b).sum::<f32>()
}

/// One token on a *key-major* state `ST[j][i] = S[i][j]`: every loop is a vertical
/// multiply-add over i, with no horizontal reductions. Writes `y = S_t·r` and
/// `sa = S_{t−1}·α` (kept for the backward).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn step_keymajor<const N: usize>(
    st: &mut [f32],
    r: &[f32; N],
    w: &[f32; N],
    k: &[f32; N],
    v: &[f32; N],
    a: &[f32; N],
    b: &[f32; N],
    y: &mut [f32],
    sa_out: &mut [f32],
) {
    let mut sa = [0.0f32; N];
    for j in 0..N {
        let row: &[f32; N] = st[j * N..(j + 1) * N].try_into().expect("row");
        let aj = a[j];
        for i in 0..N {
            sa[i] += row[i] * aj;
        }
    }
    let mut acc = [0.0f32; N];
    for j in 0..N {
        let row: &mut [f32; N] = (&mut st[j * N..(j + 1) * N]).try_into().expect("row");
        let (wj, bj, kj, rj) = (w[j], b[j], k[j], r[j]);
        for i in 0..N {
            let nv = row[i] * wj + sa[i] * bj + v[i] * kj;
            row[i] = nv;
            acc[i] += nv * rj;
        }
    }
    y[..N].copy_from_slice(&acc);
    sa_out[..N].copy_from_slice(&sa);
}

/// `dst` `[C][R]` = `src` `[R][C]` transposed.
#[inline(always)]
pub(crate) fn transpose<const R: usize, const C: usize>(src: &[f32], dst: &mut [f32]) {
    let (src, dst) = (&src[..R * C], &mut dst[..R * C]);
    for i in 0..R {
        for j in 0..C {
            dst[j * R + i] = src[i * C + j];
        }
    }
}

/// Forward over one (batch, head). `s` holds the state in the public value-major layout on
/// entry and exit; internally the key-major layout is used (and saved for backward).
#[inline(always)]
fn head_forward<const N: usize>(
    d: Dims,
    x: &Inputs,
    b: usize,
    h: usize,
    s: &mut [f32],
    mut saved: Option<&mut [f32]>,
    mut ys: HeadRows<'_, N>,
) {
    let mut st = vec![0.0f32; N * N];
    transpose::<N, N>(s, &mut st);
    let s_pub = s;
    let s = &mut st[..];
    let states_len = d.states_per_head();
    let mut sa_scratch = [0.0f32; N];
    for t in 0..d.seq {
        if t % CHUNK == 0
            && let Some(sv) = saved.as_deref_mut()
        {
            let c = t / CHUNK;
            sv[c * N * N..(c + 1) * N * N].copy_from_slice(s);
        }
        if !active(x.mask, d, b, t) {
            continue; // output stays 0, state unchanged
        }
        let sa_out = match saved.as_deref_mut() {
            Some(sv) => &mut sv[states_len + t * N..states_len + (t + 1) * N],
            None => &mut sa_scratch[..],
        };
        step_keymajor::<N>(
            s,
            tok::<N>(x.r, d, b, t, h),
            tok::<N>(x.w, d, b, t, h),
            tok::<N>(x.k, d, b, t, h),
            tok::<N>(x.v, d, b, t, h),
            tok::<N>(x.a, d, b, t, h),
            tok::<N>(x.b, d, b, t, h),
            ys.row(t),
            sa_out,
        );
    }
    if let Some(sv) = saved {
        let c = d.n_saved() - 1;
        sv[c * N * N..(c + 1) * N * N].copy_from_slice(s);
    }
    transpose::<N, N>(s, s_pub);
}

/// Backward pass. `dy` is `[B,T,H,N]`; `ds_final` `[B,H,N,N]` (empty = zero); `saved` comes from
/// [`forward`] with `save = true`.
pub fn backward(d: Dims, x: Inputs, saved: &[f32], dy: &[f32], ds_final: &[f32]) -> Grads {
    check_backward(d, &x, dy, ds_final);
    dispatch_n!(d.head_size, backward_n, d, x, saved, dy, ds_final)
}

/// [`check`] for a backward, and the output and final-state gradients' sizes.
pub(crate) fn check_backward(d: Dims, x: &Inputs, dy: &[f32], ds_final: &[f32]) {
    check(d, x, &[]);
    assert_eq!(dy.len(), d.seq_len(), "wkv7 backward: dy must be [B,T,H,N]");
    assert!(
        ds_final.is_empty() || ds_final.len() == d.state_len(),
        "wkv7 backward: the final state's gradient must be [B,H,N,N]"
    );
}

/// One head's gradient rows (r, w, k, v, α, β), written in place.
pub(crate) type HeadGrads<'a, const N: usize> = [HeadRows<'a, N>; 6];

fn backward_n<const N: usize>(
    d: Dims,
    x: Inputs,
    saved: &[f32],
    dy: &[f32],
    ds_final: &[f32],
) -> Grads {
    backward_heads::<N>(
        d,
        saved,
        d.saved_per_head(),
        ds_final,
        |b, h, sv, ds, out| head_backward_simd::<N>(d, &x, b, h, sv, dy, ds, out),
    )
}

/// The backward driver both forms share: one rayon task per (batch, head), each given its
/// `per_saved` values of what the forward saved, dL/dS (final state on entry, initial on exit,
/// in place) and its rows of the six `[B, T, H, N]` token gradients, written in place.
pub(crate) fn backward_heads<const N: usize>(
    d: Dims,
    saved: &[f32],
    per_saved: usize,
    ds_final: &[f32],
    head: impl Fn(usize, usize, &[f32], &mut [f32], HeadGrads<'_, N>) + Sync,
) -> Grads {
    let hs = d.heads;
    assert_eq!(
        saved.len(),
        d.batch * hs * per_saved,
        "wkv7 backward: saved states have the wrong size"
    );
    let mut ds0 = if ds_final.is_empty() {
        vec![0.0f32; d.state_len()]
    } else {
        ds_final.to_vec()
    };
    let z = || vec![0.0f32; d.seq_len()];
    let mut g = Grads {
        r: z(),
        w: z(),
        k: z(),
        v: z(),
        a: z(),
        b: z(),
        s0: Vec::new(),
    };
    {
        let mut rows = [&mut g.r, &mut g.w, &mut g.k, &mut g.v, &mut g.a, &mut g.b]
            .map(|buffer| head_rows::<N>(buffer, d).into_iter());
        let per_head: Vec<HeadGrads<'_, N>> = (0..d.batch * hs)
            .map(|_| rows.each_mut().map(|it| it.next().expect("one per head")))
            .collect();
        ds0.par_chunks_mut(N * N)
            .zip(per_head)
            .enumerate()
            .for_each(|(bh, (ds, out))| {
                let sv = &saved[bh * per_saved..(bh + 1) * per_saved];
                head(bh / hs, bh % hs, sv, ds, out)
            });
    }
    g.s0 = ds0;
    g
}

/// Lanes of the column blocks in the backward's second phase: one AVX2 register, so the five
/// gradient accumulators, the decay and α of the block and the loaded rows fit in registers.
const COLS: usize = 8;

/// One token's recomputation on a *value-major* state: row i of `next` is row i of `prev`
/// decayed, plus `sa[i] βᵀ + v[i] kᵀ`, with `sa = S_{t−1}·α` as the forward saved it.
#[inline(always)]
fn recompute_valuemajor<const N: usize>(
    prev: &[f32],
    next: &mut [f32],
    w: &[f32; N],
    k: &[f32; N],
    v: &[f32; N],
    b: &[f32; N],
    sa: &[f32; N],
) {
    // Values, not references, where stores follow (see `columns_backward`).
    let (w, k, b) = (*w, *k, *b);
    for i in 0..N {
        let prow: [f32; N] = prev[i * N..(i + 1) * N].try_into().expect("row");
        let (sai, vi) = (sa[i], v[i]);
        let mut nrow = [0.0f32; N];
        for j in 0..N {
            nrow[j] = prow[j] * w[j] + sai * b[j] + vi * k[j];
        }
        next[i * N..(i + 1) * N].copy_from_slice(&nrow);
    }
}

/// Backward over one (batch, head). Unlike the forward it works on *value-major* matrices
/// (`X[i][j]`, i the value index): then every gradient of a key-indexed input (r, w, k, α, β)
/// is a sum over rows, accumulated column block by column block in registers, and only the two
/// value-indexed ones (v and `sa`) are row dot products — two horizontal reductions per row
/// instead of five in the key-major layout. Per token, with `G` = dL/dS_t (the later tokens'
/// part), `P` = S_{t−1}, `C` = S_t:
///
/// ```text
/// G'  = G + dy rᵀ
/// dv  = G' k          dsa = G' β
/// dr  = Cᵀ dy         dw  = Σ_i G'[i] ∘ P[i]     dk = G'ᵀ v     dβ = G'ᵀ sa     dα = Pᵀ dsa
/// G   = G' diag(w) + dsa αᵀ                       (dL/dS_{t−1})
/// ```
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
    out: HeadGrads<'_, N>,
) {
    let t_len = d.seq;
    let [mut gr, mut gw, mut gk, mut gv, mut ga, mut gb] = out;
    // `ds` is dL/dS in the public value-major layout: it is updated in place, token by token.
    let gs = ds;
    // states[m] = state before token t0+m, states[m+1] = after it (value-major).
    let mut states = vec![0.0f32; (CHUNK + 1) * N * N];
    let (saved, sas) = saved.split_at(d.states_per_head());
    let sa_of = |t: usize| -> &[f32; N] { sas[t * N..(t + 1) * N].try_into().expect("sa") };
    let n_chunks = t_len.div_ceil(CHUNK);
    for c in (0..n_chunks).rev() {
        let t0 = c * CHUNK;
        let len = CHUNK.min(t_len - t0);
        // Saved states are key-major (the forward's layout).
        transpose::<N, N>(&saved[c * N * N..(c + 1) * N * N], &mut states[..N * N]);
        for m in 0..len {
            let t = t0 + m;
            let (prev, next) = states.split_at_mut((m + 1) * N * N);
            let prev = &prev[m * N * N..];
            let next = &mut next[..N * N];
            if !active(x.mask, d, b, t) {
                next.copy_from_slice(prev);
                continue;
            }
            recompute_valuemajor::<N>(
                prev,
                next,
                tok::<N>(x.w, d, b, t, h),
                tok::<N>(x.k, d, b, t, h),
                tok::<N>(x.v, d, b, t, h),
                tok::<N>(x.b, d, b, t, h),
                sa_of(t),
            );
        }
        for m in (0..len).rev() {
            let t = t0 + m;
            if !active(x.mask, d, b, t) {
                continue; // dS passes through unchanged; all token grads stay 0
            }
            token_backward_valuemajor::<N>(
                TokenIo {
                    r: tok::<N>(x.r, d, b, t, h),
                    w: tok::<N>(x.w, d, b, t, h),
                    k: tok::<N>(x.k, d, b, t, h),
                    v: tok::<N>(x.v, d, b, t, h),
                    a: tok::<N>(x.a, d, b, t, h),
                    b: tok::<N>(x.b, d, b, t, h),
                    dy: tok::<N>(dy_all, d, b, t, h),
                    sa: sa_of(t),
                },
                &states[m * N * N..(m + 1) * N * N],
                &states[(m + 1) * N * N..(m + 2) * N * N],
                gs,
                [
                    gr.row(t),
                    gw.row(t),
                    gk.row(t),
                    gv.row(t),
                    ga.row(t),
                    gb.row(t),
                ],
            );
        }
    }
}

/// One token's inputs for the backward: the six inputs, dL/dy and the saved `sa = S_{t−1}α`.
struct TokenIo<'a, const N: usize> {
    r: &'a [f32; N],
    w: &'a [f32; N],
    k: &'a [f32; N],
    v: &'a [f32; N],
    a: &'a [f32; N],
    b: &'a [f32; N],
    dy: &'a [f32; N],
    sa: &'a [f32; N],
}

/// One token of [`head_backward`]: `gs` (value-major dL/dS) goes from dL/dS_t to dL/dS_{t−1};
/// `out` receives the token's gradients of r, w, k, v, α, β.
#[inline(always)]
fn token_backward_valuemajor<const N: usize>(
    x: TokenIo<N>,
    prev: &[f32],
    cur: &[f32],
    gs: &mut [f32],
    out: [&mut [f32; N]; 6],
) {
    let [gr, gw, gk, gv, ga, gb] = out;
    // Phase 1, row by row: G' = G + dy rᵀ, and the two row dot products.
    let mut dsa = [0.0f32; N];
    let (r, k, bb) = (*x.r, *x.k, *x.b); // values: see `columns_backward`
    for i in 0..N {
        let mut row: [f32; N] = gs[i * N..(i + 1) * N].try_into().expect("row");
        let dyi = x.dy[i];
        for j in 0..N {
            row[j] += dyi * r[j];
        }
        gv[i] = dot(&row, &k);
        dsa[i] = dot(&row, &bb);
        gs[i * N..(i + 1) * N].copy_from_slice(&row);
    }
    // Phase 2, column block by column block, the sums over rows held in registers.
    if N >= COLS {
        columns_backward::<N, COLS>(&x, &dsa, prev, cur, gs, [gr, gw, gk, ga, gb]);
    } else {
        columns_backward::<N, N>(&x, &dsa, prev, cur, gs, [gr, gw, gk, ga, gb]);
    }
}

/// Phase 2 of [`token_backward_valuemajor`] in blocks of `L` columns: the sums over rows of
/// the key-indexed gradients (r, w, k, α, β), and `G = G' diag(w) + dsa αᵀ`.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // `i` indexes four vectors and the rows of three matrices
fn columns_backward<const N: usize, const L: usize>(
    x: &TokenIo<N>,
    dsa: &[f32; N],
    prev: &[f32],
    cur: &[f32],
    gs: &mut [f32],
    out: [&mut [f32; N]; 5],
) {
    let [gr, gw, gk, ga, gb] = out;
    for j0 in (0..N).step_by(L) {
        let mut acc_r = [0.0f32; L];
        let mut acc_w = [0.0f32; L];
        let mut acc_k = [0.0f32; L];
        let mut acc_b = [0.0f32; L];
        let mut acc_a = [0.0f32; L];
        // Values, not references, wherever a store follows: the compiler cannot tell that the
        // rows of `gs` do not overlap the inputs, and would otherwise keep the loop scalar.
        let w: [f32; L] = x.w[j0..j0 + L].try_into().expect("block");
        let a: [f32; L] = x.a[j0..j0 + L].try_into().expect("block");
        for i in 0..N {
            let o = i * N + j0;
            let (dyi, vi, sai, dsai) = (x.dy[i], x.v[i], x.sa[i], dsa[i]);
            let grow: [f32; L] = gs[o..o + L].try_into().expect("block");
            let prow: [f32; L] = prev[o..o + L].try_into().expect("block");
            let crow: [f32; L] = cur[o..o + L].try_into().expect("block");
            let mut next = [0.0f32; L];
            for q in 0..L {
                let gq = grow[q];
                let pq = prow[q];
                acc_r[q] += crow[q] * dyi;
                acc_w[q] += gq * pq;
                acc_k[q] += gq * vi;
                acc_b[q] += gq * sai;
                acc_a[q] += pq * dsai;
                next[q] = gq * w[q] + dsai * a[q];
            }
            gs[o..o + L].copy_from_slice(&next);
        }
        gr[j0..j0 + L].copy_from_slice(&acc_r);
        gw[j0..j0 + L].copy_from_slice(&acc_w);
        gk[j0..j0 + L].copy_from_slice(&acc_k);
        gb[j0..j0 + L].copy_from_slice(&acc_b);
        ga[j0..j0 + L].copy_from_slice(&acc_a);
    }
}
