//! Pipelines: parse → layer → validate → graph → plan → execute, one module per stage.
//!
//! - [`source`]: TOML files, `extends`, positions of every key;
//! - [`layers`]: environment and `--set` overrides (figment);
//! - [`decode`], [`validate`], [`schema`]: the typed, validated [`Pipeline`];
//! - [`graph`], [`scheduler`], [`select`]: the DAG, the work queue, `--from/--until/--only/--force`;
//! - [`rundir`], [`cache`], [`keys`]: run directories and caching (step checkpoints are the
//!   leaf module [`crate::checkpoint`]);
//! - [`freshness`], [`plan`], [`render`]: whether a step must run and why (one decision for
//!   the executor and `runner plan`); the DAG as text, DOT or Mermaid;
//! - [`executor`]: running it, in this process or as Slurm jobs ([`slurm`]).

pub mod artifact;
pub mod cache;
pub mod decode;
pub mod diagnostics;
pub mod executor;
pub mod freshness;
pub mod graph;
pub mod jobs;
pub mod keys;
pub mod layers;
pub mod paths;
pub mod plan;
pub mod render;
pub mod rundir;
pub mod scheduler;
pub mod schema;
pub mod select;
pub mod slurm;
pub mod source;
pub mod step;
pub mod validate;

pub use artifact::ArtifactRef;
pub use diagnostics::Diagnostics;
pub use schema::Pipeline;
pub use step::{Step, StepContext, StepKind};

use graph::StepGraph;
use std::path::{Path, PathBuf};

/// Loads, layers and validates a pipeline file whose steps are of the given `kinds`.
pub fn load(
    path: &Path,
    overrides: &layers::Overrides,
    kinds: &[StepKind],
) -> Result<Pipeline, Diagnostics> {
    let raw = source::load(path)?;
    let raw = layers::apply(raw, overrides)?;
    validate::validate(raw, kinds)
}

/// The step graph of a validated pipeline.
pub fn graph_of(pipeline: &Pipeline) -> StepGraph {
    let deps: Vec<Vec<usize>> = pipeline
        .steps
        .iter()
        .map(|s| {
            s.depends_on
                .iter()
                .filter_map(|d| pipeline.step_index(d))
                .collect()
        })
        .collect();
    StepGraph::from_deps(&deps)
}

/// Where run directories go: the command-line value, else `[pipeline] runs_dir`, else `<root>/runs`.
pub fn runs_root(pipeline: &Pipeline, cli: Option<&Path>) -> PathBuf {
    match cli {
        Some(p) => p.to_path_buf(),
        None => pipeline.header.runs_root(&pipeline.root),
    }
}
