//! What every training step leaves behind: the student directory (weights, config, the
//! tokenizer files of its source), `metrics.jsonl`, `loss.svg`, and `eval.json` (held-out
//! perplexity against a reference model).

use super::StepContext;
use crate::model::Transformer;
use crate::model::hybrid::Hybrid;
use crate::model::safetensors_io::SaveDtype;
use crate::train::trainer::metrics_path;
use anyhow::Result;
use burn::module::Module;
use burn::tensor::Device;
use std::path::Path;

/// Writes the trained student and its reports into the step's artifacts. `eval` is the
/// reference model, the tokenized data, and the number of held-out batches.
pub fn write_student(
    ctx: &StepContext,
    student: &Hybrid,
    tokenizer_from: &Path,
    label: &str,
    eval: Option<(&Transformer, &Path, usize)>,
) -> Result<()> {
    student.save(&ctx.out_dir, SaveDtype::F32)?;
    copy_tokenizer_files(tokenizer_from, &ctx.out_dir)?;
    let metrics = ctx.out_dir.join("metrics.jsonl");
    std::fs::copy(metrics_path(&ctx.checkpoints), &metrics)?;
    crate::train::plot::write_loss_svg(
        &metrics,
        &ctx.out_dir.join("loss.svg"),
        &format!("{} ({label})", ctx.id),
    )?;
    if let Some((reference, data, batches)) = eval {
        write_eval(&ctx.out_dir, reference, student, data, batches)?;
    }
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

/// Sequences per evaluation batch: fixed, so every step's eval.json covers the same held-out
/// sequences whatever its training micro-batch.
const EVAL_BATCH: usize = 4;

/// Writes `eval.json`: held-out perplexity of the teacher and the student, and their ratio.
pub fn write_eval(
    out: &std::path::Path,
    teacher: &Transformer,
    student: &Hybrid,
    data: &std::path::Path,
    batches: usize,
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
        EVAL_BATCH,
        batches,
        &device,
    )?;
    let s = crate::train::eval::perplexity(
        |i, a| student.forward(i, Some(a)),
        data,
        EVAL_BATCH,
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
