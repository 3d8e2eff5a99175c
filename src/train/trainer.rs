//! The training loop the stages share: micro-batches from the loader, gradient accumulation,
//! global-norm clipping, AdamW, the learning-rate schedule over a token budget, a step limit,
//! NaN/Inf detection (the step stops with the last good checkpoint kept), `metrics.jsonl`, a
//! progress bar with ETA, and checkpoints holding everything for an exact continuation:
//! trainable parameters, optimizer moments and step, token counter, loader cursor.

use super::optim::{
    AdamW, AdamWConfig, NamedGrads, collect_grads, load_named_params, named_params,
};
use super::schedule::LrSchedule;
use crate::checkpoint::Checkpoints;
use crate::data::loader::{Batch, Loader, LoaderCursor};
use crate::dist::Dist;
use crate::model::safetensors_io::{SafetensorsReader, SaveDtype, write_safetensors};
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn d_lr_final() -> f64 {
    1e-5
}
fn d_warmup() -> u64 {
    50
}
fn d_micro() -> usize {
    4
}
fn d_one() -> usize {
    1
}
fn d_clip() -> f64 {
    1.0
}
fn d_wd() -> f64 {
    0.1
}
fn d_scale() -> f64 {
    1.0
}
fn d_ckpt() -> u64 {
    50
}
/// Held-out batches of a training step's `eval.json` (stage 1, stage 2, SFT).
pub fn d_eval_batches() -> usize {
    8
}
fn d_bucket() -> usize {
    64
}

/// Optimisation settings shared by the training steps (`[step.train]` in a pipeline).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSettings {
    pub lr_init: f64,
    #[serde(default = "d_lr_final")]
    pub lr_final: f64,
    #[serde(default = "d_warmup")]
    pub warmup_steps: u64,
    /// Sequences per micro-batch.
    #[serde(default = "d_micro")]
    pub micro_batch: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "d_one")]
    pub grad_accum: usize,
    /// Token budget (the schedule decays over it; training stops at it).
    pub max_tokens: u64,
    /// Stop after this many optimizer steps (0: no limit).
    #[serde(default)]
    pub max_steps: u64,
    /// Clip the global gradient norm to this (0: off).
    #[serde(default = "d_clip")]
    pub grad_clip: f64,
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    /// The converted layers' RWKV-7 mixers learn at this multiple of the schedule's rate; the
    /// rest of the model (MLPs, norms, embeddings, head, kept attention) follows the schedule.
    #[serde(default = "d_scale")]
    pub mixer_lr_scale: f64,
    /// Checkpoint every this many optimizer steps (and always at the end).
    #[serde(default = "d_ckpt")]
    pub checkpoint_every: u64,
    /// Batches are padded to a multiple of this many tokens.
    #[serde(default = "d_bucket")]
    pub bucket: usize,
}

impl TrainSettings {
    /// Values the training loop cannot run with, as (key under the step, message); checked at
    /// validation, before any earlier step runs.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut bad = |k: &str, m: String| out.push((format!("train.{k}"), m));
        if !(self.lr_init > 0.0 && self.lr_init.is_finite()) {
            bad(
                "lr_init",
                format!("lr_init must be > 0, got {}", self.lr_init),
            );
        }
        if !(self.lr_final >= 0.0 && self.lr_final.is_finite()) {
            bad(
                "lr_final",
                format!("lr_final must be ≥ 0, got {}", self.lr_final),
            );
        }
        for (k, v) in [
            ("micro_batch", self.micro_batch as u64),
            ("grad_accum", self.grad_accum as u64),
            ("max_tokens", self.max_tokens),
            ("bucket", self.bucket as u64),
            ("checkpoint_every", self.checkpoint_every),
        ] {
            if v == 0 {
                bad(k, format!("{k} must be at least 1"));
            }
        }
        for (k, v) in [
            ("grad_clip", self.grad_clip),
            ("weight_decay", self.weight_decay),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                bad(k, format!("{k} must be ≥ 0 (0 turns it off), got {v}"));
            }
        }
        if !(self.mixer_lr_scale > 0.0 && self.mixer_lr_scale.is_finite()) {
            bad(
                "mixer_lr_scale",
                format!("mixer_lr_scale must be > 0, got {}", self.mixer_lr_scale),
            );
        }
        out
    }
}

