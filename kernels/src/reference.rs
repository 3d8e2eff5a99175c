//! The oracle: the WKV-7 recurrence as a per-token loop of Burn tensor ops. Obviously correct,
//! differentiable by Burn's autodiff, and slow (thousands of graph nodes per layer).

use crate::Wkv7Input;
use burn::tensor::Tensor;

/// Same contract as [`crate::wkv7`].
pub fn wkv7(x: Wkv7Input, mask: Tensor<2>, state: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
    let [batch, seq, heads, n] = x.r.dims();
    let mut s = state; // [b, h, n(i), n(j)]
    let mut ys = Vec::with_capacity(seq);
    let at = |t: &Tensor<4>, i: usize| {
        t.clone()
            .slice([0..batch, i..i + 1, 0..heads, 0..n])
            .reshape([batch, heads, 1, n])
    };
    for t in 0..seq {
        let (r, w, k, v, a, b) = (
            at(&x.r, t),
            at(&x.w, t),
            at(&x.k, t),
            at(&x.v, t),
            at(&x.a, t),
            at(&x.b, t),
        );
        let m = mask
            .clone()
            .slice([0..batch, t..t + 1])
            .reshape([batch, 1, 1, 1]); // [b,1,1,1]
        // sa = S·α: [b,h,n,n] x [b,h,n,1] -> [b,h,n,1]
        let sa = s.clone().matmul(a.swap_dims(2, 3));
        // S' = S ⊙ w + sa βᵀ + v kᵀ  (w, β, k broadcast along rows)
        let new_s = s.clone() * w + sa.matmul(b) + v.swap_dims(2, 3).matmul(k);
        // masked tokens keep the old state
        s = new_s * m.clone() + s * (m.clone().neg() + 1.0);
        // y = S·r: [b,h,n,1]
        let y = s.clone().matmul(r.swap_dims(2, 3)) * m;
        ys.push(y.reshape([batch, 1, heads, n]));
    }
    (Tensor::cat(ys, 1), s)
}
