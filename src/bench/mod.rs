//! Benchmarks behind `runner bench ...`: each compares our implementation side by side with a
//! reference in the same run, reports ratios, and reports peak memory (RSS) beside time.

pub mod mem;
pub mod wkv;
