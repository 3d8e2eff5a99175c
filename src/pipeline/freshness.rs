//! Whether a step must run, and why: one decision, made the same way for `runner run` (the
//! executor acts on it) and `runner plan` (which only shows it).

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
    /// It must run.
    Dirty(Dirty),
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

/// What is known about one step when deciding.
pub struct Query<'a> {
    pub key: &'a str,
    pub settings: &'a serde_json::Value,
    pub inputs: &'a BTreeMap<String, String>,
    pub forced: bool,
    /// The step's folder in this run, when deciding inside a run.
    pub step_dir: Option<&'a Path>,
    /// Where earlier runs of the pipeline are: `<runs_root>/<pipeline>/`.
    pub pipeline_runs: &'a Path,
    pub step_id: &'a str,
}

/// Decides whether the step described by `q` is complete, cached or must run.
pub fn freshness(cache: &Cache, q: &Query) -> Freshness {
    if let Some(dir) = q.step_dir
        && let Some(m) = rundir::read_manifest(dir)
        && m.status == StepStatus::Complete
        && m.key == q.key
        && cache.verify(q.key, dir, &m)
    {
        return Freshness::Complete {
            digest: m.outputs_digest,
        };
    }
    if q.forced {
        return Freshness::Dirty(Dirty::Forced);
    }
    if let Some((from, manifest)) = cache.lookup(q.key)
        && Some(from.as_path()) != q.step_dir
    {
        return Freshness::Cached {
            from,
            manifest: Box::new(manifest),
        };
    }
    Freshness::Dirty(match last_manifest(q.pipeline_runs, q.step_id) {
        Some(prev) => Dirty::Changed(differences(&prev, q.settings, q.inputs)),
        None => Dirty::New,
    })
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
