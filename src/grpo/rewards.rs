//! Verifiable rewards for math completions (SPEC §6), as configurable components: a correct
//! numeric answer, a final `\boxed{}`, a GSM8K-style `#### N` answer line, a well-formed
//! `<think>…</think>` block, and a penalty for running out of tokens. The answer is read from
//! the last `\boxed{…}` if there is one, else from the last `#### N` line.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

fn d_correct() -> f64 {
    0.6
}
fn d_boxed() -> f64 {
    0.2
}
fn d_think() -> f64 {
    0.2
}
fn d_think_min() -> usize {
    10
}
fn d_tol() -> f64 {
    1e-6
}

/// Weights of the reward components (`[step.rewards]`); 0 turns a component off. The
/// defaults are the original's (maximum 1.0 without the language component).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardSettings {
    /// Added when the extracted answer equals the reference within `tolerance`.
    #[serde(default = "d_correct")]
    pub correct: f64,
    /// Added when the completion holds a `\boxed{…}`.
    #[serde(default = "d_boxed")]
    pub boxed: f64,
    /// Added when the completion holds a `#### N` answer line with a number.
    #[serde(default)]
    pub answer_line: f64,
    /// Added for a `<think>…</think>` block with at least `think_min_chars` inside.
    #[serde(default = "d_think")]
    pub think: f64,
    #[serde(default = "d_think_min")]
    pub think_min_chars: usize,
    /// Subtracted when the completion was cut at the token limit (0: off).
    #[serde(default)]
    pub truncated_penalty: f64,
    /// Absolute tolerance of the numeric comparison (relative for large answers).
    #[serde(default = "d_tol")]
    pub tolerance: f64,
}

impl Default for RewardSettings {
    fn default() -> Self {
        Self {
            correct: d_correct(),
            boxed: d_boxed(),
            answer_line: 0.0,
            think: d_think(),
            think_min_chars: d_think_min(),
            truncated_penalty: 0.0,
            tolerance: d_tol(),
        }
    }
}

/// The reward of one completion, with each component's contribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Reward {
    pub total: f64,
    pub components: BTreeMap<&'static str, f64>,
    /// Whether the extracted answer was right (for accuracy, whatever the weights).
    pub correct: bool,
}

/// Parses a number as written in an answer: thousands separators, a leading `$`, a trailing
/// `.` or `%`, `\!` spacing, simple fractions `a/b` and `\frac{a}{b}`.
pub fn parse_number(text: &str) -> Option<f64> {
    let mut s: String = text
        .trim()
        .replace("\\!", "")
        .replace("\\,", "")
        .replace(['$', ' '], "");
    s = s.trim_end_matches(['.', '%']).to_string();
    if let Some(rest) = s
        .strip_prefix("\\frac{")
        .or_else(|| s.strip_prefix("\\dfrac{"))
    {
        let (num, den) = rest.trim_end_matches('}').split_once("}{")?;
        return Some(parse_number(num)? / parse_number(den)?);
    }
    if let Some((num, den)) = s.split_once('/') {
        return Some(parse_number(num)? / parse_number(den)?);
    }
    // Thousands separators: "1,234,567" but not "1,2" (a list).
    if s.contains(',') {
        let (int, _) = s.split_once('.').unwrap_or((&s, ""));
        let groups: Vec<&str> = int.trim_start_matches('-').split(',').collect();
        let well_formed = groups[0].len() <= 3
            && !groups[0].is_empty()
            && groups[1..].iter().all(|g| g.len() == 3);
        if !well_formed {
            return None;
        }
        s = s.replace(',', "");
    }
    let v: f64 = s.parse().ok()?;
    v.is_finite().then_some(v)
}

