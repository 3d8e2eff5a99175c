//! Inputs shaped like a real RWKV-7 layer's, shared by the kernel tests.

/// The removal key and in-context terms of each head from raw keys `kk` and rates `icl`
/// (`[.., N]` rows): `α = −k̂`, `β = k̂ ⊙ icl` with `k̂` the row normalised to unit length.
pub fn removal_terms(kk: &[f32], icl: &[f32], n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut a = vec![0.0; kk.len()];
    let mut b = vec![0.0; kk.len()];
    for (i, head) in kk.chunks(n).enumerate() {
        let norm = head.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
        for j in 0..n {
            let kkj = head[j] / norm;
            a[i * n + j] = -kkj;
            b[i * n + j] = kkj * icl[i * n + j];
        }
    }
    (a, b)
}

/// A `[B·T]` token mask: all ones, or, with `gaps`, zeros at every `i % 7 == 3` and
/// `i % period == 5` (padding in the middle of sequences, runs of two included).
pub fn gap_mask(len: usize, gaps: bool, period: usize) -> Vec<f32> {
    (0..len)
        .map(|i| {
            if gaps && (i % 7 == 3 || i % period == 5) {
                0.0
            } else {
                1.0
            }
        })
        .collect()
}
