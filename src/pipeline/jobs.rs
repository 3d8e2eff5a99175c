//! Running a step outside the runner's process: as a Slurm job, or locally on several ranks
//! started by an MPI launcher. Under Slurm, the runner begins the attempt, writes the
//! step's batch script, submits it held, records the job id in the manifest, releases it and
//! waits; the job runs [`exec_step`] — the very attempt the local executor would run — in the
//! same run directory on the shared filesystem. `runner resume` re-attaches to a job of the
//! run that is still queued or running instead of submitting another.

use super::executor::Executor;
use super::graph::StepGraph;
use super::keys;
use super::layers::Overrides;
use super::rundir::{self, RunDir, StepManifest, StepStatus};
use super::select::Selection;
use super::slurm::{self, JobSpec, JobState, Slurm};
use super::step::StepKind;
use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the runner waits for a job's manifest after Slurm says the job ended.
const SETTLE: Duration = Duration::from_secs(3);

impl Executor<'_> {
    /// Runs step `i` as a Slurm job (or re-attaches to the job already running it).
    pub(super) fn run_job(
        &self,
        i: usize,
        key: String,
        inputs: BTreeMap<String, String>,
        previous: Option<StepManifest>,
    ) -> anyhow::Result<(Option<u64>, String)> {
        let step = &self.pipeline().steps[i];
        if let Some(m) = previous
            .as_ref()
            .filter(|m| m.status == StepStatus::Running)
            && let Some(job) = &m.job
            && let Ok(JobState::Alive(state)) = Slurm::state(job)
        {
            if m.key == key {
                tracing::info!(
                    "↻ {} re-attached to Slurm job {job} ({})",
                    step.id,
                    state.to_lowercase()
                );
                slurm::track(job);
                return self.wait_job(i, job, m.attempts);
            }
            // The step changed since that job was submitted: its result would be stale.
            tracing::warn!(
                "  {}: cancelling Slurm job {job}, which runs an earlier version of the step",
                step.id
            );
            Slurm::cancel(job)?;
        }
        let mut manifest = self.begin_attempt(i, key, inputs, previous)?;
        let step_dir = self.run().step_dir(&step.id);
        let jobs = slurm::jobs_dir(&step_dir);
        std::fs::create_dir_all(&jobs).with_context(|| format!("creating {}", jobs.display()))?;
        let settings = &self.pipeline().header.executor;
        let runner = settings.runner_binary()?;
        let script_path = jobs.join(format!("attempt-{}.sh", manifest.attempts));
        let script = slurm::batch_script(&JobSpec {
            run_dir: &self.run().path,
            step_dir: &step_dir,
            step: &step.id,
            attempt: manifest.attempts,
            runner: &runner,
            settings,
            resources: &step.resources,
        });
        crate::util::fsx::atomic_write(&script_path, script.as_bytes())?;
        let name = format!(
            "{}/{}/{}",
            self.pipeline().name,
            self.run().run_id(),
            step.id
        );
        let job = Slurm::submit(&script_path, &name, &step_dir, settings)?;
        slurm::track(&job);
        manifest.job = Some(job.clone());
        if let Err(e) = self
            .run()
            .write_manifest(&manifest)
            .map_err(anyhow::Error::from)
            .and_then(|()| Slurm::release(&job))
        {
            let _ = Slurm::cancel(&job);
            slurm::forget(&job);
            return Err(e.context(format!("starting Slurm job {job} (cancelled)")));
        }
        tracing::info!(
            "  {} submitted as Slurm job {job} ({})",
            step.id,
            settings.describe(&step.resources)
        );
        self.wait_job(i, &job, manifest.attempts)
    }

    /// Waits for `job` (attempt `attempt` of step `i`) to end; then the manifest it wrote says
    /// how the attempt went. Ctrl-C cancels the job.
    fn wait_job(&self, i: usize, job: &str, attempt: u32) -> anyhow::Result<(Option<u64>, String)> {
        let step = &self.pipeline().steps[i];
        let step_dir = self.run().step_dir(&step.id);
        let exit_file = slurm::exit_file(&step_dir, job);
        let output = slurm::output_file(&step_dir, job);
        let poll = Duration::from_secs_f64(self.pipeline().header.executor.poll_secs);
        let relay = Duration::from_secs_f64(crate::progress::line_interval_secs());
        let mut last_relay = Instant::now();
        let mut last_state = String::new();
        let mut ended: Option<(Instant, String)> = None;
        let mut warned = false;
        let run_path = self.run().path.display().to_string();
        let how = loop {
            if slurm::interrupted() {
                let _ = Slurm::cancel(job);
                slurm::forget(job);
                bail!(
                    "interrupted: Slurm job {job} was cancelled; its checkpoints are kept (`runner resume {run_path}`)"
                );
            }
            if let Some(code) = read_exit(&exit_file) {
                break format!("exit status {code}");
            }
            match Slurm::state(job) {
                Ok(JobState::Alive(state)) => {
                    if state != last_state {
                        tracing::info!("  {}: Slurm job {job} {}", step.id, state.to_lowercase());
                        last_state = state;
                    }
                    ended = None;
                }
                Ok(over) => {
                    // Ended or gone: give the job's manifest SETTLE to appear, then stop.
                    let how = match over {
                        JobState::Ended {
                            state,
                            exit: Some(e),
                        } => format!("{state}, exit code {e}"),
                        JobState::Ended { state, exit: None } => state,
                        _ => "no longer known to Slurm".into(),
                    };
                    match &ended {
                        Some((at, how)) if at.elapsed() >= SETTLE => break how.clone(),
                        Some(_) => {}
                        None => ended = Some((Instant::now(), how)),
                    }
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!("  {}: {e:#}; asking again", step.id);
                        warned = true;
                    }
                }
            }
            if last_relay.elapsed() >= relay {
                last_relay = Instant::now();
                if let Some(r) = rundir::progress_record(&step_dir).filter(|r| !r.finished) {
                    tracing::info!("  {}: {} · {}", step.id, r.position(), r.message);
                }
            }
            sleep_unless_interrupted(if ended.is_some() {
                poll.min(SETTLE)
            } else {
                poll
            });
        };
        slurm::forget(job);
        let hint = if output.is_file() {
            format!("its output: {}", output.display())
        } else {
            // Without its output file the job most likely never saw the run directory.
            format!(
                "it left no output in {}: the run directory must be on a filesystem the compute \
                 nodes share (`--runs-dir` or `[pipeline] runs_dir`)",
                slurm::jobs_dir(&step_dir).display()
            )
        };
        self.attempt_outcome(i, attempt, &format!("Slurm job {job}"), &how, &hint)
    }

    /// How attempt `attempt` of step `i`, run by `who` (a job, the ranks), went, from the
    /// manifest it wrote; `how` says how `who` ended, `hint` where to look.
    fn attempt_outcome(
        &self,
        i: usize,
        attempt: u32,
        who: &str,
        how: &str,
        hint: &str,
    ) -> anyhow::Result<(Option<u64>, String)> {
        let step = &self.pipeline().steps[i];
        let run_path = self.run().path.display().to_string();
        match self.run().read_manifest(&step.id) {
            Some(m) if m.attempts == attempt && m.status == StepStatus::Complete => {
                let digest = m
                    .outputs_digest
                    .clone()
                    .context("the step's manifest has no outputs digest")?;
                self.export(step)?;
                Ok((m.resumed_from, digest))
            }
            Some(m) if m.attempts == attempt && m.status == StepStatus::Failed => {
                bail!("in {who} ({hint}): {}", m.error.unwrap_or_default())
            }
            _ => bail!(
                "{who} ended ({how}) before the step finished; {hint}. Checkpoints are kept: \
                 `runner resume {run_path}`"
            ),
        }
    }

    /// Runs step `i` locally with its `[step.resources]` ranks, started by the MPI launcher
    /// (`mpirun -n W runner exec-step ...`); their output goes to this process's.
    pub(super) fn run_ranks(
        &self,
        i: usize,
        key: String,
        inputs: BTreeMap<String, String>,
        previous: Option<StepManifest>,
    ) -> anyhow::Result<(Option<u64>, String)> {
        let step = &self.pipeline().steps[i];
        let ranks = step.resources.ranks();
        let manifest = self.begin_attempt(i, key, inputs, previous)?;
        let settings = &self.pipeline().header.executor;
        let runner = settings.runner_binary()?;
        let mut words = settings.mpirun.split_whitespace();
        let launcher = words.next().unwrap_or("mpirun");
        let mut cmd = std::process::Command::new(launcher);
        cmd.args(words)
            .arg("-n")
            .arg(ranks.to_string())
            .arg(&runner)
            .arg("exec-step")
            .arg(&self.run().path)
            .arg(&step.id)
            .arg(manifest.attempts.to_string());
        // OpenMPI refuses to start as root unless told (containers, CI); other MPIs ignore it.
        if unsafe { libc::geteuid() } == 0 {
            cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        }
        tracing::info!("  {} on {ranks} ranks: {launcher} -n {ranks}", step.id);
        let status = cmd.status().with_context(|| {
            format!(
                "starting `{launcher}` for {ranks} ranks (is an MPI launcher such as OpenMPI's installed? `[pipeline.executor] mpirun` names it)"
            )
        })?;
        self.attempt_outcome(
            i,
            manifest.attempts,
            &format!("`{launcher} -n {ranks}`"),
            &status.to_string(),
            "its ranks' output is above",
        )
    }
}

