//! Training: AdamW with decay groups and clipping ([`optim`]), the learning-rate schedule
//! ([`schedule`]), the loop shared by the stages with checkpoints and exact resume
//! ([`trainer`]), and the stages' losses ([`losses`]).

pub mod losses;
pub mod optim;
pub mod plot;
pub mod schedule;
pub mod trainer;
