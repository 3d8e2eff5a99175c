//! Executing a pipeline in a run directory.
//!
//! Every step, in dependency order, ends in one of these ways:
//! - **complete**: this run directory already holds its artifacts under the same key (resume);
//! - **cached**: an earlier run produced them under the same key; they are hard-linked in;
//! - **ran**: the step ran (continuing from its checkpoint when a previous attempt left one);
//! - **failed** / **unavailable** (out of scope and not cached) / **skipped** (a dependency failed).
//!
//! Steps run on worker threads as the [`Scheduler`] allows — in this process, or, under the
//! Slurm executor, as jobs the worker submits and waits for ([`super::jobs`]). On a failure, running steps finish,
//! nothing new starts, and the error says how to resume.

use super::cache::Cache;
use super::freshness::{Freshness, freshness};
use super::graph::StepGraph;
use super::keys::{self, RUNNER_VERSION};
use super::paths;
use super::rundir::{self, RunDir, RunRecord, RunStatus, StepManifest, StepStatus};
use super::scheduler::{NodeState, Scheduler};
use super::schema::Pipeline;
use super::select::Scope;
use super::slurm::ExecutorKind;
use super::step::StepContext;
use crate::checkpoint::Checkpoints;
use crate::util::fsx;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// How many complete checkpoints a step keeps.
const CHECKPOINTS_KEPT: usize = 2;

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Complete,
    Cached {
        from: PathBuf,
    },
    Ran {
        resumed_from: Option<u64>,
    },
    Failed(String),
    Unavailable(String),
    /// Not selected (`--until`/`--only`) and not needed by a selected step.
    NotSelected,
    /// A dependency failed, or the run stopped after a failure.
    Skipped,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        matches!(
            self,
            Outcome::Complete | Outcome::Cached { .. } | Outcome::Ran { .. } | Outcome::NotSelected
        )
    }

    /// Short label for tables.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::Cached { .. } => "cached",
            Outcome::Ran { .. } => "ran",
            Outcome::Failed(_) => "failed",
            Outcome::Unavailable(_) => "unavailable",
            Outcome::NotSelected => "not selected",
            Outcome::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct StepReport {
    pub id: String,
    pub outcome: Outcome,
    pub seconds: f64,
    /// The last message of the step's progress record (a training step's last loss).
    pub last: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(
        "{}\n  If the fix is outside the pipeline file, continue this run with: runner resume {}\n  If you edit the pipeline file, `runner run` it again: completed steps are reused from the cache.",
        failures(.failed),
        .run_dir.display()
    )]
    StepsFailed {
        failed: Vec<(String, String)>,
        run_dir: PathBuf,
    },
    #[error(transparent)]
    RunDir(#[from] rundir::RunDirError),
}

