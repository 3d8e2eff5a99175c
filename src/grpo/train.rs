//! The GRPO training loop: each optimizer step samples `group_size` completions for each of
//! `prompts_per_step` problems with the current policy (decoded together from one prefilled
//! state), scores them, normalises advantages within each group, takes log-probabilities of
//! the rollout policy and of the frozen reference (the student at the start of the step), and
//! makes `updates_per_batch` updates of the clipped surrogate with the k3 KL penalty (SPEC §6).
//! Rollouts are seeded by (seed, step, prompt), so a resumed run repeats them exactly, on any
//! number of ranks (rank `r` of `W` takes prompts `r, r + W, ...`; gradients and metrics are
//! summed over the ranks). Writes the student directory, `metrics.jsonl`, `rollouts.jsonl`,
//! `reward.svg` and `eval.json` (held-out accuracy before and after).

use super::objective::{Surrogate, group_advantages, surrogate_loss, token_logprobs};
use super::problems::{Accuracy, load_problems};
use super::rollout::{Completion, sample_completions};
use super::settings::GrpoPaths;
use crate::checkpoint::Checkpoints;
use crate::dist::Dist;
use crate::evaluate::math::MathEval;
use crate::generate::{Sampler, SamplingConfig};
use crate::model::hybrid::Hybrid;
use crate::model::safetensors_io::SaveDtype;
use crate::model::transformer::ids_tensor;
use crate::text::TextTokenizer;
use crate::text::tokenizer::copy_tokenizer_files;
use crate::train::optim::{AdamW, AdamWConfig, NamedGrads, collect_grads, trainable};
use crate::train::trainer::{
    MetricsLog, Update, apply_gradients, checkpoint_due, restore_checkpoint, save_checkpoint,
    truncate_metrics,
};
use crate::wandb::WandbSink;
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// One line of the GRPO step's `metrics.jsonl` (and of its W&B run): means over the step's
/// completions (or tokens, or updates).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrpoMetrics {
    pub step: u64,
    pub lr: f64,
    pub reward: f64,
    /// Fraction of completions with the right answer.
    pub accuracy: f64,
    pub loss: f64,
    /// k3 KL to the reference, per completion.
    pub kl: f64,
    /// Fraction of tokens whose probability ratio was clipped.
    pub clip_fraction: f64,
    pub completion_tokens: f64,
    /// Fraction of completions cut at the token limit.
    pub truncated_fraction: f64,
    pub grad_norm: f64,
    /// How the step's updates moved the mean log-probability of the tokens of completions
    /// rewarded above (below) their group's mean; absent when no group had different rewards.
    pub logp_change_above_mean: Option<f64>,
    pub logp_change_below_mean: Option<f64>,
    pub rollout_seconds: f64,
    pub seconds: f64,
    pub peak_rss_mib: Option<f64>,
    /// Each reward component's mean, as `reward_<component>`.
    #[serde(flatten)]
    pub rewards: BTreeMap<String, f64>,
}

/// Where a GRPO run keeps its state and writes its results.
pub struct RunIo<'a> {
    /// The step's name, for progress and logs.
    pub id: &'a str,
    pub seed: u64,
    pub checkpoints: &'a Checkpoints,
    pub out_dir: &'a Path,
    pub wandb: Option<WandbSink>,
    /// The tensor device (without autodiff).
    pub device: Device,
    /// The ranks sharing each step's prompts (rank `r` of `W` samples, scores and trains on
    /// prompts `r, r + W, ...`); rank 0 writes logs, checkpoints and artifacts.
    pub dist: Dist,
}

/// Counters saved in each checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct GrpoState {
    step: u64,
    optimizer_step: u64,
}

/// The rollouts of one prompt as tensors: inputs are the prompt and every completion token but
/// the last (right-padded with the stop token; causal layers never look ahead, so the padding
/// needs no mask), targets the completion tokens.
struct GroupBatch {
    ids: Vec<Vec<u32>>,
    targets: Vec<Vec<u32>>,
    /// 1 on real completion tokens.
    mask: Vec<Vec<f32>>,
    prompt_len: usize,
    advantages: Vec<f64>,
}

