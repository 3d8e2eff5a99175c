//! `sft` steps: supervised fine-tuning of a student on chat data (SPEC §5): cross-entropy on
//! the assistant tokens only (the tokenize step's loss mask), labels shifted exactly once.
//! Writes the student directory, `metrics.jsonl`, `loss.svg` and `eval.json`.

use super::student_out::{train_student, write_student};
use crate::model::Transformer;
use crate::model::hybrid::Hybrid;
use crate::pipeline::ArtifactRef;
use crate::pipeline::step::{Step, StepContext, settings_json};
use crate::train::losses::{batch_tensors, cross_entropy};
use crate::train::optim::trainable;
use crate::train::trainer::{LossOutput, TrainSettings};
use anyhow::Result;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SftSettings {
    /// The student directory to fine-tune (e.g. `@stage2`).
    pub student: ArtifactRef,
    /// A tokenized chat dataset (loss masks mark the assistant turns).
    pub data: ArtifactRef,
    /// A reference model for eval.json's perplexity ratio (e.g. the teacher); none: skipped.
    #[serde(default)]
    pub reference: Option<ArtifactRef>,
    #[serde(default)]
    pub freeze_mlp: bool,
    #[serde(default = "crate::train::trainer::d_eval_batches")]
    pub eval_batches: usize,
    pub train: TrainSettings,
}

impl SftSettings {
    pub fn refs(&self) -> impl Iterator<Item = (&'static str, &ArtifactRef)> {
        [("student", &self.student), ("data", &self.data)]
            .into_iter()
            .chain(self.reference.iter().map(|r| ("reference", r)))
    }
}

impl Step for SftSettings {
    fn kind(&self) -> &'static str {
        "sft"
    }

    fn settings_json(&self) -> serde_json::Value {
        settings_json(self)
    }

    fn artifact_refs(&self) -> Vec<(&'static str, &ArtifactRef)> {
        self.refs().collect()
    }

    fn problems(&self) -> Vec<(String, String)> {
        self.train.problems()
    }

    fn max_ranks(&self) -> (usize, String) {
        super::student_out::max_ranks(&self.train)
    }

    fn run(&self, ctx: &StepContext) -> anyhow::Result<()> {
        run(self, ctx)
    }
}

pub fn run(s: &SftSettings, ctx: &StepContext) -> Result<()> {
    let device = ctx.tensor_device()?.autodiff();
    let student_dir = s.student.resolve(ctx)?;
    let data_dir = s.data.resolve(ctx)?;
    let (student, trainable) = trainable(Hybrid::load(&student_dir, &device)?, s.freeze_mlp);
    let student = train_student(
        ctx,
        &s.train,
        &data_dir,
        serde_json::to_value(s)?,
        student,
        trainable,
        |m: &Hybrid, batch| {
            let (ids, att, mask) = batch_tensors(batch, &device);
            let logits = m.forward(ids.clone(), Some(att.clone()));
            let (loss, targets) = cross_entropy(logits, ids, att, mask);
            Ok(LossOutput {
                loss,
                metrics: [("target_tokens".to_string(), targets)].into(),
            })
        },
    )?;
    let reference = s
        .reference
        .as_ref()
        .map(|r| Transformer::load(&r.resolve(ctx)?, &device))
        .transpose()?;
    let eval = reference
        .as_ref()
        .map(|r| (r, data_dir.as_path(), s.eval_batches));
    write_student(ctx, &student, &student_dir, "SFT", eval)?;
    Ok(())
}
