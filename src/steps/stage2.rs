//! `stage2` steps: knowledge distillation on logits (SPEC §4), starting from a stage-1 student.
//! A tied embedding/LM head is untied first; all parameters train except the MLPs when
//! `freeze_mlp` is set. The loss is `kl_weight·τ²·KL(teacher ‖ student) + ce_weight·CE`, or with
//! `adaptive_kl` the original's AKL in place of the forward KL. The
//! teacher may be a larger model with the same tokenizer (its logits are cut to the student's
//! vocabulary). Writes the student directory, `metrics.jsonl` and `eval.json` (held-out
//! perplexity of teacher and student).

use super::student_out::{train_student, write_student};
use crate::model::Transformer;
use crate::model::hybrid::Hybrid;
use crate::pipeline::ArtifactRef;
use crate::pipeline::step::{Step, StepContext, settings_json};
use crate::train::losses::DistillLoss;
use crate::train::optim::trainable;
use crate::train::trainer::{LossOutput, TrainSettings};
use anyhow::Result;
use burn::module::{Module, Param};
use serde::{Deserialize, Serialize};

fn d_one() -> f64 {
    1.0
}
fn d_half() -> f64 {
    0.5
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stage2Settings {
    /// The stage-1 student directory (e.g. `@stage1`).
    pub student: ArtifactRef,
    /// The teacher model directory.
    pub teacher: ArtifactRef,
    /// A tokenized dataset.
    pub data: ArtifactRef,
    #[serde(default = "d_one")]
    pub kl_weight: f64,
    #[serde(default)]
    pub ce_weight: f64,
    #[serde(default = "d_one")]
    pub temperature: f64,
    /// Adaptive KL (the original's AKL): mix forward and reverse KL per position by how far the
    /// student is from the teacher on the teacher's head (tokens reaching probability
    /// `akl_head_mass`) versus its tail.
    #[serde(default)]
    pub adaptive_kl: bool,
    #[serde(default = "d_half")]
    pub akl_head_mass: f64,
    /// Keep the MLPs frozen.
    #[serde(default)]
    pub freeze_mlp: bool,
    /// Held-out batches for the perplexity in eval.json (0: skip).
    #[serde(default = "crate::train::trainer::d_eval_batches")]
    pub eval_batches: usize,
    pub train: TrainSettings,
}

impl Stage2Settings {
    pub fn refs(&self) -> impl Iterator<Item = (&'static str, &ArtifactRef)> {
        [
            ("student", &self.student),
            ("teacher", &self.teacher),
            ("data", &self.data),
        ]
        .into_iter()
    }
}

impl Stage2Settings {
    /// Values that decode but cannot work, as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = self.train.problems();
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            out.push((
                "temperature".into(),
                format!("temperature must be > 0, got {}", self.temperature),
            ));
        }
        if !(self.akl_head_mass > 0.0 && self.akl_head_mass <= 1.0) {
            out.push((
                "akl_head_mass".into(),
                format!(
                    "akl_head_mass must be in (0, 1], got {}",
                    self.akl_head_mass
                ),
            ));
        }
        for (k, v) in [("kl_weight", self.kl_weight), ("ce_weight", self.ce_weight)] {
            if !(v >= 0.0 && v.is_finite()) {
                out.push((k.into(), format!("{k} must be ≥ 0, got {v}")));
            }
        }
        if self.kl_weight == 0.0 && self.ce_weight == 0.0 {
            out.push((
                "kl_weight".into(),
                "kl_weight and ce_weight are both 0: the loss would be 0".into(),
            ));
        }
        out
    }
}

impl Step for Stage2Settings {
    fn kind(&self) -> &'static str {
        "stage2"
    }

    fn settings_json(&self) -> serde_json::Value {
        settings_json(self)
    }

    fn artifact_refs(&self) -> Vec<(&'static str, &ArtifactRef)> {
        self.refs().collect()
    }

    fn problems(&self) -> Vec<(String, String)> {
        Stage2Settings::problems(self)
    }

    fn max_ranks(&self) -> (usize, String) {
        super::student_out::max_ranks(&self.train)
    }

    fn run(&self, ctx: &StepContext) -> anyhow::Result<()> {
        run(self, ctx)
    }
}

pub fn run(s: &Stage2Settings, ctx: &StepContext) -> Result<()> {
    let device = ctx.tensor_device()?.autodiff();
    let teacher_dir = s.teacher.resolve(ctx)?;
    let student_dir = s.student.resolve(ctx)?;
    let data_dir = s.data.resolve(ctx)?;
    let teacher = Transformer::load(&teacher_dir, &device)?.set_require_grad(false);
    let mut student = Hybrid::load(&student_dir, &device)?;
    if student.lm_head.is_none() {
        // Untie: the head becomes its own copy of the embeddings, stored [C, vocab].
        student.lm_head = Some(Param::from_tensor(student.embed.val().transpose().detach()));
    }
    let (student, trainable) = trainable(student, s.freeze_mlp);
    let objective = DistillLoss {
        kl_weight: s.kl_weight,
        ce_weight: s.ce_weight,
        temperature: s.temperature,
        adaptive: s.adaptive_kl.then_some(s.akl_head_mass),
    };
    let student = train_student(
        ctx,
        &s.train,
        &data_dir,
        None,
        serde_json::to_value(s)?,
        student,
        trainable,
        |m: &Hybrid, batch| {
            let (loss, metrics) = objective.of_models(&teacher, m, batch, &device);
            Ok(LossOutput { loss, metrics })
        },
    )?;
    write_student(
        ctx,
        &student,
        &student_dir,
        "stage 2",
        Some((&teacher, &data_dir, s.eval_batches)),
    )?;
    Ok(())
}
