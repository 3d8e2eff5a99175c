//! Small helpers shared by every module: crash-safe file writes and hashing.

pub mod fsx;
pub mod hash;
