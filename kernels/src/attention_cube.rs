//! Causal softmax attention as CubeCL kernels for Burn's GPU backends, with the CPU op's
//! layouts and visibility rule (see [`crate::attention_cpu`]): grouped key/value heads read in
//! place, a key padding mask, queries that are the last `Tq` of `Tk` positions.
//!
//! One thread per row, no shared memory: the forward and the query gradient take one query
//! row each and walk the keys it sees with an online softmax (running maximum and normaliser,
//! the output row in registers); the key and value gradients take one key row each and walk
//! the queries of every head of its group that see it. Each row's log-sum-exp is kept from the
//! forward, so the backward recomputes the probabilities instead of storing them. The loops
//! over the head size are unrolled; scores and sums are f32.
//!
//! wgpu allows 8 storage buffers per shader stage: keys and values travel stacked as one
//! `[2, B, Hkv, Tk, D]` tensor, the log-sum-exp and the rows' `Σ dO⊙O` as one `[2, B, H, Tq]`.

use crate::cube::{Ct, check_f32, part, stack};
use burn::backend::TensorMetadata;
use burn::backend::ops::FloatTensorOps;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use cubecl::prelude::*;

/// The largest head size the kernels take (rows are held in registers).
pub const MAX_HEAD_DIM: usize = 128;

/// Threads per workgroup.
const THREADS: u32 = 64;

/// Whether query row `i` sees key `j` (`offset = Tk − Tq`): causally, and the key is real or is
/// the query's own position.
#[cube]
fn visible<F: Float>(mask: &Tensor<F>, mrow: usize, i: usize, j: usize, offset: usize) -> bool {
    let own = i + offset;
    let mut seen = false;
    if j <= own {
        seen = j == own || mask[mrow + j] != F::new(0.0);
    }
    seen
}

#[cube(launch)]
fn attention_forward_kernel<F: Float>(
    q: &Tensor<F>,
    kv: &Tensor<F>,
    mask: &Tensor<F>,
    o: &mut Tensor<F>,
    lse: &mut Tensor<F>,
    heads: u32,
    kv_heads: u32,
    q_len: u32,
    k_len: u32,
    scale: f32,
    #[comptime] d: usize,
    #[define(F)] _dtype: ElemType,
) {
    let row = ABSOLUTE_POS;
    let heads = heads as usize;
    let kv_heads = kv_heads as usize;
    let q_len = q_len as usize;
    let k_len = k_len as usize;
    if row < lse.len() {
        let i = row % q_len;
        let bh = row / q_len;
        let b = bh / heads;
        let kvh = (bh % heads) / (heads / kv_heads);
        let kbase = (b * kv_heads + kvh) * k_len * d;
        let vbase = kv.len() / 2 + kbase;
        let offset = k_len - q_len;
        let scale = F::cast_from(scale);
        let mut qr = Array::<F>::new(d);
        let mut acc = Array::<F>::new(d);
        #[unroll]
        for dd in 0..d {
            qr[dd] = q[row * d + dd] * scale;
            acc[dd] = F::new(0.0);
        }
        // A finite floor (WGSL has no infinity literals); every row sees at least itself.
        let mut m = F::new(-3.0e38);
        let mut l = F::new(0.0);
        for j in 0..i + offset + 1 {
            if visible::<F>(mask, b * k_len, i, j, offset) {
                let mut s = F::new(0.0);
                #[unroll]
                for dd in 0..d {
                    s += qr[dd] * kv[kbase + j * d + dd];
                }
                let m_new = select(s > m, s, m);
                let corr = (m - m_new).exp();
                let p = (s - m_new).exp();
                l = l * corr + p;
                #[unroll]
                for dd in 0..d {
                    acc[dd] = acc[dd] * corr + p * kv[vbase + j * d + dd];
                }
                m = m_new;
            }
        }
        #[unroll]
        for dd in 0..d {
            o[row * d + dd] = acc[dd] / l;
        }
        lse[row] = m + l.ln();
    }
}

