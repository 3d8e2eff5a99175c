//! What a running step is given: where to write, what its dependencies produced, its
//! checkpoint folder, the seed, and a way to show progress.

use crate::pipeline::checkpoint::Checkpoints;
use crate::pipeline::schema::Device;
use crate::progress;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct StepContext {
    pub id: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// The pipeline root: relative paths in settings are resolved against it.
    pub root: PathBuf,
    /// The step's folder in the run directory.
    pub step_dir: PathBuf,
    /// Where the step writes its artifacts (emptied before each attempt).
    pub out_dir: PathBuf,
    /// Kept across attempts of the same step with the same cache key.
    pub checkpoints: Checkpoints,
    /// Output folder of each dependency, by step id.
    pub deps: BTreeMap<String, PathBuf>,
    pub seed: u64,
    pub device: Device,
    /// Weights & Biases logging, when the pipeline enables it.
    pub wandb: Option<crate::train::wandb::WandbRun>,
}

impl StepContext {
    /// A progress bar for this step (hidden in quiet mode and when stderr is not a terminal).
    pub fn progress_bar(&self, len: u64, unit: &str) -> indicatif::ProgressBar {
        progress::bar(len, &format!("{} ({unit})", self.id))
    }

    /// Starts this step's W&B sidecar when the pipeline logs to W&B; `config` is what the W&B
    /// run records as its configuration.
    pub fn wandb_sink(
        &self,
        config: serde_json::Value,
    ) -> anyhow::Result<Option<crate::train::wandb::WandbSink>> {
        self.wandb
            .as_ref()
            .map(|run| {
                crate::train::wandb::WandbSink::start(run, &self.id, &config, &self.step_dir)
            })
            .transpose()
    }

    /// Resolves a settings path against the pipeline root.
    pub fn resolve(&self, path: &std::path::Path) -> PathBuf {
        self.root.join(path)
    }
}
