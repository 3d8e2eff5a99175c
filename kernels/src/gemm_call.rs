//! One call into the `gemm` crate for the kernels that multiply matrices (the attention and the
//! dense layers' op): operands as strided views, their bounds checked before the call.

/// A read-only matrix view: element `(r, c)` is `data[r·rs + c·cs]` (row-major, or a transpose
/// read in place).
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    pub fn new(data: &'a [f32], rs: usize, cs: usize) -> Self {
        Self { data, rs, cs }
    }

    /// Panics unless every element of a `rows × cols` matrix is inside the slice; `what`
    /// names the operand in the message.
    pub fn check(&self, rows: usize, cols: usize, what: &str) {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * self.rs + (cols - 1) * self.cs;
            assert!(last < self.data.len(), "{what}: view out of bounds");
        }
    }
}

/// `dst[m×n] = (accumulate ? dst : 0) + lhs[m×k] · rhs[k×n]`, `dst` with row stride `ld`; on
/// every thread when `parallel`. The operands' bounds are checked here.
///
/// # Safety
///
/// `dst` must be valid for writes at `i·ld + j` for every `i < m`, `j < n` (and hold
/// initialised values there when `accumulate`), and must not overlap `lhs` or `rhs`. Without
/// `accumulate` and with `k > 0`, every such element is written and none is read.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    ld: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    parallel: bool,
) {
    lhs.check(m, k, "gemm lhs");
    rhs.check(k, n, "gemm rhs");
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the operands' elements are in bounds (checked above); `dst` as the caller
    // promises.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            ld as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}
