//! Whether a step must run: one decision, made the same way for `runner run` (the executor acts
//! on it) and `runner plan` (which only shows it, with why a stale step changed — [`explain`],
//! which reads earlier runs' manifests and so is not done on the executor's path).

use super::cache::Cache;
use super::keys;
use super::rundir::{self, StepManifest, StepStatus};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a step's key says about it.
#[derive(Debug, Clone)]
pub enum Freshness {
    /// Complete in this run directory under the same key, its artifacts intact (a resumed run
    /// does not redo a step it finished, forced or not).
    Complete { digest: Option<String> },
    /// An earlier run produced its artifacts under the same key, and they are intact.
    Cached {
        from: PathBuf,
        manifest: Box<StepManifest>,
    },
    /// It must run: `--force` or `--from`.
    Forced,
    /// It must run: no complete or cached result under its key ([`explain`] says why).
    Stale,
}

/// Why a step must run.
#[derive(Debug, Clone, PartialEq)]
pub enum Dirty {
    /// `--force` or `--from`.
    Forced,
    /// It ran before with another key, for these reasons.
    Changed(Vec<String>),
    /// It never ran.
    New,
}

impl std::fmt::Display for Dirty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dirty::Forced => write!(f, "forced (--force/--from)"),
            Dirty::Changed(reasons) => write!(f, "changed: {}", reasons.join("; ")),
            Dirty::New => write!(f, "new: never ran"),
        }
    }
}

/// Decides whether the step with `key` is complete (in `step_dir`, when deciding inside a
/// run), cached, or must run.
pub fn freshness(cache: &Cache, key: &str, forced: bool, step_dir: Option<&Path>) -> Freshness {
    if let Some(dir) = step_dir
        && let Some(m) = rundir::read_manifest(dir)
        && m.status == StepStatus::Complete
        && m.key == key
        && cache.verify(key, dir, &m)
    {
        return Freshness::Complete {
            digest: m.outputs_digest,
        };
    }
    if forced {
        return Freshness::Forced;
    }
    if let Some((from, manifest)) = cache.lookup(key)
        && Some(from.as_path()) != step_dir
    {
        return Freshness::Cached {
            from,
            manifest: Box::new(manifest),
        };
    }
    Freshness::Stale
}

/// Why a stale step must run: how its settings and inputs differ from its last complete run
/// under `pipeline_runs` (`<runs_root>/<pipeline>/`), or that it never ran.
pub fn explain(
    pipeline_runs: &Path,
    step_id: &str,
    settings: &serde_json::Value,
    inputs: &BTreeMap<String, String>,
) -> Dirty {
    match last_manifest(pipeline_runs, step_id) {
        Some(prev) => Dirty::Changed(differences(&prev, settings, inputs)),
        None => Dirty::New,
    }
}

/// The newest complete manifest of `step` in any run under `pipeline_runs`.
fn last_manifest(pipeline_runs: &Path, step: &str) -> Option<StepManifest> {
    let mut runs: Vec<_> = std::fs::read_dir(pipeline_runs)
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
        reasons.push("its cached artifacts are gone or changed".into());
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_of_other_runner_code_is_reported_as_such() {
        let m = |code: &str| StepManifest {
            settings: serde_json::json!({"run": "true"}),
            code: code.into(),
            ..StepManifest::complete_for_tests("s", "k", vec![])
        };
        let settings = serde_json::json!({"run": "true"});
        let inputs = BTreeMap::new();
        assert_eq!(
            differences(&m("an older build"), &settings, &inputs),
            vec!["runner code".to_string()]
        );
        assert_eq!(
            differences(&m(keys::CODE_DIGEST), &settings, &inputs),
            vec!["its cached artifacts are gone or changed".to_string()]
        );
    }
}
