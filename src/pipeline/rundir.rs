//! Run directories: `<runs_dir>/<pipeline>/<run-id>/` with the resolved configuration
//! (`pipeline.toml`), the run record (`run.json`), a lock (`run.lock`), the log (`run.log`) and
//! one folder per step holding `manifest.json`, `out/` (artifacts) and `checkpoint/`.
//!
//! A step is complete only when its manifest says so; manifests are written atomically.

use crate::util::fsx;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const RESOLVED_CONFIG: &str = "pipeline.toml";
pub const RUN_RECORD: &str = "run.json";
pub const LOCK: &str = "run.lock";
pub const RUN_LOG: &str = "run.log";
pub const MANIFEST: &str = "manifest.json";
pub const OUT: &str = "out";
pub const CHECKPOINT: &str = "checkpoint";

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error(
        "run directory {path} is in use by another runner ({holder}).\n  Wait for it to finish, or stop it, then try again."
    )]
    Locked { path: PathBuf, holder: String },
    #[error(
        "{path} is not a run directory (no {RUN_RECORD}).\n  Give a folder like runs/<pipeline>/<run-id>, or omit it to use the latest run."
    )]
    NotARun { path: PathBuf },
    #[error(
        "run directory {path} already exists.\n  Continue it with `runner resume {path}`, or choose another --run-id (omit it for a new timestamped one)."
    )]
    Exists { path: PathBuf },
    #[error("{0}")]
    BadName(String),
    #[error("no run found under {0}.\n  Start one with `runner run <pipeline.toml>`.")]
    NoRuns(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunDirError {
    let context = context.into();
    move |source| RunDirError::Io { context, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    /// Finished the selected steps (`--until`/`--only`), not the whole pipeline.
    Partial,
    Complete,
    Failed,
}

/// `run.json`: what this run is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub pipeline: String,
    pub run_id: String,
    pub source_file: PathBuf,
    pub overrides: Vec<String>,
    pub created_at: String,
    pub status: RunStatus,
    pub updated_at: String,
    #[serde(default)]
    pub message: Option<String>,
    pub runner_version: String,
    /// The step selection the run was started with (`--from`, `--until`, `--only`, `--force`);
    /// `runner resume` finishes the same selection.
    #[serde(default)]
    pub selection: super::select::Selection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Running,
    Complete,
    Failed,
}

/// One artifact file of a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
}

/// `manifest.json` of a step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepManifest {
    pub step: String,
    pub kind: String,
    /// Cache key: hash of kind, settings, inputs and the runner version.
    pub key: String,
    pub status: StepStatus,
    /// The resolved settings (defaults filled in).
    pub settings: serde_json::Value,
    /// What the key was made of: `dep:<id>` → that step's outputs digest, `file:<path>` → sha256.
    pub inputs: BTreeMap<String, String>,
    #[serde(default)]
    pub outputs: Vec<OutputFile>,
    /// Digest of all outputs (what dependents' keys are made of).
    #[serde(default)]
    pub outputs_digest: Option<String>,
    /// Set when the artifacts were reused from an earlier run with the same key.
    #[serde(default)]
    pub cached_from: Option<PathBuf>,
    pub started_at: String,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub duration_s: Option<f64>,
    #[serde(default)]
    pub attempts: u32,
    /// The checkpoint (its optimizer step) this attempt continued from, if any.
    #[serde(default)]
    pub resumed_from: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
    pub runner_version: String,
    /// Digest of the runner's own code that produced the artifacts (part of the key).
    #[serde(default)]
    pub code: String,
    /// The Slurm job running (or that ran) this attempt, under the Slurm executor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

impl StepManifest {
    /// A complete manifest of `step` with `key` and `outputs`, made by this runner (tests).
    #[cfg(test)]
    pub fn complete_for_tests(step: &str, key: &str, outputs: Vec<OutputFile>) -> Self {
        Self {
            step: step.into(),
            kind: "command".into(),
            key: key.into(),
            status: StepStatus::Complete,
            settings: serde_json::json!({}),
            inputs: Default::default(),
            outputs,
            outputs_digest: None,
            cached_from: None,
            started_at: now(),
            finished_at: None,
            duration_s: None,
            attempts: 1,
            resumed_from: None,
            error: None,
            runner_version: super::keys::RUNNER_VERSION.into(),
            code: super::keys::CODE_DIGEST.into(),
            job: None,
        }
    }
}

/// Current UTC time, RFC 3339.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// An open, locked run directory. The lock is released when this is dropped (or the process dies).
#[derive(Debug)]
pub struct RunDir {
    pub path: PathBuf,
    /// `None` for a step's job working inside a run whose runner holds the lock.
    _lock: Option<File>,
}

