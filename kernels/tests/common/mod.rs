//! Inputs shaped like a real RWKV-7 layer's, and comparisons, shared by the kernel tests (not
//! every test file uses every helper).
#![allow(dead_code)]

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

/// The largest absolute difference between `a` and the oracle `b`, relative to `b`'s largest
/// magnitude.
pub fn max_rel_err<const D: usize>(a: burn::tensor::Tensor<D>, b: burn::tensor::Tensor<D>) -> f32 {
    let a = a.into_data().try_to_vec::<f32>().unwrap();
    let b = b.into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}
