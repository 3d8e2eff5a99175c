//! Computes `RUNNER_CODE_DIGEST`: a SHA-256 over the sources that decide what the runner
//! computes (this crate's and the kernels' `src/`, the manifests and `Cargo.lock`). It is part
//! of every step's cache key, so a runner built from other code never reuses another's results.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const INPUTS: &[&str] = &[
    "src",
    "python",
    "kernels/src",
    "Cargo.toml",
    "kernels/Cargo.toml",
    "Cargo.lock",
];

fn files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for e in entries {
            files(&e, out);
        }
    } else if path.is_file() {
        out.push(path.to_path_buf());
    }
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let mut all = Vec::new();
    for input in INPUTS {
        println!("cargo:rerun-if-changed={input}");
        files(&root.join(input), &mut all);
    }
    let mut h = Sha256::new();
    for f in all {
        let rel = f
            .strip_prefix(&root)
            .unwrap_or(&f)
            .to_string_lossy()
            .into_owned();
        let bytes = std::fs::read(&f).unwrap_or_default();
        h.update((rel.len() as u64).to_le_bytes());
        h.update(rel.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=RUNNER_CODE_DIGEST={digest}");
}
