//! The typed pipeline: header, steps and their settings, after layering and validation.

use super::source::SourceMap;
use super::step::Step;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where tensors live: `cpu` (Burn's flex backend, with the fused kernels); `wgpu` or `wgpu:N`
/// (a GPU through Burn's CubeCL wgpu backend, with the fused WKV-7 kernels; builds with the
/// `wgpu` feature; `N` picks the N-th discrete GPU, plain `wgpu` the adapter wgpu prefers);
/// `tch` (LibTorch on the CPU; builds with the `tch` feature). `cuda` is a name kept for a CUDA
/// backend the runner does not have yet (see the README's GPU section); validation rejects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    #[default]
    Cpu,
    Tch,
    Cuda,
    /// `None`: the adapter wgpu prefers; `Some(n)`: the n-th discrete GPU.
    Wgpu(Option<usize>),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Tch => f.write_str("tch"),
            Device::Cuda => f.write_str("cuda"),
            Device::Wgpu(None) => f.write_str("wgpu"),
            Device::Wgpu(Some(n)) => write!(f, "wgpu:{n}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "tch" => Ok(Device::Tch),
            "cuda" => Ok(Device::Cuda),
            "wgpu" => Ok(Device::Wgpu(None)),
            _ => match s.strip_prefix("wgpu:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Wgpu(Some(n))),
                _ => Err(format!(
                    "unknown device `{s}` (use \"cpu\", \"wgpu\", \"wgpu:N\" or \"tch\")"
                )),
            },
        }
    }
}

impl TryFrom<String> for Device {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Device> for String {
    fn from(d: Device) -> String {
        d.to_string()
    }
}

impl Device {
    /// Whether this build can compute on it.
    pub fn available(self) -> bool {
        match self {
            Device::Cpu => true,
            Device::Tch => cfg!(feature = "tch"),
            Device::Wgpu(_) => cfg!(feature = "wgpu"),
            Device::Cuda => false,
        }
    }

    /// What to do when this build lacks the device.
    pub fn build_hint(self) -> &'static str {
        match self {
            Device::Tch => "LibTorch needs a build with `--features tch` (see the README)",
            Device::Wgpu(_) => {
                "GPUs need a build with `--features wgpu` (see the README's GPU section)"
            }
            Device::Cuda => {
                "the runner has no CUDA backend yet; use device = \"wgpu\" on NVIDIA GPUs \
                 (Vulkan), see the README's GPU section"
            }
            Device::Cpu => "",
        }
    }

    /// The tensor device (without autodiff).
    pub fn tensor_device(self) -> anyhow::Result<burn::tensor::Device> {
        match self {
            Device::Cpu => Ok(burn::tensor::Device::flex()),
            #[cfg(feature = "tch")]
            #[allow(deprecated)] // burn-tch is the LibTorch option the user asked for
            Device::Tch => Ok(burn::tensor::Device::libtorch()),
            #[cfg(feature = "wgpu")]
            Device::Wgpu(index) => {
                use burn::tensor::DeviceKind;
                Ok(burn::tensor::Device::wgpu(match index {
                    None => DeviceKind::DefaultDevice,
                    Some(n) => DeviceKind::DiscreteGpu(n),
                }))
            }
            other => anyhow::bail!(
                "device `{other}` is not available in this build: {}",
                other.build_hint()
            ),
        }
    }
}

/// `[pipeline]`: settings of the whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineHeader {
    /// Name of the pipeline; runs go to `<runs_dir>/<name>/<run-id>/`. Defaults to the file stem.
    #[serde(default)]
    pub name: Option<String>,
    /// One line saying what the pipeline is for.
    #[serde(default)]
    pub description: String,
    /// Seed for every random choice of every step (data order, init, sampling).
    #[serde(default)]
    pub seed: u64,
    /// Where tensors live.
    #[serde(default)]
    pub device: Device,
    /// How many non-exclusive steps may run at the same time. Training steps are exclusive.
    #[serde(default = "d_max_parallel")]
    pub max_parallel: usize,
    /// Directory that relative paths in this pipeline are resolved against, relative to the
    /// pipeline file's own directory. Default: the pipeline file's directory.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Where run directories are created, relative to `root`. Default `runs`.
    #[serde(default)]
    pub runs_dir: Option<PathBuf>,
    /// Log training metrics to Weights & Biases (`[pipeline.wandb]`); absent: off.
    #[serde(default)]
    pub wandb: Option<crate::wandb::WandbSettings>,
    /// Where steps run (`[pipeline.executor]`): in this process, or as Slurm jobs.
    #[serde(default)]
    pub executor: super::slurm::ExecutorSettings,
}

impl PipelineHeader {
    /// Where run directories go unless the command line says: `runs_dir` (default `runs`)
    /// under the pipeline root.
    pub fn runs_root(&self, root: &Path) -> PathBuf {
        root.join(self.runs_dir.as_deref().unwrap_or(Path::new("runs")))
    }
}

/// Every file or folder (root-relative or absolute) that any of `steps` reads.
pub fn input_paths(steps: &[StepDef]) -> Vec<PathBuf> {
    steps
        .iter()
        .flat_map(|s| s.settings.input_paths().into_iter().map(|(_, p)| p))
        .collect()
}

fn d_max_parallel() -> usize {
    2
}

/// One `[[step]]` table.
#[derive(Debug, Clone)]
pub struct StepDef {
    pub id: String,
    pub depends_on: Vec<String>,
    /// Optional directory (relative to root) the step's artifacts are copied to on success.
    pub export: Option<PathBuf>,
    pub description: String,
    /// What the step's job asks a cluster for (`[step.resources]`; Slurm executor only).
    pub resources: super::slurm::Resources,
    pub settings: Arc<dyn Step>,
}

impl StepDef {
    pub fn kind(&self) -> &'static str {
        self.settings.kind()
    }
}

/// A validated pipeline, ready to be planned and run.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub header: PipelineHeader,
    /// Absolute directory relative paths are resolved against.
    pub root: PathBuf,
    /// Steps in declaration order.
    pub steps: Vec<StepDef>,
    /// The file the user gave (for messages).
    pub main_file: PathBuf,
    /// The effective configuration, every layer applied (written into the run directory).
    pub resolved: toml::Table,
    pub source: SourceMap,
}

impl Pipeline {
    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }

    /// The effective configuration as a pipeline file: `[pipeline]` and `[[step]]` in order.
    pub fn resolved_toml(&self) -> String {
        let mut doc = self.resolved.clone();
        let mut header = doc
            .remove("pipeline")
            .and_then(|v| v.as_table().cloned())
            .unwrap_or_default();
        header.insert("name".into(), toml::Value::String(self.name.clone()));
        header.insert(
            "root".into(),
            toml::Value::String(self.root.display().to_string()),
        );
        let steps = doc
            .remove("step")
            .and_then(|v| v.as_table().cloned())
            .unwrap_or_default();
        let ordered: Vec<toml::Value> = self
            .steps
            .iter()
            .filter_map(|s| steps.get(&s.id).cloned())
            .collect();
        let mut out = toml::Table::new();
        out.insert("pipeline".into(), toml::Value::Table(header));
        for (k, v) in doc {
            out.insert(k, v);
        }
        out.insert("step".into(), toml::Value::Array(ordered));
        format!(
            "# Effective configuration of this run, every layer applied (file < environment < --set).\n{}",
            toml::to_string_pretty(&out).unwrap_or_default()
        )
    }
}
