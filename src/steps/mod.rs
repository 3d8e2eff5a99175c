//! Step kinds. Each kind is a settings struct (typed, documented, validated) plus the code
//! that runs it; [`StepSettings`] is the closed set the pipeline file can name.

pub mod artifact;
pub mod command;
pub mod context;
pub mod convert;
pub mod eval;
pub mod fetch;
pub mod grpo;
pub mod import;
pub mod sft;
pub mod stage1;
pub mod stage2;
pub mod student_out;
pub mod tokenize;

pub use context::StepContext;

use crate::pipeline::decode::decode;
use crate::pipeline::diagnostics::Diagnostics;
use crate::pipeline::source::SourceMap;
use std::path::PathBuf;

/// The names accepted by `kind = "..."`.
pub const KINDS: &[&str] = &[
    "command", "fetch", "import", "tokenize", "stage1", "stage2", "sft", "grpo", "convert", "eval",
];

/// The settings of one step, by kind.
#[derive(Debug, Clone)]
pub enum StepSettings {
    Command(command::CommandSettings),
    Fetch(fetch::FetchSettings),
    Import(import::ImportSettings),
    Tokenize(tokenize::TokenizeSettings),
    Stage1(stage1::Stage1Settings),
    Stage2(stage2::Stage2Settings),
    Sft(sft::SftSettings),
    Grpo(grpo::GrpoSettings),
    Convert(convert::ConvertSettings),
    Eval(eval::EvalSettings),
}

impl StepSettings {
    /// Decodes the kind-specific keys of a step table (everything but the common keys).
    pub fn decode(
        kind: &str,
        table: toml::Table,
        path: &[String],
        map: &SourceMap,
        diags: &mut Diagnostics,
    ) -> Option<Self> {
        let value = toml::Value::Table(table);
        match kind {
            "command" => decode(value, path, map, diags).map(StepSettings::Command),
            "fetch" => decode(value, path, map, diags).map(StepSettings::Fetch),
            "import" => decode(value, path, map, diags).map(StepSettings::Import),
            "tokenize" => decode(value, path, map, diags).map(StepSettings::Tokenize),
            "stage1" => decode(value, path, map, diags).map(StepSettings::Stage1),
            "stage2" => decode(value, path, map, diags).map(StepSettings::Stage2),
            "sft" => decode(value, path, map, diags).map(StepSettings::Sft),
            "grpo" => decode(value, path, map, diags).map(StepSettings::Grpo),
            "convert" => decode(value, path, map, diags).map(StepSettings::Convert),
            "eval" => decode(value, path, map, diags).map(StepSettings::Eval),
            other => unreachable!("kind `{other}` is checked against KINDS before decoding"),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            StepSettings::Command(_) => "command",
            StepSettings::Fetch(_) => "fetch",
            StepSettings::Import(_) => "import",
            StepSettings::Tokenize(_) => "tokenize",
            StepSettings::Stage1(_) => "stage1",
            StepSettings::Stage2(_) => "stage2",
            StepSettings::Sft(_) => "sft",
            StepSettings::Grpo(_) => "grpo",
            StepSettings::Convert(_) => "convert",
            StepSettings::Eval(_) => "eval",
        }
    }

