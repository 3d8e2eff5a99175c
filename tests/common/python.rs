//! The Python interpreter used by reference scripts: `$RUNNER_PYTHON`, else `.venv/bin/python`
//! (what `.ci/run` creates), else `python3`. Tests that need numpy fail with a message saying
//! how to install it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("RUNNER_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = repo_root().join(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

/// Runs `scripts/<script>` with arguments; panics with its output on failure.
pub fn run_script(script: &str, args: &[&str]) -> String {
    let py = python();
    let out = Command::new(&py)
        .arg(repo_root().join("scripts").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", py.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'numpy'") {
        panic!(
            "the reference scripts need numpy: run `.ci/run` once (it creates .venv with numpy) or \
             `python3 -m pip install numpy`, or point RUNNER_PYTHON at an interpreter that has it"
        );
    }
    assert!(out.status.success(), "{script} failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes the tiny random Qwen2 checkpoint into `dir`.
pub fn tiny_qwen2(dir: &Path, extra: &[&str]) {
    let mut args = vec![dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_script("make_tiny_qwen2.py", &args);
}

/// Reference logits `[sequences, positions, vocab]` from `scripts/reference_forward.py`.
pub fn reference_logits(source: &[&str], seqs: &[Vec<u32>]) -> (Vec<usize>, Vec<f32>) {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    let ids = seqs
        .iter()
        .map(|s| s.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
        .collect::<Vec<_>>()
        .join(";");
    let mut args = source.to_vec();
    let out = tmp.path().to_str().unwrap();
    args.extend_from_slice(&["--ids", &ids, "--out", out]);
    let stdout = run_script("reference_forward.py", &args);
    let meta: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let shape: Vec<usize> = meta["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let bytes = std::fs::read(tmp.path()).unwrap();
    let data = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (shape, data)
}

/// `max |a - b| / max |b|`, and `max |a - b|`.
pub fn relative_error(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let max_abs_diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs() as f64).fold(0.0, f64::max);
    (max_abs_diff / scale, max_abs_diff)
}

/// An interpreter with torch and transformers, or `None` (with the reason printed).
pub fn torch_python() -> Option<PathBuf> {
    let py = std::env::var_os("RUNNER_TORCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv-torch/bin/python"));
    let ok = Command::new(&py)
        .args(["-c", "import torch, transformers"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!(
            "skipped: {} cannot import torch and transformers (see the README, \"The student in \
             Python\", to install them, or set RUNNER_TORCH_PYTHON)",
            py.display()
        );
        return None;
    }
    Some(py)
}

/// Computes the runner's logits for `seqs` from the hybrid directory `dir` and runs
/// `scripts/check_transformers.py` on it (logits within `tolerance`, cached generation equal to
/// uncached, flat state, tokenizer); returns its report.
pub fn check_in_transformers(
    py: &Path,
    dir: &Path,
    seqs: &[Vec<u32>],
    tolerance: f64,
) -> serde_json::Value {
    use burn::tensor::Device;
    let device = Device::flex();
    let saved = rwkvinside::model::hybrid::Hybrid::load(dir, &device).unwrap();
    let logits = rwkvinside::model::weights::to_vec(saved.forward(
        rwkvinside::model::transformer::ids_tensor(seqs, &device),
        None,
    ));
    let scratch = tempfile::tempdir().unwrap();
    let logits_file = scratch.path().join("runner_logits.f32");
    std::fs::write(&logits_file, bytemuck::cast_slice::<f32, u8>(&logits)).unwrap();
    let ids = seqs
        .iter()
        .map(|s| s.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
        .collect::<Vec<_>>()
        .join(";");
    let o = Command::new(py)
        .arg(repo_root().join("scripts/check_transformers.py"))
        .arg(dir)
        .args(["--ids", &ids, "--logits"])
        .arg(&logits_file)
        .args(["--tolerance", &tolerance.to_string()])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let report: serde_json::Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("REPORT "))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    assert!(
        o.status.success(),
        "transformers check failed: {report}\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(report.is_object(), "no report in the output:\n{stdout}");
    println!("{report}");
    report
}
