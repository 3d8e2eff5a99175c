//! Stage 1's layer probe, behind `layers = { auto = K }`: which K layers to convert, chosen by
//! what replacing each one costs.
//!
//! 1. A mixer is trained in *every* layer at once for a few stage-1 steps (`[step.probe]
//!    steps`, the step's own batch sizes, its learning rates decayed over the probe). Each
//!    learns from its own layer's attention input and output, with no other layer's values
//!    (`v_first`), so the layers learn independently of each other and of which others end up
//!    converted.
//! 2. Each layer's cost is the held-out KL(teacher ‖ the teacher with only that layer's
//!    attention replaced by its probe mixer), on the same fixed batches for every layer. The
//!    teacher runs once per batch; each layer's variant starts from the teacher's residual
//!    stream entering that layer, so only the layers from it on are run again.
//! 3. The K layers with the lowest KL are converted (ties: the lower index).
//!
//! The probe's mixers are then dropped: stage 1 trains the chosen layers from the same
//! initialisation as it would layers named by hand, so an `auto` choice and a fixed one compare
//! at equal training. The probe trains with its own checkpoints (a folder under the step's) and
//! its result is kept beside them (`layer_choice.json`), so a resumed step neither probes again
//! nor chooses differently; it is also written into the step's artifacts, where the `eval`
//! report shows it. With several ranks the probe trains like the step (micro-batches shared)
//! and the layers are scored on the ranks in turn, the scores summed over ranks: every rank
//! chooses the same layers.

use super::stage1::Stage1Settings;
use super::student_out::run_on_data;
use crate::evaluate::agreement::heldout_batches;
use crate::evaluate::layer_choice::{CHOICE_FILE, LayerChoice, replaced_alone};
use crate::model::Transformer;
use crate::model::hybrid::Hybrid;
use crate::model::weights::to_vec;
use crate::pipeline::step::StepContext;
use crate::train::losses::{batch_tensors, stage1_loss};
use crate::train::trainer::{LossOutput, TrainSettings, Trainer};
use anyhow::{Result, ensure};
use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Sequences per held-out scoring batch.
const SCORE_BATCH: usize = 4;

fn d_steps() -> u64 {
    16
}
fn d_batches() -> usize {
    2
}

/// `[step.probe]` of a stage-1 step with `layers = { auto = K }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSettings {
    /// Optimizer steps training the probe's mixers (with `[step.train]`'s micro-batch,
    /// accumulation and learning rates; warm-up at most a quarter of them, then the decay to
    /// `lr_final` over the probe).
    #[serde(default = "d_steps")]
    pub steps: u64,
    /// Held-out batches of 4 sequences on which each layer is scored.
    #[serde(default = "d_batches")]
    pub batches: usize,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            steps: d_steps(),
            batches: d_batches(),
        }
    }
}

impl ProbeSettings {
    /// Values that decode but cannot work, as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.steps == 0 {
            out.push((
                "probe.steps".into(),
                "probe.steps must be at least 1: untrained mixers say little about a layer".into(),
            ));
        }
        if self.batches == 0 {
            out.push((
                "probe.batches".into(),
                "probe.batches must be at least 1".into(),
            ));
        }
        out
    }
}

