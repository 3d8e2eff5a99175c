//! The WKV-7 recurrence as CubeCL kernels for Burn's GPU backends (`CubeBackend`: wgpu here;
//! the same code serves every CubeCL runtime).
//!
//! One cube (workgroup) per (batch, head), one unit (thread) per value index `i`: unit `i`
//! holds row `i` of the state `S[i][·]` in registers, in f32. Each token's six input vectors
//! are shared through workgroup memory; the forward's sums over the key index `j` are then
//! local to a unit. The backward also needs sums over `i` (the gradients of r, w, k, α, β):
//! each unit writes its row's contributions into a padded `N×(N+1)` shared block and unit `j`
//! adds up column `j` (a shared-memory reduction: subgroup operations are not available on
//! every adapter, lavapipe's included).
//!
//! As on the CPU ([`crate::cpu`]), the forward saves the state every [`CHUNK`] tokens and
//! the backward recomputes the states inside each chunk from it (into a per-head scratch
//! block in global memory), so the backward sees exactly the forward's states.
//!
//! The loops over a head's `N` entries are unrolled at compile time: the per-unit arrays then
//! have constant indices and can live in registers (and Mesa's software Vulkan driver, which
//! stops any loop after 65,535 iterations in total, only sees the token loops).
//!
//! Barriers only sit in control flow that is uniform over the cube (loops bounded by kernel
//! arguments); masked tokens are handled by selecting, not by branching around a barrier.
//!
//! wgpu allows 8 storage buffers per shader stage, so the six inputs travel as one stacked
//! `[6, B, T, H, N]` tensor and the six input gradients come back as one.

use crate::cpu::CHUNK;
use burn::backend::TensorMetadata;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, Shape, Slice};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use cubecl::prelude::*;

/// The largest head size the kernels take: the backward's shared memory is `N·(N+1) + 7N`
/// floats (18 KiB at 64), within the 32 KiB every adapter offers.
pub const MAX_HEAD_SIZE: usize = 64;

/// Stacked inputs: r, w, k, v, α, β.
const R: usize = 0;
const W: usize = 1;
const K: usize = 2;
const V: usize = 3;
const A: usize = 4;
const B: usize = 5;

#[cube(launch)]
fn wkv7_forward_kernel<F: Float>(
    xs: &Tensor<F>,
    mask: &Tensor<F>,
    s0: &Tensor<F>,
    y: &mut Tensor<F>,
    states: &mut Tensor<F>,
    seq: u32,
    heads: u32,
    n_states: u32,
    #[comptime] n: usize,
    #[comptime] chunk: usize,
    #[comptime] save: bool,
    #[define(F)] _dtype: ElemType,
) {
    let bh = CUBE_POS_X as usize;
    let i = UNIT_POS_X as usize;
    let seq = seq as usize;
    let heads = heads as usize;
    let n_states = n_states as usize;
    let batch = bh / heads;
    let head = bh % heads;
    let plane = xs.len() / 6;
    let zero = F::new(0.0);

    let mut s = Array::<F>::new(n);
    #[unroll]
    for j in 0..n {
        s[j] = s0[(bh * n + i) * n + j];
    }
    let mut x = Shared::<[F]>::new_slice(6 * n);
    for t in 0..seq {
        if save && t % chunk == 0 {
            let base = ((bh * n_states + t / chunk) * n + i) * n;
            #[unroll]
            for j in 0..n {
                states[base + j] = s[j];
            }
        }
        let o = ((batch * seq + t) * heads + head) * n + i;
        #[unroll]
        for q in 0..6usize {
            x[q * n + i] = xs[q * plane + o];
        }
        sync_cube();
        let active = mask[batch * seq + t] != zero;
        let mut out = zero;
        if active {
            let mut sa = zero;
            #[unroll]
            for j in 0..n {
                sa += s[j] * x[A * n + j];
            }
            let vi = x[V * n + i];
            #[unroll]
            for j in 0..n {
                let nv = s[j] * x[W * n + j] + sa * x[B * n + j] + vi * x[K * n + j];
                s[j] = nv;
                out += nv * x[R * n + j];
            }
        }
        y[o] = out;
        sync_cube();
    }
    let last = ((bh * n_states + n_states - 1) * n + i) * n;
    #[unroll]
    for j in 0..n {
        states[last + j] = s[j];
    }
}

