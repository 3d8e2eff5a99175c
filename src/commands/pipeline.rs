//! The pipeline commands: `runner run | resume | plan | dag | validate | status`.

use crate::error::Error;
use crate::pipeline::executor::{Executor, Outcome, StepReport};
use crate::pipeline::graph::StepGraph;
use crate::pipeline::layers::Overrides;
use crate::pipeline::plan::{self, PlanEntry};
use crate::pipeline::rundir::{self, RunDir, RunRecord, RunStatus, StepStatus};
use crate::pipeline::select::{Scope, Selection};
use crate::pipeline::slurm::{JobState, Slurm};
use crate::pipeline::{self, Pipeline, keys, render};
use crate::progress;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Override a setting: `--set step.stage1.lr=1e-4`, `--set pipeline.seed=7` (repeatable).
    /// Environment variables `RUNNER_<SECTION>__<KEY>` (e.g. `RUNNER_PIPELINE__SEED=7`) apply too;
    /// `--set` wins over the environment, which wins over the file.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SelectArgs {
    /// Rerun this step and everything downstream of it.
    #[arg(long, value_name = "STEP")]
    pub from: Vec<String>,
    /// Run this step and what it depends on, nothing after it.
    #[arg(long, value_name = "STEP")]
    pub until: Vec<String>,
    /// Run only this step (its dependencies must be complete or cached).
    #[arg(long, value_name = "STEP")]
    pub only: Vec<String>,
    /// Rerun this step even if cached.
    #[arg(long, value_name = "STEP")]
    pub force: Vec<String>,
}

impl SelectArgs {
    pub fn selection(&self) -> Selection {
        Selection {
            from: self.from.clone(),
            until: self.until.clone(),
            only: self.only.clone(),
            force: self.force.clone(),
        }
    }
}

/// `runner dag`: the step graph as text, Graphviz DOT or Mermaid.
pub fn dag(file: &Path, config: &ConfigArgs, dot: bool, mermaid: bool) -> Result<(), Error> {
    let p = load(file, config)?;
    let g = pipeline::graph_of(&p);
    let text = if dot {
        render::dot(&p, &g)
    } else if mermaid {
        render::mermaid(&p, &g)
    } else {
        render::ascii(&p, &g)
    };
    print!("{text}");
    Ok(())
}

/// `runner validate`: every problem of a pipeline file at once.
pub fn validate(file: &Path, config: &ConfigArgs) -> Result<(), Error> {
    let p = load(file, config)?;
    println!("{}: ok ({} steps)", file.display(), p.steps.len());
    Ok(())
}

pub fn load(file: &Path, config: &ConfigArgs) -> Result<Pipeline, Error> {
    let sets = Overrides::parse_sets(&config.sets)?;
    Ok(pipeline::load(
        file,
        &Overrides {
            sets,
            use_env: true,
        },
        crate::steps::KINDS,
    )?)
}

/// Loads a pipeline and resolves its graph, the step selection and the runs directory.
fn prepare(
    file: &Path,
    config: &ConfigArgs,
    select: &SelectArgs,
    runs_dir: Option<&Path>,
) -> Result<(Pipeline, StepGraph, Scope, PathBuf), Error> {
    let p = load(file, config)?;
    let graph = pipeline::graph_of(&p);
    let scope = select.selection().resolve(&p, &graph)?;
    let runs_root = pipeline::runs_root(&p, runs_dir);
    Ok((p, graph, scope, runs_root))
}

pub fn run(
    file: &Path,
    config: &ConfigArgs,
    select: &SelectArgs,
    run_id: Option<&str>,
    runs_dir: Option<&Path>,
) -> Result<(), Error> {
    let (p, graph, scope, runs_root) = prepare(file, config, select, runs_dir)?;
    let run = RunDir::create(&runs_root, &p.name, run_id)?;
    crate::util::fsx::atomic_write(
        &run.path.join(rundir::RESOLVED_CONFIG),
        p.resolved_toml().as_bytes(),
    )?;
    let mut record = RunRecord {
        pipeline: p.name.clone(),
        run_id: run.run_id(),
        source_file: file.canonicalize().unwrap_or_else(|_| file.to_path_buf()),
        overrides: config.sets.clone(),
        created_at: rundir::now(),
        status: RunStatus::Running,
        updated_at: rundir::now(),
        message: None,
        runner_version: keys::RUNNER_VERSION.to_string(),
        selection: select.selection(),
    };
    run.write_record(&record)?;
    progress::set_run_log(Some(&run.path.join(rundir::RUN_LOG)))?;
    tracing::info!(
        "run {} of pipeline `{}` in {}",
        record.run_id,
        p.name,
        run.path.display()
    );
    let result = Executor::new(&p, &run, &runs_root, graph, scope).execute(&mut record);
    finish(&run, result)
}

