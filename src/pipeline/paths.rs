//! Paths a pipeline names, checked before anything is written: run names and ids are single
//! path components, and an `export` target stays inside the pipeline root, away from the root
//! itself, the runs directory, the pipeline's own files and every input a step reads.
//!
//! Checks are lexical first (`..` and absolute paths) and then on the real filesystem (the
//! deepest existing ancestor is canonicalised, so a symlink cannot lead outside the root).

use std::path::{Component, Path, PathBuf};

/// The file the runner writes into every export folder it creates. A non-empty folder without
/// it was not made by the runner and is never replaced.
pub const EXPORT_MARKER: &str = ".runner-export";

/// Lexically removes `.` and `..` components (the path may not exist yet).
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `p` with its deepest existing ancestor canonicalised (symlinks resolved) and the rest
/// appended lexically.
pub fn resolve_existing(p: &Path) -> PathBuf {
    let p = normalize(p);
    let mut existing = p.as_path();
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return p,
        }
    }
}

/// Checks that `s` can name one folder: not empty, not `.` or `..`, no separators or control
/// characters. `what` names the value in the message.
pub fn check_component(what: &str, s: &str) -> Result<(), String> {
    let bad = s.is_empty()
        || s == "."
        || s == ".."
        || s.len() > 200
        || s.chars().any(|c| c == '/' || c == '\\' || c.is_control());
    if bad {
        Err(format!(
            "{what} `{}` must be a single folder name (letters, digits, `.`, `_`, `-`; not `.` or `..`, no `/`)",
            s.escape_debug()
        ))
    } else {
        Ok(())
    }
}

/// Whether `a` and `b` overlap: one is the other or inside it.
fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// What is wrong with `export` (as written in the pipeline), if anything. `root` is the
/// (canonical) pipeline root, `runs_root` where run directories go, `inputs` the root-relative
/// or absolute paths steps read, `files` the pipeline's own files.
pub fn export_problem(
    export: &Path,
    root: &Path,
    runs_root: &Path,
    inputs: &[PathBuf],
    files: &[PathBuf],
) -> Option<String> {
    if export.as_os_str().is_empty() {
        return Some("`export` is empty".into());
    }
    if export.is_absolute() {
        return Some(format!(
            "export target `{}` is an absolute path; it must be a folder inside the pipeline root ({})",
            export.display(),
            root.display()
        ));
    }
    let root_real = resolve_existing(root);
    let target = normalize(&root.join(export));
    if !target.starts_with(root) || target == normalize(root) {
        return Some(format!(
            "export target `{}` resolves to {}, which is not a folder inside the pipeline root ({})",
            export.display(),
            target.display(),
            root.display()
        ));
    }
    let real = resolve_existing(&target);
    if !real.starts_with(&root_real) || real == root_real {
        return Some(format!(
            "export target `{}` leads to {} (through a symbolic link), outside the pipeline root ({})",
            export.display(),
            real.display(),
            root_real.display()
        ));
    }
    let runs_real = resolve_existing(runs_root);
    if overlaps(&real, &runs_real) {
        return Some(format!(
            "export target `{}` overlaps the runs directory ({})",
            export.display(),
            runs_real.display()
        ));
    }
    for file in files {
        let f = resolve_existing(file);
        if f.starts_with(&real) {
            return Some(format!(
                "export target `{}` contains the pipeline file {}",
                export.display(),
                file.display()
            ));
        }
    }
    for input in inputs {
        let i = resolve_existing(&root.join(input));
        if overlaps(&real, &i) {
            return Some(format!(
                "export target `{}` overlaps the input `{}`, which a step reads",
                export.display(),
                input.display()
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_components_only() {
        for ok in ["smollm2", "run-1.b", "20261128-211400"] {
            assert!(check_component("run id", ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "/abs", "a\\b", "x\ny"] {
            assert!(check_component("run id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn export_must_stay_inside_the_root_away_from_runs_files_and_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap().join("proj");
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::write(root.join("p.toml"), "").unwrap();
        let runs = root.join("runs");
        let inputs = vec![PathBuf::from("data")];
        let files = vec![root.join("p.toml")];
        let problem = |e: &str| export_problem(Path::new(e), &root, &runs, &inputs, &files);
        assert_eq!(problem("models/out"), None);
        assert_eq!(problem("export"), None);
        for bad in [
            ".",
            "",
            "./",
            "..",
            "../../somewhere",
            "models/../..",
            "/tmp/x",
            "runs",
            "runs/x",
            "data",
            "data/sub",
        ] {
            assert!(problem(bad).is_some(), "{bad:?} accepted");
        }
        // The runs directory inside the export target.
        let runs_inside = root.join("out/runs");
        assert!(export_problem(Path::new("out"), &root, &runs_inside, &inputs, &files).is_some());
        // A symbolic link that leads out of the root.
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        assert!(problem("link/x").unwrap().contains("symbolic link"));
    }
}