impl RunDir {
    /// Creates `<runs_root>/<pipeline>/<run-id>/` and locks it.
    pub fn create(
        runs_root: &Path,
        pipeline: &str,
        run_id: Option<&str>,
    ) -> Result<RunDir, RunDirError> {
        super::paths::check_component("pipeline name", pipeline).map_err(RunDirError::BadName)?;
        if let Some(id) = run_id {
            super::paths::check_component("run id", id).map_err(RunDirError::BadName)?;
        }
        let parent = runs_root.join(pipeline);
        fs::create_dir_all(&parent).map_err(io_err(format!("creating {}", parent.display())))?;
        let base = match run_id {
            Some(id) => id.to_string(),
            None => {
                let fmt =
                    time::macros::format_description!("[year][month][day]-[hour][minute][second]");
                time::OffsetDateTime::now_utc()
                    .format(&fmt)
                    .unwrap_or_else(|_| "run".into())
            }
        };
        let mut id = base.clone();
        let mut n = 1;
        loop {
            let path = parent.join(&id);
            match fs::create_dir(&path) {
                Ok(()) => return RunDir::lock(path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && run_id.is_none() => {
                    n += 1;
                    id = format!("{base}-{n}");
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(RunDirError::Exists { path });
                }
                Err(e) => return Err(io_err(format!("creating {}", path.display()))(e)),
            }
        }
    }

    /// Opens and locks an existing run directory.
    pub fn open(path: &Path) -> Result<RunDir, RunDirError> {
        if !path.join(RUN_RECORD).exists() && !path.join(LOCK).exists() {
            return Err(RunDirError::NotARun {
                path: path.to_path_buf(),
            });
        }
        RunDir::lock(path.to_path_buf())
    }

    fn lock(path: PathBuf) -> Result<RunDir, RunDirError> {
        // Steps get absolute paths, whatever directory they run in.
        let path = path
            .canonicalize()
            .map_err(io_err(format!("opening {}", path.display())))?;
        let lock_path = path.join(LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err(format!("opening {}", lock_path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&lock_path).unwrap_or_default();
                let holder = if holder.trim().is_empty() {
                    "pid unknown".into()
                } else {
                    holder.trim().to_string()
                };
                return Err(RunDirError::Locked { path, holder });
            }
            Err(TryLockError::Error(e)) => {
                return Err(io_err(format!("locking {}", lock_path.display()))(e));
            }
        }
        file.set_len(0).map_err(io_err("writing lock"))?;
        let _ = write!(file, "pid {}, since {}", std::process::id(), now());
        let _ = file.flush();
        Ok(RunDir {
            path,
            _lock: Some(file),
        })
    }

    /// Opens a run directory without locking it: for a step's job (`runner exec-step`), which
    /// works inside a run whose runner holds the lock and takes a lock on its step instead.
    pub fn attach(path: &Path) -> Result<RunDir, RunDirError> {
        if !path.join(RUN_RECORD).is_file() {
            return Err(RunDirError::NotARun {
                path: path.to_path_buf(),
            });
        }
        let path = path
            .canonicalize()
            .map_err(io_err(format!("opening {}", path.display())))?;
        Ok(RunDir { path, _lock: None })
    }

    pub fn run_id(&self) -> String {
        self.path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn step_dir(&self, id: &str) -> PathBuf {
        self.path.join(id)
    }

    pub fn read_record(&self) -> Option<RunRecord> {
        fsx::read_json(&self.path.join(RUN_RECORD)).ok().flatten()
    }

    pub fn write_record(&self, record: &RunRecord) -> Result<(), RunDirError> {
        fsx::atomic_write_json(&self.path.join(RUN_RECORD), record)
            .map_err(io_err("writing run.json"))
    }

    pub fn read_manifest(&self, id: &str) -> Option<StepManifest> {
        read_manifest(&self.step_dir(id))
    }

    pub fn write_manifest(&self, m: &StepManifest) -> Result<(), RunDirError> {
        let path = self.step_dir(&m.step).join(MANIFEST);
        fsx::atomic_write_json(&path, m).map_err(io_err(format!("writing {}", path.display())))
    }
}

/// Reads a step folder's manifest (`None` when absent or unreadable).
pub fn read_manifest(step_dir: &Path) -> Option<StepManifest> {
    fsx::read_json(&step_dir.join(MANIFEST)).ok().flatten()
}

/// How long the step whose artifacts are in `out_dir` (a step folder's `out`) worked to make
/// them: its manifest's duration or, for artifacts reused from an earlier run, the duration
/// recorded there. `None` when no manifest says.
pub fn work_seconds(out_dir: &Path) -> Option<f64> {
    let mut dir = out_dir.parent()?.to_path_buf();
    // Reuse chains are one link long; the bound only guards against a corrupt manifest.
    for _ in 0..8 {
        let m = read_manifest(&dir)?;
        match m.cached_from {
            Some(src) => dir = src,
            None => return m.duration_s,
        }
    }
    None
}

/// Reads a step folder's progress record (`None` when the step has none).
pub fn progress_record(step_dir: &Path) -> Option<crate::progress::ProgressRecord> {
    let path = step_dir
        .join(CHECKPOINT)
        .join(crate::progress::PROGRESS_FILE);
    fsx::read_json(&path).ok().flatten()
}

/// Reads the record of a run directory without locking it.
pub fn read_record(run_dir: &Path) -> Option<RunRecord> {
    fsx::read_json(&run_dir.join(RUN_RECORD)).ok().flatten()
}

/// All run directories under `runs_root` (any pipeline), oldest first by creation time.
pub fn all_runs(runs_root: &Path) -> Vec<(PathBuf, RunRecord)> {
    let mut runs = Vec::new();
    let Ok(pipelines) = fs::read_dir(runs_root) else {
        return runs;
    };
    for p in pipelines.flatten() {
        let Ok(entries) = fs::read_dir(p.path()) else {
            continue;
        };
        for r in entries.flatten() {
            if let Some(rec) = read_record(&r.path()) {
                runs.push((r.path(), rec));
            }
        }
    }
    runs.sort_by(|a, b| (&a.1.created_at, &a.0).cmp(&(&b.1.created_at, &b.0)));
    runs
}

/// The newest run (optionally only those not complete).
pub fn latest_run(runs_root: &Path, unfinished_only: bool) -> Result<PathBuf, RunDirError> {
    all_runs(runs_root)
        .into_iter()
        .rev()
        .find(|(_, rec)| !unfinished_only || rec.status != RunStatus::Complete)
        .map(|(p, _)| p)
        .ok_or_else(|| RunDirError::NoRuns(runs_root.to_path_buf()))
}

/// Whether another process holds the run's lock right now.
pub fn is_locked(run_dir: &Path) -> bool {
    match File::open(run_dir.join(LOCK)) {
        Ok(f) => match f.try_lock_shared() {
            Ok(()) => false,
            Err(TryLockError::WouldBlock) => true,
            Err(_) => false,
        },
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_same_dir_fails_with_holder() {
        let dir = tempfile::tempdir().unwrap();
        let a = RunDir::create(dir.path(), "p", Some("r1")).unwrap();
        a.write_record(&RunRecord {
            pipeline: "p".into(),
            run_id: "r1".into(),
            source_file: "x".into(),
            overrides: vec![],
            created_at: now(),
            status: RunStatus::Running,
            updated_at: now(),
            message: None,
            runner_version: "0".into(),
            selection: Default::default(),
        })
        .unwrap();
        assert!(is_locked(&a.path));
        let err = RunDir::open(&a.path).unwrap_err().to_string();
        assert!(
            err.contains("in use by another runner") && err.contains("pid"),
            "{err}"
        );
        let path = a.path.clone();
        drop(a);
        // A process another test forks at this moment holds a copy of the lock's descriptor
        // until it execs (close-on-exec): the lock is free once that copy is closed.
        let free = (0..100).any(|_| {
            let free = !is_locked(&path);
            if !free {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            free
        });
        assert!(free, "the lock is released when the RunDir is dropped");
        RunDir::open(&path).unwrap();
    }

    #[test]
    fn an_existing_run_id_or_a_path_as_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        let a = RunDir::create(&runs, "p", Some("r1")).unwrap();
        drop(a);
        let err = RunDir::create(&runs, "p", Some("r1")).unwrap_err();
        assert!(matches!(err, RunDirError::Exists { .. }), "{err}");
        assert!(err.to_string().contains("runner resume"), "{err}");
        for id in ["../../../x", "..", "a/b", "/tmp/x"] {
            let err = RunDir::create(&runs, "p", Some(id)).unwrap_err();
            assert!(matches!(err, RunDirError::BadName(_)), "{id}: {err}");
        }
        let err = RunDir::create(&runs, "../../x", None).unwrap_err();
        assert!(matches!(err, RunDirError::BadName(_)), "{err}");
        // Nothing was created outside the runs directory.
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn run_ids_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let a = RunDir::create(dir.path(), "p", None).unwrap();
        let b = RunDir::create(dir.path(), "p", None).unwrap();
        assert_ne!(a.path, b.path);
    }
}
