//! The contract between the engine and the step kinds, as cargo's job queue knows jobs but not
//! rustc: a [`Step`] is a kind's decoded settings — what goes into its cache key, which paths
//! it reads, what is wrong with it, whether it needs the machine alone, and how to run it with
//! a [`StepContext`]. The kinds a pipeline may name come as a list of [`StepKind`]s (the
//! runner's are `crate::steps::KINDS`); the engine never names one.

use super::artifact::ArtifactRef;
use super::decode::decode;
use super::diagnostics::Diagnostics;
use super::schema::Device;
use super::source::SourceMap;
use crate::checkpoint::Checkpoints;
use crate::progress;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One step's settings, decoded and typed, as the engine sees them.
pub trait Step: std::fmt::Debug + Send + Sync {
    /// The name of its kind (`kind = "..."`).
    fn kind(&self) -> &'static str;

    /// The settings with every default filled in, as canonical JSON (part of the cache key).
    fn settings_json(&self) -> serde_json::Value;

    /// Settings that are paths (`@step/...` or root-relative), with their key.
    fn artifact_refs(&self) -> Vec<(&'static str, &ArtifactRef)> {
        Vec::new()
    }

    /// Other files or folders (root-relative) the step reads, with their key.
    fn extra_inputs(&self) -> Vec<(&'static str, PathBuf)> {
        Vec::new()
    }

    /// Values that decode but cannot work, as (key under the step, message).
    fn problems(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Whether the step needs the whole machine (no other step runs beside it).
    fn exclusive(&self) -> bool {
        true
    }

    /// How many ranks (processes sharing the work, `[step.resources]`) the step can use with
    /// these settings, and what bounds it (for the message when more are asked for).
    fn max_ranks(&self) -> (usize, String) {
        (1, format!("`{}` steps run in one process", self.kind()))
    }

    /// Runs the step, writing its artifacts to `ctx.out_dir`.
    fn run(&self, ctx: &StepContext) -> anyhow::Result<()>;
}

/// The canonical JSON of a settings value (for [`Step::settings_json`]).
pub fn settings_json<S: Serialize>(settings: &S) -> serde_json::Value {
    serde_json::to_value(settings).expect("settings serialise to JSON")
}

impl dyn Step {
    /// Files and directories (relative to the pipeline root, or absolute) the step reads, with
    /// the key that names them. They must exist before the run; their contents are part of the
    /// cache key.
    pub fn input_paths(&self) -> Vec<(&'static str, PathBuf)> {
        let mut out = self.extra_inputs();
        out.extend(
            self.artifact_refs()
                .into_iter()
                .filter_map(|(k, a)| a.input().map(|p| (k, p.to_path_buf()))),
        );
        out
    }

    /// Settings that name Hugging Face Hub repositories (`hf://…`), with their key.
    pub fn hub_refs(&self) -> Vec<(&'static str, crate::hub::HubRef)> {
        self.artifact_refs()
            .into_iter()
            .filter_map(|(k, a)| a.hub().map(|h| (k, h.clone())))
            .collect()
    }

    /// Settings that name a dependency's artifacts (`@step/...`), with their key; the step
    /// must list that dependency in `depends_on`.
    pub fn dep_refs(&self) -> Vec<(&'static str, String)> {
        self.artifact_refs()
            .into_iter()
            .filter_map(|(k, a)| a.dep().map(|d| (k, d.to_string())))
            .collect()
    }
}

/// Decodes a step table's kind-specific keys into a step.
pub type DecodeFn =
    fn(toml::Value, &[String], &SourceMap, &mut Diagnostics) -> Option<Box<dyn Step>>;

/// A kind a pipeline may name: `kind = "<name>"` and how to decode its settings.
#[derive(Clone, Copy)]
pub struct StepKind {
    pub name: &'static str,
    pub decode: DecodeFn,
}

fn decode_as<S: Step + DeserializeOwned + 'static>(
    value: toml::Value,
    path: &[String],
    map: &SourceMap,
    diags: &mut Diagnostics,
) -> Option<Box<dyn Step>> {
    decode::<S>(value, path, map, diags).map(|s| Box::new(s) as Box<dyn Step>)
}

/// The kind `name` whose settings are `S`.
pub const fn kind<S: Step + DeserializeOwned + 'static>(name: &'static str) -> StepKind {
    StepKind {
        name,
        decode: decode_as::<S>,
    }
}

/// What a running step is given: where to write, what its dependencies produced, its
/// checkpoint folder, the seed and device, W&B logging, and a way to show progress.
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
    /// Weights & Biases logging, when the pipeline enables it (rank 0 only).
    pub wandb: Option<crate::wandb::WandbRun>,
    /// This process's rank among the step's ranks (one rank unless `[step.resources]` asks
    /// for more). Only rank 0 writes artifacts, checkpoints and metrics.
    pub dist: crate::dist::Dist,
}

