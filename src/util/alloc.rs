//! Allocator settings for tensor work.
//!
//! Training allocates and frees tensors of tens to hundreds of MB many times per step (the
//! vocabulary-sized logits and their gradients above all). glibc serves blocks that large
//! with fresh `mmap`s and returns them on free, so every step pays the kernel for zeroing
//! and faulting in the same memory again (measured: ~10 % of a SmolLM2 stage-2 step). Keeping
//! every block on the heap and not trimming it lets the next step reuse the pages.
//!
//! The heap must also be one: glibc gives each thread that allocates (the pool's workers) an
//! arena of its own, grown in 64 MiB heaps, and unmaps such a heap whenever it falls empty,
//! whatever the trim threshold, so the workers' tensors were faulted in afresh again and again.
//! One arena for all threads: a stage-1 run of 8 steps of the main job took 13.4 M page faults
//! and 106 s before, 1.2–1.3 M and 73–79 s after, with the same losses.

/// Serves every allocation from one heap and keeps freed memory for reuse (glibc only; a
/// no-op elsewhere). Call once, at start-up, before threads allocate.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
