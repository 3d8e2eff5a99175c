//! Weights & Biases logging. The `wandb` crate is an empty placeholder, so metrics go to the
//! official Python SDK through a sidecar process (`scripts/wandb_sidecar.py`) fed JSON lines on
//! stdin. One W&B run per pipeline run and training step, with a stable id, so `runner resume`
//! continues it. A sidecar that dies is reported and training goes on.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

/// Weights & Biases logging through the official Python SDK (a sidecar process per training
/// step). Not part of any cache key: logging does not change results.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WandbSettings {
    pub project: String,
    #[serde(default)]
    pub entity: Option<String>,
    /// `online` or `offline` (then `wandb sync` later); default: the SDK's own (`WANDB_MODE`).
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The Python interpreter that has the `wandb` package.
    #[serde(default = "d_python")]
    pub python: String,
}

fn d_python() -> String {
    "python3".into()
}

/// What a step needs to open its W&B run.
#[derive(Debug, Clone)]
pub struct WandbRun {
    pub settings: WandbSettings,
    /// `<pipeline>/<run-id>`: the W&B group; the run id adds the step.
    pub pipeline: String,
    pub run_id: String,
}

/// Checks that `python` can import the SDK (validation time).
pub fn check_sdk(python: &str) -> Result<(), String> {
    match Command::new(python)
        .args(["-c", "import wandb"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(_) => Err(format!(
            "W&B logging is enabled but `{python}` cannot import the `wandb` package"
        )),
        Err(e) => Err(format!(
            "W&B logging is enabled but `{python}` cannot be run: {e}"
        )),
    }
}

pub struct WandbSink {
    child: Child,
    stdin: Option<ChildStdin>,
    warned: bool,
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

impl WandbSink {
    /// Starts the sidecar for `step` with `config` (the step's resolved settings and the
    /// pipeline header); its files go under `dir`.
    pub fn start(
        run: &WandbRun,
        step: &str,
        config: &serde_json::Value,
        dir: &Path,
    ) -> Result<Self> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/wandb_sidecar.py");
        std::fs::create_dir_all(dir)?;
        let config_path = dir.join("wandb_config.json");
        crate::util::fsx::atomic_write_json(&config_path, config)?;
        let id = sanitize(&format!("{}-{}-{step}", run.pipeline, run.run_id));
        let mut cmd = Command::new(&run.settings.python);
        cmd.arg(&script)
            .args([
                "--project",
                &run.settings.project,
                "--id",
                &id,
                "--name",
                step,
            ])
            .args(["--group", &format!("{}/{}", run.pipeline, run.run_id)])
            .arg("--dir")
            .arg(dir)
            .arg("--config")
            .arg(&config_path)
            .args(["--tags", &run.settings.tags.join(",")]);
        if let Some(e) = &run.settings.entity {
            cmd.args(["--entity", e]);
        }
        if let Some(m) = &run.settings.mode {
            cmd.args(["--mode", m]);
        }
        let log = std::fs::File::create(dir.join("wandb_sidecar.log"))?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting the W&B sidecar with `{}`", run.settings.python))?;
        let stdin = child.stdin.take();
        Ok(Self {
            child,
            stdin,
            warned: false,
        })
    }

    /// Sends one metrics record (`{"step": N, ...}`).
    pub fn log(&mut self, record: &serde_json::Value) {
        let ok = self
            .stdin
            .as_mut()
            .is_some_and(|s| writeln!(s, "{record}").and_then(|_| s.flush()).is_ok());
        if !ok && !self.warned {
            tracing::warn!(
                "the W&B sidecar stopped (see wandb_sidecar.log); training continues without it"
            );
            self.warned = true;
            self.stdin = None;
        }
    }

    /// Closes the stream and waits for the sidecar to upload or write its files.
    pub fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            tracing::warn!("the W&B sidecar exited with {status} (see wandb_sidecar.log)");
        }
        Ok(())
    }
}
