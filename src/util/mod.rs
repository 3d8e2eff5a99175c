//! Small helpers shared by every module: crash-safe file writes, hashing, allocator settings,
//! running work inside rayon's pool.

pub mod alloc;
pub mod fsx;
pub mod hash;
pub mod pool;