/// What a loss function returns for one micro-batch.
pub struct LossOutput {
    /// Scalar `[1]` on the autodiff device.
    pub loss: Tensor<1>,
    /// Extra scalars for metrics.jsonl (per-layer losses, …).
    pub metrics: BTreeMap<String, f64>,
}

/// Counters saved in `state.json` of each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct TrainState {
    pub step: u64,
    pub tokens: u64,
    pub cursor: LoaderCursor,
    pub optimizer_step: u64,
}

pub struct Trainer<'a> {
    pub settings: &'a TrainSettings,
    pub checkpoints: &'a Checkpoints,
    pub step_id: &'a str,
    /// Names of trainable parameters (module paths) to save in checkpoints.
    pub trainable: BTreeSet<String>,
    /// The ranks sharing each optimizer step's micro-batches (rank `r` of `W` takes micro-batches
    /// `r, r + W, ...`; every rank reads the whole stream, so the order is one rank's). Rank 0
    /// writes metrics and checkpoints.
    pub dist: Dist,
}

/// `metrics.jsonl` lives beside the checkpoints so it survives a resumed attempt.
pub fn metrics_path(checkpoints: &Checkpoints) -> PathBuf {
    checkpoints.dir().join("metrics.jsonl")
}

/// Keeps the metrics lines of steps up to `step` (those after the checkpoint are redone).
pub fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    crate::util::fsx::atomic_write(path, kept.as_bytes())?;
    Ok(())
}

/// How one optimizer step updates: its learning rate, the clipping threshold of the global
/// gradient norm (0: off), and what the summed gradients are divided by (accumulation).
#[derive(Debug, Clone, Copy)]
pub struct Update {
    pub lr: f64,
    pub grad_clip: f64,
    pub divisor: f64,
}

/// Applies one optimizer step — the end every training loop shares: the gradients (`norm` is
/// their global norm as the loop measures it) must be finite, else training stops with the
/// last good checkpoint kept (`step` names the step in the message); they are clipped and
/// divided as `update` says, and AdamW updates the model.
pub fn apply_gradients<M: Module>(
    opt: &mut AdamW,
    model: M,
    grads: &NamedGrads,
    norm: f64,
    update: Update,
    step: u64,
) -> Result<M> {
    if !norm.is_finite() || !grads.all_finite() {
        bail!("{}", non_finite_message(grads, norm, step));
    }
    let clip = if update.grad_clip > 0.0 && norm > update.grad_clip {
        update.grad_clip / norm
    } else {
        1.0
    };
    Ok(opt.step(model, grads, update.lr, clip / update.divisor))
}

/// Why training stopped on non-finite gradients. A NaN spreads backwards from where it arises
/// to every parameter below it, so the message names the deepest parameters hit (layer
/// numbers compared as numbers): where it started.
fn non_finite_message(grads: &NamedGrads, norm: f64, step: u64) -> String {
    let mut bad = grads.non_finite();
    bad.sort_by_key(|(name, _)| natural_key(name));
    let listed: Vec<String> = bad
        .iter()
        .rev()
        .take(6)
        .map(|(name, n)| format!("{name} ({n} values)"))
        .collect();
    format!(
        "the gradient norm is {norm} at step {step}: training stopped; the last good checkpoint is \
         kept. Not finite in {} of {} parameters; the deepest: {}",
        bad.len(),
        grads.grads.len(),
        listed.join(", ")
    )
}

