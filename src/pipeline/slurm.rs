//! Steps as Slurm jobs: the `[pipeline.executor]` and `[step.resources]` settings, the batch
//! script a step's job runs, and the four Slurm commands the executor needs — `sbatch`,
//! `scontrol`, `squeue`, `scancel` — whose text output is parsed defensively (their JSON
//! output changed between Slurm releases; `scontrol show job -o` and `squeue -o %T` did not).
//!
//! A job runs `runner exec-step RUN_DIR STEP ATTEMPT` under `srun`, on the shared filesystem,
//! and writes its exit status to `STEP_DIR/slurm/<job>.exit` (jobs leave Slurm's tables
//! `MinJobAge` seconds after they end; the file does not).

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Where steps run: in this process (`local`) or as Slurm jobs (`slurm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    #[default]
    Local,
    Slurm,
}

/// `[pipeline.executor]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecutorSettings {
    /// `local` (default) or `slurm`.
    #[serde(default)]
    pub kind: ExecutorKind,
    /// Slurm partition (`--partition`); default: the cluster's default partition.
    #[serde(default)]
    pub partition: Option<String>,
    /// Slurm account (`--account`).
    #[serde(default)]
    pub account: Option<String>,
    /// Slurm quality of service (`--qos`).
    #[serde(default)]
    pub qos: Option<String>,
    /// More `sbatch` arguments, one per element (e.g. `["--constraint=a100"]`).
    #[serde(default)]
    pub sbatch_args: Vec<String>,
    /// Seconds between two looks at a job's state.
    #[serde(default = "d_poll_secs")]
    pub poll_secs: f64,
    /// The runner binary jobs run (it must be visible from the compute nodes); default: the
    /// binary running the pipeline.
    #[serde(default)]
    pub runner: Option<PathBuf>,
    /// How `srun` starts the ranks of a step with more than one (`srun --mpi=...`): the
    /// PMI plugin your MPI library was built for.
    #[serde(default = "d_srun_mpi")]
    pub srun_mpi: String,
    /// The MPI launcher the local executor starts a step's ranks with (`mpirun -n W ...`).
    #[serde(default = "d_mpirun")]
    pub mpirun: String,
}

fn d_srun_mpi() -> String {
    "pmix".into()
}

fn d_mpirun() -> String {
    "mpirun".into()
}

fn d_poll_secs() -> f64 {
    5.0
}

impl Default for ExecutorSettings {
    fn default() -> Self {
        ExecutorSettings {
            kind: ExecutorKind::Local,
            partition: None,
            account: None,
            qos: None,
            sbatch_args: Vec::new(),
            poll_secs: d_poll_secs(),
            runner: None,
            srun_mpi: d_srun_mpi(),
            mpirun: d_mpirun(),
        }
    }
}

/// `sbatch` options the runner sets itself; the pipeline may not set them in `sbatch_args`.
const RESERVED_OPTIONS: &[&str] = &[
    "--output",
    "-o",
    "--error",
    "-e",
    "--job-name",
    "-J",
    "--parsable",
    "--hold",
    "-H",
    "--wrap",
    "--chdir",
    "-D",
    "--nodes",
    "-N",
    "--ntasks",
    "-n",
    "--ntasks-per-node",
];

impl ExecutorSettings {
    /// Values that decode but cannot work, as (key under `pipeline.executor`, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if !(self.poll_secs.is_finite() && self.poll_secs >= 0.1 && self.poll_secs <= 3600.0) {
            out.push((
                "poll_secs".into(),
                format!(
                    "must be between 0.1 and 3600 seconds (got {})",
                    self.poll_secs
                ),
            ));
        }
        if let Some(why) = plain_word(&self.srun_mpi) {
            out.push(("srun_mpi".into(), why));
        }
        if self.mpirun.trim().is_empty() {
            out.push((
                "mpirun".into(),
                "must name the MPI launcher, e.g. \"mpirun\"".into(),
            ));
        }
        for (key, value) in [
            ("partition", &self.partition),
            ("account", &self.account),
            ("qos", &self.qos),
        ] {
            if let Some(v) = value
                && let Some(why) = plain_word(v)
            {
                out.push((key.into(), why));
            }
        }
        for (n, arg) in self.sbatch_args.iter().enumerate() {
            let name = arg.split('=').next().unwrap_or_default();
            if arg.is_empty() || arg.chars().any(char::is_control) {
                out.push((
                    format!("sbatch_args.{n}"),
                    "must be a non-empty argument without control characters".into(),
                ));
            } else if RESERVED_OPTIONS.contains(&name) {
                out.push((
                    format!("sbatch_args.{n}"),
                    format!(
                        "`{name}` is set by the runner (job name, output file, hold, node and task counts come from the step)"
                    ),
                ));
            } else if !arg.starts_with('-') {
                out.push((
                    format!("sbatch_args.{n}"),
                    format!("`{arg}` is not an option; the runner gives sbatch the script itself"),
                ));
            }
        }
        out
    }

    /// The runner binary a step's job or ranks run: `runner`, else this process's own.
    pub fn runner_binary(&self) -> anyhow::Result<PathBuf> {
        match &self.runner {
            Some(r) => Ok(r.clone()),
            None => std::env::current_exe().context("finding the runner binary"),
        }
    }

    /// Where a step runs, for `runner plan`.
    pub fn describe(&self, resources: &Resources) -> String {
        match self.kind {
            ExecutorKind::Local if resources.ranks() > 1 => {
                format!(
                    "local: {} ranks ({} -n {})",
                    resources.ranks(),
                    self.mpirun,
                    resources.ranks()
                )
            }
            ExecutorKind::Local => "local".into(),
            ExecutorKind::Slurm => {
                let mut parts = vec![format!(
                    "partition {}",
                    self.partition.as_deref().unwrap_or("(default)")
                )];
                if resources.ranks() > 1 {
                    parts.push(format!(
                        "{} nodes × {} ranks",
                        resources.nodes, resources.tasks_per_node
                    ));
                }
                if let Some(c) = resources.cpus_per_task {
                    parts.push(format!("{c} cpus"));
                }
                if let Some(g) = resources.gpus_per_node.filter(|&g| g > 0) {
                    parts.push(format!("{g} gpus"));
                }
                if let Some(m) = &resources.mem {
                    parts.push(format!("mem {m}"));
                }
                if let Some(t) = &resources.time {
                    parts.push(format!("time {t}"));
                }
                format!("slurm: {}", parts.join(", "))
            }
        }
    }
}

