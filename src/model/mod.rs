//! Models: the transformer teacher (Qwen2/Llama family) and its building blocks, checkpoint
//! reading and writing in Hugging Face safetensors layout.

pub mod config;
pub mod hybrid;
pub mod layers;
pub mod remote_code;
pub mod safetensors_io;
pub mod time_mixer;
pub mod transformer;
pub mod weights;

pub use config::TransformerConfig;
pub use transformer::{Transformer, TransformerCache};