/// Adds up column `i` of the `n×(n+1)` block after every unit wrote its row.
#[cube]
fn column_sum<F: Float>(red: &Shared<[F]>, i: usize, #[comptime] n: usize) -> F {
    let mut acc = F::new(0.0);
    #[unroll]
    for row in 0..n {
        acc += red[row * (n + 1) + i];
    }
    acc
}

#[cube(launch)]
fn wkv7_backward_kernel<F: Float>(
    xs: &Tensor<F>,
    mask: &Tensor<F>,
    saved: &Tensor<F>,
    dy: &Tensor<F>,
    ds: &Tensor<F>,
    dxs: &mut Tensor<F>,
    work: &mut Tensor<F>,
    seq: u32,
    heads: u32,
    n_saved: u32,
    #[comptime] n: usize,
    #[comptime] chunk: usize,
    #[define(F)] _dtype: ElemType,
) {
    let bh = CUBE_POS_X as usize;
    let i = UNIT_POS_X as usize;
    let seq = seq as usize;
    let heads = heads as usize;
    let n_saved = n_saved as usize;
    let batch = bh / heads;
    let head = bh % heads;
    let plane = xs.len() / 6;
    let zero = F::new(0.0);
    // work: [B·H, chunk + 2, n, n]: slot 0 receives dS0, slot 1 + m the state before token m
    // of the current chunk (slot 1 + len the state after its last token).
    let wbase = bh * (chunk + 2) * n * n;
    let slot = n * n;

    let mut g = Array::<F>::new(n);
    let mut prev = Array::<F>::new(n);
    let mut cur = Array::<F>::new(n);
    let mut sas = Array::<F>::new(chunk);
    #[unroll]
    for j in 0..n {
        g[j] = ds[(bh * n + i) * n + j];
    }
    // x: r, w, k, v, α, β, dy of the current token.
    let mut x = Shared::<[F]>::new_slice(7 * n);
    let mut red = Shared::<[F]>::new_slice(n * (n + 1));

    let n_chunks = (seq + chunk - 1) / chunk;
    for cc in 0..n_chunks {
        let c = n_chunks - 1 - cc;
        let t0 = c * chunk;
        let mut len = seq - t0;
        if len > chunk {
            len = chunk;
        }
        // Recompute the chunk's states from the saved one.
        #[unroll]
        for j in 0..n {
            let sj = saved[((bh * n_saved + c) * n + i) * n + j];
            cur[j] = sj;
            work[wbase + slot + i * n + j] = sj;
        }
        for m in 0..len {
            let t = t0 + m;
            let o = ((batch * seq + t) * heads + head) * n + i;
            #[unroll]
            for q in 0..6usize {
                x[q * n + i] = xs[q * plane + o];
            }
            sync_cube();
            if mask[batch * seq + t] != zero {
                let mut sa = zero;
                #[unroll]
                for j in 0..n {
                    sa += cur[j] * x[A * n + j];
                }
                sas[m] = sa;
                let vi = x[V * n + i];
                #[unroll]
                for j in 0..n {
                    cur[j] = cur[j] * x[W * n + j] + sa * x[B * n + j] + vi * x[K * n + j];
                }
            }
            #[unroll]
            for j in 0..n {
                work[wbase + (m + 2) * slot + i * n + j] = cur[j];
            }
            sync_cube();
        }
        // Walk the chunk backwards.
        for mm in 0..len {
            let m = len - 1 - mm;
            let t = t0 + m;
            let o = ((batch * seq + t) * heads + head) * n + i;
            #[unroll]
            for q in 0..6usize {
                x[q * n + i] = xs[q * plane + o];
            }
            x[6 * n + i] = dy[o];
            sync_cube();
            let active = mask[batch * seq + t] != zero;
            let dyi = x[6 * n + i];
            let vi = x[V * n + i];
            let mut sa = zero;
            let mut dv = zero;
            let mut dsa = zero;
            if active {
                sa = sas[m];
                #[unroll]
                for j in 0..n {
                    prev[j] = work[wbase + (m + 1) * slot + i * n + j];
                    cur[j] = work[wbase + (m + 2) * slot + i * n + j];
                    let gj = g[j] + dyi * x[R * n + j];
                    g[j] = gj;
                    dv += gj * x[K * n + j];
                    dsa += gj * x[B * n + j];
                }
            } else {
                #[unroll]
                for j in 0..n {
                    prev[j] = zero;
                    cur[j] = zero;
                }
            }
            // Sums over i, one shared block each: dr = Sᵀdy, dk = dSᵀv, dw = Σ dS⊙S_prev,
            // dβ = dSᵀsa, dα = S_prevᵀ dsa (all zero for a masked token: its rows are 0).
            #[unroll]
            for j in 0..n {
                red[i * (n + 1) + j] = cur[j] * dyi;
            }
            sync_cube();
            dxs[R * plane + o] = column_sum::<F>(&red, i, n);
            sync_cube();
            #[unroll]
            for j in 0..n {
                let gj = g[j];
                red[i * (n + 1) + j] = select(active, gj * vi, zero);
            }
            sync_cube();
            dxs[K * plane + o] = column_sum::<F>(&red, i, n);
            sync_cube();
            #[unroll]
            for j in 0..n {
                red[i * (n + 1) + j] = g[j] * prev[j];
            }
            sync_cube();
            dxs[W * plane + o] = column_sum::<F>(&red, i, n);
            sync_cube();
            #[unroll]
            for j in 0..n {
                red[i * (n + 1) + j] = select(active, g[j] * sa, zero);
            }
            sync_cube();
            dxs[B * plane + o] = column_sum::<F>(&red, i, n);
            sync_cube();
            #[unroll]
            for j in 0..n {
                red[i * (n + 1) + j] = prev[j] * dsa;
            }
            sync_cube();
            dxs[A * plane + o] = column_sum::<F>(&red, i, n);
            dxs[V * plane + o] = dv;
            if active {
                #[unroll]
                for j in 0..n {
                    g[j] = g[j] * x[W * n + j] + dsa * x[A * n + j];
                }
            }
            sync_cube();
        }
    }
    #[unroll]
    for j in 0..n {
        work[wbase + i * n + j] = g[j];
    }
}