/// `[step.resources]`: how many ranks a step runs with, and what its Slurm job asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Nodes of the step's job (`--nodes`; Slurm executor).
    #[serde(default = "d_one")]
    pub nodes: u32,
    /// Ranks per node (`--ntasks-per-node`): with `nodes`, how many processes share the step's
    /// work (data-parallel training; needs a build with the `mpi` feature when above 1).
    /// Locally the ranks are started with `mpirun`.
    #[serde(default = "d_one")]
    pub tasks_per_node: u32,
    /// CPUs for the step's process (`--cpus-per-task`).
    #[serde(default)]
    pub cpus_per_task: Option<u32>,
    /// GPUs per node (`--gpus-per-node`).
    #[serde(default)]
    pub gpus_per_node: Option<u32>,
    /// Memory per node, as Slurm writes it: `16G`, `500M`, `64000` (MiB).
    #[serde(default)]
    pub mem: Option<String>,
    /// Time limit, as Slurm writes it: `90` (minutes), `2:00:00`, `1-12:00:00`.
    #[serde(default)]
    pub time: Option<String>,
}

fn d_one() -> u32 {
    1
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            nodes: 1,
            tasks_per_node: 1,
            cpus_per_task: None,
            gpus_per_node: None,
            mem: None,
            time: None,
        }
    }
}

impl Resources {
    /// How many processes run the step.
    pub fn ranks(&self) -> usize {
        self.nodes as usize * self.tasks_per_node as usize
    }

