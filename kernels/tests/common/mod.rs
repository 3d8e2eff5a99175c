//! Inputs shaped like a real RWKV-7 layer's, shared by the kernel tests.

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
