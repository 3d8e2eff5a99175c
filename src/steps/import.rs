//! `import` steps: turn a llama.cpp GGUF (Llama or Qwen2) into a Hugging Face model directory
//! (see [`crate::gguf::import`]) and check that the result loads.

use crate::gguf::import::import_gguf;
use crate::model::safetensors_io::SaveDtype;
use crate::pipeline::ArtifactRef;
use crate::pipeline::step::{Step, StepContext, settings_json};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// Exact dequantised values.
    #[default]
    F32,
    /// Half the size; rounds the dequantised values.
    Bf16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportSettings {
    /// The GGUF file: `@step/file.gguf` (a dependency's artifact) or a path under the root.
    pub gguf: ArtifactRef,
    /// Element type of the written safetensors: `f32` (default) or `bf16`.
    #[serde(default)]
    pub dtype: WeightDtype,
}

impl Step for ImportSettings {
    fn kind(&self) -> &'static str {
        "import"
    }

    fn settings_json(&self) -> serde_json::Value {
        settings_json(self)
    }

    fn artifact_refs(&self) -> Vec<(&'static str, &ArtifactRef)> {
        vec![("gguf", &self.gguf)]
    }

    fn run(&self, ctx: &StepContext) -> anyhow::Result<()> {
        run(self, ctx)
    }
}

pub fn run(s: &ImportSettings, ctx: &StepContext) -> Result<()> {
    let gguf = s.gguf.resolve(ctx)?;
    let dtype = match s.dtype {
        WeightDtype::F32 => SaveDtype::F32,
        WeightDtype::Bf16 => SaveDtype::Bf16,
    };
    let report = import_gguf(&gguf, &ctx.out_dir, dtype)?;
    tracing::info!(
        "{}: {} tensors, {:.1} M parameters ({:?}), vocabulary {}",
        ctx.id,
        report.tensors,
        report.parameters as f64 / 1e6,
        report.source_types,
        report.vocab_size
    );
    // The directory must load as a model and a tokenizer.
    crate::model::TransformerConfig::from_dir(&ctx.out_dir)
        .context("checking the imported config.json")?;
    crate::text::TextTokenizer::from_dir(&ctx.out_dir)
        .context("checking the imported tokenizer")?;
    crate::util::fsx::atomic_write_json(&ctx.out_dir.join("import.json"), &report)?;
    Ok(())
}