    /// Values that decode but cannot work, as (key under `step.<id>.resources`, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (key, v) in [
            ("nodes", self.nodes),
            ("tasks_per_node", self.tasks_per_node),
        ] {
            if v == 0 {
                out.push((key.into(), "must be at least 1".into()));
            } else if v > 4096 {
                out.push((key.into(), format!("{v} is more than 4096")));
            }
        }
        if self.cpus_per_task == Some(0) {
            out.push(("cpus_per_task".into(), "must be at least 1".into()));
        }
        if let Some(m) = &self.mem
            && !valid_mem(m)
        {
            out.push((
                "mem".into(),
                format!("`{m}` is not a Slurm memory size; write e.g. \"16G\", \"500M\" or \"64000\" (MiB)"),
            ));
        }
        if let Some(t) = &self.time
            && !valid_time(t)
        {
            out.push((
                "time".into(),
                format!("`{t}` is not a Slurm time limit; write minutes (\"90\"), \"HH:MM:SS\" or \"D-HH:MM:SS\""),
            ));
        }
        out
    }
}

/// Why `v` cannot be a partition, account or QoS name (it goes into an `#SBATCH` line).
fn plain_word(v: &str) -> Option<String> {
    if v.is_empty() {
        Some("must not be empty (remove the key for the cluster's default)".into())
    } else if !v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-.,".contains(c))
    {
        Some(format!(
            "{v:?} is not a Slurm name: use letters, digits and `_-.,` only"
        ))
    } else {
        None
    }
}

fn valid_mem(m: &str) -> bool {
    let digits = m.trim_end_matches(['K', 'M', 'G', 'T']);
    !digits.is_empty()
        && m.len() - digits.len() <= 1
        && digits.chars().all(|c| c.is_ascii_digit())
        && digits.parse::<u64>().is_ok_and(|n| n > 0)
}

/// Slurm's time formats: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`.
fn valid_time(t: &str) -> bool {
    let numbers = |s: &str, max: usize| {
        let parts: Vec<&str> = s.split(':').collect();
        parts.len() <= max
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 6 && p.chars().all(|c| c.is_ascii_digit()))
    };
    match t.split_once('-') {
        Some((days, rest)) => {
            !days.is_empty() && days.chars().all(|c| c.is_ascii_digit()) && numbers(rest, 3)
        }
        None => numbers(t, 3) && t != "0",
    }
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Everything a step's batch script needs.
pub struct JobSpec<'a> {
    pub run_dir: &'a Path,
    pub step_dir: &'a Path,
    pub step: &'a str,
    pub attempt: u32,
    pub runner: &'a Path,
    pub settings: &'a ExecutorSettings,
    pub resources: &'a Resources,
}

/// The folder of a step's scripts, exit files and job outputs.
pub fn jobs_dir(step_dir: &Path) -> PathBuf {
    step_dir.join("slurm")
}

/// The file a job writes its exit status to.
pub fn exit_file(step_dir: &Path, job: &str) -> PathBuf {
    jobs_dir(step_dir).join(format!("{job}.exit"))
}

/// The job's standard output and error.
pub fn output_file(step_dir: &Path, job: &str) -> PathBuf {
    jobs_dir(step_dir).join(format!("{job}.out"))
}