/// A parameter path as a sort key in which numeric parts compare as numbers
/// (`layers.9` before `layers.10`).
fn natural_key(name: &str) -> Vec<(u64, String)> {
    name.split('.')
        .map(|part| match part.parse::<u64>() {
            Ok(n) => (n, String::new()),
            Err(_) => (u64::MAX, part.to_string()),
        })
        .collect()
}

/// Where a training loop's per-step records go: `metrics.jsonl` (flushed after every line, so a
/// crash loses nothing written) and, when enabled, the step's W&B run.
pub struct MetricsLog {
    file: std::fs::File,
    wandb: Option<crate::wandb::WandbSink>,
}

impl MetricsLog {
    /// Appends to `path` (created if missing).
    pub fn open(path: &Path, wandb: Option<crate::wandb::WandbSink>) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self { file, wandb })
    }

    /// Appends one record (a typed line such as [`StepMetrics`]; keys are written sorted).
    pub fn log(&mut self, record: &impl Serialize) -> Result<()> {
        let line = serde_json::to_value(record)?;
        writeln!(self.file, "{line}")?;
        self.file.flush()?;
        if let Some(w) = self.wandb.as_mut() {
            w.log(&line);
        }
        Ok(())
    }

    /// Closes the W&B run.
    pub fn finish(self) -> Result<()> {
        if let Some(w) = self.wandb {
            w.finish()?;
        }
        Ok(())
    }
}

/// One line of a training step's `metrics.jsonl` (and of its W&B run).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: u64,
    /// Tokens trained on so far.
    pub tokens: u64,
    pub lr: f64,
    /// Mean loss over the step's micro-batches.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub seconds: f64,
    pub peak_rss_mib: Option<f64>,
    /// What the loss reports besides (per-layer losses, `kl`, `ce`, …), averaged over the
    /// micro-batches.
    #[serde(flatten)]
    pub extra: BTreeMap<String, f64>,
}

/// Whether optimizer step `step` saves a checkpoint: every `every` steps and at the end.
pub fn checkpoint_due(step: u64, last: bool, every: u64) -> bool {
    last || step.is_multiple_of(every.max(1))
}

