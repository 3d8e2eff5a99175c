//! rwkvinside: a pipeline-as-config runner that turns pretrained transformer LLMs into RWKV-7
//! hybrids by distillation. `runner run pipelines/<name>.toml` executes a declarative DAG of
//! steps with caching, checkpoints and exact resume.

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod data;
pub mod dist;
pub mod error;
pub mod evaluate;
pub mod generate;
pub mod gguf;
pub mod grpo;
pub mod hub;
pub mod model;
pub mod pipeline;
pub mod progress;
pub mod serve;
pub mod steps;
#[cfg(test)]
pub(crate) mod testing;
pub mod text;
pub mod train;
pub mod util;
pub mod wandb;

pub use error::Error;
