//! Math problems with numeric answers, read from JSON Lines (GSM-Symbolic, GSM8K-style):
//! a question field and an answer field (a number, or text ending in `#### N`); and the
//! accuracy of a model on them by greedy decoding.

use super::rewards::{answer_line, extract_answer, parse_number, same_number};
use super::rollout::greedy_completions;
use crate::generate::LanguageModel;
use crate::text::{ChatMessage, TextTokenizer};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::path::Path;

/// One problem.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub question: String,
    pub answer: f64,
}

/// Reads every record of `path`; errors name the file and line.
pub fn load_problems(
    path: &Path,
    question_field: &str,
    answer_field: &str,
) -> Result<Vec<Problem>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let question = v[question_field]
            .as_str()
            .with_context(|| format!("{}: no string field `{question_field}`", at()))?
            .to_string();
        let answer = match &v[answer_field] {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::String(s) => parse_number(s).or_else(|| answer_line(s)),
            _ => None,
        }
        .with_context(|| {
            format!(
                "{}: field `{answer_field}` is not a number or text ending in `#### N`",
                at()
            )
        })?;
        out.push(Problem { question, answer });
    }
    if out.is_empty() {
        bail!("{} holds no problems", path.display());
    }
    Ok(out)
}

/// How a problem becomes a prompt: optional system message, then the question followed by
/// an optional instruction, rendered with the chat template and the generation prompt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct PromptFormat {
    #[serde(default)]
    pub system: Option<String>,
    /// Appended to the question (e.g. "Put the final answer after ####.").
    #[serde(default)]
    pub instruction: Option<String>,
}

impl PromptFormat {
    pub fn tokens(&self, tokenizer: &TextTokenizer, question: &str) -> Result<Vec<u32>> {
        let mut messages = Vec::new();
        if let Some(s) = &self.system {
            messages.push(ChatMessage::new("system", s));
        }
        let user = match &self.instruction {
            Some(i) => format!("{question}\n{i}"),
            None => question.to_string(),
        };
        messages.push(ChatMessage::new("user", &user));
        tokenizer.encode(&tokenizer.render_chat(&messages, true)?)
    }
}

/// Greedy accuracy on a list of problems.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Accuracy {
    pub problems: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// Problems whose completion had any parsable answer.
    pub answered: usize,
    /// The first few (question, completion, reference) triples.
    pub samples: Vec<serde_json::Value>,
}

/// Problems decoded together by [`accuracy`] (the batched decode's matrix products read each
/// weight once for up to 16 rows).
pub const ACCURACY_BATCH: usize = 16;

/// Greedy completions of each problem (at most `max_new` tokens, up to [`ACCURACY_BATCH`]
/// problems decoded together); exact numeric answers.
pub fn accuracy<M: LanguageModel>(
    model: &M,
    tokenizer: &TextTokenizer,
    problems: &[Problem],
    format: &PromptFormat,
    max_new: usize,
    tolerance: f64,
    progress: impl FnMut(usize),
) -> Result<Accuracy> {
    let prompts = problems
        .iter()
        .map(|p| format.tokens(tokenizer, &p.question))
        .collect::<Result<Vec<_>>>()?;
    let completions = greedy_completions(
        model,
        tokenizer,
        &prompts,
        max_new,
        ACCURACY_BATCH,
        progress,
    )?;
    let mut correct = 0;
    let mut answered = 0;
    let mut samples = Vec::new();
    for (p, c) in problems.iter().zip(&completions) {
        let got = extract_answer(&c.text);
        answered += got.is_some() as usize;
        let ok = got.is_some_and(|a| same_number(a, p.answer, tolerance));
        correct += ok as usize;
        if samples.len() < 5 {
            samples.push(serde_json::json!({
                "question": p.question, "completion": c.text, "reference": p.answer, "correct": ok,
            }));
        }
    }
    Ok(Accuracy {
        problems: problems.len(),
        correct,
        accuracy: correct as f64 / problems.len().max(1) as f64,
        answered,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_from_jsonl_with_numbers_or_answer_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("math.jsonl");
        std::fs::write(
            &p,
            "{\"question\": \"1+1?\", \"answer\": \"2\"}\n\n{\"question\": \"q\", \"answer\": \"so\\n#### 1,200\"}\n{\"question\": \"r\", \"answer\": -3}\n",
        )
        .unwrap();
        let got = load_problems(&p, "question", "answer").unwrap();
        assert_eq!(
            got.iter().map(|p| p.answer).collect::<Vec<_>>(),
            vec![2.0, 1200.0, -3.0]
        );
        std::fs::write(&p, "{\"question\": \"q\", \"answer\": \"many\"}\n").unwrap();
        let e = format!("{:#}", load_problems(&p, "question", "answer").unwrap_err());
        assert!(e.contains("math.jsonl:1") && e.contains("`answer`"), "{e}");
        let e = format!("{:#}", load_problems(&p, "prompt", "answer").unwrap_err());
        assert!(e.contains("no string field `prompt`"), "{e}");
    }
}