/// Contents of every `\boxed{…}` in `text`, braces balanced, in order.
pub fn boxed_contents(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("\\boxed{") {
        let body = &rest[i + "\\boxed{".len()..];
        let mut depth = 1;
        let mut end = None;
        for (j, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(j);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(end) = end else { break };
        out.push(body[..end].to_string());
        rest = &body[end + 1..];
    }
    out
}

/// The number after the last `####` in `text`, if it parses.
pub fn answer_line(text: &str) -> Option<f64> {
    let (_, after) = text.rsplit_once("####")?;
    let line = after.trim_start().lines().next().unwrap_or("");
    // The number is the first whitespace-separated word ("#### 1,234 apples" → 1234).
    parse_number(line.split_whitespace().next()?)
}

/// The final answer of a completion: the last `\boxed{}` that parses, else the `####` line.
pub fn extract_answer(text: &str) -> Option<f64> {
    boxed_contents(text)
        .iter()
        .rev()
        .find_map(|b| parse_number(b))
        .or_else(|| answer_line(text))
}

/// Whether `a` equals the reference `b` within `tol` (absolute, or relative above 1).
pub fn same_number(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1.0)
}

/// A `<think>…</think>` block at least `min_chars` long (trimmed) before any answer.
fn has_think(text: &str, min_chars: usize) -> bool {
    let Some(open) = text.find("<think>") else {
        return false;
    };
    let body = &text[open + "<think>".len()..];
    body.find("</think>")
        .is_some_and(|close| body[..close].trim().chars().count() >= min_chars)
}

impl RewardSettings {
    /// Rejects settings that cannot mean anything.
    pub fn validate(&self) -> Result<(), String> {
        let weights = [
            ("correct", self.correct),
            ("boxed", self.boxed),
            ("answer_line", self.answer_line),
            ("think", self.think),
            ("truncated_penalty", self.truncated_penalty),
        ];
        if let Some((k, v)) = weights.iter().find(|(_, v)| !v.is_finite() || *v < 0.0) {
            return Err(format!("rewards.{k} must be a finite number ≥ 0, got {v}"));
        }
        if weights[..4].iter().all(|(_, v)| *v == 0.0) {
            return Err("every reward component is 0: nothing to learn from".into());
        }
        if !(self.tolerance >= 0.0) {
            return Err(format!(
                "rewards.tolerance must be ≥ 0, got {}",
                self.tolerance
            ));
        }
        Ok(())
    }

    /// Scores one completion against the reference answer (`None`: no reference, so no
    /// correctness component). `truncated`: the completion hit the token limit.
    pub fn score(&self, completion: &str, reference: Option<f64>, truncated: bool) -> Reward {
        let mut components = BTreeMap::new();
        let answer = extract_answer(completion);
        let correct =
            matches!((answer, reference), (Some(a), Some(r)) if same_number(a, r, self.tolerance));
        let mut add = |name: &'static str, weight: f64, on: bool| {
            if weight != 0.0 {
                components.insert(name, if on { weight } else { 0.0 });
            }
        };
        add("correct", self.correct, correct);
        add(
            "boxed",
            self.boxed,
            boxed_contents(completion)
                .iter()
                .any(|b| !b.trim().is_empty()),
        );
        add(
            "answer_line",
            self.answer_line,
            answer_line(completion).is_some(),
        );
        add(
            "think",
            self.think,
            has_think(completion, self.think_min_chars),
        );
        if self.truncated_penalty != 0.0 {
            components.insert(
                "truncated",
                if truncated {
                    -self.truncated_penalty
                } else {
                    0.0
                },
            );
        }
        Reward {
            total: components.values().sum(),
            components,
            correct,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_as_written_in_answers() {
        assert_eq!(parse_number("1,234"), Some(1234.0));
        assert_eq!(parse_number("-1,234.50"), Some(-1234.5));
        assert_eq!(parse_number("$42."), Some(42.0));
        assert_eq!(parse_number(" -7 "), Some(-7.0));
        assert_eq!(parse_number("50%"), Some(50.0));
        assert_eq!(parse_number("\\frac{3}{4}"), Some(0.75));
        assert_eq!(parse_number("3/4"), Some(0.75));
        assert_eq!(parse_number("1\\!234"), Some(1234.0));
        // A list, not a number with separators.
        assert_eq!(parse_number("1,2"), None);
        assert_eq!(parse_number("12,34,567"), None);
        assert_eq!(parse_number("seven"), None);
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("inf"), None);
    }

