//! `layers = { auto = K }` end to end on `pipelines/ci.toml` (whose stage 1 uses it): the
//! probe's choice is the K lowest-KL layers and is what the student converts; a resumed step
//! takes the kept choice instead of probing again; K out of range and probe settings without
//! `auto` are refused.

mod common;

use common::Project;
use common::python::python;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn pipeline() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines/ci.toml")
        .to_string_lossy()
        .into_owned()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `runner run pipelines/ci.toml --until stage1 --run-id r` (plus `extra`) in `p`.
fn until_stage1(p: &Project, extra: &[&str]) -> common::Ran {
    let pipe = pipeline();
    let runs = p.path().join("runs");
    let mut args = vec![
        "run",
        pipe.as_str(),
        "--until",
        "stage1",
        "--runs-dir",
        runs.to_str().unwrap(),
        "--run-id",
        "r",
    ];
    args.extend_from_slice(extra);
    common::Ran::from(
        p.cmd(&args)
            .env("RUNNER_PYTHON", python())
            .output()
            .unwrap(),
    )
}

/// The `layers` of a `layer_choice.json`.
fn layers_of(choice: &Value) -> Vec<u64> {
    choice["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

fn stage1_dir(p: &Project) -> PathBuf {
    p.path().join("runs/ci/r/stage1")
}

#[test]
fn auto_layers_are_the_lowest_kl_and_the_student_converts_them() {
    let p = Project::new();
    until_stage1(&p, &[]).ok();
    let dir = stage1_dir(&p);
    let choice = read_json(&dir.join("out/layer_choice.json"));
    assert_eq!(choice["k"], 2);
    assert_eq!(choice["probe_steps"], 4);
    assert_eq!(choice["batches"], 2);
    let scores = choice["scores"].as_array().unwrap();
    assert_eq!(scores.len(), 4, "every layer is scored: {choice}");
    let mut by_kl: Vec<(f64, u64)> = scores
        .iter()
        .map(|s| (s["kl"].as_f64().unwrap(), s["layer"].as_u64().unwrap()))
        .collect();
    for s in scores {
        let (kl, top1) = (s["kl"].as_f64().unwrap(), s["top1"].as_f64().unwrap());
        assert!(kl.is_finite() && kl > 0.0, "{s}");
        assert!((0.0..=1.0).contains(&top1), "{s}");
    }
    by_kl.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut lowest: Vec<u64> = by_kl[..2].iter().map(|x| x.1).collect();
    lowest.sort_unstable();
    let layers = layers_of(&choice);
    assert_eq!(layers, lowest, "{choice}");
    let config = read_json(&dir.join("out/config.json"));
    assert_eq!(config["wkv_layers"], choice["layers"]);
    // The probe trained its 4 steps with checkpoints of its own beside the step's.
    let probe_metrics =
        std::fs::read_to_string(dir.join("checkpoint/probe/metrics.jsonl")).unwrap();
    assert_eq!(probe_metrics.lines().count(), 4, "{probe_metrics}");
}

/// A run killed during stage 1's training resumes with the kept choice, without probing again:
/// the kept file is changed to other layers (and the training checkpoints, which belong to
/// the old layers, dropped) before `runner resume`, and the student has the other layers.
#[test]
fn a_resumed_stage1_keeps_the_probes_choice() {
    let p = Project::new();
    let pipe = pipeline();
    let mut child = p
        .cmd(&[
            "run",
            pipe.as_str(),
            "--until",
            "stage1",
            "--runs-dir",
            "runs",
            "--run-id",
            "k",
            "-q",
            "--set",
            "step.stage1.train.max_tokens=512000",
            "--set",
            "step.stage1.train.max_steps=80",
        ])
        .env("RUNNER_PYTHON", python())
        .spawn()
        .unwrap();
    let dir = p.path().join("runs/ci/k/stage1");
    p.wait_for(300, "stage 1 to train after its probe", || {
        std::fs::read_to_string(dir.join("checkpoint/metrics.jsonl"))
            .is_ok_and(|m| m.lines().count() >= 2)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = dir.join("checkpoint/layer_choice.json");
    let mut choice = read_json(&kept);
    let layers = layers_of(&choice);
    let swapped: Vec<u64> = (0..4).filter(|l| !layers.contains(l)).collect();
    choice["layers"] = serde_json::json!(swapped);
    std::fs::write(&kept, choice.to_string()).unwrap();
    for e in std::fs::read_dir(dir.join("checkpoint")).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("ckpt-") {
            std::fs::remove_dir_all(e.path()).unwrap();
        }
    }
    let _ = std::fs::remove_file(dir.join("checkpoint/LATEST"));
    let o = p
        .cmd(&["resume", "runs/ci/k"])
        .env("RUNNER_PYTHON", python())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("chosen by the probe of an earlier attempt"),
        "{stderr}"
    );
    let config = read_json(&dir.join("out/config.json"));
    assert_eq!(config["wkv_layers"], serde_json::json!(swapped));
}

#[test]
fn auto_k_out_of_range_and_a_stray_probe_table_are_refused() {
    let p = Project::new();
    let ran = until_stage1(&p, &["--set", "step.stage1.layers={ auto = 9 }"]);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("the teacher has 4 layers; choose K from 1 to 4"),
        "{}",
        ran.stderr
    );
    for (set, needle) in [
        ("step.stage1.layers={ auto = 0 }", "K must be at least 1"),
        (
            "step.stage1.layers=[1, 3]",
            "[step.probe] is used only with",
        ),
        (
            "step.stage1.probe.steps=0",
            "probe.steps must be at least 1",
        ),
    ] {
        let ran = until_stage1(&p, &["--set", set]);
        assert_eq!(ran.code, 2, "{set}: {}", ran.stderr);
        assert!(ran.stderr.contains(needle), "{set}: {}", ran.stderr);
    }
}
