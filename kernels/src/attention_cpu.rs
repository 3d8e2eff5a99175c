//! Causal softmax attention on the CPU over plain `f32` slices: forward (keeping each query
//! row's log-sum-exp) and backward (recomputing the probabilities from it), with grouped
//! key/value heads and a key padding mask.
//!
//! Layout: `q` is `[B, H, Tq, D]`, `k` and `v` are `[B, Hkv, Tk, D]` (query head `h` reads
//! key/value head `h / (H / Hkv)`) — in the forward pass possibly the first `Tk` rows of a
//! `[B, Hkv, R, D]` buffer with `R ≥ Tk` (a KV cache with room for more tokens, read in
//! place; [`AttnDims::kv_rows`]), the mask is `[B, Tk]` (1 = real key, 0 = padding) or empty
//! for "every key is real". The queries are the last `Tq` of the `Tk` positions, so query `i`
//! sees key `j` when `j ≤ i + (Tk − Tq)` and the key is real or is the query's own position
//! (a padded query still sees itself, so no row is empty).
//!
//! Work is split over (batch, head) with rayon; inside, query rows are taken in blocks of
//! [`ROWS`] and each block only multiplies against the keys its last row can see, so the
//! causal half of `Q·Kᵀ` is mostly skipped. The products are `gemm` calls on strided views.

use crate::activation::exp;
use crate::gemm_call::{View, gemm_f32};
use rayon::prelude::*;

/// Query rows per block.
pub const ROWS: usize = 64;

/// Problem dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnDims {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub q_len: usize,
    pub k_len: usize,
    pub head_dim: usize,
    /// Rows allocated per key/value head in `k` and `v` (`≥ k_len`; `k_len` for a tensor of
    /// exactly `[B, Hkv, Tk, D]`). The forward pass reads the first `k_len` of them.
    pub kv_rows: usize,
}

impl AttnDims {
    fn offset(&self) -> usize {
        self.k_len - self.q_len
    }
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
    pub fn q_size(&self) -> usize {
        self.batch * self.heads * self.q_len * self.head_dim
    }
    pub fn kv_size(&self) -> usize {
        self.batch * self.kv_heads * self.k_len * self.head_dim
    }
    /// Checks the relations between the sizes; panics with the offending values.
    pub fn check(&self) {
        assert!(
            self.kv_heads > 0 && self.heads.is_multiple_of(self.kv_heads),
            "attention: {} query heads are not a multiple of {} key/value heads",
            self.heads,
            self.kv_heads
        );
        assert!(
            self.q_len <= self.k_len,
            "attention: {} queries but only {} keys (the queries are the last keys)",
            self.q_len,
            self.k_len
        );
        assert!(
            self.kv_rows >= self.k_len,
            "attention: {} keys in a buffer of {} rows",
            self.k_len,
            self.kv_rows
        );
    }
}

/// Where a product goes: `data` with row stride `ld`, overwritten or added to.
struct Out<'a> {
    data: &'a mut [f32],
    ld: usize,
    accumulate: bool,
}

impl<'a> Out<'a> {
    /// `dst = product`.
    fn set(data: &'a mut [f32], ld: usize) -> Self {
        Self {
            data,
            ld,
            accumulate: false,
        }
    }

    /// `dst += product`.
    fn add(data: &'a mut [f32], ld: usize) -> Self {
        Self {
            data,
            ld,
            accumulate: true,
        }
    }
}

/// `dst[m×n] = (accumulate ? dst : 0) + lhs[m×k] · rhs[k×n]`, on this thread.
fn matmul(m: usize, n: usize, k: usize, out: Out, lhs: View, rhs: View) {
    let Out {
        data: dst,
        ld,
        accumulate,
    } = out;
    if m > 0 && n > 0 {
        assert!(
            (m - 1) * ld + n <= dst.len(),
            "attention: dst out of bounds"
        );
    }
    // SAFETY: every element of the product is inside `dst` (checked above), which holds
    // initialised values and, borrowed mutably, does not alias the inputs.
    unsafe { gemm_f32(m, n, k, dst.as_mut_ptr(), ld, accumulate, lhs, rhs, false) }
}