/// The status a job's batch script wrote, if it has.
fn read_exit(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn sleep_unless_interrupted(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !slurm::interrupted() {
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
}

/// `runner exec-step RUN_DIR STEP ATTEMPT`: what a step's Slurm job runs. Checks that the run
/// directory is the one the runner submitted from (its manifest says this attempt is running,
/// under this job), that no other job runs the step, and that the step's key is unchanged, then
/// runs the attempt exactly as the local executor does.
pub fn exec_step(
    run_path: &Path,
    step_id: &str,
    attempt: u32,
    kinds: &[StepKind],
) -> anyhow::Result<()> {
    let session = crate::dist::Session::start()?;
    let dist = session.dist;
    let result = exec_rank(run_path, step_id, attempt, kinds, dist);
    if let Err(e) = &result
        && dist.world() > 1
    {
        // The other ranks may be waiting for this one in a collective: end them all (the
        // launcher then fails the step) rather than leave them hanging.
        eprintln!("error: rank {}: {e:#}", dist.rank());
        session.abort(1);
    }
    drop(session);
    result
}

/// [`exec_step`] on one rank.
fn exec_rank(
    run_path: &Path,
    step_id: &str,
    attempt: u32,
    kinds: &[StepKind],
    dist: crate::dist::Dist,
) -> anyhow::Result<()> {
    let run = RunDir::attach(run_path).with_context(|| {
        format!(
            "this job cannot see the run directory {} (it must be on a filesystem shared with the node running the runner)",
            run_path.display()
        )
    })?;
    let p = super::load(
        &run.path.join(rundir::RESOLVED_CONFIG),
        &Overrides::default(),
        kinds,
    )
    .map_err(|d| anyhow::anyhow!("the run's pipeline.toml does not load:\n{d}"))?;
    let i = p
        .step_index(step_id)
        .with_context(|| format!("the run has no step `{step_id}`"))?;
    let step_dir = run.step_dir(step_id);
    let lock_path = slurm::jobs_dir(&step_dir).join("step.lock");
    std::fs::create_dir_all(slurm::jobs_dir(&step_dir))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    // A cancelled job may still be ending (Slurm's KillWait): give it a little time.
    if dist.is_root() {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while lock.try_lock().is_err() {
            if std::time::Instant::now() >= deadline {
                bail!("another job is running step `{step_id}` of this run; nothing was done");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let want = p.steps[i].resources.ranks();
    if dist.world() != want {
        bail!(
            "step `{step_id}` asks for {want} ranks ([step.resources]) but was started with {}; nothing was done",
            dist.world()
        );
    }
    let m = run
        .read_manifest(step_id)
        .with_context(|| format!("step `{step_id}` has no manifest; nothing was done"))?;
    let job = std::env::var("SLURM_JOB_ID").ok();
    let stale = m.status != StepStatus::Running
        || m.attempts != attempt
        || (m.job.is_some() && job.is_some() && m.job != job);
    if stale {
        bail!(
            "this job is not the step's current attempt (the manifest says attempt {} is {:?}, job {}); nothing was done",
            m.attempts,
            m.status,
            m.job.as_deref().unwrap_or("none")
        );
    }
    let graph: StepGraph = super::graph_of(&p);
    let mut dep_digests = BTreeMap::new();
    for j in graph.deps(i) {
        let dep = &p.steps[j].id;
        let digest = run
            .read_manifest(dep)
            .filter(|d| d.status == StepStatus::Complete)
            .and_then(|d| d.outputs_digest)
            .with_context(|| format!("dependency `{dep}` is not complete; nothing was done"))?;
        dep_digests.insert(dep.clone(), digest);
    }
    let step = &p.steps[i];
    let inputs = keys::step_inputs(&p, step, &dep_digests)?;
    if keys::step_key(&p, step, &inputs) != m.key {
        bail!(
            "step `{step_id}` changed since this job was submitted (an input file or a dependency); nothing was done. `runner resume {}` submits it again",
            run.path.display()
        );
    }
    let runs_root: PathBuf = run
        .path
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("a run directory lies in <runs>/<pipeline>/")?;
    let scope = Selection::default()
        .resolve(&p, &graph)
        .map_err(|d| anyhow::anyhow!("{d}"))?;
    let ex = Executor::new(&p, &run, &runs_root, graph, scope);
    // No rank starts (and may finish, and rewrite the manifest) before every rank has checked.
    dist.barrier();
    if dist.is_root() {
        let on = if dist.world() > 1 {
            format!(" on {} ranks", dist.world())
        } else {
            String::new()
        };
        tracing::info!(
            "▶ {step_id} ({}) attempt {attempt} in {}{on}",
            step.kind(),
            run.path.display()
        );
    }
    ex.run_attempt(i, m, dist)?;
    if dist.is_root() {
        tracing::info!("✓ {step_id} done");
    }
    drop(lock);
    Ok(())
}
