//! Data-parallel training on several ranks (MPI): stage 1 and stage 2 of `pipelines/ci.toml`
//! on 2 ranks (`mpirun -n 2`, and `srun` on the local Slurm) give the losses and gradient norms
//! of one rank with the same global batch; killing one rank fails the step without a hang, and
//! `runner resume` continues from the last checkpoint — also on another number of ranks.
//! Needs a runner built with `--features mpi` and OpenMPI's `mpirun`; otherwise each test
//! prints why it is skipped.

mod common;

use common::Project;
use common::python::python;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Each optimizer step has 4 micro-batches of 1 sequence: 2 ranks take 2 each.
const BATCH: &[&str] = &[
    "--set",
    "step.stage1.train.grad_accum=4",
    "--set",
    "step.stage1.train.micro_batch=1",
    "--set",
    "step.stage2.train.grad_accum=4",
    "--set",
    "step.stage2.train.micro_batch=1",
];

/// Returns from the test, saying why, when the runner cannot start several ranks here.
macro_rules! skip_without_mpi {
    () => {
        if let Some(why) = why_skip() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

fn why_skip() -> Option<String> {
    if !cfg!(feature = "mpi") {
        return Some("the runner is built without `--features mpi`".into());
    }
    match std::process::Command::new("mpirun")
        .arg("--version")
        .output()
    {
        Ok(o) if o.status.success() => None,
        _ => Some("no `mpirun` (install OpenMPI: openmpi-bin libopenmpi-dev)".into()),
    }
}

fn pipeline() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines/ci.toml")
        .to_string_lossy()
        .into_owned()
}

/// `runner run pipelines/ci.toml --until stage2 --quiet` in `runs`, with [`BATCH`] and `extra`.
fn until_stage2(p: &Project, runs: &Path, extra: &[&str]) -> std::process::Command {
    let pipe = pipeline();
    let mut args = vec![
        "run",
        pipe.as_str(),
        "--until",
        "stage2",
        "--runs-dir",
        runs.to_str().unwrap(),
        "--quiet",
    ];
    args.extend_from_slice(BATCH);
    args.extend_from_slice(extra);
    let mut c = p.cmd(&args);
    c.env("RUNNER_PYTHON", python());
    c
}

/// Runs [`until_stage2`] to success, with `env`; returns the run directory.
fn run_until_stage2(p: &Project, runs: &Path, extra: &[&str], env: &[(&str, &Path)]) -> PathBuf {
    let mut c = until_stage2(p, runs, extra);
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    only_run(runs)
}

fn only_run(runs: &Path) -> PathBuf {
    std::fs::read_dir(runs.join("ci"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path()
}

fn metrics(run: &Path, step: &str) -> Vec<Value> {
    std::fs::read_to_string(run.join(step).join("out/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The first `n` steps agree within `tol` relative (loss, gradient norm) and exactly (tokens);
/// returns the mean tokens/s of both (0 for steps that do not count tokens).
fn compare(one: &[Value], two: &[Value], n: usize, tol: f64, what: &str) -> (f64, f64) {
    assert!(one.len() >= n && two.len() >= n, "{what}: too few steps");
    for (a, b) in one.iter().zip(two).take(n) {
        assert_eq!(a["tokens"], b["tokens"], "{what}");
        for k in ["loss", "grad_norm"] {
            let (x, y) = (a[k].as_f64().unwrap(), b[k].as_f64().unwrap());
            let rel = (x - y).abs() / x.abs().max(1e-12);
            assert!(
                rel < tol,
                "{what} step {}: {k} {x} vs {y} ({rel:e})",
                a["step"]
            );
        }
    }
    let rate = |m: &[Value]| {
        m.iter()
            .map(|v| v["tokens_per_s"].as_f64().unwrap_or(0.0))
            .sum::<f64>()
            / m.len() as f64
    };
    (rate(one), rate(two))
}

#[test]
fn two_ranks_with_mpirun_train_like_one() {
    skip_without_mpi!();
    let p = Project::new();
    let one = run_until_stage2(&p, &p.path().join("one"), &[], &[]);
    let two = run_until_stage2(
        &p,
        &p.path().join("two"),
        &[
            "--set",
            "step.stage1.resources.tasks_per_node=2",
            "--set",
            "step.stage2.resources.tasks_per_node=2",
        ],
        &[],
    );
    for step in ["stage1", "stage2"] {
        let (r1, r2) = compare(&metrics(&one, step), &metrics(&two, step), 5, 1e-5, step);
        eprintln!("{step}: 1 rank {r1:.0} tokens/s, 2 ranks {r2:.0} tokens/s");
        // Only rank 0 wrote: no scratch folder of another rank is left.
        assert!(!two.join(step).join(".rank-1").exists());
    }
}

#[test]
fn two_ranks_under_slurm_train_like_one() {
    skip_without_mpi!();
    let conf = common::slurm_or_skip!();
    let p = Project::new();
    let one = run_until_stage2(&p, &p.path().join("one"), &[], &[]);
    let two = run_until_stage2(
        &p,
        &p.path().join("two"),
        &[
            "--set",
            "step.stage2.resources.tasks_per_node=2",
            "--set",
            "pipeline.executor.kind=\"slurm\"",
            "--set",
            "pipeline.executor.poll_secs=0.5",
        ],
        &[("SLURM_CONF", &conf)],
    );
    let (r1, r2) = compare(
        &metrics(&one, "stage2"),
        &metrics(&two, "stage2"),
        5,
        1e-5,
        "stage2",
    );
    eprintln!("stage2 under srun: 1 rank {r1:.0} tokens/s, 2 ranks {r2:.0} tokens/s");
    let script = std::fs::read_to_string(two.join("stage2/slurm/attempt-1.sh")).unwrap();
    assert!(script.contains("#SBATCH --ntasks-per-node=2"), "{script}");
    assert!(
        script.contains("srun --kill-on-bad-exit=1 --mpi=pmix"),
        "{script}"
    );
}

/// The pid of rank `rank` of the `exec-step` processes of `run`.
fn rank_pid(run: &Path, rank: usize) -> Option<i32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains("exec-step") || !cmdline.contains(run.to_str().unwrap()) {
            continue;
        }
        let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
        if environ.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn killing_a_rank_fails_the_step_and_resume_continues_on_other_ranks() {
    skip_without_mpi!();
    let p = Project::new();
    let longer = [
        "--set",
        "step.stage2.train.max_tokens=48000",
        "--set",
        "step.stage2.train.checkpoint_every=2",
    ];
    let runs = p.path().join("runs");
    let mut args = vec!["--set", "step.stage2.resources.tasks_per_node=2"];
    args.extend_from_slice(&longer);
    let mut child = until_stage2(&p, &runs, &args).spawn().unwrap();
    let latest = || {
        std::fs::read_dir(runs.join("ci"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path())
    };
    p.wait_for(300, "stage 2's first checkpoint on 2 ranks", || {
        latest().is_some_and(|r| r.join("stage2/checkpoint/LATEST").is_file())
    });
    let run = latest().unwrap();
    let pid = rank_pid(&run, 1).expect("rank 1 is running");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // The step fails (no rank waits forever on its dead peer).
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the runner still waits 120 s after a rank died"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(1));
    let m = common::manifest(&run.join("stage2"));
    assert_ne!(m["status"], "complete", "{m}");

    // Resumed on one rank (the checkpoint holds no per-rank state: the loader position is the
    // whole stream's), it continues from the checkpoint and ends like an uninterrupted run.
    let resolved = run.join("pipeline.toml");
    let text = std::fs::read_to_string(&resolved).unwrap();
    let one_rank = text.replace("tasks_per_node = 2", "tasks_per_node = 1");
    assert_ne!(text, one_rank, "the run's pipeline.toml has the ranks");
    std::fs::write(&resolved, one_rank).unwrap();
    let o = p
        .cmd(&["resume", run.to_str().unwrap()])
        .env("RUNNER_PYTHON", python())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("stage2") && l.contains("resumed from checkpoint")),
        "{stdout}"
    );
    // Summation order differs between 2 ranks and 1, and the differences grow over ~90 steps:
    // the first steps agree within 1e-5, the whole run within 1e-3.
    let straight = run_until_stage2(&p, &p.path().join("straight"), &longer, &[]);
    let (a, b) = (metrics(&straight, "stage2"), metrics(&run, "stage2"));
    assert_eq!(a.len(), b.len(), "every step once");
    compare(&a, &b, 2, 1e-5, "stage2 resumed");
    compare(&a, &b, a.len(), 1e-3, "stage2 resumed");
}

/// GRPO on 2 ranks: each rank samples, scores and trains on its share of the prompts; the first
/// step's rollouts are the same completions (each prompt has its own sampling stream), so its
/// rewards are equal and its loss and gradient norm agree within 1e-5.
#[test]
fn grpo_on_two_ranks_samples_and_learns_like_one() {
    skip_without_mpi!();
    let p = Project::new();
    let pipe = pipeline();
    let runs = p.path().join("runs");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            pipe.as_str(),
            "--until",
            "grpo",
            "--runs-dir",
            runs.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = p
            .cmd(&args)
            .env("RUNNER_PYTHON", python())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{stderr}");
        let mut v: Vec<PathBuf> = std::fs::read_dir(runs.join("ci"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        (v.pop().unwrap(), stderr)
    };
    let (one, _) = run(&[]);
    // The same run directory's cache gives the steps before GRPO; GRPO itself runs again.
    let (two, log) = run(&[
        "--force",
        "grpo",
        "--set",
        "step.grpo.resources.tasks_per_node=2",
    ]);
    assert_ne!(one, two);
    assert!(
        log.contains("grpo (grpo) attempt 1") && log.contains("on 2 ranks"),
        "{log}"
    );
    let (a, b) = (metrics(&one, "grpo"), metrics(&two, "grpo"));
    assert_eq!(a.len(), b.len());
    for k in [
        "reward",
        "accuracy",
        "completion_tokens",
        "truncated_fraction",
    ] {
        assert_eq!(a[0][k], b[0][k], "step 1 {k}");
    }
    compare(&a, &b, 1, 1e-5, "grpo");
    let rollouts = |r: &Path| std::fs::read_to_string(r.join("grpo/out/rollouts.jsonl")).unwrap();
    let first = |t: String| t.lines().next().unwrap().to_string();
    assert_eq!(first(rollouts(&one)), first(rollouts(&two)));
}
