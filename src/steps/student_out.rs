//! What the training steps share: which parameters train, the loop over a tokenized dataset,
//! and what every step leaves behind — the student directory (weights, config, the tokenizer
//! files of its source), `metrics.jsonl`, `loss.svg`, and `eval.json` (held-out perplexity and agreement
//! against a reference model).

use crate::data::loader::{Batch, BatchLength, Loader};
use crate::model::Transformer;
use crate::model::hybrid::Hybrid;
use crate::model::safetensors_io::SaveDtype;
use crate::pipeline::StepContext;
use crate::text::tokenizer::copy_tokenizer_files;
use crate::train::trainer::{LossOutput, TrainSettings, Trainer, metrics_path};
use anyhow::Result;
use burn::module::Module;
use std::collections::BTreeSet;
use std::path::Path;

/// Trains `student` on the `train` split of `data` (with `replay`'s sequences mixed in, see
/// [`Replay`]) with the shared loop (checkpoints, resume, metrics, W&B with `settings` as the
/// run's config), on the step's ranks.
#[allow(clippy::too_many_arguments)]
pub fn train_student(
    ctx: &StepContext,
    train: &TrainSettings,
    data: &Path,
    replay: Option<Replay>,
    settings: serde_json::Value,
    student: Hybrid,
    trainable: BTreeSet<String>,
    loss: impl FnMut(&Hybrid, &Batch) -> Result<LossOutput>,
) -> Result<Hybrid> {
    let trainer = Trainer {
        settings: train,
        checkpoints: &ctx.checkpoints,
        step_id: &ctx.id,
        trainable,
        dist: ctx.dist,
    };
    run_on_data(
        ctx,
        &trainer,
        data,
        replay,
        student,
        ctx.wandb_sink(settings)?,
        loss,
    )
}

/// A second tokenized dataset whose `train` sequences are mixed into a step's data:
/// `fraction` of all the tokens trained on come from it.
#[derive(Debug, Clone, Copy)]
pub struct Replay<'a> {
    pub data: &'a Path,
    pub fraction: f64,
}

/// Runs `trainer` from `student` on the `train` split of `data` (and `replay`'s share), in
/// micro-batches and buckets as its settings say, in the order the step's seed gives.
pub fn run_on_data(
    ctx: &StepContext,
    trainer: &Trainer,
    data: &Path,
    replay: Option<Replay>,
    student: Hybrid,
    wandb: Option<crate::wandb::WandbSink>,
    loss: impl FnMut(&Hybrid, &Batch) -> Result<LossOutput>,
) -> Result<Hybrid> {
    let (micro, length) = (
        trainer.settings.micro_batch,
        BatchLength::Bucket(trainer.settings.bucket),
    );
    let mut loader = match replay {
        None => Loader::open(data, "train", micro, length, ctx.seed)?.0,
        Some(r) => {
            let (loader, (n, tokens)) =
                Loader::open_with_replay(data, r.data, r.fraction, micro, length, ctx.seed)?;
            tracing::info!(
                "{}: {n} sequences ({tokens} tokens, {:.0} % of the tokens) mixed in from {}",
                trainer.step_id,
                r.fraction * 100.0,
                r.data.display()
            );
            loader
        }
    };
    trainer.run(student, &mut loader, wandb, loss)
}

/// Writes the trained student and its reports into the step's artifacts. `eval` is the
/// reference model, the tokenized data, and the number of held-out batches.
pub fn write_student(
    ctx: &StepContext,
    student: &Hybrid,
    tokenizer_from: &Path,
    label: &str,
    eval: Option<(&Transformer, &Path, usize)>,
) -> Result<()> {
    if !ctx.dist.is_root() {
        return Ok(()); // rank 0 writes the step's artifacts
    }
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

/// Sequences per evaluation batch: fixed, so every step's eval.json covers the same held-out
/// sequences whatever its training micro-batch.
const EVAL_BATCH: usize = 4;

/// Writes `eval.json`: held-out perplexity of the teacher and the student, their ratio, and the
/// student's KL(teacher ‖ student) and top-1 agreement.
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
    let teacher = teacher.clone().valid();
    let student = student.clone().valid();
    let device = student.embed.val().device();
    let (t, agreement, _) = crate::evaluate::agreement::compare(
        &teacher,
        &[&student],
        data,
        EVAL_BATCH,
        batches,
        &device,
        |_| {},
    )?;
    let a = agreement[0];
    tracing::info!(
        "held-out perplexity: teacher {t:.3}, student {:.3} (ratio {:.3})",
        a.perplexity,
        a.perplexity_ratio
    );
    crate::util::fsx::atomic_write_json(
        &out.join("eval.json"),
        &serde_json::json!({
            "teacher_perplexity": t, "student_perplexity": a.perplexity,
            "perplexity_ratio": a.perplexity_ratio, "kl": a.kl, "top1": a.top1, "batches": batches,
        }),
    )?;
    Ok(())
}

/// How many ranks a training step can share its optimizer steps among: one micro-batch each
/// at least.
pub fn max_ranks(train: &TrainSettings) -> (usize, String) {
    (
        train.grad_accum.max(1),
        format!(
            "train.grad_accum = {} micro-batches per optimizer step are shared among the ranks (at least one each); raise it",
            train.grad_accum
        ),
    )
}