pub fn resume(run_dir: Option<&Path>, runs_dir: Option<&Path>) -> Result<(), Error> {
    let path = match run_dir {
        Some(p) => p.to_path_buf(),
        None => rundir::latest_run(runs_dir.unwrap_or(Path::new("runs")), true)?,
    };
    let run = RunDir::open(&path)?;
    let mut record = run
        .read_record()
        .ok_or_else(|| rundir::RunDirError::NotARun { path: path.clone() })?;
    if record.status == RunStatus::Complete {
        println!(
            "run {} is already complete; nothing to resume",
            path.display()
        );
        return Ok(());
    }
    let resolved = run.path.join(rundir::RESOLVED_CONFIG);
    let p = pipeline::load(&resolved, &Overrides::default(), crate::steps::KINDS)?;
    let graph = pipeline::graph_of(&p);
    let scope = record.selection.resolve(&p, &graph)?;
    // runs/<pipeline>/<run-id>: the cache lives two levels up.
    let runs_root = run
        .path
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("runs"));
    record.status = RunStatus::Running;
    record.updated_at = rundir::now();
    run.write_record(&record)?;
    progress::set_run_log(Some(&run.path.join(rundir::RUN_LOG)))?;
    tracing::info!(
        "resuming run {} of pipeline `{}`",
        run.path.display(),
        p.name
    );
    let result = Executor::new(&p, &run, &runs_root, graph, scope).execute(&mut record);
    finish(&run, result)
}

fn finish(
    run: &RunDir,
    result: Result<Vec<StepReport>, crate::pipeline::executor::ExecError>,
) -> Result<(), Error> {
    let _ = progress::set_run_log(None);
    let reports = result?;
    println!("{}", summary_table(&reports));
    println!("run directory: {}", run.path.display());
    // Point at the evaluation reports the run produced.
    for r in &reports {
        let report = run.path.join(&r.id).join("out/report.html");
        if report.is_file() {
            println!("report: {}", report.display());
        }
    }
    Ok(())
}

fn summary_table(reports: &[StepReport]) -> String {
    let width = reports.iter().map(|r| r.id.len()).max().unwrap_or(4).max(4);
    let mut out = format!("{:<width$}  {:<12}  {:>8}", "step", "outcome", "seconds");
    for r in reports {
        let extra = match &r.outcome {
            Outcome::Ran {
                resumed_from: Some(tag),
            } => format!("  (resumed from checkpoint {tag})"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "\n{:<width$}  {:<12}  {:>8.1}{extra}",
            r.id,
            r.outcome.label(),
            r.seconds
        ));
    }
    out
}

