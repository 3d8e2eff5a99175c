//! Evaluation that matters (SPEC §8): teacher–student agreement on held-out text, the report
//! (JSON, Markdown, HTML) the `eval` step writes, and the comparison of several students.

pub mod agreement;
pub mod degenerate;
pub mod layer_choice;
pub mod math;
pub mod report;
pub mod tradeoff;