impl Trainer<'_> {
    /// Runs the loop from the latest checkpoint (or the start) to the budget, returning the
    /// trained model. `loss_fn` computes one micro-batch's loss on the autodiff device.
    pub fn run<M: Module>(
        &self,
        mut model: M,
        loader: &mut Loader,
        wandb: Option<crate::wandb::WandbSink>,
        mut loss_fn: impl FnMut(&M, &Batch) -> Result<LossOutput>,
    ) -> Result<M> {
        let s = self.settings;
        let dist = self.dist;
        let root = dist.is_root();
        anyhow::ensure!(s.max_tokens > 0, "train.max_tokens must be positive");
        anyhow::ensure!(
            dist.world() <= s.grad_accum.max(1),
            "{} ranks share train.grad_accum = {} micro-batches per optimizer step: at most {} ranks",
            dist.world(),
            s.grad_accum,
            s.grad_accum
        );
        let schedule = LrSchedule {
            lr_init: s.lr_init,
            lr_final: s.lr_final,
            warmup_steps: s.warmup_steps,
            warmup_start: 0.01,
            total_tokens: s.max_tokens,
        };
        let mut opt = AdamW::new(AdamWConfig {
            weight_decay: s.weight_decay,
            ..Default::default()
        });
        if s.mixer_lr_scale != 1.0 {
            opt.lr_scales
                .push((crate::model::hybrid::MIXER_PARAMS.into(), s.mixer_lr_scale));
        }
        let mut state = TrainState::default();
        let metrics_file = metrics_path(self.checkpoints);
        if let Some(ckpt) = self.checkpoints.latest() {
            let (m, st) = self.restore(model, &mut opt, &ckpt.path)?;
            model = m;
            state = st;
            loader.restore(state.cursor);
            if root {
                truncate_metrics(&metrics_file, state.step)?;
            }
            tracing::info!(
                "{}: resumed from step {} ({} tokens)",
                self.step_id,
                state.step,
                state.tokens
            );
        } else if root {
            std::fs::create_dir_all(self.checkpoints.dir())?;
            let _ = std::fs::remove_file(&metrics_file);
        }
        let budget_steps = if s.max_steps > 0 {
            s.max_steps
        } else {
            u64::MAX
        };
        let bar = crate::progress::bar(s.max_tokens, self.step_id, "tokens");
        let bar = if root {
            bar.recording(self.checkpoints.progress_file())
        } else {
            bar.without_lines()
        };
        bar.set_position(state.tokens.min(s.max_tokens));
        let mut metrics = if root {
            Some(MetricsLog::open(&metrics_file, wandb)?)
        } else {
            None
        };
        while state.step < budget_steps && state.tokens < s.max_tokens {
            let t0 = Instant::now();
            let lr = schedule.lr(state.step, state.tokens);
            let mut acc = NamedGrads {
                grads: BTreeMap::new(),
            };
            let mut loss_sum = 0.0;
            let mut extra: BTreeMap<String, f64> = BTreeMap::new();
            let mut step_tokens = 0;
            for m in 0..s.grad_accum.max(1) {
                let batch = loader.next_batch();
                step_tokens += batch.tokens as u64;
                if m % dist.world() != dist.rank() {
                    continue; // another rank's micro-batch
                }
                let out = loss_fn(&model, &batch)?;
                let loss = out.loss.clone().into_scalar_f64();
                if !loss.is_finite() {
                    bail!(
                        "the loss is {loss} at step {} ({} tokens): training stopped; the last good \
                         checkpoint is kept — lower train.lr_init or check the data",
                        state.step + 1,
                        state.tokens
                    );
                }
                loss_sum += loss;
                for (k, v) in out.metrics {
                    *extra.entry(k).or_default() += v / s.grad_accum.max(1) as f64;
                }
                let grads = out.loss.backward();
                acc.accumulate(collect_grads(&model, &grads));
            }
            if dist.world() > 1 {
                acc.sum_over(&dist)?;
                let mut scalars: Vec<f64> = std::iter::once(loss_sum)
                    .chain(extra.values().copied())
                    .collect();
                dist.sum_f64_checked(&mut scalars, "metrics")?;
                loss_sum = scalars[0];
                for (v, sum) in extra.values_mut().zip(&scalars[1..]) {
                    *v = *sum;
                }
            }
            let accum = s.grad_accum.max(1) as f64;
            let norm = acc.global_norm() / accum;
            let update = Update {
                lr,
                grad_clip: s.grad_clip,
                divisor: accum,
            };
            model = apply_gradients(&mut opt, model, &acc, norm, update, state.step + 1)?;
            state.step += 1;
            state.tokens += step_tokens;
            state.cursor = loader.cursor();
            state.optimizer_step = opt.step;
            let secs = t0.elapsed().as_secs_f64();
            let Some(metrics) = metrics.as_mut() else {
                continue; // only rank 0 logs and saves
            };
            metrics.log(&StepMetrics {
                step: state.step,
                tokens: state.tokens,
                lr,
                loss: loss_sum / accum,
                grad_norm: norm,
                tokens_per_s: step_tokens as f64 / secs,
                seconds: secs,
                peak_rss_mib: crate::bench::mem::peak_rss_mib(),
                extra,
            })?;
            bar.set_message(format!("loss {:.4}", loss_sum / accum));
            bar.set_position(state.tokens.min(s.max_tokens));
            let last = state.step >= budget_steps || state.tokens >= s.max_tokens;
            if checkpoint_due(state.step, last, s.checkpoint_every) {
                self.save(&model, &opt, &state)?;
            }
        }
        bar.finish_and_clear();
        if let Some(metrics) = metrics {
            metrics.finish()?;
        }
        Ok(model)
    }

    fn save<M: Module>(&self, model: &M, opt: &AdamW, state: &TrainState) -> Result<()> {
        save_checkpoint(
            self.checkpoints,
            state.step,
            &self.trainable,
            model,
            opt,
            state,
        )
    }

    fn restore<M: Module>(&self, model: M, opt: &mut AdamW, dir: &Path) -> Result<(M, TrainState)> {
        let (model, state): (M, TrainState) = restore_checkpoint(model, opt, dir)?;
        opt.step = state.optimizer_step;
        Ok((model, state))
    }
}

