//! The settings of a GRPO run: where the student and the problems are (`P`: a pipeline's
//! artifact reference in the step's settings, a resolved path when training), and every
//! hyperparameter with its default.

use super::problems::PromptFormat;
use super::rewards::RewardSettings;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

fn d_question() -> String {
    "question".into()
}
fn d_answer() -> String {
    "answer".into()
}
fn d_prompts() -> usize {
    2
}
fn d_group() -> usize {
    4
}
fn d_mu() -> usize {
    4
}
fn d_eps() -> f64 {
    0.2
}
fn d_beta() -> f64 {
    0.1
}
fn d_temp() -> f64 {
    0.7
}
fn d_max_new() -> usize {
    1024
}
fn d_micro() -> usize {
    4
}
fn d_lr() -> f64 {
    1e-5
}
fn d_clip() -> f64 {
    1.0
}
fn d_wd() -> f64 {
    0.1
}
fn d_ckpt() -> u64 {
    5
}
fn d_eval_new() -> usize {
    256
}
fn d_chunk() -> usize {
    64
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(serialize = "P: Serialize", deserialize = "P: Deserialize<'de>"))]
pub struct GrpoSettings<P> {
    /// The student directory to train (e.g. `@sft`).
    pub student: P,
    /// Training problems (JSON Lines).
    pub problems: P,
    /// Held-out problems for accuracy before and after (none: skipped).
    #[serde(default)]
    pub test_problems: Option<P>,
    #[serde(default = "d_question")]
    pub question_field: String,
    /// A number, or text ending in `#### N`.
    #[serde(default = "d_answer")]
    pub answer_field: String,
    /// System message and instruction added to each question (`[step.prompt]`).
    #[serde(default)]
    pub prompt: PromptFormat,
    /// Reward components (`[step.rewards]`).
    #[serde(default)]
    pub rewards: RewardSettings,
    /// Optimizer steps (each on a fresh batch of rollouts).
    pub steps: u64,
    #[serde(default = "d_prompts")]
    pub prompts_per_step: usize,
    /// Completions per prompt (G).
    #[serde(default = "d_group")]
    pub group_size: usize,
    /// Updates on each batch of rollouts (μ).
    #[serde(default = "d_mu")]
    pub updates_per_batch: usize,
    /// Clip range ε of the probability ratio.
    #[serde(default = "d_eps")]
    pub epsilon: f64,
    /// Weight β of the KL penalty towards the reference.
    #[serde(default = "d_beta")]
    pub beta: f64,
    /// Sampling temperature of the rollouts (log-probabilities use the same temperature).
    #[serde(default = "d_temp")]
    pub temperature: f64,
    #[serde(default = "d_max_new")]
    pub max_new_tokens: usize,
    /// Completions per forward/backward pass.
    #[serde(default = "d_micro")]
    pub micro_batch: usize,
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// Linear warmup from 1% of `lr` over this many steps.
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "d_clip")]
    pub grad_clip: f64,
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    #[serde(default = "d_ckpt")]
    pub checkpoint_every: u64,
    #[serde(default)]
    pub freeze_mlp: bool,
    /// Held-out problems scored before and after (0: skip).
    #[serde(default)]
    pub eval_problems: usize,
    #[serde(default = "d_eval_new")]
    pub eval_max_new_tokens: usize,
    /// Positions per vocabulary-sized log-softmax.
    #[serde(default = "d_chunk")]
    pub logprob_chunk: usize,
}

impl<P> GrpoSettings<P> {
    /// Values that cannot work, with their key.
    pub fn problems_found(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut bad = |k: &str, m: String| out.push((k.to_string(), m));
        if let Err(m) = self.rewards.validate() {
            bad("rewards", m);
        }
        if self.group_size < 2 {
            bad(
                "group_size",
                format!(
                    "group_size must be ≥ 2 (advantages compare completions of one prompt), got {}",
                    self.group_size
                ),
            );
        }
        for (k, v) in [
            ("steps", self.steps as usize),
            ("prompts_per_step", self.prompts_per_step),
            ("updates_per_batch", self.updates_per_batch),
            ("max_new_tokens", self.max_new_tokens),
            ("micro_batch", self.micro_batch),
        ] {
            if v == 0 {
                bad(k, format!("{k} must be positive"));
            }
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            bad(
                "temperature",
                format!(
                    "temperature must be > 0 (rollouts are sampled), got {}",
                    self.temperature
                ),
            );
        }
        if !(self.epsilon > 0.0 && self.epsilon < 1.0) {
            bad(
                "epsilon",
                format!("epsilon must be in (0, 1), got {}", self.epsilon),
            );
        }
        if !(self.beta >= 0.0) {
            bad("beta", format!("beta must be ≥ 0, got {}", self.beta));
        }
        if self.eval_problems > 0 && self.test_problems.is_none() {
            bad(
                "eval_problems",
                "eval_problems is set but test_problems is not".to_string(),
            );
        }
        out
    }

    /// The same settings with every path mapped by `f` (e.g. artifact references resolved).
    pub fn map_paths<Q, E>(
        &self,
        mut f: impl FnMut(&P) -> Result<Q, E>,
    ) -> Result<GrpoSettings<Q>, E> {
        Ok(GrpoSettings {
            student: f(&self.student)?,
            problems: f(&self.problems)?,
            test_problems: self.test_problems.as_ref().map(&mut f).transpose()?,
            question_field: self.question_field.clone(),
            answer_field: self.answer_field.clone(),
            prompt: self.prompt.clone(),
            rewards: self.rewards.clone(),
            steps: self.steps,
            prompts_per_step: self.prompts_per_step,
            group_size: self.group_size,
            updates_per_batch: self.updates_per_batch,
            epsilon: self.epsilon,
            beta: self.beta,
            temperature: self.temperature,
            max_new_tokens: self.max_new_tokens,
            micro_batch: self.micro_batch,
            lr: self.lr,
            warmup_steps: self.warmup_steps,
            grad_clip: self.grad_clip,
            weight_decay: self.weight_decay,
            checkpoint_every: self.checkpoint_every,
            freeze_mlp: self.freeze_mlp,
            eval_problems: self.eval_problems,
            eval_max_new_tokens: self.eval_max_new_tokens,
            logprob_chunk: self.logprob_chunk,
        })
    }
}

/// Resolved paths of a run.
pub type GrpoPaths = GrpoSettings<PathBuf>;
