//! `command` steps: run a shell command with declared inputs and outputs (like a DVC stage).
//!
//! The command runs with `sh -c` in the pipeline root. It sees:
//! - `RUNNER_OUT`: the folder to write outputs to (declared `outputs` are relative to it),
//! - `RUNNER_STEP_DIR`, `RUNNER_CHECKPOINT_DIR` (kept when the step is resumed), `RUNNER_ROOT`,
//!   `RUNNER_SEED`,
//! - `RUNNER_DEP_<ID>`: the output folder of each dependency (`ID` upper-cased, `-` → `_`).
//!
//! Its stdout and stderr go to `command.log` in the step folder; the tail is shown on failure.

use crate::pipeline::step::{Step, StepContext, settings_json};
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandSettings {
    /// The shell command.
    pub run: String,
    /// Files or folders (relative to the root) the command reads; hashed into the cache key.
    #[serde(default)]
    pub inputs: Vec<PathBuf>,
    /// Files the command must write under `$RUNNER_OUT`; checked after it exits.
    #[serde(default)]
    pub outputs: Vec<PathBuf>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Run alone (no other step beside it).
    #[serde(default)]
    pub exclusive: bool,
}

/// Environment variable name for a dependency's output folder.
pub fn dep_var(id: &str) -> String {
    format!("RUNNER_DEP_{}", id.to_uppercase().replace('-', "_"))
}

impl Step for CommandSettings {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn settings_json(&self) -> serde_json::Value {
        settings_json(self)
    }

    fn extra_inputs(&self) -> Vec<(&'static str, std::path::PathBuf)> {
        self.inputs.iter().map(|p| ("inputs", p.clone())).collect()
    }

    fn exclusive(&self) -> bool {
        self.exclusive
    }

    fn run(&self, ctx: &StepContext) -> anyhow::Result<()> {
        run(self, ctx)
    }
}

pub fn run(settings: &CommandSettings, ctx: &StepContext) -> anyhow::Result<()> {
    let log_path = ctx.step_dir.join("command.log");
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(&settings.run)
        .current_dir(&ctx.root)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env("RUNNER_OUT", &ctx.out_dir)
        .env("RUNNER_STEP_DIR", &ctx.step_dir)
        .env("RUNNER_CHECKPOINT_DIR", ctx.checkpoints.dir())
        .env("RUNNER_ROOT", &ctx.root)
        .env("RUNNER_SEED", ctx.seed.to_string());
    for (id, dir) in &ctx.deps {
        cmd.env(dep_var(id), dir);
    }
    cmd.envs(&settings.env);
    std::fs::create_dir_all(ctx.checkpoints.dir())?;
    die_with_parent(&mut cmd);

    let status = cmd.status().context("starting `sh`")?;
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let first_line = settings.run.trim().lines().next().unwrap_or_default();
        let more = if settings.run.trim().lines().count() > 1 {
            " …"
        } else {
            ""
        };
        bail!(
            "command exited with {status}\n  command: {first_line}{more}\n  log: {}{}",
            log_path.display(),
            if tail.is_empty() {
                String::new()
            } else {
                format!("\n  last lines:\n    {}", tail.join("\n    "))
            }
        );
    }
    let missing: Vec<String> = settings
        .outputs
        .iter()
        .filter(|o| !ctx.out_dir.join(o).exists())
        .map(|o| o.display().to_string())
        .collect();
    if !missing.is_empty() {
        bail!(
            "the command succeeded but did not write its declared outputs: {}\n  (outputs are relative to $RUNNER_OUT = {})",
            missing.join(", "),
            ctx.out_dir.display()
        );
    }
    Ok(())
}

/// Makes the child die when the runner dies (e.g. `kill -9`), so an orphan cannot keep writing
/// into a step folder that a resumed run is rewriting.
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}