/// The `k` layers stage 1 converts: the kept choice of an earlier attempt of this step, or a
/// new probe (see the module documentation).
pub fn choose(
    ctx: &StepContext,
    s: &Stage1Settings,
    k: usize,
    teacher: &Transformer,
    data: &std::path::Path,
    device: &Device,
) -> Result<LayerChoice> {
    let n = teacher.config.num_hidden_layers;
    ensure!(
        (1..=n).contains(&k),
        "layers = {{ auto = {k} }}: the teacher has {n} layers; choose K from 1 to {n}"
    );
    let probe = s.probe.clone().unwrap_or_default();
    let kept = ctx.checkpoints.dir().join(CHOICE_FILE);
    if let Some(choice) = crate::util::fsx::read_json::<LayerChoice>(&kept)?
        && choice.k == k
        && choice.probe_steps == probe.steps
        && choice.batches == probe.batches
        && choice.scores.len() == n
    {
        tracing::info!(
            "{}: layers {:?} (chosen by the probe of an earlier attempt)",
            ctx.id,
            choice.layers
        );
        return Ok(choice);
    }
    let t0 = Instant::now();
    let mixers = train(ctx, s, &probe, teacher, data, device)?;
    let (scores, positions) = score(ctx, teacher, &mixers.valid(), data, probe.batches)?;
    let mut choice = LayerChoice::from_scores(k, &scores);
    choice.probe_steps = probe.steps;
    choice.batches = probe.batches;
    choice.positions = positions;
    choice.seconds = t0.elapsed().as_secs_f64();
    tracing::info!(
        "{}: layer probe chose {:?} in {:.0} s; KL per layer: {}",
        ctx.id,
        choice.layers,
        choice.seconds,
        choice
            .scores
            .iter()
            .map(|s| format!("{}:{:.3}", s.layer, s.kl))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if ctx.dist.is_root() {
        crate::util::fsx::atomic_write_json(&kept, &choice)?;
    }
    Ok(choice)
}

/// Trains a mixer in every layer for `probe.steps` stage-1 steps, each layer on its own.
fn train(
    ctx: &StepContext,
    s: &Stage1Settings,
    probe: &ProbeSettings,
    teacher: &Transformer,
    data: &std::path::Path,
    device: &Device,
) -> Result<Hybrid> {
    let every_layer = (0..teacher.config.num_hidden_layers).collect();
    let (model, trainable) = s.student(teacher, every_layer, ctx.seed)?;
    // The schedule runs its course over the probe: warm-up (a quarter of the steps at most),
    // then the decay to lr_final over the probe's tokens (full sequences; shorter ones stop at
    // the step limit).
    let seq_len = crate::data::shards::read_manifest(data)?.max_seq_len as u64;
    let step_tokens = (s.train.micro_batch * s.train.grad_accum.max(1)) as u64 * seq_len;
    let settings = TrainSettings {
        max_steps: probe.steps,
        max_tokens: s.train.max_tokens.min(probe.steps * step_tokens).max(1),
        warmup_steps: s.train.warmup_steps.min(probe.steps / 4),
        checkpoint_every: s.train.checkpoint_every.min(probe.steps),
        ..s.train.clone()
    };
    let checkpoints = ctx.checkpoints.nested("probe");
    let label = format!("{} (layer probe)", ctx.id);
    let trainer = Trainer {
        settings: &settings,
        checkpoints: &checkpoints,
        step_id: &label,
        trainable,
        dist: ctx.dist,
    };
    run_on_data(
        ctx,
        &trainer,
        data,
        None,
        model,
        None,
        |m: &Hybrid, batch| {
            let (loss, metrics) = stage1_loss(teacher, m, batch, device, false);
            Ok(LossOutput { loss, metrics })
        },
    )
}

/// `(KL, top-1)` of every layer replaced alone by its mixer in `mixers`, over the held-out
/// positions of up to `batches` batches; with the number of positions.
fn score(
    ctx: &StepContext,
    teacher: &Transformer,
    mixers: &Hybrid,
    data: &std::path::Path,
    batches: usize,
) -> Result<(Vec<(f64, f64)>, f64)> {
    let teacher = teacher.clone().valid();
    let device = teacher.embed.val().device();
    let n = teacher.config.num_hidden_layers;
    let dist = ctx.dist;
    let mine: Vec<usize> = (0..n).filter(|l| l % dist.world() == dist.rank()).collect();
    let (mut loader, batches) = heldout_batches(data, SCORE_BATCH, batches)?;
    let bar = ctx.progress_bar((batches * mine.len()) as u64, "layers scored");
    // Per layer: summed KL, agreeing positions; then the number of positions.
    let mut sums = vec![0.0f64; 2 * n + 1];
    for b in 0..batches {
        let batch = loader.next_batch();
        let (ids, att, _) = batch_tensors(&batch, &device);
        if dist.is_root() {
            sums[2 * n] += to_vec(att.clone().sum())[0] as f64;
        }
        let layer_sums = replaced_alone(&teacher, mixers, &mine, ids, att, |done| {
            bar.set_position((b * mine.len() + done) as u64)
        });
        for (&l, (kl, same)) in mine.iter().zip(layer_sums) {
            sums[2 * l] += kl;
            sums[2 * l + 1] += same;
        }
    }
    bar.finish_and_clear();
    if dist.world() > 1 {
        // Each rank scored its own layers (the others' are 0 there); rank 0 counted positions.
        dist.sum_f64_checked(&mut sums, "layer probe scores")?;
    }
    let positions = sums[2 * n].max(1.0);
    let scores = (0..n)
        .map(|l| (sums[2 * l] / positions, sums[2 * l + 1] / positions))
        .collect();
    Ok((scores, positions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_settings_reject_what_cannot_work() {
        let bad = ProbeSettings {
            steps: 0,
            batches: 0,
        };
        let keys: Vec<String> = bad.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["probe.steps", "probe.batches"]);
        assert!(ProbeSettings::default().problems().is_empty());
    }
}
