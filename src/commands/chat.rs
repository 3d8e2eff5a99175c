//! `runner chat`: a terminal conversation with a teacher or student directory. Each reply
//! streams as it is generated; the model's state (KV cache or RWKV state) is kept between turns,
//! so only the new turn is fed. `/clear` starts over, `/exit` (or end of input) quits.

use super::{SamplingArgs, load_model_dir};
use crate::error::Error;
use crate::generate::{GenerationLimits, KeptState, LanguageModel, Sampler, generate};
use crate::text::ChatMessage;
use clap::Args;
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// A teacher or student model directory, or `hf://ORG/NAME[@REVISION]` (downloaded into
    /// the Hugging Face cache).
    #[arg(long)]
    pub model: PathBuf,
    /// Where to compute: `cpu` (Burn's flex backend), `wgpu` / `wgpu:N` (a GPU; builds with the
    /// `wgpu` feature) or `tch` (LibTorch; builds with the `tch` feature).
    #[arg(long, default_value = "cpu", value_parser = super::parse_device)]
    pub device: burn::tensor::Device,
    /// A system message.
    #[arg(long)]
    pub system: Option<String>,
    /// Maximum tokens per reply.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(args: &ChatArgs, quiet: bool) -> Result<(), Error> {
    let sampling = args.sampling.config()?;
    let device = args.device.clone();
    let (model, tokenizer) = load_model_dir(&args.model, &device)?;
    if tokenizer.chat_template.is_none() {
        return Err(Error::Usage(format!(
            "error: {} has no chat template (tokenizer_config.json: chat_template); use `runner generate --raw`",
            args.model.display()
        )));
    }
    let mut sampler = Sampler::new(sampling);
    let limits = GenerationLimits {
        max_new_tokens: args.max_new_tokens,
        stop_strings: Vec::new(),
    };
    let mut messages: Vec<ChatMessage> = args
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s))
        .collect();
    // The state after the last reply, with the tokens it has seen.
    let mut kept = KeptState::default();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    eprintln!(
        "{} — type a message; /clear resets the conversation, /exit quits",
        model.describe()
    );
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/clear" => {
                messages.retain(|m| m.role == "system");
                kept.clear();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::new("user", line));
        let ids = tokenizer.encode(&tokenizer.render_chat(&messages, true)?)?;
        // Feed only what the state has not seen (all of it if the template rewrote earlier
        // turns or the reply re-encodes differently).
        let (mut state, new_ids) = kept.take(&ids, || model.new_state());
        let reply = generate(
            &model,
            &tokenizer,
            &mut state,
            &new_ids,
            &mut sampler,
            &limits,
            |piece| {
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
            },
        )?;
        let _ = writeln!(out);
        messages.push(ChatMessage::new("assistant", &reply.text));
        // What the state now holds: the conversation, the reply and, when the model ended its
        // turn, its stop token.
        let state_mib = model.state_bytes(&state) as f64 / (1 << 20) as f64;
        kept.keep(&ids, &reply.fed(), state);
        if !quiet {
            eprintln!(
                "[{} tokens at {:.1} tok/s; state {:.2} MiB]",
                reply.ids.len(),
                reply.decode_tokens_per_s(),
                state_mib
            );
        }
    }
    Ok(())
}