impl GroupBatch {
    fn new(prompt: &[u32], completions: &[Completion], advantages: Vec<f64>, pad: u32) -> Self {
        let len = completions
            .iter()
            .map(|c| c.ids.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let mut ids = Vec::new();
        let mut targets = Vec::new();
        let mut mask = Vec::new();
        for c in completions {
            let mut t = c.ids.clone();
            let mut m = vec![1.0f32; t.len()];
            t.resize(len, pad);
            m.resize(len, 0.0);
            let mut row = prompt.to_vec();
            row.extend(&t[..len - 1]);
            ids.push(row);
            targets.push(t);
            mask.push(m);
        }
        Self {
            ids,
            targets,
            mask,
            prompt_len: prompt.len(),
            advantages,
        }
    }

    fn rows(&self) -> usize {
        self.ids.len()
    }

    /// [`GroupBatch::logprobs`] of every micro-batch of `micro` rows, in order.
    fn micro_logprobs(
        &self,
        model: &Hybrid,
        micro: usize,
        temperature: f64,
        chunk: usize,
        device: &Device,
    ) -> Vec<Tensor<2>> {
        micro_ranges(self.rows(), micro)
            .map(|rows| self.logprobs(model, rows, temperature, chunk, device))
            .collect()
    }

    /// Log-probabilities `[rows, L]` of the targets of `rows` under `model`.
    fn logprobs(
        &self,
        model: &Hybrid,
        rows: std::ops::Range<usize>,
        temperature: f64,
        chunk: usize,
        device: &Device,
    ) -> Tensor<2> {
        let ids = ids_tensor(&self.ids[rows.clone()], device);
        let targets = ids_tensor(&self.targets[rows], device);
        let l = targets.dims()[1];
        let (hidden, _) = model.forward_hidden(ids, None, None, &[]);
        let h = hidden.narrow(1, self.prompt_len - 1, l);
        token_logprobs(h, targets, temperature, chunk, |x| model.logits(x))
    }

    fn mask(&self, rows: std::ops::Range<usize>, device: &Device) -> Tensor<2> {
        let l = self.mask[0].len();
        let n = rows.len();
        let flat: Vec<f32> = self.mask[rows].iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(flat, [n, l]), device)
    }

    fn advantages(&self, rows: std::ops::Range<usize>, device: &Device) -> Tensor<1> {
        let a: Vec<f32> = self.advantages[rows].iter().map(|&a| a as f32).collect();
        let n = a.len();
        Tensor::from_data(TensorData::new(a, [n]), device)
    }
}

/// The problem indices of optimizer step `step`: epochs are seeded permutations.
fn step_problems(step: u64, per_step: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut cache: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    (0..per_step)
        .map(|j| {
            let i = step as usize * per_step + j;
            let epoch = (i / n) as u64;
            let order = cache.entry(epoch).or_insert_with(|| {
                let mut o: Vec<usize> = (0..n).collect();
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                    seed ^ epoch.wrapping_mul(0xA24B_AED4_963E_E407),
                );
                o.shuffle(&mut rng);
                o
            });
            order[i % n]
        })
        .collect()
}