#[cube(launch)]
fn attention_dq_kernel<F: Float>(
    q: &Tensor<F>,
    kv: &Tensor<F>,
    mask: &Tensor<F>,
    stats: &Tensor<F>,
    d_o: &Tensor<F>,
    dq: &mut Tensor<F>,
    heads: u32,
    kv_heads: u32,
    q_len: u32,
    k_len: u32,
    scale: f32,
    #[comptime] d: usize,
    #[define(F)] _dtype: ElemType,
) {
    let row = ABSOLUTE_POS;
    let heads = heads as usize;
    let kv_heads = kv_heads as usize;
    let q_len = q_len as usize;
    let k_len = k_len as usize;
    let rows = stats.len() / 2;
    if row < rows {
        let i = row % q_len;
        let bh = row / q_len;
        let b = bh / heads;
        let kvh = (bh % heads) / (heads / kv_heads);
        let kbase = (b * kv_heads + kvh) * k_len * d;
        let vbase = kv.len() / 2 + kbase;
        let offset = k_len - q_len;
        let scale = F::cast_from(scale);
        let lse = stats[row];
        let delta = stats[rows + row];
        let mut qr = Array::<F>::new(d);
        let mut gr = Array::<F>::new(d);
        let mut acc = Array::<F>::new(d);
        #[unroll]
        for dd in 0..d {
            qr[dd] = q[row * d + dd] * scale;
            gr[dd] = d_o[row * d + dd];
            acc[dd] = F::new(0.0);
        }
        for j in 0..i + offset + 1 {
            if visible::<F>(mask, b * k_len, i, j, offset) {
                let mut s = F::new(0.0);
                let mut dp = F::new(0.0);
                #[unroll]
                for dd in 0..d {
                    s += qr[dd] * kv[kbase + j * d + dd];
                    dp += gr[dd] * kv[vbase + j * d + dd];
                }
                let ds = (s - lse).exp() * (dp - delta);
                #[unroll]
                for dd in 0..d {
                    acc[dd] += ds * kv[kbase + j * d + dd];
                }
            }
        }
        #[unroll]
        for dd in 0..d {
            dq[row * d + dd] = acc[dd] * scale;
        }
    }
}

#[cube(launch)]
fn attention_dkv_kernel<F: Float>(
    q: &Tensor<F>,
    kv: &Tensor<F>,
    mask: &Tensor<F>,
    stats: &Tensor<F>,
    d_o: &Tensor<F>,
    dkv: &mut Tensor<F>,
    heads: u32,
    kv_heads: u32,
    q_len: u32,
    k_len: u32,
    scale: f32,
    #[comptime] d: usize,
    #[define(F)] _dtype: ElemType,
) {
    let krow = ABSOLUTE_POS;
    let heads = heads as usize;
    let kv_heads = kv_heads as usize;
    let q_len = q_len as usize;
    let k_len = k_len as usize;
    let half = kv.len() / 2;
    let rows = stats.len() / 2;
    if krow * d < half {
        let j = krow % k_len;
        let bkv = krow / k_len;
        let b = bkv / kv_heads;
        let kvh = bkv % kv_heads;
        let group = heads / kv_heads;
        let offset = k_len - q_len;
        let scale = F::cast_from(scale);
        let mut kr = Array::<F>::new(d);
        let mut vr = Array::<F>::new(d);
        let mut dk = Array::<F>::new(d);
        let mut dv = Array::<F>::new(d);
        #[unroll]
        for dd in 0..d {
            kr[dd] = kv[krow * d + dd] * scale;
            vr[dd] = kv[half + krow * d + dd];
            dk[dd] = F::new(0.0);
            dv[dd] = F::new(0.0);
        }
        // The first query that may see key j (queries sit at positions offset..k_len).
        let mut first = 0usize;
        if j > offset {
            first = j - offset;
        }
        for g in 0..group {
            let h = kvh * group + g;
            let qbase = (b * heads + h) * q_len;
            for i in first..q_len {
                if visible::<F>(mask, b * k_len, i, j, offset) {
                    let row = qbase + i;
                    let mut s = F::new(0.0);
                    let mut dp = F::new(0.0);
                    #[unroll]
                    for dd in 0..d {
                        s += q[row * d + dd] * kr[dd];
                        dp += d_o[row * d + dd] * vr[dd];
                    }
                    let p = (s - stats[row]).exp();
                    let ds = p * (dp - stats[rows + row]);
                    #[unroll]
                    for dd in 0..d {
                        dv[dd] += p * d_o[row * d + dd];
                        dk[dd] += ds * q[row * d + dd];
                    }
                }
            }
        }
        #[unroll]
        for dd in 0..d {
            dkv[krow * d + dd] = dk[dd] * scale;
            dkv[half + krow * d + dd] = dv[dd];
        }
    }
}