impl StepContext {
    /// A progress bar for this step (progress lines when stderr is not a terminal), recorded
    /// in the step's `progress.json` for `runner status`.
    pub fn progress_bar(&self, len: u64, unit: &str) -> progress::Progress {
        let bar = progress::bar(len, &self.id, unit);
        match std::fs::create_dir_all(self.checkpoints.dir()) {
            Ok(()) => bar.recording(self.checkpoints.progress_file()),
            Err(_) => bar,
        }
    }

    /// Starts this step's W&B sidecar when the pipeline logs to W&B; `config` is what the W&B
    /// run records as its configuration.
    pub fn wandb_sink(
        &self,
        config: serde_json::Value,
    ) -> anyhow::Result<Option<crate::wandb::WandbSink>> {
        self.wandb
            .as_ref()
            .map(|run| crate::wandb::WandbSink::start(run, &self.id, &config, &self.step_dir))
            .transpose()
    }

    /// The tensor device the pipeline computes on (without autodiff).
    pub fn tensor_device(&self) -> anyhow::Result<burn::tensor::Device> {
        self.device.tensor_device()
    }

    /// Resolves a settings path against the pipeline root.
    pub fn resolve(&self, path: &std::path::Path) -> PathBuf {
        self.root.join(path)
    }
}

/// A step kind for the engine's own tests: it sleeps, writes a file, fails or panics as told,
/// and can save a checkpoint and stop on its first attempt, so the executor's every outcome can
/// be tested in milliseconds without any real step.
#[cfg(test)]
pub mod testing {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum Behaviour {
        #[default]
        Ok,
        Fail,
        Panic,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Fake {
        #[serde(default)]
        pub behaviour: Behaviour,
        /// Written to `out/result.txt`.
        #[serde(default)]
        pub output: String,
        /// Finishes only once this step's manifest records its failure (and 50 ms more), so a
        /// test orders a finish after a failure without guessing how long threads take.
        #[serde(default)]
        pub after_failure_of: Option<String>,
        /// The first attempt saves checkpoint 1 and fails; the next continues from it.
        #[serde(default)]
        pub stop_after_checkpoint: bool,
        /// A path it reads (part of its key).
        #[serde(default)]
        pub reads: Option<ArtifactRef>,
        #[serde(default)]
        pub exclusive: bool,
        /// Reports a problem (as a value no real step could run with).
        #[serde(default)]
        pub invalid: bool,
    }

    impl Step for Fake {
        fn kind(&self) -> &'static str {
            "fake"
        }
        fn settings_json(&self) -> serde_json::Value {
            settings_json(self)
        }
        fn artifact_refs(&self) -> Vec<(&'static str, &ArtifactRef)> {
            self.reads.iter().map(|r| ("reads", r)).collect()
        }
        fn exclusive(&self) -> bool {
            self.exclusive
        }
        fn problems(&self) -> Vec<(String, String)> {
            if self.invalid {
                vec![("invalid".into(), "told to be invalid".into())]
            } else {
                Vec::new()
            }
        }
        fn run(&self, ctx: &StepContext) -> anyhow::Result<()> {
            if let Some(id) = &self.after_failure_of {
                let run_dir = ctx
                    .step_dir
                    .parent()
                    .expect("a step folder is in a run folder");
                let failed = || {
                    crate::pipeline::rundir::read_manifest(&run_dir.join(id))
                        .is_some_and(|m| m.status == crate::pipeline::rundir::StepStatus::Failed)
                };
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                while !failed() {
                    anyhow::ensure!(
                        std::time::Instant::now() < deadline,
                        "`{id}` did not fail within 60 s"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let resumed = ctx.checkpoints.latest().map(|c| c.tag);
            if self.stop_after_checkpoint && resumed.is_none() {
                ctx.checkpoints
                    .save(1, |dir| Ok(std::fs::write(dir.join("state"), "1")?))?;
                anyhow::bail!("stopped after its first checkpoint");
            }
            match self.behaviour {
                Behaviour::Ok => {}
                Behaviour::Fail => anyhow::bail!("told to fail"),
                Behaviour::Panic => panic!("told to panic"),
            }
            let mut text = self.output.clone();
            for (id, dir) in &ctx.deps {
                let dep = std::fs::read_to_string(dir.join("result.txt")).unwrap_or_default();
                text.push_str(&format!(" <{id}:{dep}>"));
            }
            std::fs::write(ctx.out_dir.join("result.txt"), text)?;
            Ok(())
        }
    }

    /// The kinds of the engine's tests.
    pub const KINDS: &[StepKind] = &[kind::<Fake>("fake")];
}