/// The batch script of a step's job. The job name and output file are given to `sbatch` on
/// its command line ([`Slurm::submit`]); paths appear only inside shell quotes.
pub fn batch_script(spec: &JobSpec) -> String {
    let mut s = String::from("#!/bin/bash\n");
    let mut opt = |line: String| {
        s.push_str("#SBATCH ");
        s.push_str(&line);
        s.push('\n');
    };
    let r = spec.resources;
    opt(format!("--nodes={}", r.nodes));
    opt(format!("--ntasks-per-node={}", r.tasks_per_node));
    if let Some(c) = r.cpus_per_task {
        opt(format!("--cpus-per-task={c}"));
    }
    if let Some(g) = r.gpus_per_node.filter(|&g| g > 0) {
        opt(format!("--gpus-per-node={g}"));
    }
    if let Some(m) = &r.mem {
        opt(format!("--mem={m}"));
    }
    if let Some(t) = &r.time {
        opt(format!("--time={t}"));
    }
    let e = spec.settings;
    for (name, value) in [
        ("partition", &e.partition),
        ("account", &e.account),
        ("qos", &e.qos),
    ] {
        if let Some(v) = value {
            opt(format!("--{name}={v}"));
        }
    }
    s.push_str(&format!(
        "# Step `{step}`, attempt {attempt}: written by the runner.\n\
         jobs={jobs}\n\
         srun --kill-on-bad-exit=1{mpi} {runner} exec-step {run} {step_q} {attempt}\n\
         rc=$?\n\
         printf '%s\\n' \"$rc\" > \"$jobs/$SLURM_JOB_ID.exit.tmp\" \\\n  \
         && mv -f \"$jobs/$SLURM_JOB_ID.exit.tmp\" \"$jobs/$SLURM_JOB_ID.exit\"\n\
         exit \"$rc\"\n",
        step = spec.step,
        attempt = spec.attempt,
        jobs = shell_quote(&jobs_dir(spec.step_dir).to_string_lossy()),
        runner = shell_quote(&spec.runner.to_string_lossy()),
        run = shell_quote(&spec.run_dir.to_string_lossy()),
        step_q = shell_quote(spec.step),
        mpi = if r.ranks() > 1 {
            format!(" --mpi={}", spec.settings.srun_mpi)
        } else {
            String::new()
        },
    ));
    s
}

/// A job's state as Slurm reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Queued, starting, running or ending (`PENDING`, `RUNNING`, `COMPLETING`, ...).
    Alive(String),
    /// Ended (`COMPLETED`, `FAILED`, `CANCELLED`, `TIMEOUT`, ...), with `ExitCode` if known.
    Ended { state: String, exit: Option<String> },
    /// Slurm no longer knows the job (it ended more than `MinJobAge` ago, or never existed).
    Gone,
}

const ENDED_STATES: &[&str] = &[
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "SPECIAL_EXIT",
    "REVOKED",
];

/// Classifies a state word (`CANCELLED by 0` and `CANCELLED+` count as `CANCELLED`).
pub fn classify(state: &str, exit: Option<String>) -> JobState {
    let word: String = state
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_uppercase() || *c == '_')
        .collect();
    if ENDED_STATES.contains(&word.as_str()) {
        JobState::Ended { state: word, exit }
    } else {
        JobState::Alive(if word.is_empty() {
            state.trim().to_string()
        } else {
            word
        })
    }
}

/// Parses one line of `scontrol show job -o`: the `JobState` and `ExitCode` fields.
pub fn parse_scontrol(line: &str) -> Option<JobState> {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    let state = field("JobState")?;
    Some(classify(&state, field("ExitCode")))
}

/// The Slurm command-line tools, found on `PATH`.
pub struct Slurm;

impl Slurm {
    fn run(cmd: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Command::new(cmd).args(args).output().with_context(|| {
            format!(
                "running `{cmd}` (is Slurm's client installed and on PATH? The Slurm executor needs sbatch, scontrol, squeue and scancel)"
            )
        })
    }