/// Whether query `i` (of the block's absolute rows) may see key `j`.
#[inline]
fn visible(i: usize, j: usize, offset: usize, mask: Option<&[f32]>) -> bool {
    let own = i + offset;
    j <= own && (j == own || mask.is_none_or(|m| m[j] != 0.0))
}

/// Per (batch, head): slices of that head's queries, keys, values and the batch row's mask.
struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    mask: Option<&'a [f32]>,
}

fn head<'a>(
    d: &AttnDims,
    bh: usize,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    mask: &'a [f32],
) -> Head<'a> {
    let (b, h) = (bh / d.heads, bh % d.heads);
    let kv = (b * d.kv_heads + h / d.group()) * d.kv_rows * d.head_dim;
    let qs = d.q_len * d.head_dim;
    let ks = d.k_len * d.head_dim;
    Head {
        q: &q[bh * qs..(bh + 1) * qs],
        k: &k[kv..kv + ks],
        v: &v[kv..kv + ks],
        mask: (!mask.is_empty()).then(|| &mask[b * d.k_len..(b + 1) * d.k_len]),
    }
}

/// The query rows of each block and the number of keys the block's last row sees.
fn blocks(d: &AttnDims) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    (0..d.q_len).step_by(ROWS).map(move |i0| {
        let rows = ROWS.min(d.q_len - i0);
        (i0, rows, i0 + rows + d.offset())
    })
}

/// A zeroed `[rows, Tk]` scratch matrix big enough for any block of [`blocks`].
fn block_scratch(d: &AttnDims) -> Vec<f32> {
    vec![0.0f32; ROWS.min(d.q_len) * d.k_len]
}

/// Forward pass: `(o [B, H, Tq, D], lse [B, H, Tq])` with `lse` the natural log of each
/// row's softmax normaliser of the scaled scores.
pub fn forward(
    d: AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[f32],
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    d.check();
    let dh = d.head_dim;
    let mut o = vec![0.0f32; d.q_size()];
    let mut lse = vec![0.0f32; d.batch * d.heads * d.q_len];
    o.par_chunks_mut(d.q_len * dh)
        .zip(lse.par_chunks_mut(d.q_len))
        .enumerate()
        .for_each(|(bh, (o, lse))| {
            let x = head(&d, bh, q, k, v, mask);
            let mut s = block_scratch(&d);
            for (i0, rows, cols) in blocks(&d) {
                let q_blk = View::new(&x.q[i0 * dh..], dh, 1);
                let k_t = View::new(x.k, 1, dh);
                matmul(rows, cols, dh, Out::set(&mut s, cols), q_blk, k_t);
                for r in 0..rows {
                    let i = i0 + r;
                    let row = &mut s[r * cols..(r + 1) * cols];
                    let mut max = f32::NEG_INFINITY;
                    for (j, x_j) in row.iter_mut().enumerate() {
                        *x_j = if visible(i, j, d.offset(), x.mask) {
                            *x_j * scale
                        } else {
                            f32::NEG_INFINITY
                        };
                        max = max.max(*x_j);
                    }
                    // The exponentials in one loop (vectorised), their sum in order in another.
                    row.iter_mut().for_each(|x_j| *x_j = exp(*x_j - max));
                    let sum: f32 = row.iter().sum();
                    let inv = 1.0 / sum;
                    row.iter_mut().for_each(|x_j| *x_j *= inv);
                    lse[i] = max + sum.ln();
                }
                let p = View::new(&s, cols, 1);
                let v_blk = View::new(x.v, dh, 1);
                matmul(rows, dh, cols, Out::set(&mut o[i0 * dh..], dh), p, v_blk);
            }
        });
    (o, lse)
}

/// What the backward pass reads: the forward's inputs, its output `o` and log-sum-exp `lse`,
/// and the output gradient `d_o` `[B, H, Tq, D]`.
pub struct BackwardInputs<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub mask: &'a [f32],
    pub o: &'a [f32],
    pub lse: &'a [f32],
    pub d_o: &'a [f32],
}

