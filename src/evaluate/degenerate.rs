//! Whether a generated reply is degenerate: empty, or caught in a loop. The `eval` step fails
//! when the final student's greedy replies to its fixed prompts are degenerate where the
//! teacher's are not — a student that lost the ability to answer must not pass quietly.
//!
//! A loop is a span of characters repeated back to back at least [`MIN_REPEATS`] times that
//! covers at least [`MIN_COVER`] of the reply (characters, not tokens: the test does not depend
//! on a tokenizer, and works the same for text without spaces). Short legitimate repetition
//! ("ha ha ha", a list's `1. 2. 3.`) covers too little of a reply to count.

/// A span must repeat this many times in a row.
pub const MIN_REPEATS: usize = 3;
/// ... and the repetition must cover this fraction of the reply.
pub const MIN_COVER: f64 = 0.5;

/// Why `reply` is degenerate, or `None` when it is not.
pub fn degenerate(reply: &str) -> Option<String> {
    let chars: Vec<char> = reply.trim().chars().collect();
    if chars.is_empty() {
        return Some("empty reply".into());
    }
    let n = chars.len();
    // For each period p, the runs of characters equal to the one p before: a run of r such
    // characters is a span of p repeated (r + p) / p times, covering r + p characters.
    for p in 1..=n / MIN_REPEATS {
        let mut run = 0;
        for i in p..=n {
            if i < n && chars[i] == chars[i - p] {
                run += 1;
                continue;
            }
            let covered = run + p;
            if run > 0 && covered / p >= MIN_REPEATS && covered as f64 >= MIN_COVER * n as f64 {
                let unit: String = chars[i - covered..i - covered + p].iter().collect();
                return Some(format!(
                    "{unit:?} repeated {} times ({covered} of {n} characters)",
                    covered / p
                ));
            }
            run = 0;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_looping_replies_are_degenerate() {
        assert_eq!(degenerate("  \n "), Some("empty reply".into()));
        let loop_ =
            "The capital of France is the capital of France is the capital of France is the";
        let why = degenerate(loop_).expect("a loop");
        assert!(why.contains("repeated 3 times"), "{why}");
        assert_eq!(
            degenerate("n:::::::::::").as_deref(),
            Some("\":\" repeated 11 times (11 of 12 characters)")
        );
        assert!(degenerate("!!!!!!!!!!!!!!!!!!!!!!!!").is_some());
        assert!(degenerate("Paris. Paris. Paris. Paris. Paris. Paris.").is_some());
        // A good start then a loop filling the rest.
        let tail = format!("Sure, here it is: {}", "sea sea sea ".repeat(10));
        assert!(degenerate(&tail).is_some());
    }

    #[test]
    fn ordinary_replies_are_not() {
        for ok in [
            "The capital of France is Paris.",
            "Paris",
            "The sky is blue because air scatters short (blue) wavelengths of sunlight more than \
             long ones. Ha ha ha, we see that scattered light from every direction.",
            "1. Waves\n2. Salt\n3. Wind\n4. Gulls",
            "巴黎是法国的首都。",
        ] {
            assert_eq!(degenerate(ok), None, "{ok}");
        }
    }
}
