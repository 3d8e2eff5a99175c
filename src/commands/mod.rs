//! Commands that work on a model directory rather than a pipeline: `generate`, `chat` and
//! `serve`.

pub mod chat;
pub mod generate;
pub mod pipeline;
pub mod serve;

use crate::error::Error;
use crate::generate::AnyModel;
use crate::generate::SamplingConfig;
use crate::text::TextTokenizer;
use burn::tensor::Device;
use clap::Args;
use std::path::Path;

/// `--device`: `cpu` (default), `wgpu` / `wgpu:N` (builds with the `wgpu` feature) or `tch`
/// (builds with the `tch` feature).
pub fn parse_device(s: &str) -> Result<burn::tensor::Device, String> {
    let d: crate::pipeline::schema::Device = s.parse()?;
    d.tensor_device().map_err(|e| e.to_string())
}

/// Sampling flags shared by the commands that generate text.
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// 0 = greedy (the most likely token every time).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample among the k most likely tokens only (0: off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample among the most likely tokens whose probabilities add up to p (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the most likely one (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Penalise tokens already in the text (1: off; 1.1 is mild).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn config(&self) -> Result<SamplingConfig, Error> {
        let c = SamplingConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
        };
        c.validate().map_err(Error::Usage)?;
        Ok(c)
    }
}

/// Loads a model directory's weights (teacher or student) and tokenizer; problems with the
/// directory are usage errors (exit code 2).
pub fn load_model_dir(spec: &Path, device: &Device) -> Result<(AnyModel, TextTokenizer), Error> {
    // `hf://ORG/NAME[@REV]`: the Hub snapshot (downloaded into the Hugging Face cache).
    let dir = &crate::hub::model_dir(spec)
        .map_err(|e| Error::Other(e.context(format!("fetching {}", spec.display()))))?;
    let usage = |e: anyhow::Error| {
        Error::Usage(format!(
            "error: cannot load the model in {}: {e:#}",
            dir.display()
        ))
    };
    let tokenizer = TextTokenizer::from_dir(dir).map_err(usage)?;
    let model = AnyModel::load(dir, device).map_err(usage)?;
    Ok((model, tokenizer))
}
