//! `runner serve`: the model server of [`crate::serve`] for a model directory.

use super::load_model_dir;
use crate::error::Error;
use crate::serve::{Engine, ServeOptions, serve};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A teacher or student model directory (e.g. a `convert` step's output), or
    /// `hf://ORG/NAME[@REVISION]` (downloaded into the Hugging Face cache).
    #[arg(long)]
    pub model: PathBuf,
    /// Where to compute: `cpu` (Burn's flex backend), `wgpu` / `wgpu:N` (a GPU; builds with the
    /// `wgpu` feature) or `tch` (LibTorch; builds with the `tch` feature).
    #[arg(long, default_value = "cpu", value_parser = super::parse_device)]
    pub device: burn::tensor::Device,
    /// Address to listen on (`0.0.0.0` to accept other machines).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Upper limit on tokens per reply, whatever a request asks for.
    #[arg(long, default_value_t = 1024)]
    pub max_tokens: usize,
    /// Connections served at once; more get `503 Service Unavailable` right away.
    #[arg(long, default_value_t = 64)]
    pub max_connections: usize,
    /// Seconds a client has to send its request (headers and body) before it is dropped.
    #[arg(long, default_value_t = 10.0)]
    pub request_timeout: f64,
    /// Seconds a request waits for the generation slot (one generation at a time, in arrival
    /// order) before it gets `503`.
    #[arg(long, default_value_t = 120.0)]
    pub queue_timeout: f64,
    /// Let web pages of this origin (e.g. `https://app.example`, or `*` for any) call the API.
    /// By default only the server's own chat page and non-browser clients may.
    #[arg(long, value_name = "ORIGIN")]
    pub cors: Option<String>,
}

pub fn run(args: &ServeArgs) -> Result<(), Error> {
    let (model, tokenizer) = load_model_dir(&args.model, &args.device)?;
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
    let seconds = |flag: &str, v: f64| {
        if v > 0.0 && v.is_finite() && v < 1e6 {
            Ok(std::time::Duration::from_secs_f64(v))
        } else {
            Err(Error::Usage(format!(
                "error: --{flag} must be a positive number of seconds, got {v}"
            )))
        }
    };
    if args.max_connections == 0 {
        return Err(Error::Usage(
            "error: --max-connections must be at least 1".into(),
        ));
    }
    let options = ServeOptions {
        max_connections: args.max_connections,
        request_timeout: seconds("request-timeout", args.request_timeout)?,
        queue_timeout: seconds("queue-timeout", args.queue_timeout)?,
        cors: args.cors.clone(),
    };
    serve(
        Engine::new(model, tokenizer, name, args.max_tokens),
        &args.host,
        args.port,
        options,
    )
    .map_err(|e| Error::Usage(format!("error: {e:#}")))
}