fn rollout_seed(seed: u64, step: u64) -> u64 {
    seed ^ (step + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The sampling seed of prompt `j` of a step: each group draws from its own stream, so the
/// rollouts are the same whichever rank samples them.
fn group_seed(seed: u64, step: u64, j: usize) -> u64 {
    rollout_seed(seed, step) ^ (j as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

/// Trains the student at `s.student` with GRPO, writing the trained student and its reports to
/// `io.out_dir` (see the module documentation).
pub fn train(s: &GrpoPaths, io: RunIo) -> Result<()> {
    let RunIo {
        id,
        seed,
        checkpoints,
        out_dir,
        wandb,
        device: inner,
        dist,
    } = io;
    let root = dist.is_root();
    if let Some((k, m)) = s.problems_found().into_iter().next() {
        bail!("{k}: {m}");
    }
    let device = inner.clone().autodiff();
    let student_dir = s.student.clone();
    let tokenizer = TextTokenizer::from_dir(&student_dir)?;
    anyhow::ensure!(
        !tokenizer.stop_ids.is_empty(),
        "{}: the tokenizer names no end-of-sequence token, so completions could not end",
        student_dir.display()
    );
    let pad = tokenizer.stop_ids[0];
    let train = load_problems(&s.problems, &s.question_field, &s.answer_field)?;
    let test = match &s.test_problems {
        Some(t) if s.eval_problems > 0 => {
            let mut all = load_problems(t, &s.question_field, &s.answer_field)?;
            all.truncate(s.eval_problems);
            all
        }
        _ => Vec::new(),
    };
    let (mut student, trainable) = trainable(Hybrid::load(&student_dir, &device)?, s.freeze_mlp);
    // The reference: a frozen copy of the policy as the step starts.
    let reference = student.clone().valid();

    let ckpt_dir = checkpoints.dir().to_path_buf();
    std::fs::create_dir_all(&ckpt_dir)?;
    let before_path = ckpt_dir.join("accuracy_before.json");
    let metrics_path = ckpt_dir.join("metrics.jsonl");
    let rollouts_path = ckpt_dir.join("rollouts.jsonl");
    let mut opt = AdamW::new(AdamWConfig {
        weight_decay: s.weight_decay,
        ..Default::default()
    });
    let mut state = GrpoState::default();
    if let Some(ckpt) = checkpoints.latest() {
        let (m, st): (Hybrid, GrpoState) = restore_checkpoint(student, &mut opt, &ckpt.path)?;
        student = m;
        state = st;
        opt.step = state.optimizer_step;
        tracing::info!("{}: resumed from step {}", id, state.step);
    } else if root {
        let _ = std::fs::remove_file(&before_path);
    }
    if root {
        truncate_metrics(&metrics_path, state.step)?;
        truncate_metrics(&rollouts_path, state.step)?;
    }

    let held_out = MathEval {
        problems: &test,
        format: &s.prompt,
        max_new_tokens: s.eval_max_new_tokens,
        tolerance: s.rewards.tolerance,
    };
    let before: Option<Accuracy> = if test.is_empty() || !root {
        None
    } else if let Some(b) = crate::util::fsx::read_json::<serde_json::Value>(&before_path)? {
        Some(serde_json::from_value(b).context("accuracy_before.json")?)
    } else {
        let acc = held_out.score(&reference, &tokenizer, id, "before GRPO")?;
        crate::util::fsx::atomic_write_json(&before_path, &acc)?;
        Some(acc)
    };

    // Rank 0's logs.
    let mut logs = if root {
        let rollouts = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&rollouts_path)?;
        Some((MetricsLog::open(&metrics_path, wandb)?, rollouts))
    } else {
        None
    };
    let surrogate = Surrogate {
        epsilon: s.epsilon,
        beta: s.beta,
    };
    let bar = crate::progress::bar(s.steps, id, "steps");
    let bar = if root {
        bar.recording(checkpoints.progress_file())
    } else {
        bar.without_lines()
    };
    bar.set_position(state.step);
    while state.step < s.steps {
        let t0 = Instant::now();
        let lr = if s.warmup_steps > 0 && state.step < s.warmup_steps {
            s.lr * (0.01 + 0.99 * state.step as f64 / s.warmup_steps as f64)
        } else {
            s.lr
        };
        // Rollouts with the current policy.
        let policy = student.clone().valid();
        let mut groups = Vec::new();
        let mut rewards_all = Vec::new();
        let mut components: BTreeMap<&'static str, f64> = BTreeMap::new();
        let (mut correct, mut truncated, mut completion_tokens) = (0usize, 0usize, 0usize);
        let step_problems = step_problems(state.step, s.prompts_per_step, train.len(), seed);
        for (j, &pi) in step_problems.iter().enumerate() {
            if j % dist.world() != dist.rank() {
                continue; // another rank's prompt
            }
            let mut sampler = Sampler::new(SamplingConfig {
                temperature: s.temperature as f32,
                seed: group_seed(seed, state.step, j),
                ..Default::default()
            });
            let problem = &train[pi];
            let prompt = s.prompt.tokens(&tokenizer, &problem.question)?;
            let completions = sample_completions(
                &policy,
                &tokenizer,
                &prompt,
                s.group_size,
                &mut sampler,
                s.max_new_tokens,
            )?;
            let mut rewards = Vec::new();
            for c in &completions {
                let r = s.rewards.score(&c.text, Some(problem.answer), c.truncated);
                for (k, v) in &r.components {
                    *components.entry(k).or_default() += v;
                }
                correct += r.correct as usize;
                truncated += c.truncated as usize;
                completion_tokens += c.ids.len();
                rewards.push(r.total);
            }
            if let (0, Some((_, rollouts_log))) = (j, logs.as_mut()) {
                let line = serde_json::json!({
                    "step": state.step + 1, "question": problem.question, "answer": problem.answer,
                    "completions": completions.iter().zip(&rewards).map(|(c, r)| serde_json::json!({"text": c.text, "reward": r})).collect::<Vec<_>>(),
                });
                writeln!(rollouts_log, "{line}")?;
            }
            rewards_all.extend(&rewards);
            let adv = group_advantages(&rewards, s.group_size, 1e-4);
            groups.push(GroupBatch::new(&prompt, &completions, adv, pad));
        }
        let rollout_secs = t0.elapsed().as_secs_f64();
        // Every rank's completions (the surrogate is a mean over all of them).
        let n_completions = step_problems.len() * s.group_size;

        // Log-probabilities of the rollout policy and of the reference, without gradients.
        let lp = |g: &GroupBatch, model: &Hybrid| {
            g.micro_logprobs(model, s.micro_batch, s.temperature, s.logprob_chunk, &inner)
        };
        let old: Vec<Vec<Tensor<2>>> = groups.iter().map(|g| lp(g, &policy)).collect();
        let refs: Vec<Vec<Tensor<2>>> = groups
            .iter()
            .map(|g| {
                if s.beta > 0.0 {
                    lp(g, &reference)
                } else {
                    Vec::new()
                }
            })
            .collect();
        drop(policy);

        // μ updates of the surrogate on this batch.
        let (mut loss_sum, mut kl_sum, mut clipped, mut tokens, mut norm_sum) =
            (0.0, 0.0, 0.0, 0.0, 0.0);
        for _ in 0..s.updates_per_batch {
            let mut acc = NamedGrads {
                grads: BTreeMap::new(),
            };
            for (gi, g) in groups.iter().enumerate() {
                for (mi, rows) in micro_ranges(g.rows(), s.micro_batch).enumerate() {
                    let logp = g.logprobs(
                        &student,
                        rows.clone(),
                        s.temperature,
                        s.logprob_chunk,
                        &device,
                    );
                    let lift = |t: &Tensor<2>| Tensor::<2>::from_data(t.to_data(), &device);
                    let (loss, st) = surrogate_loss(
                        logp,
                        lift(&old[gi][mi]),
                        refs[gi].get(mi).map(lift),
                        g.advantages(rows.clone(), &device),
                        g.mask(rows, &device),
                        surrogate,
                        n_completions as f64,
                    );
                    let l = crate::model::weights::to_vec(loss.clone())[0] as f64;
                    if !l.is_finite() {
                        bail!(
                            "the GRPO loss is {l} at step {}: training stopped; the last good \
                             checkpoint is kept — lower lr or check the rewards",
                            state.step + 1
                        );
                    }
                    loss_sum += l;
                    kl_sum += st.kl_sum;
                    clipped += st.clipped_tokens;
                    tokens += st.tokens;
                    let grads = loss.backward();
                    acc.accumulate(collect_grads(&student, &grads));
                }
            }
            if dist.world() > 1 {
                acc.sum_over(&dist)?;
            }
            let norm = acc.global_norm();
            norm_sum += norm;
            let update = Update {
                lr,
                grad_clip: s.grad_clip,
                divisor: 1.0,
            };
            student = apply_gradients(&mut opt, student, &acc, norm, update, state.step + 1)?;
        }
        // What the updates did to the policy: the mean change of the log-probability of the
        // completions' tokens, for completions rewarded above and below their group's mean.
        // GRPO works when the first rises and the second falls.
        let after = student.clone().valid();
        let (mut above, mut below) = ((0.0, 0.0), (0.0, 0.0));
        for (gi, g) in groups.iter().enumerate() {
            // A group whose rewards were all equal has no advantage to move.
            if g.advantages.iter().all(|&a| a == 0.0) {
                continue;
            }
            let new = lp(g, &after);
            for (mi, rows) in micro_ranges(g.rows(), s.micro_batch).enumerate() {
                let new = crate::model::weights::to_vec(new[mi].clone());
                let before = crate::model::weights::to_vec(old[gi][mi].clone());
                let len = g.mask[0].len();
                for (k, r) in rows.enumerate() {
                    let side = match g.advantages[r] {
                        a if a > 0.0 => &mut above,
                        a if a < 0.0 => &mut below,
                        _ => continue,
                    };
                    for t in (0..len).filter(|&t| g.mask[r][t] > 0.0) {
                        side.0 += (new[k * len + t] - before[k * len + t]) as f64;
                        side.1 += 1.0;
                    }
                }
            }
        }
        drop(after);
        let mut reward_sum = rewards_all.iter().sum::<f64>();
        if dist.world() > 1 {
            // This rank's sums, summed over the ranks.
            let mut v: Vec<f64> = vec![
                reward_sum,
                correct as f64,
                truncated as f64,
                completion_tokens as f64,
                loss_sum,
                kl_sum,
                clipped,
                tokens,
                above.0,
                above.1,
                below.0,
                below.1,
            ];
            v.extend(components.values());
            dist.sum_f64_checked(&mut v, "reward components")?;
            reward_sum = v[0];
            (correct, truncated, completion_tokens) = (v[1] as usize, v[2] as usize, v[3] as usize);
            (loss_sum, kl_sum, clipped, tokens) = (v[4], v[5], v[6], v[7]);
            (above, below) = ((v[8], v[9]), (v[10], v[11]));
            for (c, sum) in components.values_mut().zip(&v[12..]) {
                *c = *sum;
            }
        }
        let mean = |(sum, n): (f64, f64)| (n > 0.0).then(|| sum / n);
        state.step += 1;
        state.optimizer_step = opt.step;
        let mu = s.updates_per_batch as f64;
        let n = n_completions as f64;
        let line = GrpoMetrics {
            step: state.step,
            lr,
            reward: reward_sum / n,
            accuracy: correct as f64 / n,
            loss: loss_sum / mu,
            kl: kl_sum / (mu * n),
            clip_fraction: clipped / tokens.max(1.0),
            completion_tokens: completion_tokens as f64 / n,
            truncated_fraction: truncated as f64 / n,
            grad_norm: norm_sum / mu,
            logp_change_above_mean: mean(above),
            logp_change_below_mean: mean(below),
            rollout_seconds: rollout_secs,
            seconds: t0.elapsed().as_secs_f64(),
            peak_rss_mib: crate::bench::mem::peak_rss_mib(),
            rewards: components
                .into_iter()
                .map(|(k, v)| (format!("reward_{k}"), v / n))
                .collect(),
        };
        let Some((metrics, rollouts_log)) = logs.as_mut() else {
            continue; // only rank 0 logs and saves
        };
        rollouts_log.flush()?;
        metrics.log(&line)?;
        bar.set_message(format!("reward {:.3}", line.reward));
        bar.set_position(state.step);
        if checkpoint_due(state.step, state.step == s.steps, s.checkpoint_every) {
            save_checkpoint(checkpoints, state.step, &trainable, &student, &opt, &state)?;
        }
    }
    bar.finish_and_clear();
    let Some((metrics, _)) = logs else {
        return Ok(()); // rank 0 writes the artifacts
    };
    metrics.finish()?;

    // Artifacts.
    let student = student.valid();
    student.save(out_dir, SaveDtype::F32)?;
    copy_tokenizer_files(&student_dir, out_dir)?;
    let out_metrics = out_dir.join("metrics.jsonl");
    std::fs::copy(&metrics_path, &out_metrics)?;
    std::fs::copy(&rollouts_path, out_dir.join("rollouts.jsonl"))?;
    crate::train::plot::write_series_svg(
        &out_metrics,
        &out_dir.join("reward.svg"),
        &format!("{} (GRPO rewards)", id),
        |k| k == "reward" || k == "accuracy" || k.starts_with("reward_"),
        false,
    )?;
    if let Some(before) = before {
        let after = held_out.score(&student, &tokenizer, id, "after GRPO")?;
        crate::util::fsx::atomic_write_json(
            &out_dir.join("eval.json"),
            &serde_json::json!({"accuracy_before": before, "accuracy_after": after}),
        )?;
    }
    Ok(())
}

/// `0..n` in consecutive ranges of at most `size`.
fn micro_ranges(n: usize, size: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..n)
        .step_by(size.max(1))
        .map(move |s| s..(s + size.max(1)).min(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_visit_every_problem_once_in_a_seeded_order() {
        let n = 7;
        let seen: Vec<usize> = (0..7).flat_map(|s| step_problems(s, 2, n, 3)).collect();
        let mut first: Vec<usize> = seen[..7].to_vec();
        first.sort_unstable();
        assert_eq!(first, (0..7).collect::<Vec<_>>());
        assert_eq!(step_problems(4, 2, n, 3), step_problems(4, 2, n, 3));
        assert_ne!(
            (0..3)
                .flat_map(|s| step_problems(s, 2, n, 3))
                .collect::<Vec<_>>(),
            (0..3)
                .flat_map(|s| step_problems(s, 2, n, 4))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn group_batches_pad_after_the_completion_and_mask_it() {
        let c = |ids: Vec<u32>| Completion {
            ids,
            text: String::new(),
            truncated: false,
        };
        let g = GroupBatch::new(&[1, 2], &[c(vec![5, 6, 9]), c(vec![7])], vec![1.0, -1.0], 9);
        assert_eq!(g.ids, vec![vec![1, 2, 5, 6], vec![1, 2, 7, 9]]);
        assert_eq!(g.targets, vec![vec![5, 6, 9], vec![7, 9, 9]]);
        assert_eq!(g.mask, vec![vec![1.0, 1.0, 1.0], vec![1.0, 0.0, 0.0]]);
        assert_eq!(
            micro_ranges(5, 2).collect::<Vec<_>>(),
            vec![0..2, 2..4, 4..5]
        );
    }
}
