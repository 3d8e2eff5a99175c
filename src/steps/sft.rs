//! `sft` steps: supervised fine-tuning of a student on chat data (SPEC §5): cross-entropy on
//! the assistant tokens only (the tokenize step's loss mask), labels shifted exactly once;
//! with `kl_weight` > 0, plus `kl_weight · KL(teacher ‖ student)` over every real token, which
//! holds the student near its teacher's distribution while it learns the chat data. With
//! `replay`, sequences of another tokenized dataset (e.g. the distillation text) are mixed into
//! the chat data, `replay_fraction` of the tokens, with the same objective over them: rehearsal
//! of what earlier stages taught while the student learns the chats.
//! Writes the student directory, `metrics.jsonl`, `loss.svg` and `eval.json`.

use super::student_out::{Replay, train_student, write_student};
use crate::model::Transformer;
use crate::model::hybrid::Hybrid;
use crate::pipeline::ArtifactRef;
use crate::pipeline::step::{Step, StepContext, settings_json};
use crate::train::losses::{DistillLoss, batch_tensors, cross_entropy};
use crate::train::optim::trainable;
use crate::train::trainer::{LossOutput, TrainSettings};
use anyhow::Result;
use burn::module::Module;
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
    /// The model whose distribution the KL term holds the student to (e.g. `@teacher`);
    /// needed when `kl_weight` > 0.
    #[serde(default)]
    pub teacher: Option<ArtifactRef>,
    /// Weight of `KL(teacher ‖ student)` (over every real token) beside the cross-entropy; 0
    /// (the default): cross-entropy alone, and no teacher forward.
    #[serde(default)]
    pub kl_weight: f64,
    /// A tokenized dataset (e.g. `@text_tokens`, from the same tokenizer) whose `train`
    /// sequences are mixed into the chat data; none (the default): the chat data alone.
    #[serde(default)]
    pub replay: Option<ArtifactRef>,
    /// The share of the training tokens that come from `replay`, between 0 and 1.
    #[serde(default = "d_replay_fraction")]
    pub replay_fraction: f64,
    #[serde(default = "crate::train::trainer::d_eval_batches")]
    pub eval_batches: usize,
    pub train: TrainSettings,
}

fn d_replay_fraction() -> f64 {
    0.25
}

impl SftSettings {
    pub fn refs(&self) -> impl Iterator<Item = (&'static str, &ArtifactRef)> {
        [("student", &self.student), ("data", &self.data)]
            .into_iter()
            .chain(self.reference.iter().map(|r| ("reference", r)))
            .chain(self.teacher.iter().map(|t| ("teacher", t)))
            .chain(self.replay.iter().map(|r| ("replay", r)))
    }

    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = self.train.problems();
        if !(self.kl_weight >= 0.0 && self.kl_weight.is_finite()) {
            out.push((
                "kl_weight".into(),
                format!("kl_weight must be ≥ 0, got {}", self.kl_weight),
            ));
        }
        if self.replay.is_some() && !(self.replay_fraction > 0.0 && self.replay_fraction < 1.0) {
            out.push((
                "replay_fraction".into(),
                format!(
                    "replay_fraction is the share of the training tokens taken from `replay` and \
                     must be between 0 and 1 (exclusive), got {}",
                    self.replay_fraction
                ),
            ));
        }
        if self.kl_weight > 0.0 && self.teacher.is_none() {
            out.push((
                "teacher".into(),
                format!(
                    "kl_weight = {} needs a teacher to hold the student to: set \
                     `teacher = \"@teacher\"` (or set kl_weight = 0)",
                    self.kl_weight
                ),
            ));
        }
        out
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
        SftSettings::problems(self)
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
    let replay_dir = s.replay.as_ref().map(|r| r.resolve(ctx)).transpose()?;
    let replay = replay_dir.as_deref().map(|data| Replay {
        data,
        fraction: s.replay_fraction,
    });
    let (student, trainable) = trainable(Hybrid::load(&student_dir, &device)?, s.freeze_mlp);
    // With the KL term: the teacher and the stage-2 objective (CE at weight 1 beside the KL).
    let held = match &s.teacher {
        Some(t) if s.kl_weight > 0.0 => Some((
            Transformer::load(&t.resolve(ctx)?, &device)?.set_require_grad(false),
            DistillLoss {
                kl_weight: s.kl_weight,
                ce_weight: 1.0,
                temperature: 1.0,
                adaptive: None,
            },
        )),
        _ => None,
    };
    let student = train_student(
        ctx,
        &s.train,
        &data_dir,
        replay,
        serde_json::to_value(s)?,
        student,
        trainable,
        |m: &Hybrid, batch| {
            if let Some((teacher, objective)) = &held {
                let (loss, metrics) = objective.of_models(teacher, m, batch, &device);
                return Ok(LossOutput { loss, metrics });
            }
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