pub(crate) type Ct = FloatTensor<CubeBackend>;

fn dims4(t: &Ct) -> [usize; 4] {
    let shape = t.shape();
    assert_eq!(
        shape.num_dims(),
        4,
        "wkv7: inputs must be [B, T, H, N], got {:?}",
        shape.to_vec()
    );
    shape.dims::<4>()
}

pub(crate) fn check_f32(op: &str, tensors: &[(&Ct, &str)]) {
    for (t, name) in tensors {
        assert_eq!(
            t.dtype,
            DType::F32,
            "{op}: `{name}` must be f32 on a GPU (got {:?}); cast before calling",
            t.dtype
        );
    }
}

/// `[n, …]` from `n` tensors of one shape (a contiguous copy).
pub(crate) fn stack<const M: usize>(xs: [Ct; M]) -> Ct {
    let parts = xs
        .into_iter()
        .map(|t| {
            let mut dims = vec![1];
            dims.extend(t.shape().to_vec());
            CubeBackend::float_reshape(t, Shape::from(dims))
        })
        .collect();
    into_contiguous(CubeBackend::float_cat(parts, 0))
}

/// Part `q` of a stacked `[n, …]` tensor, as `[…]`.
pub(crate) fn part(stacked: &Ct, q: usize) -> Ct {
    let dims = stacked.shape().to_vec();
    let mut ranges: Vec<Slice> = dims.iter().map(|&d| Slice::from(0..d)).collect();
    ranges[0] = Slice::from(q..q + 1);
    let one = CubeBackend::float_slice(stacked.clone(), &ranges);
    CubeBackend::float_reshape(one, Shape::from(dims[1..].to_vec()))
}

fn cube_dims(bh: usize, n: usize) -> (CubeCount, CubeDim) {
    (
        CubeCount::Static(bh as u32, 1, 1),
        CubeDim::new_1d(n as u32),
    )
}

