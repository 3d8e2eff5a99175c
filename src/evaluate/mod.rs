//! Evaluation that matters (SPEC §8): teacher–student agreement on held-out text, and the
//! report (JSON, Markdown, HTML) the `eval` step writes.

pub mod agreement;
pub mod degenerate;
pub mod layer_choice;
pub mod math;
pub mod report;