    #[test]
    fn the_last_boxed_answer_wins_and_braces_nest() {
        let t = "First \\boxed{12}, then on reflection \\boxed{\\frac{1}{2}}.";
        assert_eq!(boxed_contents(t), vec!["12", "\\frac{1}{2}"]);
        assert_eq!(extract_answer(t), Some(0.5));
        // An unparsable last box falls back to the previous one.
        assert_eq!(extract_answer("\\boxed{7} \\boxed{x+1}"), Some(7.0));
        // Unclosed box: nothing.
        assert!(boxed_contents("\\boxed{12").is_empty());
    }

    #[test]
    fn answer_lines() {
        assert_eq!(extract_answer("so 3 + 4 = 7\n#### 7"), Some(7.0));
        assert_eq!(extract_answer("#### 1,000 dollars\nthanks"), Some(1000.0));
        assert_eq!(extract_answer("#### -12"), Some(-12.0));
        assert_eq!(extract_answer("#### 3\n#### 4"), Some(4.0));
        assert_eq!(extract_answer("####"), None);
        assert_eq!(extract_answer("The answer is 5."), None);
        // A boxed answer takes precedence over the answer line.
        assert_eq!(extract_answer("#### 3 \\boxed{5}"), Some(5.0));
    }

    #[test]
    fn scores_by_component() {
        let r = RewardSettings::default();
        let good = "<think>3 apples plus 4 apples</think> The answer is \\boxed{7}.";
        let s = r.score(good, Some(7.0), false);
        assert!(s.correct);
        assert!((s.total - 1.0).abs() < 1e-12, "{s:?}");
        let wrong = r.score("<think>short</think> \\boxed{8}", Some(7.0), false);
        assert!(!wrong.correct);
        // "short" has 5 characters: no think reward; the box still counts.
        assert_eq!(wrong.components["think"], 0.0);
        assert_eq!(wrong.components["boxed"], 0.2);
        assert!((wrong.total - 0.2).abs() < 1e-12);
        let none = r.score("I don't know.", Some(7.0), false);
        assert_eq!(none.total, 0.0);
        // Without a reference only the format components count.
        assert!((r.score(good, None, false).total - 0.4).abs() < 1e-12);
        // Tolerance: relative for large answers.
        assert!(
            r.score("\\boxed{1000000.0000001}", Some(1e6), false)
                .correct
        );
        assert!(!r.score("\\boxed{7.01}", Some(7.0), false).correct);
    }

    #[test]
    fn answer_line_and_truncation_components() {
        let r = RewardSettings {
            correct: 1.0,
            boxed: 0.0,
            answer_line: 0.1,
            think: 0.0,
            truncated_penalty: 0.5,
            ..Default::default()
        };
        let s = r.score("2 + 2 = 4\n#### 4", Some(4.0), false);
        assert!((s.total - 1.1).abs() < 1e-12, "{s:?}");
        assert!(!s.components.contains_key("boxed"));
        let t = r.score("2 + 2 = ", Some(4.0), true);
        assert!((t.total + 0.5).abs() < 1e-12, "{t:?}");
    }

    #[test]
    fn settings_are_checked() {
        assert!(RewardSettings::default().validate().is_ok());
        let neg = RewardSettings {
            boxed: -1.0,
            ..Default::default()
        };
        assert!(neg.validate().unwrap_err().contains("rewards.boxed"));
        let off = RewardSettings {
            correct: 0.0,
            boxed: 0.0,
            think: 0.0,
            ..Default::default()
        };
        assert!(off.validate().is_err());
    }
}