/// Gradients `(dq, dk, dv)` of the forward pass.
/// `k` and `v` are exactly `[B, Hkv, Tk, D]` here (`kv_rows == k_len`).
pub fn backward(d: AttnDims, x: BackwardInputs, scale: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let BackwardInputs {
        q,
        k,
        v,
        mask,
        o,
        lse,
        d_o,
    } = x;
    d.check();
    assert_eq!(
        d.kv_rows, d.k_len,
        "attention backward: k and v must be exactly [B, Hkv, Tk, D]"
    );
    let dh = d.head_dim;
    let (qs, ks) = (d.q_len * dh, d.k_len * dh);
    let mut dq = vec![0.0f32; d.q_size()];
    // Per query head; summed over each key/value head's group afterwards.
    let mut dk_h = vec![0.0f32; d.batch * d.heads * ks];
    let mut dv_h = vec![0.0f32; d.batch * d.heads * ks];
    dq.par_chunks_mut(qs)
        .zip(dk_h.par_chunks_mut(ks))
        .zip(dv_h.par_chunks_mut(ks))
        .enumerate()
        .for_each(|(bh, ((dq, dk), dv))| {
            let x = head(&d, bh, q, k, v, mask);
            let (o, d_o) = (&o[bh * qs..(bh + 1) * qs], &d_o[bh * qs..(bh + 1) * qs]);
            let lse = &lse[bh * d.q_len..(bh + 1) * d.q_len];
            let mut p = block_scratch(&d);
            let mut ds = block_scratch(&d);
            for (i0, rows, cols) in blocks(&d) {
                let q_blk = View::new(&x.q[i0 * dh..], dh, 1);
                let do_blk = View::new(&d_o[i0 * dh..], dh, 1);
                // P: recomputed from the scores and the saved log-sum-exp.
                matmul(
                    rows,
                    cols,
                    dh,
                    Out::set(&mut p, cols),
                    q_blk,
                    View::new(x.k, 1, dh),
                );
                for r in 0..rows {
                    let i = i0 + r;
                    for (j, p_j) in p[r * cols..(r + 1) * cols].iter_mut().enumerate() {
                        *p_j = if visible(i, j, d.offset(), x.mask) {
                            exp(*p_j * scale - lse[i])
                        } else {
                            0.0
                        };
                    }
                }
                // dV += Pᵀ·dO;  dP = dO·Vᵀ
                let p_t = View::new(&p, 1, cols);
                matmul(cols, dh, rows, Out::add(dv, dh), p_t, do_blk);
                matmul(
                    rows,
                    cols,
                    dh,
                    Out::set(&mut ds, cols),
                    do_blk,
                    View::new(x.v, 1, dh),
                );
                // dS = P ⊙ (dP − rowsum(dO ⊙ O)) · scale
                for r in 0..rows {
                    let i = i0 + r;
                    let delta: f32 = (0..dh).map(|c| d_o[i * dh + c] * o[i * dh + c]).sum();
                    let p_row = &p[r * cols..(r + 1) * cols];
                    for (ds_j, &p_j) in ds[r * cols..(r + 1) * cols].iter_mut().zip(p_row) {
                        *ds_j = p_j * (*ds_j - delta) * scale;
                    }
                }
                // dQ = dS·K;  dK += dSᵀ·Q
                let ds_v = View::new(&ds, cols, 1);
                matmul(
                    rows,
                    dh,
                    cols,
                    Out::set(&mut dq[i0 * dh..], dh),
                    ds_v,
                    View::new(x.k, dh, 1),
                );
                let ds_t = View::new(&ds, 1, cols);
                matmul(cols, dh, rows, Out::add(dk, dh), ds_t, q_blk);
            }
        });
    if d.group() == 1 {
        return (dq, dk_h, dv_h);
    }
    let sum_groups = |per_head: &[f32]| {
        let mut out = vec![0.0f32; d.kv_size()];
        out.par_chunks_mut(ks).enumerate().for_each(|(bg, out)| {
            let (b, g) = (bg / d.kv_heads, bg % d.kv_heads);
            for h in g * d.group()..(g + 1) * d.group() {
                let src = &per_head[(b * d.heads + h) * ks..(b * d.heads + h + 1) * ks];
                out.iter_mut().zip(src).for_each(|(a, s)| *a += s);
            }
        });
        out
    };
    (dq, sum_groups(&dk_h), sum_groups(&dv_h))
}
