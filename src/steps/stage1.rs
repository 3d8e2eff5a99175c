//! `stage1` steps: attention alignment (SPEC §3). The teacher runs once per batch without
//! gradients; each converted layer's RWKV-7 mixer learns to reproduce that layer's attention
//! output from its attention input (teacher-path inputs). Only the mixers train. The step
//! writes the student directory (`rwkv_hybrid`, with the teacher's tokenizer files) and
//! `metrics.jsonl` (loss, per-layer losses, lr, gradient norm, tokens/s). With
//! `layers = { auto = K }` the layers are chosen first by the layer probe
//! ([`super::layer_probe`]), whose choice is written as `layer_choice.json`.

use super::layer_probe::{self, ProbeSettings};
use super::student_out::{train_student, write_student};
use crate::evaluate::layer_choice::CHOICE_FILE;
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
use std::collections::BTreeSet;

fn d_yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stage1Settings {
    /// The teacher model directory (e.g. `@teacher`).
    pub teacher: ArtifactRef,
    /// A tokenized dataset (a `tokenize` step's artifacts).
    pub data: ArtifactRef,
    /// Layers to convert: `"all"`, a list, `{ every = K, offset = O }`, or `{ auto = K }` (the K
    /// layers whose replacement costs least, measured by a probe first; see
    /// [`super::layer_probe`]).
    pub layers: LayerSelection,
    /// The probe behind `layers = { auto = K }` (`[step.probe]`; defaults when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeSettings>,
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
        let mut out = self.train.problems();
        match (&self.layers, &self.probe) {
            (LayerSelection::Auto { auto: 0 }, _) => out.push((
                "layers".into(),
                "layers = { auto = 0 } converts nothing: K must be at least 1".into(),
            )),
            (LayerSelection::Auto { .. }, Some(p)) => out.extend(p.problems()),
            (_, Some(_)) => out.push((
                "probe".into(),
                "[step.probe] is used only with layers = { auto = K }: remove it or choose the layers by measurement".into(),
            )),
            _ => {}
        }
        out
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
    let (layers, choice) = match &s.layers {
        LayerSelection::Auto { auto } => {
            let choice = layer_probe::choose(ctx, s, *auto, &teacher, &data_dir, &device)?;
            (choice.layers.clone(), Some(choice))
        }
        fixed => (fixed.resolve(teacher.config.num_hidden_layers)?, None),
    };
    anyhow::ensure!(
        !layers.is_empty(),
        "layers: stage 1 needs at least one layer to convert"
    );
    // The student starts as the (frozen) teacher: share its tensors instead of loading them again.
    let (student, trainable) = s.student(&teacher, layers, ctx.seed)?;
    let student = train_student(
        ctx,
        &s.train,
        &data_dir,
        None,
        serde_json::to_value(s)?,
        student,
        trainable,
        |m: &Hybrid, batch| {
            let (loss, metrics) = stage1_loss(&teacher, m, batch, &device, true);
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
    if let Some(choice) = choice
        && ctx.dist.is_root()
    {
        crate::util::fsx::atomic_write_json(&ctx.out_dir.join(CHOICE_FILE), &choice)?;
    }
    Ok(())
}

impl Stage1Settings {
    /// The hybrid of `teacher` with mixers in `layers`, initialised as the step says, and the
    /// names of its trainable parameters: the mixers only (the rest stays the teacher's).
    pub fn student(
        &self,
        teacher: &Transformer,
        layers: Vec<usize>,
        seed: u64,
    ) -> Result<(Hybrid, BTreeSet<String>)> {
        let config = StudentConfig {
            wkv_layers: layers,
            lora: self.lora,
            gate: self.gate,
            group_norm: self.group_norm,
            rope: self.rope,
            gqa: self.gqa,
        };
        let mut student =
            Hybrid::from_teacher(teacher.clone(), config, self.init, seed)?.set_require_grad(false);
        for layer in &mut student.layers {
            if let Mixer::Rwkv(m) = &mut layer.mixer {
                *m = m.clone().set_require_grad(true);
            }
        }
        let trainable = named_params(&student, None)
            .into_keys()
            .filter(|k| k.contains(crate::model::hybrid::MIXER_PARAMS))
            .collect();
        Ok((student, trainable))
    }
}
