//! `runner plan`: what a `runner run` would do for each step, and why.

use super::cache::Cache;
use super::graph::StepGraph;
use super::keys;
use super::rundir::{self, StepManifest, StepStatus};
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
    /// Will run: `--force`/`--from`.
    Forced,
    /// Will run: differs from the last run of this step, for these reasons.
    Changed(Vec<String>),
    /// Will run: never ran before.
    New,
    /// Runs once these dependencies have run (then may still be cached if their outputs are unchanged).
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
                PlanEntry::Forced
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
        let entry = if scope.forced[i] {
            PlanEntry::Forced
        } else if let Some((from, m)) = cache.lookup(&key) {
            digests[i] = m.outputs_digest.clone();
            PlanEntry::Cached {
                from: from.display().to_string(),
            }
        } else {
            match last_manifest(runs_root, &pipeline.name, &step.id) {
                Some(prev) => {
                    PlanEntry::Changed(differences(&prev, &step.settings.to_json(), &inputs))
                }
                None => PlanEntry::New,
            }
        };
        entries[i] = Some(entry);
    }
    pipeline
        .steps
        .iter()
        .zip(entries)
        .map(|(s, e)| (s.id.clone(), e.expect("every step planned")))
        .collect()
}

/// The newest complete manifest of `step` in any run of `pipeline`.
fn last_manifest(runs_root: &Path, pipeline: &str, step: &str) -> Option<StepManifest> {
    let mut runs: Vec<_> = std::fs::read_dir(runs_root.join(pipeline))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    runs.sort();
    runs.iter()
        .rev()
        .filter_map(|r| rundir::read_manifest(&r.join(step)))
        .find(|m| m.status == StepStatus::Complete)
}

/// Human reasons why a step's key differs from its last complete run.
fn differences(
    prev: &StepManifest,
    settings: &serde_json::Value,
    inputs: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut reasons = Vec::new();
    if let (Some(a), Some(b)) = (prev.settings.as_object(), settings.as_object()) {
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for k in keys {
            if a.get(k) != b.get(k) {
                reasons.push(format!("setting `{k}` changed"));
            }
        }
    }
    let keys: std::collections::BTreeSet<&String> =
        prev.inputs.keys().chain(inputs.keys()).collect();
    for k in keys {
        if prev.inputs.get(k) != inputs.get(k) {
            reasons.push(match k.split_once(':') {
                Some(("dep", id)) => format!("output of `{id}` changed"),
                Some(("file", f)) => format!("input `{f}` changed"),
                _ => format!("{k} changed"),
            });
        }
    }
    if prev.code != keys::CODE_DIGEST {
        reasons.push("runner code".into());
    }
    if prev.runner_version != keys::RUNNER_VERSION {
        reasons.push(format!(
            "runner version {} → {}",
            prev.runner_version,
            keys::RUNNER_VERSION
        ));
    }
    if reasons.is_empty() {
        reasons.push("its cached artifacts are gone".into());
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_of_other_runner_code_is_reported_as_such() {
        let m = |code: &str| StepManifest {
            step: "s".into(),
            kind: "command".into(),
            key: "k".into(),
            status: StepStatus::Complete,
            settings: serde_json::json!({"run": "true"}),
            inputs: Default::default(),
            outputs: vec![],
            outputs_digest: None,
            cached_from: None,
            started_at: String::new(),
            finished_at: None,
            duration_s: None,
            attempts: 1,
            resumed_from: None,
            error: None,
            runner_version: keys::RUNNER_VERSION.into(),
            code: code.into(),
        };
        let settings = serde_json::json!({"run": "true"});
        let inputs = BTreeMap::new();
        assert_eq!(
            differences(&m("an older build"), &settings, &inputs),
            vec!["runner code".to_string()]
        );
        assert_eq!(
            differences(&m(keys::CODE_DIGEST), &settings, &inputs),
            vec!["its cached artifacts are gone".to_string()]
        );
    }
}
