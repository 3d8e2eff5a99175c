//! The content-addressed step cache: `<runs_dir>/.cache/<key>` names the step folder (in some
//! earlier run) whose artifacts were produced under that key. Reuse hard-links them into the
//! new run, so a cached step costs no copy.

use super::rundir::{self, StepManifest, StepStatus};
use crate::util::fsx;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(runs_root: &Path) -> Self {
        Cache {
            dir: runs_root.join(".cache"),
        }
    }

    /// The step folder holding complete, intact artifacts for `key`, with its manifest.
    pub fn lookup(&self, key: &str) -> Option<(PathBuf, StepManifest)> {
        let target = std::fs::read_to_string(self.dir.join(key)).ok()?;
        let step_dir = PathBuf::from(target.trim());
        let manifest = rundir::read_manifest(&step_dir)?;
        if manifest.status != StepStatus::Complete || manifest.key != key {
            return None;
        }
        let out = step_dir.join(rundir::OUT);
        let intact = manifest.outputs.iter().all(|f| {
            std::fs::metadata(out.join(&f.path))
                .map(|m| m.len() == f.bytes)
                .unwrap_or(false)
        });
        intact.then_some((step_dir, manifest))
    }

    /// Records that `step_dir` holds the artifacts for `key`.
    pub fn record(&self, key: &str, step_dir: &Path) -> std::io::Result<()> {
        let abs = step_dir.canonicalize()?;
        fsx::atomic_write(&self.dir.join(key), abs.to_string_lossy().as_bytes())
    }
}
