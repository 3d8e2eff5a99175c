//! Math accuracy as the steps report it (a progress bar and a log line), shared by the `grpo`
//! step (before and after training) and the `eval` step (teacher and student).

use crate::generate::LanguageModel;
use crate::grpo::problems::{Accuracy, Problem, PromptFormat, accuracy};
use crate::text::TextTokenizer;
use anyhow::Result;

/// Which problems, asked how, answered in how many tokens, compared how closely.
pub struct MathEval<'a> {
    pub problems: &'a [Problem],
    pub format: &'a PromptFormat,
    pub max_new_tokens: usize,
    pub tolerance: f64,
}

impl MathEval<'_> {
    /// Greedy accuracy of `model`; `step` and `label` name it in the progress bar and the log.
    pub fn score<M: LanguageModel>(
        &self,
        model: &M,
        tokenizer: &TextTokenizer,
        step: &str,
        label: &str,
    ) -> Result<Accuracy> {
        let bar = crate::progress::bar(
            self.problems.len() as u64,
            &format!("{step} math accuracy, {label}"),
            "problems",
        );
        let acc = accuracy(
            model,
            tokenizer,
            self.problems,
            self.format,
            self.max_new_tokens,
            self.tolerance,
            |i| bar.set_position(i as u64),
        )?;
        bar.finish_and_clear();
        tracing::info!(
            "{step}: math accuracy, {label}: {}/{} ({:.1}%)",
            acc.correct,
            acc.problems,
            100.0 * acc.accuracy
        );
        Ok(acc)
    }
}