fn dims(q: &Ct, k: &Ct) -> ([usize; 4], [usize; 4]) {
    let (qs, ks) = (q.shape(), k.shape());
    assert!(
        qs.num_dims() == 4 && ks.num_dims() == 4,
        "attention: q and k must be [B, heads, T, D], got {:?} and {:?}",
        qs.to_vec(),
        ks.to_vec()
    );
    let (qd, kd) = (qs.dims::<4>(), ks.dims::<4>());
    assert!(
        qd[0] == kd[0] && qd[3] == kd[3] && kd[1] > 0 && qd[1] % kd[1] == 0 && qd[2] <= kd[2],
        "attention: q {qd:?} and k {kd:?}: batch and head size must agree, query heads be a \
         multiple of key/value heads, and the queries no more than the keys"
    );
    assert!(
        qd[3] <= MAX_HEAD_DIM,
        "attention: head size {} is above the GPU kernel's {MAX_HEAD_DIM}",
        qd[3]
    );
    (qd, kd)
}

fn grid(rows: usize) -> (CubeCount, CubeDim) {
    (
        CubeCount::Static((rows as u32).div_ceil(THREADS), 1, 1),
        CubeDim::new_1d(THREADS),
    )
}

/// `(o, lse)`; see [`crate::attention_op::AttentionOps::causal_attention_forward`].
pub(crate) fn forward(q: Ct, k: Ct, v: Ct, mask: Ct, scale: f32) -> (Ct, Ct) {
    let (qd, kd) = dims(&q, &k);
    check_f32(
        "attention",
        &[(&q, "q"), (&k, "k"), (&v, "v"), (&mask, "mask")],
    );
    let q = into_contiguous(q);
    let kv = stack([k, v]);
    let mask = into_contiguous(mask);
    let (client, device) = (q.client.clone(), q.device.clone());
    let o = empty_device_dtype(client.clone(), device.clone(), Shape::new(qd), DType::F32);
    let lse = empty_device_dtype(
        client.clone(),
        device,
        Shape::new([qd[0], qd[1], qd[2]]),
        DType::F32,
    );
    let (count, dim) = grid(qd[0] * qd[1] * qd[2]);
    attention_forward_kernel::launch(
        &client,
        count,
        dim,
        q.into_tensor_arg(),
        kv.into_tensor_arg(),
        mask.into_tensor_arg(),
        o.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        qd[1] as u32,
        kd[1] as u32,
        qd[2] as u32,
        kd[2] as u32,
        scale,
        qd[3],
        burn::backend::cubecl::dtype_to_storage_type(DType::F32),
    );
    (o, lse)
}

/// `(dq, dk, dv)`; see [`crate::attention_op::AttentionOps::causal_attention_backward`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    q: Ct,
    k: Ct,
    v: Ct,
    mask: Ct,
    o: Ct,
    lse: Ct,
    d_o: Ct,
    scale: f32,
) -> (Ct, Ct, Ct) {
    let (qd, kd) = dims(&q, &k);
    check_f32("attention", &[(&d_o, "grad")]);
    // Σ_d dO⊙O per row, beside the log-sum-exp.
    let delta = CubeBackend::float_sum_dim(CubeBackend::float_mul(d_o.clone(), o), 3);
    let delta = CubeBackend::float_reshape(delta, Shape::new([qd[0], qd[1], qd[2]]));
    let stats = stack([lse, delta]);
    let q = into_contiguous(q);
    let d_o = into_contiguous(d_o);
    let kv = stack([k, v]);
    let mask = into_contiguous(mask);
    let (client, device) = (q.client.clone(), q.device.clone());
    let dq = empty_device_dtype(client.clone(), device.clone(), Shape::new(qd), DType::F32);
    let dkv = empty_device_dtype(client.clone(), device, kv.shape(), DType::F32);
    let f32_type = burn::backend::cubecl::dtype_to_storage_type(DType::F32);
    let (count, dim) = grid(qd[0] * qd[1] * qd[2]);
    attention_dq_kernel::launch(
        &client,
        count,
        dim,
        q.clone().into_tensor_arg(),
        kv.clone().into_tensor_arg(),
        mask.clone().into_tensor_arg(),
        stats.clone().into_tensor_arg(),
        d_o.clone().into_tensor_arg(),
        dq.clone().into_tensor_arg(),
        qd[1] as u32,
        kd[1] as u32,
        qd[2] as u32,
        kd[2] as u32,
        scale,
        qd[3],
        f32_type,
    );
    let (count, dim) = grid(kd[0] * kd[1] * kd[2]);
    attention_dkv_kernel::launch(
        &client,
        count,
        dim,
        q.into_tensor_arg(),
        kv.into_tensor_arg(),
        mask.into_tensor_arg(),
        stats.into_tensor_arg(),
        d_o.into_tensor_arg(),
        dkv.clone().into_tensor_arg(),
        qd[1] as u32,
        kd[1] as u32,
        qd[2] as u32,
        kd[2] as u32,
        scale,
        qd[3],
        f32_type,
    );
    (dq, part(&dkv, 0), part(&dkv, 1))
}
