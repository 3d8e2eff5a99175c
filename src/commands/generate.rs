//! `runner generate`: complete one prompt with a model directory, streaming the text to stdout
//! and the speed to stderr.

use super::{SamplingArgs, load_model_dir};
use crate::error::Error;
use crate::generate::{GenerationLimits, LanguageModel, Sampler, generate};
use crate::text::ChatMessage;
use clap::Args;
use std::io::{Read, Write};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A model directory in Hugging Face layout (config.json, model.safetensors, tokenizer.json),
    /// or `hf://ORG/NAME[@REVISION]` (downloaded into the Hugging Face cache).
    #[arg(long)]
    pub model: PathBuf,
    /// Where to compute: `cpu` (Burn's flex backend), `wgpu` / `wgpu:N` (a GPU; builds with the
    /// `wgpu` feature) or `tch` (LibTorch; builds with the `tch` feature).
    #[arg(long, default_value = "cpu", value_parser = super::parse_device)]
    pub device: burn::tensor::Device,
    /// The prompt (read from stdin when absent).
    pub prompt: Option<String>,
    /// Feed the prompt as is instead of wrapping it in the chat template as a user turn.
    #[arg(long)]
    pub raw: bool,
    /// A system message for the chat template.
    #[arg(long, conflicts_with = "raw")]
    pub system: Option<String>,
    /// Maximum number of generated tokens.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(args: &GenerateArgs, quiet: bool) -> Result<(), Error> {
    let sampling = args.sampling.config()?;
    let prompt = match &args.prompt {
        Some(p) => p.clone(),
        None => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        }
    };
    if prompt.trim().is_empty() {
        return Err(Error::Usage("error: the prompt is empty".into()));
    }
    let device = args.device.clone();
    let (model, tokenizer) = load_model_dir(&args.model, &device)?;
    let text = if args.raw {
        prompt
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", &prompt));
        tokenizer.render_chat(&messages, true).map_err(|e| {
            Error::Usage(format!(
                "error: {e:#}; use --raw to give the prompt without a template"
            ))
        })?
    };
    let ids = tokenizer.encode(&text)?;
    let limits = GenerationLimits {
        max_new_tokens: args.max_new_tokens,
        stop_strings: args.stop.clone(),
    };
    let mut state = model.new_state();
    let mut sampler = Sampler::new(sampling);
    let mut stdout = std::io::stdout().lock();
    let out = generate(
        &model,
        &tokenizer,
        &mut state,
        &ids,
        &mut sampler,
        &limits,
        |piece| {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        },
    )?;
    let _ = writeln!(stdout);
    let _ = stdout.flush();
    drop(stdout);
    if !quiet {
        eprintln!(
            "[{} prompt tokens, prefill {:.1} tok/s; {} new tokens, decode {:.1} tok/s; stop: {:?}; state {:.1} MiB]",
            out.prompt_tokens,
            out.prefill_tokens_per_s(),
            out.ids.len(),
            out.decode_tokens_per_s(),
            out.stop,
            model.state_bytes(&state) as f64 / (1 << 20) as f64,
        );
    }
    Ok(())
}
