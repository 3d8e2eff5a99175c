//! Crash-safe filesystem operations.
//!
//! Every artifact and manifest the runner writes goes through [`atomic_write`]:
//! the bytes land in a temporary file beside the target, are flushed to disk,
//! and the temporary is renamed over the target. A `kill -9` at any moment
//! leaves either the old file or the new one, never a torn one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically (temp file + fsync + rename + fsync of the directory).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = temp_sibling(path);
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir);
    Ok(())
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn atomic_write_json<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    atomic_write(path, &bytes)
}

/// Reads and parses a JSON file; `Ok(None)` when it does not exist.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A unique temporary path in the same directory as `path` (same filesystem, so rename is atomic).
pub fn temp_sibling(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Flushes a directory entry table so that a rename inside it survives a power loss.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes a directory tree if it exists.
pub fn remove_dir_if_exists(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Mirrors the tree `src` into `dst` with hard links (falling back to copies across filesystems).
/// `dst` is built under a temporary name and swapped into place, so it appears whole or not at
/// all. Only for folders the runner owns (a step's `out/`): whatever `dst` held is replaced.
pub fn link_tree(src: &Path, dst: &Path) -> io::Result<()> {
    build_and_swap(src, dst, None)
}

/// Builds the hard-link mirror of `src` (and the file `extra`, when given) beside `dst`, then
/// swaps it in: an existing `dst` is renamed away first and removed last.
fn build_and_swap(src: &Path, dst: &Path, extra: Option<(&str, &[u8])>) -> io::Result<()> {
    let tmp = temp_sibling(dst);
    remove_dir_if_exists(&tmp)?;
    link_tree_inner(src, &tmp)?;
    if let Some((name, bytes)) = extra {
        atomic_write(&tmp.join(name), bytes)?;
    }
    match fs::symlink_metadata(dst) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::rename(&tmp, dst)?,
        Err(e) => return Err(e),
        Ok(_) => {
            let old = temp_sibling(dst);
            fs::rename(dst, &old)?;
            fs::rename(&tmp, dst)?;
            remove_dir_if_exists(&old)?;
        }
    }
    if let Some(parent) = dst.parent() {
        sync_dir(parent);
    }
    Ok(())
}

/// Why [`replace_marked_dir`] left a folder alone.
#[derive(Debug)]
pub enum ReplaceError {
    /// `dst` exists and is not a folder this function made (no marker file), or not a folder.
    NotOurs(PathBuf),
    Io(io::Error),
}

impl From<io::Error> for ReplaceError {
    fn from(e: io::Error) -> Self {
        ReplaceError::Io(e)
    }
}

/// Mirrors `src` into `dst` with hard links and writes `marker` (holding `stamp`) beside them —
/// but only when `dst` does not exist, is an empty folder, or holds `marker` (so this function
/// made it). Any other `dst` (a user's folder, a file, a symbolic link) is left untouched.
/// The new tree is built beside `dst` and swapped in, so `dst` is whole at every moment.
pub fn replace_marked_dir(
    src: &Path,
    dst: &Path,
    marker: &str,
    stamp: &[u8],
) -> Result<(), ReplaceError> {
    match fs::symlink_metadata(dst) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
        Ok(m) if m.file_type().is_dir() => {
            let marked = fs::symlink_metadata(dst.join(marker)).is_ok_and(|m| m.is_file());
            if !marked && fs::read_dir(dst)?.next().is_some() {
                return Err(ReplaceError::NotOurs(dst.to_path_buf()));
            }
        }
        Ok(_) => return Err(ReplaceError::NotOurs(dst.to_path_buf())),
    }
    Ok(build_and_swap(src, dst, Some((marker, stamp)))?)
}

fn link_tree_inner(src: &Path, dst: &Path) -> io::Result<()> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            link_tree_inner(&from, &to)?;
        } else {
            link_or_copy(&from, &to)?;
        }
    }
    Ok(())
}

/// Hard-links `src` to `dst`, or copies it where a link is not possible (another filesystem).
pub fn link_or_copy(src: &Path, dst: &Path) -> io::Result<()> {
    if fs::hard_link(src, dst).is_err() {
        fs::copy(src, dst)?;
    }
    Ok(())
}

/// Lists every regular file below `root` as a path relative to `root`, sorted.
pub fn list_files(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if root.exists() {
        walk(root, Path::new(""), &mut out)?;
    }
    out.sort();
    Ok(out)
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let rel_path = rel.join(entry.file_name());
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(".") && name.to_string_lossy().contains(".tmp-") {
            continue; // a crashed writer's leftover, never an artifact
        }
        if entry.file_type()?.is_dir() {
            walk(root, &rel_path, out)?;
        } else {
            out.push(rel_path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            list_files(dir.path()).unwrap(),
            vec![PathBuf::from("a/b.json")]
        );
    }

    #[test]
    fn replace_marked_dir_never_touches_a_folder_it_did_not_make() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("a"), b"1").unwrap();
        // A user's folder with a file in it: refused, untouched.
        let user = dir.path().join("user");
        fs::create_dir_all(&user).unwrap();
        fs::write(user.join("precious"), b"keep").unwrap();
        assert!(matches!(
            replace_marked_dir(&src, &user, ".m", b"x"),
            Err(ReplaceError::NotOurs(_))
        ));
        assert_eq!(fs::read(user.join("precious")).unwrap(), b"keep");
        assert!(!user.join("a").exists());
        // A file: refused.
        let file = dir.path().join("file");
        fs::write(&file, b"f").unwrap();
        assert!(replace_marked_dir(&src, &file, ".m", b"x").is_err());
        assert_eq!(fs::read(&file).unwrap(), b"f");
        // New, then replaced because it holds the marker.
        let out = dir.path().join("out");
        replace_marked_dir(&src, &out, ".m", b"x").unwrap();
        assert_eq!(fs::read(out.join("a")).unwrap(), b"1");
        fs::write(src.join("a2"), b"2").unwrap();
        replace_marked_dir(&src, &out, ".m", b"y").unwrap();
        assert_eq!(fs::read(out.join(".m")).unwrap(), b"y");
        assert!(out.join("a2").exists());
        // An empty folder is fine.
        let empty = dir.path().join("empty");
        fs::create_dir_all(&empty).unwrap();
        replace_marked_dir(&src, &empty, ".m", b"x").unwrap();
        assert!(empty.join("a").exists());
    }

    #[test]
    fn link_tree_mirrors_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("x")).unwrap();
        fs::write(src.join("x/f"), b"1").unwrap();
        fs::write(src.join("g"), b"2").unwrap();
        let dst = dir.path().join("dst");
        link_tree(&src, &dst).unwrap();
        assert_eq!(
            list_files(&dst).unwrap(),
            vec![PathBuf::from("g"), PathBuf::from("x/f")]
        );
        assert_eq!(fs::read(dst.join("x/f")).unwrap(), b"1");
    }
}