pub fn plan_cmd(
    file: &Path,
    config: &ConfigArgs,
    select: &SelectArgs,
    runs_dir: Option<&Path>,
) -> Result<(), Error> {
    let (p, graph, scope, runs_root) = prepare(file, config, select, runs_dir)?;
    let entries = plan::plan(&p, &graph, &scope, &runs_root);
    let width = entries
        .iter()
        .map(|(id, _)| id.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut runs = 0;
    for (id, entry) in &entries {
        runs += entry.runs() as usize;
        let (what, why) = match entry {
            PlanEntry::Cached { from } => ("cached", format!("same key as {from}")),
            PlanEntry::Runs(why) => ("run", why.to_string()),
            PlanEntry::AfterDeps(deps) => (
                "run",
                format!(
                    "after {} (reused if their outputs are unchanged)",
                    deps.join(", ")
                ),
            ),
            PlanEntry::NotSelected => ("skip", "not selected".to_string()),
        };
        // Where it runs, when that is not simply here.
        let step = &p.steps[p.step_index(id).expect("planned steps exist")];
        let place = match p.header.executor.kind {
            crate::pipeline::slurm::ExecutorKind::Local if step.resources.ranks() == 1 => {
                String::new()
            }
            _ => format!("  [{}]", p.header.executor.describe(&step.resources)),
        };
        println!("{id:<width$}  {what:<6}  {why}{place}");
    }
    println!("{runs} of {} steps would run", entries.len());
    Ok(())
}

pub fn status(run_dir: Option<&Path>, runs_dir: Option<&Path>) -> Result<(), Error> {
    let path = match run_dir {
        Some(p) => p.to_path_buf(),
        None => rundir::latest_run(runs_dir.unwrap_or(Path::new("runs")), false)?,
    };
    let record = rundir::read_record(&path)
        .ok_or_else(|| rundir::RunDirError::NotARun { path: path.clone() })?;
    let locked = rundir::is_locked(&path);
    let state = match (record.status, locked) {
        (RunStatus::Running, false) => "interrupted (resume with `runner resume`)".to_string(),
        (s, _) => format!("{s:?}").to_lowercase(),
    };
    println!(
        "pipeline {}  run {}  {}",
        record.pipeline, record.run_id, state
    );
    println!("directory {}", path.display());
    let p = pipeline::load(
        &path.join(rundir::RESOLVED_CONFIG),
        &Overrides::default(),
        crate::steps::KINDS,
    )?;
    let width = p.steps.iter().map(|s| s.id.len()).max().unwrap_or(4).max(4);
    println!(
        "{:<width$}  {:<10}  {:<11}  {:>8}  {:>8}",
        "step", "kind", "status", "seconds", "attempts"
    );
    let mut running_eta: Option<f64> = None;
    let mut pending = 0;
    for s in &p.steps {
        let step_dir = path.join(&s.id);
        let m = rundir::read_manifest(&step_dir);
        let (st, secs, attempts) = match &m {
            None => ("pending".to_string(), String::new(), String::new()),
            Some(m) => {
                let st = match (m.status, &m.cached_from, locked) {
                    (StepStatus::Complete, Some(_), _) => "cached",
                    (StepStatus::Complete, None, _) => "complete",
                    (StepStatus::Failed, _, _) => "failed",
                    (StepStatus::Running, _, true) => "running",
                    // The runner is gone, but the step's Slurm job may still be at work.
                    (StepStatus::Running, _, false) => match m.job.as_deref().map(Slurm::state) {
                        Some(Ok(JobState::Alive(s))) if s == "PENDING" => "queued",
                        Some(Ok(JobState::Alive(_))) => "running",
                        _ => "interrupted",
                    },
                };
                (
                    st.to_string(),
                    m.duration_s.map(|d| format!("{d:.1}")).unwrap_or_default(),
                    m.attempts.to_string(),
                )
            }
        };
        println!(
            "{:<width$}  {:<10}  {:<11}  {:>8}  {:>8}",
            s.id,
            s.kind(),
            st,
            secs,
            attempts
        );
        if st == "pending" {
            pending += 1;
        }
        // The progress of a running or interrupted step, the last loss of a finished one.
        if let Some(rec) = rundir::progress_record(&step_dir) {
            let line = progress_line(&rec, st == "running");
            if st == "running" {
                let left = rec.remaining_secs();
                running_eta = Some(running_eta.unwrap_or(0.0).max(left.unwrap_or(0.0)));
            }
            if st != "cached" && !line.is_empty() {
                println!("{:<width$}    {line}", "");
            }
        }
    }
    if let Some(eta) = running_eta {
        let rest = if pending > 0 {
            format!(", then {pending} pending step(s) (estimated once they start)")
        } else {
            String::new()
        };
        println!(
            "ETA: running steps done in {}{rest}",
            crate::progress::human_secs(eta)
        );
    }
    if let Some(msg) = record.message {
        println!("{msg}");
    }
    Ok(())
}

/// `62.5% (1.23M/1.97M tokens) · 3.4k tokens/s · loss 1.2345 · ETA 3m10s` for `runner status`.
fn progress_line(rec: &crate::progress::ProgressRecord, running: bool) -> String {
    let mut parts = Vec::new();
    if !rec.finished {
        parts.push(rec.position());
    }
    if !rec.message.is_empty() {
        parts.push(if rec.finished {
            format!("last {}", rec.message)
        } else {
            rec.message.clone()
        });
    }
    if running && !rec.finished {
        parts.push(match rec.remaining_secs() {
            Some(e) => format!("ETA {}", crate::progress::human_secs(e)),
            None => "ETA unknown".to_string(),
        });
    }
    parts.join(" · ")
}
