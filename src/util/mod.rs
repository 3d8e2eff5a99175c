//! Small helpers shared by every module: crash-safe file writes, hashing, allocator settings.

pub mod alloc;
pub mod fsx;
pub mod hash;
