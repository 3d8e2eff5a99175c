//! `grpo` steps: group relative policy optimisation of a student on math problems with
//! verifiable answers (SPEC §6; the loop is [`crate::grpo::train`], the settings
//! [`crate::grpo::settings::GrpoSettings`]).

use crate::grpo::settings;
use crate::grpo::train::{RunIo, train};
use crate::pipeline::ArtifactRef;
use crate::pipeline::step::{Step, StepContext, settings_json};
use anyhow::Result;

/// The step's settings: paths are artifact references.
pub type GrpoSettings = settings::GrpoSettings<ArtifactRef>;

impl Step for GrpoSettings {
    fn kind(&self) -> &'static str {
        "grpo"
    }

    fn settings_json(&self) -> serde_json::Value {
        settings_json(self)
    }

    fn artifact_refs(&self) -> Vec<(&'static str, &ArtifactRef)> {
        [("student", &self.student), ("problems", &self.problems)]
            .into_iter()
            .chain(self.test_problems.iter().map(|t| ("test_problems", t)))
            .collect()
    }

    fn problems(&self) -> Vec<(String, String)> {
        self.problems_found()
    }

    fn max_ranks(&self) -> (usize, String) {
        (
            self.prompts_per_step.max(1),
            format!(
                "prompts_per_step = {} prompts per step are shared among the ranks (at least one each); raise it",
                self.prompts_per_step
            ),
        )
    }

    fn run(&self, ctx: &StepContext) -> Result<()> {
        let paths = self.map_paths(|r| r.resolve(ctx))?;
        let io = RunIo {
            id: &ctx.id,
            seed: ctx.seed,
            checkpoints: &ctx.checkpoints,
            out_dir: &ctx.out_dir,
            wandb: ctx.wandb_sink(serde_json::to_value(self)?)?,
            device: ctx.tensor_device()?,
            dist: ctx.dist,
        };
        train(&paths, io)
    }
}
