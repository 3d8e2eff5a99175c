//! The content-addressed step cache: `<runs_dir>/.cache/<key>` names the step folder (in some
//! earlier run) whose artifacts were produced under that key. Reuse hard-links them into the
//! new run, so a cached step costs no copy.
//!
//! A hit is verified: every artifact's sha256 must still equal the one in the manifest. Hashing
//! is done once per file version: `<key>.verified.json` remembers (size, mtime, inode) → sha256
//! of what was last checked, so an unchanged file is not read again, while a file rewritten in
//! place (new mtime) or replaced (new inode) is. A mismatch is a miss, logged with the file.

use super::rundir::{self, OutputFile, StepManifest, StepStatus};
use crate::util::{fsx, hash};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// What a file looked like when its digest was last computed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    bytes: u64,
    mtime_ns: i128,
    inode: u64,
    sha256: String,
}

type Memo = BTreeMap<PathBuf, Stamp>;

fn stamp_of(meta: &std::fs::Metadata, sha256: String) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    Stamp {
        bytes: meta.len(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        inode: meta.ino(),
        sha256,
    }
}

impl Cache {
    pub fn new(runs_root: &Path) -> Self {
        Cache {
            dir: runs_root.join(".cache"),
        }
    }

    fn memo_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.verified.json"))
    }

    /// The step folder holding complete, intact artifacts for `key`, with its manifest.
    pub fn lookup(&self, key: &str) -> Option<(PathBuf, StepManifest)> {
        let target = std::fs::read_to_string(self.dir.join(key)).ok()?;
        let step_dir = PathBuf::from(target.trim());
        let manifest = rundir::read_manifest(&step_dir)?;
        if manifest.status != StepStatus::Complete || manifest.key != key {
            return None;
        }
        self.verify(key, &step_dir, &manifest)
            .then_some((step_dir, manifest))
    }

    /// Whether every artifact listed in `manifest` is in `step_dir/out` with its recorded
    /// sha256. Logs the first file that differs.
    pub fn verify(&self, key: &str, step_dir: &Path, manifest: &StepManifest) -> bool {
        let out = step_dir.join(rundir::OUT);
        let memo_path = self.memo_path(key);
        let memo: Memo = fsx::read_json(&memo_path)
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut fresh = Memo::new();
        for f in &manifest.outputs {
            let path = out.join(&f.path);
            match self.check_file(&path, f, &memo) {
                Ok(stamp) => {
                    fresh.insert(path, stamp);
                }
                Err(why) => {
                    tracing::warn!(
                        "step `{}`: not reusing {}: {why}",
                        manifest.step,
                        step_dir.display()
                    );
                    return false;
                }
            }
        }
        if fresh != memo {
            let _ = fsx::atomic_write_json(&memo_path, &fresh);
        }
        true
    }

    fn check_file(&self, path: &Path, f: &OutputFile, memo: &Memo) -> Result<Stamp, String> {
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("artifact {} is missing ({e})", path.display()))?;
        if meta.len() != f.bytes {
            return Err(format!(
                "artifact {} has {} bytes, its manifest says {}",
                path.display(),
                meta.len(),
                f.bytes
            ));
        }
        if let Some(known) = memo.get(path)
            && *known == stamp_of(&meta, f.sha256.clone())
        {
            return Ok(known.clone());
        }
        let sha =
            hash::sha256_file(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        if sha != f.sha256 {
            return Err(format!(
                "artifact {} changed since it was written (sha256 {} ≠ {} in its manifest)",
                path.display(),
                &sha[..12],
                &f.sha256[..12.min(f.sha256.len())]
            ));
        }
        Ok(stamp_of(&meta, sha))
    }

    /// Records that `step_dir` holds the artifacts for `key` (just hashed as `outputs`).
    pub fn record(
        &self,
        key: &str,
        step_dir: &Path,
        outputs: &[OutputFile],
    ) -> std::io::Result<()> {
        let abs = step_dir.canonicalize()?;
        let out = abs.join(rundir::OUT);
        let mut memo = Memo::new();
        for f in outputs {
            let path = out.join(&f.path);
            if let Ok(meta) = std::fs::metadata(&path) {
                memo.insert(path, stamp_of(&meta, f.sha256.clone()));
            }
        }
        fsx::atomic_write_json(&self.memo_path(key), &memo)?;
        fsx::atomic_write(&self.dir.join(key), abs.to_string_lossy().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::keys;

    fn complete_step(dir: &Path, key: &str, files: &[(&str, &[u8])]) -> StepManifest {
        let out = dir.join(rundir::OUT);
        std::fs::create_dir_all(&out).unwrap();
        for (name, bytes) in files {
            std::fs::write(out.join(name), bytes).unwrap();
        }
        let (outputs, digest) = keys::outputs_of(&out).unwrap();
        let mut m = StepManifest::complete_for_tests("s", key, outputs);
        m.outputs_digest = Some(digest);
        fsx::atomic_write_json(&dir.join(rundir::MANIFEST), &m).unwrap();
        m
    }

    #[test]
    fn a_flipped_byte_of_the_same_size_is_a_miss() {
        let runs = tempfile::tempdir().unwrap();
        let step = runs.path().join("p/r1/s");
        let m = complete_step(&step, "k1", &[("a.bin", b"hello world"), ("b", b"x")]);
        let cache = Cache::new(runs.path());
        cache.record("k1", &step, &m.outputs).unwrap();
        assert!(cache.lookup("k1").is_some());
        // Same size, one byte different, written in place.
        let a = step.join("out/a.bin");
        std::fs::write(&a, b"hello World").unwrap();
        assert!(cache.lookup("k1").is_none());
        std::fs::write(&a, b"hello world").unwrap();
        assert!(cache.lookup("k1").is_some());
    }

    #[test]
    fn an_unchanged_file_is_not_hashed_again() {
        let runs = tempfile::tempdir().unwrap();
        let step = runs.path().join("p/r1/s");
        let m = complete_step(&step, "k2", &[("a", b"abc")]);
        let cache = Cache::new(runs.path());
        cache.record("k2", &step, &m.outputs).unwrap();
        // Change the bytes but restore size, mtime and inode: a lookup that reads the file
        // would miss; one that trusts the remembered stamp hits. That it hits shows the file is
        // not hashed again while its stamp is unchanged.
        let path = step.join("out/a");
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, b"abd").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert!(cache.lookup("k2").is_some());
        // Without the memo, the same file is hashed and refused.
        std::fs::remove_file(cache.memo_path("k2")).unwrap();
        assert!(cache.lookup("k2").is_none());
    }
}
