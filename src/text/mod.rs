//! Text: the model's tokenizer (Hugging Face `tokenizer.json`) and its chat template (Jinja in
//! `tokenizer_config.json`, rendered with minijinja).

pub mod chat;
pub mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate};
pub use tokenizer::TextTokenizer;
