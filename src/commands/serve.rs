//! `runner serve`: the model server of [`crate::serve`] for a model directory.

use super::load_model_dir;
use crate::error::Error;
use crate::serve::{Engine, serve};
use burn::tensor::Device;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A teacher or student model directory (e.g. a `convert` step's output).
    #[arg(long)]
    pub model: PathBuf,
    /// Address to listen on (`0.0.0.0` to accept other machines).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Upper limit on tokens per reply, whatever a request asks for.
    #[arg(long, default_value_t = 1024)]
    pub max_tokens: usize,
}

pub fn run(args: &ServeArgs) -> Result<(), Error> {
    let (model, tokenizer) = load_model_dir(&args.model, &Device::flex())?;
    if tokenizer.chat_template.is_none() {
        return Err(Error::Usage(format!(
            "error: {} has no chat template (tokenizer_config.json: chat_template), so chat requests cannot be rendered",
            args.model.display()
        )));
    }
    let name = args
        .model
        .file_name()
        .map_or_else(|| "model".to_string(), |n| n.to_string_lossy().to_string());
    let name = if name == "out" {
        // A step's output folder: name it after the step.
        args.model
            .parent()
            .and_then(|p| p.file_name())
            .map_or(name, |n| n.to_string_lossy().to_string())
    } else {
        name
    };
    serve(
        Engine::new(model, tokenizer, name, args.max_tokens),
        &args.host,
        args.port,
    )
    .map_err(|e| Error::Usage(format!("error: {e:#}")))
}
