//! `stage1` steps: attention alignment (SPEC §3). The teacher runs once per batch without
//! gradients; each converted layer's RWKV-7 mixer learns to reproduce that layer's attention
//! output from its attention input (teacher-path inputs). Only the mixers train. The step
//! writes the student directory (`rwkv_hybrid`, with the teacher's tokenizer files) and
//! `metrics.jsonl` (loss, per-layer losses, lr, gradient norm, tokens/s).

use super::student_out::{train_student, write_student};
use crate::model::Transformer;
use crate::model::hybrid::{GqaMode, Hybrid, InitMode, LayerSelection, Mixer, StudentConfig};
use crate::model::time_mixer::{GateForm, LoraRanks};
use crate::pipeline::ArtifactRef;
use crate::pipeline::step::{Step, StepContext, settings_json};
use crate::train::losses::stage1_loss;
use crate::train::optim::named_params;
use crate::train::trainer::{LossOutput, TrainSettings};
use anyhow::Result;
use burn::module::Module;
use serde::{Deserialize, Serialize};

fn d_yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stage1Settings {
    /// The teacher model directory (e.g. `@teacher`).
    pub teacher: ArtifactRef,
    /// A tokenized dataset (a `tokenize` step's artifacts).
    pub data: ArtifactRef,
    /// Layers to convert: `"all"`, a list, or `{ every = K, offset = O }`.
    pub layers: LayerSelection,
    /// `teacher` (copy q/k/v/o) or `rwkv`.
    #[serde(default)]
    pub init: InitMode,
    #[serde(default)]
    pub gate: GateForm,
    #[serde(default = "d_yes")]
    pub group_norm: bool,
    #[serde(default)]
    pub rope: bool,
    #[serde(default)]
    pub gqa: GqaMode,
    /// LoRA ranks `{ decay, a, v, gate }` (default: RWKV-LM's sizes for the hidden size).
    #[serde(default)]
    pub lora: Option<LoraRanks>,
    /// Held-out batches for the perplexity in eval.json (0: skip).
    #[serde(default = "crate::train::trainer::d_eval_batches")]
    pub eval_batches: usize,
    pub train: TrainSettings,
}

impl Stage1Settings {
    pub fn refs(&self) -> impl Iterator<Item = (&'static str, &ArtifactRef)> {
        [("teacher", &self.teacher), ("data", &self.data)].into_iter()
    }
}

impl Step for Stage1Settings {
    fn kind(&self) -> &'static str {
        "stage1"
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

pub fn run(s: &Stage1Settings, ctx: &StepContext) -> Result<()> {
    let device = ctx.tensor_device()?.autodiff();
    let teacher_dir = s.teacher.resolve(ctx)?;
    let data_dir = s.data.resolve(ctx)?;
    let teacher = Transformer::load(&teacher_dir, &device)?.set_require_grad(false);
    let layers = s.layers.resolve(teacher.config.num_hidden_layers)?;
    anyhow::ensure!(
        !layers.is_empty(),
        "layers: stage 1 needs at least one layer to convert"
    );
    let student_cfg = StudentConfig {
        wkv_layers: layers,
        lora: s.lora,
        gate: s.gate,
        group_norm: s.group_norm,
        rope: s.rope,
        gqa: s.gqa,
    };
    // The student starts as the (frozen) teacher: share its tensors instead of loading them again.
    let mut student = Hybrid::from_teacher(teacher.clone(), student_cfg, s.init, ctx.seed)?
        .set_require_grad(false);
    for layer in &mut student.layers {
        if let Mixer::Rwkv(m) = &mut layer.mixer {
            *m = m.clone().set_require_grad(true);
        }
    }
    let trainable: std::collections::BTreeSet<String> = {
        let all = named_params(&student, None);
        all.into_keys().filter(|k| k.contains(".Rwkv.")).collect()
    };
    let student = train_student(
        ctx,
        &s.train,
        &data_dir,
        serde_json::to_value(s)?,
        student,
        trainable,
        |m: &Hybrid, batch| {
            let (loss, metrics) = stage1_loss(&teacher, m, batch, &device);
            Ok(LossOutput { loss, metrics })
        },
    )?;
    write_student(
        ctx,
        &student,
        &teacher_dir,
        "stage 1",
        Some((&teacher, &data_dir, s.eval_batches)),
    )?;
    Ok(())
}
