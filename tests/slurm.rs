//! The Slurm executor on a real (local) Slurm with `command` steps: independent steps run as
//! parallel jobs, a failing job's error and output reach the user, `kill -9` of the runner
//! leaves its job running and `runner resume` re-attaches to it instead of submitting another,
//! and Ctrl-C cancels the run's jobs. Skipped, saying why, where no Slurm answers
//! (`.ci/run` starts one with `scripts/local-slurm.sh`).

mod common;

use common::Project;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The tests take turns: the one-node cluster has few CPUs, and a test that checks two jobs
/// run side by side must not find them queued behind another test's jobs.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

const HEADER: &str = "[pipeline]\nname = \"sl\"\nmax_parallel = 2\n\n\
    [pipeline.executor]\nkind = \"slurm\"\npoll_secs = 0.3\n";

fn runner(p: &Project, conf: &Path, args: &[&str]) -> Command {
    let mut c = p.cmd(args);
    c.env("SLURM_CONF", conf);
    c
}

/// The job's state as `squeue` shows it (`None` once it left the queue).
fn squeue(conf: &Path, job: &str) -> Option<String> {
    let o = Command::new("squeue")
        .args(["-h", "-j", job, "-o", "%T"])
        .env("SLURM_CONF", conf)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn step_dir(p: &Project, step: &str) -> PathBuf {
    p.runs("sl").pop().expect("a run").join(step)
}

#[test]
fn parallel_jobs_and_a_failing_one() {
    let conf = common::slurm_or_skip!();
    let _turn = take_turn();
    let p = Project::new();
    p.write(
        "p.toml",
        &format!(
            "{HEADER}
[[step]]
id = \"a\"
kind = \"command\"
run = 'echo \"$SLURM_JOB_ID\" > \"$RUNNER_OUT/job\"; sleep 1'
outputs = [\"job\"]
resources = {{ cpus_per_task = 1, mem = \"200M\", time = \"5\" }}

[[step]]
id = \"b\"
kind = \"command\"
run = 'echo \"$SLURM_JOB_ID\" > \"$RUNNER_OUT/job\"; sleep 1'
outputs = [\"job\"]

[[step]]
id = \"bad\"
kind = \"command\"
depends_on = [\"a\", \"b\"]
run = 'echo the reason >&2; exit 3'
"
        ),
    );
    let o = runner(&p, &conf, &["run", "p.toml"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    // a and b ran in jobs of their own, side by side.
    let (a, b) = (p.runs("sl")[0].join("a"), p.runs("sl")[0].join("b"));
    let ja = std::fs::read_to_string(a.join("out/job")).unwrap();
    let jb = std::fs::read_to_string(b.join("out/job")).unwrap();
    assert_ne!(ja.trim(), jb.trim());
    assert_eq!(common::manifest(&a)["job"], ja.trim());
    let started = |d: &Path| {
        common::manifest(d)["started_at"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let finished = |d: &Path| {
        common::manifest(d)["finished_at"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        started(&a) < finished(&b) && started(&b) < finished(&a),
        "a and b overlapped"
    );
    // The failure names the job, its output, and what the command said.
    let bad = common::manifest(&step_dir(&p, "bad"));
    let job = bad["job"].as_str().unwrap();
    for want in [
        format!("in Slurm job {job} (its output: "),
        "exit status: 3".into(),
        "the reason".into(),
    ] {
        assert!(stderr.contains(&want), "{want:?} not in {stderr}");
    }
    let out = std::fs::read_to_string(step_dir(&p, "bad").join(format!("slurm/{job}.out")));
    assert!(out.is_ok(), "the job's output file exists");
    // The batch script asked for the step's resources.
    let script = std::fs::read_to_string(a.join("slurm/attempt-1.sh")).unwrap();
    for line in [
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --mem=200M",
        "#SBATCH --time=5",
    ] {
        assert!(script.contains(line), "{script}");
    }
}

const SLOW: &str = "
[[step]]
id = \"slow\"
kind = \"command\"
run = 'sleep 6; echo done > \"$RUNNER_OUT/x\"'
outputs = [\"x\"]
";

/// Waits for the job of step `slow` to be in Slurm's queue in a state `ok` accepts; its id.
fn slow_job(p: &Project, conf: &Path, ok: impl Fn(&str) -> bool) -> String {
    let mut job = String::new();
    p.wait_for(60, "the job of `slow`", || {
        let m = p
            .runs("sl")
            .pop()
            .map(|r| common::manifest(&r.join("slow")))
            .unwrap_or_default();
        job = m["job"].as_str().unwrap_or_default().to_string();
        !job.is_empty() && squeue(conf, &job).is_some_and(|s| ok(&s))
    });
    job
}

/// `runner resume RUN` to success; its log.
fn resume(p: &Project, conf: &Path, run: &Path) -> String {
    let o = runner(p, conf, &["resume", run.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    stderr
}

/// Runs the `slow` pipeline and kills the runner with `kill -9` once the step's job runs;
/// returns the job's id.
fn orphaned_slow_job(p: &Project, conf: &Path) -> String {
    p.write("p.toml", &format!("{HEADER}{SLOW}"));
    let mut child = runner(p, conf, &["run", "p.toml", "--quiet"])
        .spawn()
        .unwrap();
    let job = slow_job(p, conf, |state| state == "RUNNING");
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    job
}

#[test]
fn resume_reattaches_to_a_running_job_after_kill_9() {
    let conf = common::slurm_or_skip!();
    let _turn = take_turn();
    let p = Project::new();
    let job = orphaned_slow_job(&p, &conf);
    assert_eq!(
        squeue(&conf, &job).as_deref(),
        Some("RUNNING"),
        "the job outlives the runner"
    );
    let run = p.runs("sl").pop().unwrap();
    // `runner status` asks Slurm about the job of a run whose runner is gone.
    let o = runner(&p, &conf, &["status", run.to_str().unwrap()])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&o.stdout);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("slow") && l.contains("running")),
        "{status}"
    );
    let stderr = resume(&p, &conf, &run);
    assert!(
        stderr.contains(&format!("re-attached to Slurm job {job}")),
        "{stderr}"
    );
    let m = common::manifest(&run.join("slow"));
    assert_eq!(m["job"], job.as_str(), "no second job was submitted");
    assert_eq!(m["status"], "complete");
    assert_eq!(m["attempts"], 1);
}

#[test]
fn ctrl_c_cancels_the_runs_jobs() {
    let conf = common::slurm_or_skip!();
    let _turn = take_turn();
    let p = Project::new();
    p.write("p.toml", &format!("{HEADER}{SLOW}"));
    let child = runner(&p, &conf, &["run", "p.toml"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let job = slow_job(&p, &conf, |_| true);
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("Slurm job {job} was cancelled")),
        "{stderr}"
    );
    // Slurm lists it as cancelled (or no longer), not running.
    std::thread::sleep(Duration::from_millis(500));
    let state = squeue(&conf, &job);
    assert!(
        state.is_none() || state.as_deref().is_some_and(|s| s.starts_with("CANCELLED")),
        "{state:?}"
    );
    let m = common::manifest(&step_dir(&p, "slow"));
    assert_ne!(m["status"], "complete");
}

#[test]
fn resume_cancels_a_job_that_runs_an_earlier_version_of_the_step() {
    let conf = common::slurm_or_skip!();
    let _turn = take_turn();
    let p = Project::new();
    let old = orphaned_slow_job(&p, &conf);
    // The run's configuration changes the step (its key) while the old job still runs.
    let run = p.runs("sl").pop().unwrap();
    let resolved = run.join("pipeline.toml");
    let text = std::fs::read_to_string(&resolved).unwrap();
    let edited = text.replace("sleep 6; echo done", "sleep 1; echo again");
    assert_ne!(text, edited);
    std::fs::write(&resolved, edited).unwrap();
    let stderr = resume(&p, &conf, &run);
    assert!(
        stderr.contains(&format!("cancelling Slurm job {old}")),
        "{stderr}"
    );
    let m = common::manifest(&run.join("slow"));
    assert_ne!(m["job"], old.as_str());
    assert_eq!(
        std::fs::read_to_string(run.join("slow/out/x")).unwrap(),
        "again\n"
    );
}
