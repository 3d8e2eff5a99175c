//! The GPU path (builds with `--features wgpu`; in CI on Mesa's software Vulkan driver):
//! `scripts/gpu-check.sh --dry-run` end to end, and the device's validation messages.

#![cfg(feature = "wgpu")]

mod common;

use common::python::{python, repo_root};
use std::process::Command;

/// The GPU check as a dry run: kernel parity on the device passes, the WKV-7 benchmark and
/// the stage-2 step report numbers, and the summary is valid JSON.
#[test]
fn gpu_check_dry_run_passes_parity_and_reports_numbers() {
    let out = tempfile::tempdir().unwrap();
    let result = Command::new(repo_root().join("scripts/gpu-check.sh"))
        .args([
            "--dry-run",
            "--runner",
            env!("CARGO_BIN_EXE_runner"),
            "--out",
        ])
        .arg(out.path())
        .env("RUNNER_PYTHON", python())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success(),
        "gpu-check failed:\n{stdout}\n{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("the summary is not JSON ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(summary["dry_run"], true);
    assert_eq!(summary["wkv"]["status"], "0", "{summary:#}\n{stderr}");
    assert_eq!(summary["wkv"]["parity_ok"], true, "{summary:#}\n{stderr}");
    assert!(summary["wkv"]["fwdbwd_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(summary["stage2"]["status"], "0", "{summary:#}\n{stderr}");
    assert!(summary["stage2"]["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(summary["stage2"]["mfu_vs_peak"].as_f64().unwrap() > 0.0);
}
