//! Step selection from the command line: `--from`, `--until`, `--only`, `--force`.
//!
//! - `--until S`: run S and what it depends on, nothing after it.
//! - `--only S`: run S alone; its dependencies must already be complete (in this run or the
//!   cache).
//! - `--from S`: rerun S and everything downstream of it, even if cached.
//! - `--force S`: rerun S even if cached.

use super::diagnostics::{Diagnostic, Diagnostics, Location, did_you_mean};
use super::graph::StepGraph;
use super::schema::Pipeline;

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Selection {
    pub from: Vec<String>,
    pub until: Vec<String>,
    pub only: Vec<String>,
    pub force: Vec<String>,
}

/// Which steps are in scope (run if needed) and which must rerun.
#[derive(Debug, Clone)]
pub struct Scope {
    pub in_scope: Vec<bool>,
    /// In scope, or a dependency (transitively) of a step in scope.
    pub needed: Vec<bool>,
    pub forced: Vec<bool>,
}

impl Selection {
    pub fn resolve(&self, pipeline: &Pipeline, graph: &StepGraph) -> Result<Scope, Diagnostics> {
        let n = pipeline.steps.len();
        let mut diags = Diagnostics::default();
        let mut lookup = |flag: &str, ids: &[String]| -> Vec<usize> {
            ids.iter()
                .filter_map(|id| {
                    let found = pipeline.step_index(id);
                    if found.is_none() {
                        diags.push(
                            Diagnostic::new(
                                Location::Override(format!("--{flag} {id}")),
                                format!("no step with id `{id}`"),
                            )
                            .help_opt(did_you_mean(
                                id,
                                pipeline.steps.iter().map(|s| s.id.as_str()),
                            )),
                        );
                    }
                    found
                })
                .collect()
        };
        let from = lookup("from", &self.from);
        let until = lookup("until", &self.until);
        let only = lookup("only", &self.only);
        let force = lookup("force", &self.force);
        if !diags.is_empty() {
            return Err(diags);
        }

        let mut in_scope = vec![true; n];
        if !until.is_empty() {
            in_scope = vec![false; n];
            for &u in &until {
                for a in graph.ancestors(u) {
                    in_scope[a] = true;
                }
            }
        }
        if !only.is_empty() {
            in_scope = vec![false; n];
            for &o in &only {
                in_scope[o] = true;
            }
        }
        let mut forced = vec![false; n];
        for &f in &from {
            for d in graph.descendants(f) {
                forced[d] = in_scope[d];
            }
        }
        for &f in &force {
            forced[f] = true;
            in_scope[f] = true;
        }
        let mut needed = vec![false; n];
        for i in (0..n).filter(|&i| in_scope[i]) {
            for a in graph.ancestors(i) {
                needed[a] = true;
            }
        }
        Ok(Scope {
            in_scope,
            needed,
            forced,
        })
    }
}
