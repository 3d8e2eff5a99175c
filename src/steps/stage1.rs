//! `stage1` steps: attention alignment (SPEC §3). The teacher runs once per batch without
//! gradients; each converted layer's RWKV-7 mixer learns to reproduce that layer's attention
//! output from its attention input (teacher-path inputs). Only the mixers train. The step
//! writes the student directory (`rwkv_hybrid`, with the teacher's tokenizer files) and
//! `metrics.jsonl` (loss, per-layer losses, lr, gradient norm, tokens/s).

use super::StepContext;
use super::artifact::ArtifactRef;
use crate::data::loader::{BatchLength, Loader};
use crate::model::Transformer;
use crate::model::hybrid::{GqaMode, Hybrid, InitMode, LayerSelection, Mixer, StudentConfig};
use crate::model::safetensors_io::SaveDtype;
use crate::model::time_mixer::GateForm;
use crate::train::losses::stage1_loss;
use crate::train::optim::named_params;
use crate::train::trainer::{LossOutput, TrainSettings, Trainer, metrics_path};
use anyhow::Result;
use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

fn yes() -> bool {
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
    #[serde(default = "yes")]
    pub group_norm: bool,
    #[serde(default)]
    pub rope: bool,
    #[serde(default)]
    pub gqa: GqaMode,
    /// Held-out batches for the perplexity in eval.json (0: skip).
    #[serde(default = "d_eval")]
    pub eval_batches: usize,
    pub train: TrainSettings,
}

fn d_eval() -> usize {
    8
}

impl Stage1Settings {
    pub fn refs(&self) -> impl Iterator<Item = (&'static str, &ArtifactRef)> {
        [("teacher", &self.teacher), ("data", &self.data)].into_iter()
    }
}

pub fn run(s: &Stage1Settings, ctx: &StepContext) -> Result<()> {
    let device = Device::flex().autodiff();
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
        lora: None,
        gate: s.gate,
        group_norm: s.group_norm,
        rope: s.rope,
        gqa: s.gqa,
    };
    let base = Transformer::load(&teacher_dir, &device)?;
    let mut student =
        Hybrid::from_teacher(base, student_cfg, s.init, ctx.seed)?.set_require_grad(false);
    for layer in &mut student.layers {
        if let Mixer::Rwkv(m) = &mut layer.mixer {
            *m = m.clone().set_require_grad(true);
        }
    }
    let trainable: std::collections::BTreeSet<String> = {
        let all = named_params(&student, None);
        all.into_keys().filter(|k| k.contains(".Rwkv.")).collect()
    };
    let (mut loader, _) = Loader::open(
        &data_dir,
        "train",
        s.train.micro_batch,
        BatchLength::Bucket(s.train.bucket),
        ctx.seed,
    )?;
    let trainer = Trainer {
        settings: &s.train,
        checkpoints: &ctx.checkpoints,
        step_id: &ctx.id,
        trainable,
    };
    let student = trainer.run(
        student,
        &mut loader,
        ctx.wandb_sink(serde_json::to_value(s)?)?,
        |m: &Hybrid, batch| {
            let (loss, metrics) = stage1_loss(&teacher, m, batch, &device);
            Ok(LossOutput { loss, metrics })
        },
    )?;
    student.save(&ctx.out_dir, SaveDtype::F32)?;
    copy_tokenizer_files(&teacher_dir, &ctx.out_dir)?;
    std::fs::copy(
        metrics_path(&ctx.checkpoints),
        ctx.out_dir.join("metrics.jsonl"),
    )?;
    crate::train::plot::write_loss_svg(
        &ctx.out_dir.join("metrics.jsonl"),
        &ctx.out_dir.join("loss.svg"),
        &format!("{} (stage 1)", ctx.id),
    )?;
    write_eval(
        &ctx.out_dir,
        &teacher,
        &student,
        &data_dir,
        s.eval_batches,
        s.train.micro_batch,
    )?;
    Ok(())
}

/// Writes `eval.json`: held-out perplexity of the teacher and the student, and their ratio.
pub fn write_eval(
    out: &std::path::Path,
    teacher: &Transformer,
    student: &Hybrid,
    data: &std::path::Path,
    batches: usize,
    batch_size: usize,
) -> Result<()> {
    if batches == 0 {
        return Ok(());
    }
    let device = Device::flex();
    let teacher = teacher.clone().valid();
    let student = student.clone().valid();
    let t = crate::train::eval::perplexity(
        |i, a| teacher.forward(i, Some(a)),
        data,
        batch_size,
        batches,
        &device,
    )?;
    let s = crate::train::eval::perplexity(
        |i, a| student.forward(i, Some(a)),
        data,
        batch_size,
        batches,
        &device,
    )?;
    tracing::info!(
        "held-out perplexity: teacher {t:.3}, student {s:.3} (ratio {:.3})",
        s / t
    );
    crate::util::fsx::atomic_write_json(
        &out.join("eval.json"),
        &serde_json::json!({"teacher_perplexity": t, "student_perplexity": s, "perplexity_ratio": s / t, "batches": batches}),
    )?;
    Ok(())
}

/// Copies the tokenizer and generation files of a model directory.
pub fn copy_tokenizer_files(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        if from.join(f).exists() {
            std::fs::copy(from.join(f), to.join(f))?;
        }
    }
    Ok(())
}
