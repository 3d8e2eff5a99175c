//! llama.cpp GGUF files: reading ([`reader`]), dequantising ([`quant`]) and converting a
//! Llama/Qwen2 GGUF into a Hugging Face model directory ([`import`]).

pub mod import;
pub mod quant;
pub mod reader;

pub use reader::GgufFile;