fn failures(failed: &[(String, String)]) -> String {
    failed
        .iter()
        .map(|(id, e)| format!("step `{id}` failed: {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub struct Executor<'a> {
    pipeline: &'a Pipeline,
    run: &'a RunDir,
    runs_root: PathBuf,
    cache: Cache,
    graph: StepGraph,
    scope: Scope,
}

impl<'a> Executor<'a> {
    pub fn new(
        pipeline: &'a Pipeline,
        run: &'a RunDir,
        runs_root: &std::path::Path,
        graph: StepGraph,
        scope: Scope,
    ) -> Self {
        Executor {
            pipeline,
            run,
            runs_root: runs_root.to_path_buf(),
            cache: Cache::new(runs_root),
            graph,
            scope,
        }
    }

    pub(super) fn pipeline(&self) -> &Pipeline {
        self.pipeline
    }

    pub(super) fn run(&self) -> &RunDir {
        self.run
    }

    fn slurm(&self) -> bool {
        self.pipeline.header.executor.kind == ExecutorKind::Slurm
    }

    /// Runs every step in scope; returns one report per step in declaration order.
    pub fn execute(&self, record: &mut RunRecord) -> Result<Vec<StepReport>, ExecError> {
        let n = self.pipeline.steps.len();
        // Slurm gives each job its own allocation: no step needs to run alone there.
        let exclusive: Vec<bool> = self
            .pipeline
            .steps
            .iter()
            .map(|s| s.settings.exclusive() && !self.slurm())
            .collect();
        if self.slurm()
            && let Err(e) = super::slurm::catch_interrupts()
        {
            tracing::warn!("Ctrl-C will not cancel this run's Slurm jobs: {e}");
        }
        let mut sched = Scheduler::new(
            self.graph.clone(),
            exclusive,
            self.pipeline.header.max_parallel,
        );
        // Outputs digest of each finished step: what its dependents' keys are made of. Known
        // here, on the scheduling thread, before any dependent starts.
        let mut digests: Vec<Option<String>> = vec![None; n];
        let mut reports: Vec<Option<StepReport>> = vec![None; n];
        // Off a terminal each step's start and end are logged already: no lines for this bar.
        let overall = crate::progress::bar(n as u64, "pipeline", "steps").without_lines();

        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::channel::<(usize, StepReport, Option<String>)>();
            loop {
                while let Some(i) = sched.next() {
                    let tx = tx.clone();
                    let dep_digests: BTreeMap<String, String> = self
                        .graph
                        .deps(i)
                        .into_iter()
                        .map(|j| {
                            (
                                self.pipeline.steps[j].id.clone(),
                                digests[j].clone().unwrap_or_default(),
                            )
                        })
                        .collect();
                    s.spawn(move || {
                        let started = Instant::now();
                        let (outcome, digest) = self.process(i, &dep_digests);
                        let id = self.pipeline.steps[i].id.clone();
                        let last = rundir::progress_record(&self.run.step_dir(&id))
                            .map(|r| r.message)
                            .filter(|m| !m.is_empty());
                        let report = StepReport {
                            id,
                            outcome,
                            seconds: started.elapsed().as_secs_f64(),
                            last,
                        };
                        let _ = tx.send((i, report, digest));
                    });
                }
                let running: Vec<&str> = sched
                    .running()
                    .map(|i| self.pipeline.steps[i].id.as_str())
                    .collect();
                overall.set_message(running.join(", "));
                if sched.is_finished() {
                    break;
                }
                let (i, report, digest) = rx.recv().expect("a worker reports before exiting");
                digests[i] = digest;
                let ok = report.outcome.ok();
                log_outcome(&report);
                sched.finish(i, ok);
                if !ok {
                    sched.stop();
                }
                overall.inc(1);
                reports[i] = Some(report);
            }
        });
        overall.finish_and_clear();

        let states = sched.states();
        let reports: Vec<StepReport> = reports
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.unwrap_or_else(|| {
                    debug_assert_eq!(states[i], NodeState::Skipped);
                    StepReport {
                        id: self.pipeline.steps[i].id.clone(),
                        outcome: Outcome::Skipped,
                        seconds: 0.0,
                        last: None,
                    }
                })
            })
            .collect();
        let failed: Vec<(String, String)> = reports
            .iter()
            .filter_map(|r| match &r.outcome {
                Outcome::Failed(e) | Outcome::Unavailable(e) => Some((r.id.clone(), e.clone())),
                _ => None,
            })
            .collect();
        record.updated_at = rundir::now();
        if failed.is_empty() {
            let all = reports.iter().all(|r| r.outcome != Outcome::NotSelected);
            record.status = if all {
                RunStatus::Complete
            } else {
                RunStatus::Partial
            };
            record.message = None;
            self.run.write_record(record)?;
            Ok(reports)
        } else {
            record.status = RunStatus::Failed;
            record.message = Some(failures(&failed));
            self.run.write_record(record)?;
            Err(ExecError::StepsFailed {
                failed,
                run_dir: self.run.path.clone(),
            })
        }
    }

    /// Decides and does what step `i` needs; returns the outcome and the outputs digest.
    fn process(
        &self,
        i: usize,
        dep_digests: &BTreeMap<String, String>,
    ) -> (Outcome, Option<String>) {
        let step = &self.pipeline.steps[i];
        if !self.scope.needed[i] {
            return (Outcome::NotSelected, None);
        }
        let inputs = match keys::step_inputs(self.pipeline, step, dep_digests) {
            Ok(v) => v,
            Err(e) => return (Outcome::Failed(e.to_string()), None),
        };
        let key = keys::step_key(self.pipeline, step, &inputs);
        let step_dir = self.run.step_dir(&step.id);
        match freshness(&self.cache, &key, self.scope.forced[i], Some(&step_dir)) {
            Freshness::Complete { digest } => return (Outcome::Complete, digest),
            Freshness::Cached { from, manifest } => match self.reuse(step, &from, &manifest) {
                Ok(()) => return (Outcome::Cached { from }, manifest.outputs_digest),
                Err(e) => tracing::warn!(
                    "step `{}`: could not reuse cached artifacts ({e}); running it",
                    step.id
                ),
            },
            Freshness::Forced | Freshness::Stale => {}
        }
        if !self.scope.in_scope[i] {
            return (
                Outcome::Unavailable(format!(
                    "it is outside the selected steps and has no complete or cached result; run it first (e.g. `--until {}`)",
                    step.id
                )),
                None,
            );
        }
        let previous = self.run.read_manifest(&step.id);
        let result = if self.slurm() {
            self.run_job(i, key, inputs, previous)
        } else if step.resources.ranks() > 1 {
            self.run_ranks(i, key, inputs, previous)
        } else {
            self.run_step(i, key, inputs, previous)
        };
        match result {
            Ok((resumed_from, digest)) => (Outcome::Ran { resumed_from }, Some(digest)),
            Err(e) => (Outcome::Failed(format!("{e:#}")), None),
        }
    }

    fn reuse(
        &self,
        step: &super::schema::StepDef,
        from: &std::path::Path,
        cached: &StepManifest,
    ) -> anyhow::Result<()> {
        let step_dir = self.run.step_dir(&step.id);
        std::fs::create_dir_all(&step_dir)?;
        fsx::link_tree(&from.join(rundir::OUT), &step_dir.join(rundir::OUT))?;
        let mut m = cached.clone();
        m.cached_from = Some(from.to_path_buf());
        m.started_at = rundir::now();
        m.finished_at = Some(rundir::now());
        m.duration_s = Some(0.0);
        self.run.write_manifest(&m)?;
        self.export(step)?;
        Ok(())
    }

    /// Runs step `i` in this process: a new attempt, then its artifacts exported.
    fn run_step(
        &self,
        i: usize,
        key: String,
        inputs: BTreeMap<String, String>,
        previous: Option<StepManifest>,
    ) -> anyhow::Result<(Option<u64>, String)> {
        let manifest = self.begin_attempt(i, key, inputs, previous)?;
        let resumed_from = manifest.resumed_from;
        let digest = self.run_attempt(i, manifest, crate::dist::Dist::single())?;
        self.export(&self.pipeline.steps[i])?;
        Ok((resumed_from, digest))
    }

    /// Starts an attempt of step `i`: checkpoints are kept only from an attempt under the same
    /// key; the manifest says `running`. Returns that manifest.
    pub(super) fn begin_attempt(
        &self,
        i: usize,
        key: String,
        inputs: BTreeMap<String, String>,
        previous: Option<StepManifest>,
    ) -> anyhow::Result<StepManifest> {
        let step = &self.pipeline.steps[i];
        // Validation reports these before anything runs; a pipeline built without it still
        // never runs a step with values it cannot run with.
        if let Some((key, message)) = step.settings.problems().into_iter().next() {
            anyhow::bail!("{key}: {message}");
        }
        let step_dir = self.run.step_dir(&step.id);
        let checkpoints = Checkpoints::new(step_dir.join(rundir::CHECKPOINT), CHECKPOINTS_KEPT);

        // A previous attempt in this run under the same key (also of a forced step, when the run
        // is resumed) continues from its checkpoint; anything else starts clean.
        let same_key = previous.as_ref().is_some_and(|m| m.key == key);
        if !same_key {
            checkpoints.clear()?;
        }
        let resumed_from = checkpoints.latest().map(|c| c.tag);
        std::fs::create_dir_all(&step_dir)?;
        let manifest = StepManifest {
            step: step.id.clone(),
            kind: step.kind().to_string(),
            key,
            status: StepStatus::Running,
            settings: step.settings.settings_json(),
            inputs,
            outputs: vec![],
            outputs_digest: None,
            cached_from: None,
            started_at: rundir::now(),
            finished_at: None,
            duration_s: None,
            attempts: previous
                .as_ref()
                .filter(|_| same_key)
                .map_or(0, |m| m.attempts)
                + 1,
            resumed_from,
            error: None,
            runner_version: RUNNER_VERSION.to_string(),
            code: keys::CODE_DIGEST.to_string(),
            job: None,
        };
        self.run.write_manifest(&manifest)?;
        match resumed_from {
            Some(tag) => tracing::info!(
                "▶ {} ({}) resuming from checkpoint {tag}",
                step.id,
                step.kind()
            ),
            None => tracing::info!("▶ {} ({})", step.id, step.kind()),
        }
        Ok(manifest)
    }

    /// Runs an attempt begun by [`Self::begin_attempt`] in this process (the local executor, or
    /// one rank of a launched step); the manifest records how it ended and the cache learns the
    /// result. Only rank 0 writes the step's artifacts and manifest; another rank works in a
    /// scratch folder it removes, and writes the manifest only to report its own failure.
    /// Returns the outputs digest (rank 0), or an empty string (other ranks).
    pub(super) fn run_attempt(
        &self,
        i: usize,
        mut manifest: StepManifest,
        dist: crate::dist::Dist,
    ) -> anyhow::Result<String> {
        let step = &self.pipeline.steps[i];
        let step_dir = self.run.step_dir(&step.id);
        let out_dir = if dist.is_root() {
            step_dir.join(rundir::OUT)
        } else {
            step_dir.join(format!(".rank-{}", dist.rank()))
        };
        fsx::remove_dir_if_exists(&out_dir)?;
        std::fs::create_dir_all(&out_dir)?;
        let started = Instant::now();
        let deps = self
            .graph
            .deps(i)
            .into_iter()
            .map(|j| {
                let id = self.pipeline.steps[j].id.clone();
                let dir = self.run.step_dir(&id).join(rundir::OUT);
                (id, dir)
            })
            .collect();
        let ctx = StepContext {
            id: step.id.clone(),
            pipeline: self.pipeline.name.clone(),
            root: self.pipeline.root.clone(),
            step_dir: step_dir.clone(),
            out_dir: out_dir.clone(),
            checkpoints: Checkpoints::new(step_dir.join(rundir::CHECKPOINT), CHECKPOINTS_KEPT),
            deps,
            seed: self.pipeline.header.seed,
            device: self.pipeline.header.device,
            wandb: self
                .pipeline
                .header
                .wandb
                .clone()
                .filter(|_| dist.is_root())
                .map(|settings| crate::wandb::WandbRun {
                    settings,
                    pipeline: self.pipeline.name.clone(),
                    run_id: self.run.run_id(),
                }),
            dist,
        };
        // A panic inside a step is that step's failure, not the runner's.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step.settings.run(&ctx)))
                .unwrap_or_else(|panic| {
                    let msg = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "unknown panic".into());
                    Err(anyhow::anyhow!("internal error (panic): {msg}"))
                });
        manifest.finished_at = Some(rundir::now());
        manifest.duration_s = Some(started.elapsed().as_secs_f64());
        if !dist.is_root() {
            let _ = fsx::remove_dir_if_exists(&out_dir);
        }
        if let Err(e) = result {
            manifest.status = StepStatus::Failed;
            manifest.error = Some(if dist.is_root() {
                format!("{e:#}")
            } else {
                format!("rank {}: {e:#}", dist.rank())
            });
            self.run.write_manifest(&manifest)?;
            return Err(e);
        }
        if !dist.is_root() {
            return Ok(String::new());
        }
        let (outputs, digest) = keys::outputs_of(&out_dir)?;
        manifest.outputs = outputs;
        manifest.outputs_digest = Some(digest.clone());
        manifest.status = StepStatus::Complete;
        self.run.write_manifest(&manifest)?;
        self.cache
            .record(&manifest.key, &step_dir, &manifest.outputs)?;
        Ok(digest)
    }

    /// Copies (hard-links) a step's artifacts to its `export` directory, if it has one. The
    /// target is checked again here (the runs directory may come from the command line), and a
    /// folder the runner did not create is never replaced.
    pub(super) fn export(&self, step: &super::schema::StepDef) -> anyhow::Result<()> {
        let Some(export) = &step.export else {
            return Ok(());
        };
        let p = self.pipeline;
        let inputs = super::schema::input_paths(&p.steps);
        if let Some(problem) =
            paths::export_problem(export, &p.root, &self.runs_root, &inputs, &p.source.files())
        {
            anyhow::bail!(
                "{problem}; nothing was exported. Set `export` to a new folder inside the pipeline root"
            );
        }
        let dst = p.root.join(export);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let stamp = serde_json::json!({
            "written_by": "runner",
            "pipeline": p.name,
            "run": self.run.path,
            "step": step.id,
            "at": rundir::now(),
        });
        let out = self.run.step_dir(&step.id).join(rundir::OUT);
        match fsx::replace_marked_dir(
            &out,
            &dst,
            paths::EXPORT_MARKER,
            format!("{stamp:#}\n").as_bytes(),
        ) {
            Ok(()) => {}
            Err(fsx::ReplaceError::NotOurs(path)) => anyhow::bail!(
                "export target {} exists and was not written by the runner (it is not an empty folder and has no {} file); it was left untouched. Move it away, or set `export` of step `{}` to a new folder, then `runner resume {}`",
                path.display(),
                paths::EXPORT_MARKER,
                step.id,
                self.run.path.display()
            ),
            Err(fsx::ReplaceError::Io(e)) => {
                return Err(
                    anyhow::Error::new(e).context(format!("exporting to {}", dst.display()))
                );
            }
        }
        tracing::info!("  {} exported to {}", step.id, dst.display());
        Ok(())
    }
}

