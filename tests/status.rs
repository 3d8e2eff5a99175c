//! `runner status` on a run whose training step is still going: the step's progress, loss and
//! ETA (from its progress record) and the ETA of the running steps. Its own test binary, so its
//! load does not overlap the timed runs of tests/ci_pipeline.rs.

mod common;

use common::Project;
use common::python::python;
use serde_json::Value;
use std::path::PathBuf;

fn pipeline() -> PathBuf {
    common::python::repo_root().join("pipelines/ci.toml")
}

fn runner(p: &Project, args: &[&str]) -> std::process::Command {
    let mut c = p.cmd(args);
    c.env("RUNNER_PYTHON", python());
    c
}
/// While stage 1 trains, `runner status` shows its progress, loss and ETA (read from the step's
/// progress record), and the ETA of the running steps.
#[test]
fn status_shows_a_running_step_progress_and_eta() {
    let p = Project::new();
    let runs = p.path().join("runs");
    let mut child = runner(
        &p,
        &[
            "run",
            pipeline().to_str().unwrap(),
            "--runs-dir",
            runs.to_str().unwrap(),
            "--until",
            "stage1",
            // Long enough (tens of seconds) to be seen running.
            "--set",
            "step.stage1.train.max_tokens=400000",
            "--quiet",
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let record = || -> Option<Value> {
        let run = std::fs::read_dir(runs.join("ci"))
            .ok()?
            .flatten()
            .next()?
            .path();
        let text = std::fs::read_to_string(run.join("stage1/checkpoint/progress.json")).ok()?;
        serde_json::from_str(&text).ok()
    };
    // Stage 1's training itself (its layer probe comes first, under another label).
    p.wait_for(120, "stage 1's progress record", || {
        record().is_some_and(|r| {
            r["label"] == "stage1"
                && r["unit"] == "tokens"
                && r["position"].as_u64() > Some(0)
                && r["rate"].is_number()
        })
    });
    let run = std::fs::read_dir(runs.join("ci"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let o = runner(&p, &["status", run.to_str().unwrap()])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{status}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let lines: Vec<&str> = status.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.starts_with("stage1 "))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(lines[i].contains("running"), "{status}");
    let progress = lines[i + 1];
    for part in ["% (", "tokens) · ", "tokens/s", "loss ", "ETA "] {
        assert!(
            progress.contains(part),
            "{part:?} not in {progress:?}\n{status}"
        );
    }
    assert!(status.contains("ETA: running steps done in "), "{status}");
}
