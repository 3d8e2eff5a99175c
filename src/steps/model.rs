//! `model` steps: a teacher (any Hugging Face model directory) as a step's artifacts, from the
//! Hub by name (`source = "hf://ORG/NAME[@REVISION]"`, downloaded into the shared Hugging Face
//! cache, the resolved commit part of the cache key) or from a local folder (its contents part
//! of the key). The files a model needs (config, tokenizer, chat template, safetensors weights)
//! are hard-linked into `out/` (copied across filesystems); the result must load.

use crate::hub::model_file_wanted;
use crate::pipeline::ArtifactRef;
use crate::pipeline::step::{Step, StepContext, settings_json};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// `hf://ORG/NAME[@REVISION]`, a folder under the pipeline root, or `@step`.
    pub source: ArtifactRef,
}

impl Step for ModelSettings {
    fn kind(&self) -> &'static str {
        "model"
    }

    fn settings_json(&self) -> serde_json::Value {
        settings_json(self)
    }

    fn artifact_refs(&self) -> Vec<(&'static str, &ArtifactRef)> {
        vec![("source", &self.source)]
    }

    fn run(&self, ctx: &StepContext) -> anyhow::Result<()> {
        run(self, ctx)
    }
}

pub fn run(s: &ModelSettings, ctx: &StepContext) -> Result<()> {
    let dir = s.source.resolve(ctx)?;
    anyhow::ensure!(
        dir.join("config.json").is_file(),
        "`{}` ({}) has no config.json: not a Hugging Face model directory",
        s.source,
        dir.display()
    );
    std::fs::create_dir_all(&ctx.out_dir)?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if model_file_wanted(&name) {
            link_file(&entry.path(), &ctx.out_dir.join(&name))
                .with_context(|| format!("taking {name} from {}", dir.display()))?;
            files.push(name);
        }
    }
    files.sort();
    let config = crate::model::TransformerConfig::from_dir(&ctx.out_dir)
        .with_context(|| format!("`{}`: checking config.json", s.source))?;
    crate::text::TextTokenizer::from_dir(&ctx.out_dir)
        .with_context(|| format!("`{}`: checking the tokenizer", s.source))?;
    let commit = s
        .source
        .hub()
        .map(|h| crate::hub::resolve(h).map(|r| r.commit))
        .transpose()?;
    tracing::info!(
        "{}: {} ({} layers, hidden {}), {} files{}",
        ctx.id,
        s.source,
        config.num_hidden_layers,
        config.hidden_size,
        files.len(),
        commit
            .as_deref()
            .map(|c| format!(", commit {}", &c[..c.len().min(12)]))
            .unwrap_or_default()
    );
    crate::util::fsx::atomic_write_json(
        &ctx.out_dir.join("source.json"),
        &serde_json::json!({ "source": s.source.to_string(), "commit": commit, "files": files }),
    )?;
    Ok(())
}

/// Hard-links the file `from` names (following a symbolic link, as the Hub cache's snapshots
/// are) to `to`, or copies it when a link is not possible.
fn link_file(from: &Path, to: &Path) -> std::io::Result<()> {
    crate::util::fsx::link_or_copy(&std::fs::canonicalize(from)?, to)
}
