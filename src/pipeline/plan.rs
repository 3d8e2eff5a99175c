//! `runner plan`: what a `runner run` would do for each step, and why — the executor's own
//! decision ([`freshness`]), made for a new run without running anything.

use super::cache::Cache;
use super::freshness::{Dirty, Freshness, explain, freshness};
use super::graph::StepGraph;
use super::keys;
use super::schema::Pipeline;
use super::select::Scope;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub enum PlanEntry {
    /// Same key as an earlier run: artifacts will be reused.
    Cached {
        from: String,
    },
    /// Will run, for this reason.
    Runs(Dirty),
    /// Runs once these dependencies have run (then may still be cached if their outputs are
    /// unchanged).
    AfterDeps(Vec<String>),
    NotSelected,
}

impl PlanEntry {
    pub fn runs(&self) -> bool {
        !matches!(self, PlanEntry::Cached { .. } | PlanEntry::NotSelected)
    }
}

/// Plans every step, in topological order.
pub fn plan(
    pipeline: &Pipeline,
    graph: &StepGraph,
    scope: &Scope,
    runs_root: &Path,
) -> Vec<(String, PlanEntry)> {
    let cache = Cache::new(runs_root);
    let pipeline_runs = runs_root.join(&pipeline.name);
    let n = pipeline.steps.len();
    let mut digests: Vec<Option<String>> = vec![None; n];
    let mut entries: Vec<Option<PlanEntry>> = vec![None; n];
    for i in graph.topo_order() {
        let step = &pipeline.steps[i];
        if !scope.needed[i] {
            entries[i] = Some(PlanEntry::NotSelected);
            continue;
        }
        let pending: Vec<String> = graph
            .deps(i)
            .into_iter()
            .filter(|&j| digests[j].is_none())
            .map(|j| pipeline.steps[j].id.clone())
            .collect();
        if !pending.is_empty() {
            entries[i] = Some(if scope.forced[i] {
                PlanEntry::Runs(Dirty::Forced)
            } else {
                PlanEntry::AfterDeps(pending)
            });
            continue;
        }
        let dep_digests: BTreeMap<String, String> = graph
            .deps(i)
            .into_iter()
            .map(|j| {
                (
                    pipeline.steps[j].id.clone(),
                    digests[j].clone().unwrap_or_default(),
                )
            })
            .collect();
        let inputs = keys::step_inputs(pipeline, step, &dep_digests).unwrap_or_default();
        let key = keys::step_key(pipeline, step, &inputs);
        entries[i] = Some(match freshness(&cache, &key, scope.forced[i], None) {
            Freshness::Cached { from, manifest } => {
                digests[i] = manifest.outputs_digest;
                PlanEntry::Cached {
                    from: from.display().to_string(),
                }
            }
            // Not asked for outside a run directory.
            Freshness::Complete { digest } => {
                digests[i] = digest;
                PlanEntry::Cached {
                    from: "this run".into(),
                }
            }
            Freshness::Forced => PlanEntry::Runs(Dirty::Forced),
            Freshness::Stale => PlanEntry::Runs(explain(
                &pipeline_runs,
                &step.id,
                &step.settings.settings_json(),
                &inputs,
            )),
        });
    }
    pipeline
        .steps
        .iter()
        .zip(entries)
        .map(|(s, e)| (s.id.clone(), e.expect("every step planned")))
        .collect()
}