/// Forward: `(y, final state, saved states)`; see [`crate::op::Wkv7Ops::wkv7_forward`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    r: Ct,
    w: Ct,
    k: Ct,
    v: Ct,
    a: Ct,
    b: Ct,
    mask: Ct,
    s0: Ct,
    save: bool,
) -> (Ct, Ct, Ct) {
    let [batch, seq, heads, n] = dims4(&r);
    assert!(
        n <= MAX_HEAD_SIZE,
        "wkv7: head size {n} is above the GPU kernel's {MAX_HEAD_SIZE}"
    );
    check_f32(
        "wkv7",
        &[
            (&r, "r"),
            (&w, "w"),
            (&k, "k"),
            (&v, "v"),
            (&a, "a"),
            (&b, "b"),
            (&mask, "mask"),
            (&s0, "state"),
        ],
    );
    let xs = stack([r, w, k, v, a, b]);
    let (mask, s0) = (into_contiguous(mask), into_contiguous(s0));
    let client = xs.client.clone();
    let device = xs.device.clone();
    let n_states = if save { seq.div_ceil(CHUNK) + 1 } else { 1 };
    let y = empty_device_dtype(
        client.clone(),
        device.clone(),
        Shape::new([batch, seq, heads, n]),
        DType::F32,
    );
    let states = empty_device_dtype(
        client.clone(),
        device,
        Shape::new([batch, heads, n_states, n, n]),
        DType::F32,
    );
    let (count, dim) = cube_dims(batch * heads, n);
    wkv7_forward_kernel::launch(
        &client,
        count,
        dim,
        xs.into_tensor_arg(),
        mask.into_tensor_arg(),
        s0.into_tensor_arg(),
        y.clone().into_tensor_arg(),
        states.clone().into_tensor_arg(),
        seq as u32,
        heads as u32,
        n_states as u32,
        n,
        CHUNK,
        save,
        burn::backend::cubecl::dtype_to_storage_type(DType::F32),
    );
    let last = CubeBackend::float_slice(
        states.clone(),
        &[
            Slice::from(0..batch),
            Slice::from(0..heads),
            Slice::from(n_states - 1..n_states),
            Slice::from(0..n),
            Slice::from(0..n),
        ],
    );
    let last = CubeBackend::float_reshape(last, Shape::new([batch, heads, n, n]));
    (y, last, states)
}

/// Backward: `(dr, dw, dk, dv, dα, dβ, ds0)`; see [`crate::op::Wkv7Ops::wkv7_backward`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    r: Ct,
    w: Ct,
    k: Ct,
    v: Ct,
    a: Ct,
    b: Ct,
    mask: Ct,
    saved: Ct,
    dy: Ct,
    ds: Ct,
) -> (Ct, Ct, Ct, Ct, Ct, Ct, Ct) {
    let [batch, seq, heads, n] = dims4(&r);
    check_f32("wkv7", &[(&dy, "dy"), (&ds, "ds")]);
    let xs = stack([r, w, k, v, a, b]);
    let (mask, saved, dy, ds) = (
        into_contiguous(mask),
        into_contiguous(saved),
        into_contiguous(dy),
        into_contiguous(ds),
    );
    let n_saved = saved.shape().to_vec()[2];
    assert_eq!(
        n_saved,
        seq.div_ceil(CHUNK) + 1,
        "wkv7 backward: the forward did not save its states"
    );
    let client = xs.client.clone();
    let device = xs.device.clone();
    let dxs = empty_device_dtype(client.clone(), device.clone(), xs.shape(), DType::F32);
    let work = empty_device_dtype(
        client.clone(),
        device,
        Shape::new([batch * heads, CHUNK + 2, n, n]),
        DType::F32,
    );
    let (count, dim) = cube_dims(batch * heads, n);
    wkv7_backward_kernel::launch(
        &client,
        count,
        dim,
        xs.into_tensor_arg(),
        mask.into_tensor_arg(),
        saved.into_tensor_arg(),
        dy.into_tensor_arg(),
        ds.into_tensor_arg(),
        dxs.clone().into_tensor_arg(),
        work.clone().into_tensor_arg(),
        seq as u32,
        heads as u32,
        n_saved as u32,
        n,
        CHUNK,
        burn::backend::cubecl::dtype_to_storage_type(DType::F32),
    );
    let ds0 = CubeBackend::float_slice(
        work,
        &[
            Slice::from(0..batch * heads),
            Slice::from(0..1),
            Slice::from(0..n),
            Slice::from(0..n),
        ],
    );
    let ds0 = CubeBackend::float_reshape(ds0, Shape::new([batch, heads, n, n]));
    (
        part(&dxs, R),
        part(&dxs, W),
        part(&dxs, K),
        part(&dxs, V),
        part(&dxs, A),
        part(&dxs, B),
        ds0,
    )
}