fn log_outcome(r: &StepReport) {
    match &r.outcome {
        Outcome::Complete => tracing::info!("= {} already complete in this run", r.id),
        Outcome::Cached { from } => tracing::info!("↺ {} cached (from {})", r.id, from.display()),
        Outcome::Ran { .. } => match &r.last {
            Some(last) => tracing::info!("✓ {} done in {:.1}s ({last})", r.id, r.seconds),
            None => tracing::info!("✓ {} done in {:.1}s", r.id, r.seconds),
        },
        Outcome::Failed(e) => tracing::error!("✗ {} failed after {:.1}s: {e}", r.id, r.seconds),
        Outcome::Unavailable(e) => tracing::error!("✗ {} unavailable: {e}", r.id),
        Outcome::NotSelected | Outcome::Skipped => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::layers::Overrides;
    use crate::pipeline::select::Selection;
    use crate::pipeline::step::testing::KINDS;
    use std::path::Path;

    /// A pipeline of fake steps in a fresh folder.
    fn pipeline(dir: &Path, steps: &str) -> Pipeline {
        let file = dir.join("p.toml");
        std::fs::write(&file, format!("[pipeline]\nname = \"t\"\n{steps}")).unwrap();
        crate::pipeline::load(&file, &Overrides::default(), KINDS).unwrap()
    }

    /// Executes `p` in the run directory `run_id` (created if new) with `selection`; returns
    /// the error text (if it failed), each step's outcome (read back from the manifests when
    /// the run failed) and the run record.
    fn execute(
        p: &Pipeline,
        run_id: &str,
        selection: Selection,
    ) -> (Option<String>, BTreeMap<String, Outcome>, RunRecord) {
        let runs = p.root.join("runs");
        let path = runs.join(&p.name).join(run_id);
        let run = if path.exists() {
            RunDir::open(&path).unwrap()
        } else {
            RunDir::create(&runs, &p.name, Some(run_id)).unwrap()
        };
        let graph = crate::pipeline::graph_of(p);
        let scope = selection.resolve(p, &graph).unwrap();
        let mut record = RunRecord {
            pipeline: p.name.clone(),
            run_id: run_id.into(),
            source_file: p.main_file.clone(),
            overrides: vec![],
            created_at: rundir::now(),
            status: RunStatus::Running,
            updated_at: rundir::now(),
            message: None,
            runner_version: RUNNER_VERSION.into(),
            selection,
        };
        let result = Executor::new(p, &run, &runs, graph, scope).execute(&mut record);
        let outcomes = match &result {
            Ok(reports) => reports
                .iter()
                .map(|r| (r.id.clone(), r.outcome.clone()))
                .collect(),
            Err(_) => p
                .steps
                .iter()
                .map(|s| {
                    let o = match run.read_manifest(&s.id).map(|m| m.status) {
                        Some(StepStatus::Failed) => Outcome::Failed(String::new()),
                        Some(StepStatus::Complete) => Outcome::Complete,
                        _ => Outcome::Skipped,
                    };
                    (s.id.clone(), o)
                })
                .collect(),
        };
        (result.err().map(|e| e.to_string()), outcomes, record)
    }

    fn label(o: &BTreeMap<String, Outcome>, id: &str) -> &'static str {
        o[id].label()
    }

    const CHAIN: &str = "[[step]]\nid = \"a\"\nkind = \"fake\"\noutput = \"A\"\n\n\
        [[step]]\nid = \"b\"\nkind = \"fake\"\ndepends_on = [\"a\"]\noutput = \"B\"\n";

    #[test]
    fn ran_then_complete_in_the_same_run_then_cached_in_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(dir.path(), CHAIN);
        let (err, o, _) = execute(&p, "r1", Selection::default());
        assert!(err.is_none(), "{err:?}");
        assert_eq!((label(&o, "a"), label(&o, "b")), ("ran", "ran"));
        let out = std::fs::read_to_string(dir.path().join("runs/t/r1/b/out/result.txt")).unwrap();
        assert_eq!(out, "B <a:A>", "b saw a's output");
        let (_, o, _) = execute(&p, "r1", Selection::default());
        assert_eq!((label(&o, "a"), label(&o, "b")), ("complete", "complete"));
        let (_, o, _) = execute(&p, "r2", Selection::default());
        assert_eq!((label(&o, "a"), label(&o, "b")), ("cached", "cached"));
        // Forced: runs again even though cached; its dependent is cached again (same output).
        let force = Selection {
            force: vec!["a".into()],
            ..Default::default()
        };
        let (_, o, _) = execute(&p, "r3", force);
        assert_eq!((label(&o, "a"), label(&o, "b")), ("ran", "cached"));
    }

    #[test]
    fn a_failure_skips_dependents_and_starts_nothing_new() {
        let dir = tempfile::tempdir().unwrap();
        let text = "max_parallel = 2\n\n\
            [[step]]\nid = \"slow\"\nkind = \"fake\"\nafter_failure_of = \"bad\"\n\n\
            [[step]]\nid = \"bad\"\nkind = \"fake\"\nbehaviour = \"fail\"\n\n\
            [[step]]\nid = \"after\"\nkind = \"fake\"\ndepends_on = [\"bad\"]\n\n\
            [[step]]\nid = \"later\"\nkind = \"fake\"\noutput = \"L\"\n";
        let p = pipeline(dir.path(), text);
        let (err, _, record) = execute(&p, "r", Selection::default());
        let text = err.expect("the run fails");
        assert!(text.contains("step `bad` failed: told to fail"), "{text}");
        assert!(text.contains("runner resume"), "{text}");
        assert_eq!(record.status, RunStatus::Failed);
        let run = RunDir::open(&dir.path().join("runs/t/r")).unwrap();
        // The step that was running finished (after the failure, by construction); nothing new
        // started after the failure.
        assert_eq!(
            run.read_manifest("slow").map(|m| m.status),
            Some(StepStatus::Complete)
        );
        assert!(run.read_manifest("after").is_none());
        assert!(run.read_manifest("later").is_none());
    }

    #[test]
    fn a_step_with_problems_never_runs() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[[step]]\nid = \"s\"\nkind = \"fake\"\ninvalid = true\n";
        std::fs::write(
            dir.path().join("p.toml"),
            format!("[pipeline]\nname = \"t\"\n{text}"),
        )
        .unwrap();
        // Validation refuses it...
        let err = crate::pipeline::load(&dir.path().join("p.toml"), &Overrides::default(), KINDS)
            .unwrap_err();
        assert!(err.to_string().contains("told to be invalid"), "{err}");
        // ...and a pipeline that skipped validation does not run it either.
        let mut p = pipeline(dir.path(), "[[step]]\nid = \"s\"\nkind = \"fake\"\n");
        p.steps[0].settings = std::sync::Arc::new(crate::pipeline::step::testing::Fake {
            behaviour: Default::default(),
            output: String::new(),
            after_failure_of: None,
            stop_after_checkpoint: false,
            reads: None,
            exclusive: false,
            invalid: true,
        });
        let (err, _, _) = execute(&p, "r", Selection::default());
        assert!(err.unwrap().contains("invalid: told to be invalid"));
        assert!(!dir.path().join("runs/t/r/s/out").exists(), "it never ran");
    }

    #[test]
    fn a_panic_is_the_steps_failure() {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(
            dir.path(),
            "[[step]]\nid = \"p\"\nkind = \"fake\"\nbehaviour = \"panic\"\n",
        );
        let (err, _, _) = execute(&p, "r", Selection::default());
        assert!(err.is_some());
        let m = rundir::read_manifest(&dir.path().join("runs/t/r/p")).unwrap();
        assert_eq!(m.status, StepStatus::Failed);
        assert!(
            m.error
                .as_deref()
                .unwrap()
                .contains("panic): told to panic"),
            "{:?}",
            m.error
        );
    }

    #[test]
    fn an_interrupted_step_resumes_from_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(
            dir.path(),
            "[[step]]\nid = \"s\"\nkind = \"fake\"\nstop_after_checkpoint = true\noutput = \"S\"\n",
        );
        let (err, _, _) = execute(&p, "r", Selection::default());
        assert!(err.is_some());
        let (err, o, _) = execute(&p, "r", Selection::default());
        assert!(err.is_none(), "{err:?}");
        assert_eq!(
            o["s"],
            Outcome::Ran {
                resumed_from: Some(1)
            }
        );
        let m = rundir::read_manifest(&dir.path().join("runs/t/r/s")).unwrap();
        assert_eq!((m.attempts, m.resumed_from), (2, Some(1)));
    }

    #[test]
    fn a_dependency_outside_the_selection_without_a_result_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline(dir.path(), CHAIN);
        let only_b = Selection {
            only: vec!["b".into()],
            ..Default::default()
        };
        let (err, o, _) = execute(&p, "r", only_b.clone());
        assert!(err.is_some());
        let m = rundir::read_manifest(&dir.path().join("runs/t/r/a"));
        assert!(m.is_none(), "a did not run");
        assert_eq!(label(&o, "b"), "skipped");
        // Once `a` has a result, `--only b` runs b alone.
        execute(&p, "r2", Selection::default());
        let (err, o, _) = execute(&p, "r3", only_b);
        assert!(err.is_none(), "{err:?}");
        assert_eq!((label(&o, "a"), label(&o, "b")), ("cached", "cached"));
    }
}
