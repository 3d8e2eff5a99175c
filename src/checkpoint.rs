//! Step checkpoints: a folder per step where long steps save what they need to continue.
//!
//! Layout: `<step>/checkpoint/ckpt-0000000042/` (one folder per save, tag = optimizer step or any
//! increasing counter) and `LATEST` naming the newest complete one. A save is written into a
//! temporary folder, every file is flushed, a `COMPLETE` marker is added, and only then is the
//! folder renamed into place and `LATEST` replaced atomically. A crash during a save leaves the
//! previous checkpoint as the latest.

use crate::util::fsx;
use anyhow::Context;
use std::fs;
use std::path::{Path, PathBuf};

const LATEST: &str = "LATEST";
const COMPLETE: &str = "COMPLETE";

/// A saved checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub tag: u64,
    pub path: PathBuf,
}

/// The checkpoint folder of one step.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
    keep: usize,
    /// The step's `progress.json` (a nested loop's too: `runner status` reads one per step).
    progress: PathBuf,
}

impl Checkpoints {
    /// `keep` is how many complete checkpoints are kept (at least 1).
    pub fn new(dir: PathBuf, keep: usize) -> Self {
        Checkpoints {
            progress: dir.join(crate::progress::PROGRESS_FILE),
            dir,
            keep: keep.max(1),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The checkpoints of a loop inside the step (`<checkpoint>/<name>/`): kept by this
    /// folder's pruning, and cleared with it when the step starts over. Its progress is the
    /// step's.
    pub fn nested(&self, name: &str) -> Checkpoints {
        Checkpoints {
            dir: self.dir.join(name),
            keep: self.keep,
            progress: self.progress.clone(),
        }
    }

    /// The `progress.json` of the step's long work, beside its checkpoints (see
    /// [`crate::progress::Progress`]).
    pub fn progress_file(&self) -> PathBuf {
        self.progress.clone()
    }

    /// The newest complete checkpoint, if any.
    pub fn latest(&self) -> Option<Checkpoint> {
        let name = fs::read_to_string(self.dir.join(LATEST)).ok()?;
        let path = self.dir.join(name.trim());
        let tag = name.trim().strip_prefix("ckpt-")?.parse().ok()?;
        path.join(COMPLETE)
            .exists()
            .then_some(Checkpoint { tag, path })
    }

    /// Saves a checkpoint: `write` fills the given (empty) folder.
    pub fn save(
        &self,
        tag: u64,
        write: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Checkpoint> {
        fs::create_dir_all(&self.dir)?;
        let name = format!("ckpt-{tag:010}");
        let final_path = self.dir.join(&name);
        let tmp = fsx::temp_sibling(&final_path);
        fsx::remove_dir_if_exists(&tmp)?;
        fs::create_dir_all(&tmp)?;
        write(&tmp).with_context(|| format!("writing checkpoint {}", final_path.display()))?;
        for rel in fsx::list_files(&tmp)? {
            fs::File::open(tmp.join(rel))?.sync_all()?;
        }
        fsx::atomic_write(&tmp.join(COMPLETE), b"")?;
        fsx::remove_dir_if_exists(&final_path)?;
        fs::rename(&tmp, &final_path)?;
        fsx::atomic_write(&self.dir.join(LATEST), name.as_bytes())?;
        self.prune()?;
        Ok(Checkpoint {
            tag,
            path: final_path,
        })
    }

    /// Removes every checkpoint.
    pub fn clear(&self) -> std::io::Result<()> {
        fsx::remove_dir_if_exists(&self.dir)
    }

    /// Keeps the newest `keep` complete checkpoints and removes leftovers of interrupted saves;
    /// other folders of the step (sub-loops' own checkpoints) are left alone.
    fn prune(&self) -> std::io::Result<()> {
        let mut complete = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.file_type()?.is_dir() {
                continue;
            }
            if name.starts_with("ckpt-") && entry.path().join(COMPLETE).exists() {
                complete.push(name);
            } else if name.starts_with("ckpt-") || name.starts_with(".ckpt-") {
                // An interrupted save: its temporary folder, or a folder without `COMPLETE`.
                fsx::remove_dir_if_exists(&entry.path())?;
            }
            // Other folders belong to the step (e.g. stage 1's layer probe) and are kept.
        }
        complete.sort();
        let excess = complete.len().saturating_sub(self.keep);
        for name in &complete[..excess] {
            fsx::remove_dir_if_exists(&self.dir.join(name))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_latest_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::new(dir.path().join("checkpoint"), 2);
        assert_eq!(c.latest(), None);
        for tag in [1u64, 2, 3] {
            c.save(tag, |p| Ok(fs::write(p.join("state"), tag.to_string())?))
                .unwrap();
        }
        let latest = c.latest().unwrap();
        assert_eq!(latest.tag, 3);
        assert_eq!(fs::read_to_string(latest.path.join("state")).unwrap(), "3");
        assert!(!c.dir().join("ckpt-0000000001").exists());
        assert!(c.dir().join("ckpt-0000000002").exists());
    }

    #[test]
    fn failed_save_keeps_previous_latest() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::new(dir.path().join("checkpoint"), 2);
        c.save(1, |p| Ok(fs::write(p.join("s"), "1")?)).unwrap();
        assert!(c.save(2, |_| anyhow::bail!("disk full")).is_err());
        assert_eq!(c.latest().unwrap().tag, 1);
    }

    #[test]
    fn pruning_removes_interrupted_saves_and_keeps_nested_loops() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::new(dir.path().join("checkpoint"), 1);
        let probe = c.nested("probe");
        probe.save(7, |p| Ok(fs::write(p.join("s"), "7")?)).unwrap();
        fs::create_dir_all(c.dir().join("ckpt-0000000009")).unwrap(); // no COMPLETE
        fs::create_dir_all(c.dir().join(".ckpt-0000000010.tmp-1-0")).unwrap();
        c.save(1, |p| Ok(fs::write(p.join("s"), "1")?)).unwrap();
        assert!(!c.dir().join("ckpt-0000000009").exists());
        assert!(!c.dir().join(".ckpt-0000000010.tmp-1-0").exists());
        assert_eq!(probe.latest().unwrap().tag, 7);
        assert_eq!(
            probe.progress_file(),
            c.progress_file(),
            "one progress per step"
        );
        assert_eq!(c.latest().unwrap().tag, 1);
        c.clear().unwrap();
        assert_eq!(
            probe.latest(),
            None,
            "clearing the step clears its nested loops"
        );
    }
}