    /// The settings with every default filled in, as canonical JSON (part of the cache key).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            StepSettings::Command(s) => serde_json::to_value(s),
            StepSettings::Fetch(s) => serde_json::to_value(s),
            StepSettings::Import(s) => serde_json::to_value(s),
            StepSettings::Tokenize(s) => serde_json::to_value(s),
            StepSettings::Stage1(s) => serde_json::to_value(s),
            StepSettings::Stage2(s) => serde_json::to_value(s),
            StepSettings::Sft(s) => serde_json::to_value(s),
            StepSettings::Grpo(s) => serde_json::to_value(s),
            StepSettings::Convert(s) => serde_json::to_value(s),
            StepSettings::Eval(s) => serde_json::to_value(s),
        }
        .expect("settings serialise to JSON")
    }

    /// Settings that are paths (`@step/...` or root-relative), with their key.
    fn artifact_refs(&self) -> Vec<(&'static str, &artifact::ArtifactRef)> {
        match self {
            StepSettings::Command(_) | StepSettings::Fetch(_) => Vec::new(),
            StepSettings::Import(s) => vec![("gguf", &s.gguf)],
            StepSettings::Tokenize(s) => s.refs().collect(),
            StepSettings::Stage1(s) => s.refs().collect(),
            StepSettings::Stage2(s) => s.refs().collect(),
            StepSettings::Sft(s) => s.refs().collect(),
            StepSettings::Grpo(s) => s.refs().collect(),
            StepSettings::Convert(s) => s.refs().collect(),
            StepSettings::Eval(s) => s.refs().collect(),
        }
    }

    /// Files and directories (relative to the pipeline root) the step reads, with the key that
    /// names them. They must exist before the run; their contents are part of the cache key.
    pub fn input_paths(&self) -> Vec<(&'static str, PathBuf)> {
        let mut out: Vec<(&'static str, PathBuf)> = match self {
            StepSettings::Command(s) => s.inputs.iter().map(|p| ("inputs", p.clone())).collect(),
            _ => Vec::new(),
        };
        out.extend(
            self.artifact_refs()
                .into_iter()
                .filter_map(|(k, a)| a.input().map(|p| (k, p.to_path_buf()))),
        );
        out
    }

    /// Settings that name a dependency's artifacts (`@step/...`), with their key; the step
    /// must list that dependency in `depends_on`.
    pub fn dep_refs(&self) -> Vec<(&'static str, String)> {
        self.artifact_refs()
            .into_iter()
            .filter_map(|(k, a)| a.dep().map(|d| (k, d.to_string())))
            .collect()
    }

    /// Values that decode but cannot work, as (key under the step, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        match self {
            StepSettings::Grpo(s) => s.problems_found(),
            StepSettings::Tokenize(s) => s.problems(),
            StepSettings::Stage1(s) => s.train.problems(),
            StepSettings::Stage2(s) => s.problems(),
            StepSettings::Sft(s) => s.train.problems(),
            StepSettings::Eval(s) => s.problems(),
            StepSettings::Command(_)
            | StepSettings::Fetch(_)
            | StepSettings::Import(_)
            | StepSettings::Convert(_) => Vec::new(),
        }
    }

    /// Whether the step needs the whole machine (no other step runs beside it).
    pub fn exclusive(&self) -> bool {
        match self {
            StepSettings::Command(s) => s.exclusive,
            StepSettings::Fetch(_) => false,
            // Model work uses every core.
            StepSettings::Import(_)
            | StepSettings::Tokenize(_)
            | StepSettings::Stage1(_)
            | StepSettings::Stage2(_)
            | StepSettings::Sft(_)
            | StepSettings::Grpo(_)
            | StepSettings::Convert(_)
            | StepSettings::Eval(_) => true,
        }
    }

    /// Runs the step, writing its artifacts to `ctx.out_dir`.
    pub fn run(&self, ctx: &StepContext) -> anyhow::Result<()> {
        match self {
            StepSettings::Command(s) => command::run(s, ctx),
            StepSettings::Fetch(s) => fetch::run(s, ctx),
            StepSettings::Import(s) => import::run(s, ctx),
            StepSettings::Tokenize(s) => tokenize::run(s, ctx),
            StepSettings::Stage1(s) => stage1::run(s, ctx),
            StepSettings::Stage2(s) => stage2::run(s, ctx),
            StepSettings::Sft(s) => sft::run(s, ctx),
            StepSettings::Grpo(s) => grpo::run(s, ctx),
            StepSettings::Convert(s) => convert::run(s, ctx),
            StepSettings::Eval(s) => eval::run(s, ctx),
        }
    }
}
