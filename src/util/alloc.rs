//! Allocator settings for tensor work.
//!
//! Training allocates and frees tensors of tens to hundreds of MB many times per step (the
//! vocabulary-sized logits and their gradients above all). glibc serves blocks that large
//! with fresh `mmap`s and returns them on free, so every step pays the kernel for zeroing
//! and faulting in the same memory again (measured: ~10 % of a SmolLM2 stage-2 step). Keeping
//! every block on the heap and not trimming it lets the next step reuse the pages.

/// Serves every allocation from the heap and keeps freed memory for reuse (glibc only; a
/// no-op elsewhere). Call once, at start-up, before threads allocate.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