    /// Submits `script` held (`--hold`); returns the job id. The caller records the id, then
    /// [`Slurm::release`]s the job, so a job never runs before its id is known.
    pub fn submit(
        script: &Path,
        name: &str,
        step_dir: &Path,
        settings: &ExecutorSettings,
    ) -> anyhow::Result<String> {
        let script_s = script.to_string_lossy();
        let name = format!("--job-name={name}");
        let output = format!("--output={}/%j.out", jobs_dir(step_dir).display());
        let mut args: Vec<&str> = vec!["--parsable", "--hold", &name, &output];
        args.extend(settings.sbatch_args.iter().map(String::as_str));
        args.push(&script_s);
        let out = Self::run("sbatch", &args)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "sbatch refused the job: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // `--parsable` prints `<id>` or `<id>;<cluster>`.
        let id = stdout
            .trim()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit() || c == '_') {
            bail!("sbatch printed no job id: {:?}", stdout.trim());
        }
        Ok(id)
    }

    pub fn release(job: &str) -> anyhow::Result<()> {
        let out = Self::run("scontrol", &["release", job])?;
        if !out.status.success() {
            bail!(
                "scontrol release {job}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    pub fn cancel(job: &str) -> anyhow::Result<()> {
        let out = Self::run("scancel", &[job])?;
        if !out.status.success() {
            bail!(
                "scancel {job}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The job's state: `scontrol show job -o`, then `squeue` when scontrol's output has no
    /// state. An error means Slurm could not be asked (controller down): try again later.
    pub fn state(job: &str) -> anyhow::Result<JobState> {
        let out = Self::run("scontrol", &["show", "job", "-o", job])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        if let Some(s) = text.lines().find_map(parse_scontrol) {
            return Ok(s);
        }
        if err.contains("Invalid job id") {
            return Ok(JobState::Gone);
        }
        let out = Self::run("squeue", &["-h", "-j", job, "-o", "%T"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        match text.lines().map(str::trim).find(|l| !l.is_empty()) {
            Some(state) => Ok(classify(state, None)),
            None if out.status.success()
                || String::from_utf8_lossy(&out.stderr).contains("Invalid job id") =>
            {
                Ok(JobState::Gone)
            }
            None => bail!(
                "Slurm did not say how job {job} is: {} {}",
                err.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }
}

/// Jobs this process submitted or attached to and has not seen end: cancelled on Ctrl-C.
static ACTIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Marks a job as this process's until [`forget`].
pub fn track(job: &str) {
    ACTIVE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(job.to_string());
}

pub fn forget(job: &str) {
    ACTIVE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|j| j != job);
}

/// Whether Ctrl-C (SIGINT) or SIGTERM arrived since [`catch_interrupts`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// From now on SIGINT and SIGTERM set [`interrupted`] (the waiting steps then cancel their jobs
/// and fail); a second one ends the process at once.
pub fn catch_interrupts() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    static FLAG: std::sync::OnceLock<std::sync::Arc<AtomicBool>> = std::sync::OnceLock::new();
    let flag = FLAG.get_or_init(|| std::sync::Arc::new(AtomicBool::new(false)));
    if flag.load(Ordering::SeqCst) {
        return Ok(());
    }
    for sig in [SIGINT, SIGTERM] {
        // A second signal while the first is handled exits with 130.
        signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone())?;
        signal_hook::flag::register(sig, flag.clone())?;
    }
    let flag = flag.clone();
    std::thread::spawn(move || {
        while !flag.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        INTERRUPTED.store(true, Ordering::SeqCst);
        let jobs: Vec<String> = ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for job in jobs {
            match Slurm::cancel(&job) {
                Ok(()) => tracing::warn!("interrupted: cancelled Slurm job {job}"),
                Err(e) => tracing::error!("interrupted: could not cancel Slurm job {job}: {e:#}"),
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scontrol_lines_of_several_releases() {
        let l = "JobId=2 JobName=ci/r/stage1 UserId=root(0) GroupId=root(0) Priority=1 \
                 JobState=FAILED Reason=NonZeroExitCode Dependency=(null) ExitCode=3:0 RunTime=00:00:02";
        assert_eq!(
            parse_scontrol(l),
            Some(JobState::Ended {
                state: "FAILED".into(),
                exit: Some("3:0".into())
            })
        );
        let l = "JobId=7 JobName=x JobState=PENDING Reason=JobHeldUser ExitCode=0:0";
        assert_eq!(parse_scontrol(l), Some(JobState::Alive("PENDING".into())));
        assert_eq!(
            parse_scontrol("JobId=7 JobState=COMPLETING ExitCode=0:0"),
            Some(JobState::Alive("COMPLETING".into()))
        );
        assert_eq!(
            parse_scontrol("slurm_load_jobs error: Invalid job id"),
            None
        );
        // A field whose name ends like ours is not ours.
        assert_eq!(parse_scontrol("OldJobState=RUNNING"), None);
        assert_eq!(
            classify("CANCELLED by 0", None),
            JobState::Ended {
                state: "CANCELLED".into(),
                exit: None
            }
        );
        assert_eq!(
            classify("CANCELLED+", None),
            JobState::Ended {
                state: "CANCELLED".into(),
                exit: None
            }
        );
    }

    #[test]
    fn checks_settings() {
        let mut e = ExecutorSettings {
            kind: ExecutorKind::Slurm,
            partition: Some("gpu\n#SBATCH --uid=0".into()),
            qos: Some("".into()),
            sbatch_args: vec![
                "--constraint=a100".into(),
                "--output=/x".into(),
                "script.sh".into(),
            ],
            poll_secs: 0.0,
            ..Default::default()
        };
        let keys: Vec<String> = e.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "poll_secs",
                "partition",
                "qos",
                "sbatch_args.1",
                "sbatch_args.2"
            ]
        );
        e.partition = Some("gpu-a100".into());
        e.qos = None;
        e.sbatch_args = vec!["--constraint=a100".into(), "--exclusive".into()];
        e.poll_secs = 2.0;
        assert!(e.problems().is_empty());

        for good in ["16G", "500M", "64000", "1T"] {
            assert!(valid_mem(good), "{good}");
        }
        for bad in ["", "G", "16GB", "1.5G", "0", "-1G", "16 G"] {
            assert!(!valid_mem(bad), "{bad}");
        }
        for good in ["90", "30:00", "2:00:00", "1-12", "1-12:30", "1-12:30:00"] {
            assert!(valid_time(good), "{good}");
        }
        for bad in ["", "0", "2h", "1-", "-5", "1:2:3:4", "1::2", "1-2:3:4:5"] {
            assert!(!valid_time(bad), "{bad}");
        }
        let r = Resources {
            cpus_per_task: Some(0),
            mem: Some("lots".into()),
            time: Some("2h".into()),
            ..Default::default()
        };
        let keys: Vec<String> = r.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["cpus_per_task", "mem", "time"]);
    }

    #[test]
    fn the_batch_script_quotes_paths_and_writes_the_exit_status() {
        let settings = ExecutorSettings {
            kind: ExecutorKind::Slurm,
            partition: Some("gpu".into()),
            ..Default::default()
        };
        let resources = Resources {
            nodes: 2,
            tasks_per_node: 4,
            cpus_per_task: Some(8),
            gpus_per_node: Some(1),
            mem: Some("32G".into()),
            time: Some("4:00:00".into()),
        };
        let run = Path::new("/shared/runs/p/it's $HOME");
        let step_dir = run.join("stage1");
        let script = batch_script(&JobSpec {
            run_dir: run,
            step_dir: &step_dir,
            step: "stage1",
            attempt: 2,
            runner: Path::new("/opt/runner"),
            settings: &settings,
            resources: &resources,
        });
        for line in [
            "#SBATCH --cpus-per-task=8",
            "#SBATCH --gpus-per-node=1",
            "#SBATCH --mem=32G",
            "#SBATCH --time=4:00:00",
            "#SBATCH --partition=gpu",
            "#SBATCH --nodes=2",
            "#SBATCH --ntasks-per-node=4",
            "srun --kill-on-bad-exit=1 --mpi=pmix '/opt/runner' exec-step '/shared/runs/p/it'\\''s $HOME' 'stage1' 2",
        ] {
            assert!(script.contains(line), "{line} not in\n{script}");
        }
        // The script is valid shell and writes the exit status where the runner looks.
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("a \"b\" $c");
        let step_dir = run.join("s");
        std::fs::create_dir_all(jobs_dir(&step_dir)).unwrap();
        let script = batch_script(&JobSpec {
            run_dir: &run,
            step_dir: &step_dir,
            step: "s",
            attempt: 1,
            runner: Path::new("/bin/false"),
            settings: &settings,
            resources: &Resources::default(),
        });
        // `srun` is replaced by a function that runs the command (exit 1 from /bin/false).
        let status = Command::new("bash")
            .arg("-c")
            .arg(format!("srun() {{ shift; \"$@\"; }}\n{script}"))
            .env("SLURM_JOB_ID", "42")
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(1));
        let exit = std::fs::read_to_string(exit_file(&step_dir, "42")).unwrap();
        assert_eq!(exit.trim(), "1");
    }
}