/// Writes checkpoint `step` atomically: the `trainable` parameters of `model`, the optimizer
/// moments and the loop's counters (`state.json`).
pub fn save_checkpoint<M: Module, S: Serialize>(
    checkpoints: &Checkpoints,
    step: u64,
    trainable: &BTreeSet<String>,
    model: &M,
    opt: &AdamW,
    state: &S,
) -> Result<()> {
    let params = named_params(model, Some(trainable.clone()));
    checkpoints.save(step, |dir| {
        write_safetensors(&dir.join("params.safetensors"), &params, SaveDtype::F32)?;
        opt.save(&dir.join("optimizer.safetensors"))?;
        crate::util::fsx::atomic_write_json(&dir.join("state.json"), state)?;
        Ok(())
    })?;
    Ok(())
}

/// Reads a checkpoint written by [`save_checkpoint`] into `model` and `opt` (moments only: the
/// caller sets the optimizer's step from its state) and returns the counters.
pub fn restore_checkpoint<M: Module, S: serde::de::DeserializeOwned>(
    model: M,
    opt: &mut AdamW,
    dir: &Path,
) -> Result<(M, S)> {
    let reader = SafetensorsReader::open_files(&[dir.join("params.safetensors")])?;
    let mut values = BTreeMap::new();
    for name in reader.names() {
        let shape = reader.shape(name).unwrap_or_default().to_vec();
        values.insert(
            name.to_string(),
            crate::model::safetensors_io::OwnedTensor {
                shape,
                data: reader.read_f32(name)?,
            },
        );
    }
    let (model, written) = load_named_params(model, &values);
    anyhow::ensure!(
        written == values.len(),
        "checkpoint {} does not fit the model ({written} of {} parameters)",
        dir.display(),
        values.len()
    );
    opt.load_tensors(&SafetensorsReader::open_files(&[
        dir.join("optimizer.safetensors")
    ])?)?;
    let state: S = crate::util::fsx::read_json(&dir.join("state.json"))
        .context("reading state.json")?
        .with_context(|| format!("{} has no state.json", dir.display()))?;
    Ok((model, state))
}

/// Scalar value of a `[1]` tensor.
trait ScalarF64 {
    fn into_scalar_f64(self) -> f64;
}

impl ScalarF64 for Tensor<1> {
    fn into_scalar_f64(self) -> f64 {
        crate::model::weights::to_vec(self)[0] as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_gradients_are_named_deepest_first() {
        let g = |v: f32| (vec![2], vec![1.0, v]);
        let grads = NamedGrads {
            grads: BTreeMap::from([
                ("embed".to_string(), g(f32::NAN)),
                ("layers.9.mlp.w".to_string(), g(f32::NAN)),
                ("layers.10.k".to_string(), g(f32::INFINITY)),
                ("layers.10.v".to_string(), g(1.0)),
                ("norm".to_string(), g(2.0)),
            ]),
        };
        let m = non_finite_message(&grads, f64::NAN, 3);
        assert!(m.starts_with("the gradient norm is NaN at step 3"), "{m}");
        assert!(
            m.ends_with(
                "Not finite in 3 of 5 parameters; the deepest: layers.10.k (1 values), \
                 layers.9.mlp.w (1 values), embed (1 values)"
            ),
            "{m}"
        );
    }
}
