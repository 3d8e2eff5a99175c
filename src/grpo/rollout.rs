//! Rollouts: `n` completions of one prompt decoded together. The prompt is fed once; the
//! state (KV caches, RWKV states) is then repeated `n` times and every decode step feeds one
//! token per row. A row that has ended keeps being fed its stop token (its output is ignored),
//! so rows stay aligned and the batch never needs padding.

use crate::generate::{LanguageModel, Sampler};
use crate::text::TextTokenizer;
use anyhow::Result;

/// One sampled completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The sampled tokens, the stop token included when the completion ended with one.
    pub ids: Vec<u32>,
    /// The text, special tokens skipped.
    pub text: String,
    /// Cut at the token limit rather than ended by a stop token.
    pub truncated: bool,
}

/// Samples `n` completions of `prompt` with `sampler` (one random stream, rows drawn in order,
/// so the result depends only on the sampler's seed), each at most `max_new` tokens.
pub fn sample_completions<M: LanguageModel>(
    model: &M,
    tokenizer: &TextTokenizer,
    prompt: &[u32],
    n: usize,
    sampler: &mut Sampler,
    max_new: usize,
) -> Result<Vec<Completion>> {
    anyhow::ensure!(!prompt.is_empty(), "the prompt is empty");
    anyhow::ensure!(
        !tokenizer.stop_ids.is_empty(),
        "the tokenizer names no end-of-sequence token, so completions could not end"
    );
    let mut prefix = model.new_state();
    let first = model.feed(&mut prefix, prompt);
    let mut state = model.repeat_state(&prefix, n);
    drop(prefix);
    model.reserve(&mut state, max_new);
    let mut logits: Vec<Vec<f32>> = vec![first; n];
    let mut ids: Vec<Vec<u32>> = vec![Vec::new(); n];
    // Each row's tokens so far (prompt included), for the repetition penalty.
    let mut history: Vec<Vec<u32>> = vec![prompt.to_vec(); n];
    let mut ended = vec![false; n];
    let stop = tokenizer.stop_ids[0];
    for step in 0..max_new {
        let mut next = Vec::with_capacity(n);
        for r in 0..n {
            if ended[r] {
                next.push(vec![stop]);
                continue;
            }
            let t = sampler.sample(&logits[r], &history[r]);
            history[r].push(t);
            ids[r].push(t);
            ended[r] = tokenizer.stop_ids.contains(&t);
            next.push(vec![t]);
        }
        if ended.iter().all(|&e| e) || step + 1 == max_new {
            break;
        }
        logits = model.feed_rows(&mut state, &next);
    }
    ids.into_iter()
        .zip(ended)
        .map(|(ids, ended)| {
            let text = tokenizer.decode(&ids, true)?;
            Ok(Completion {
                ids,
                text,
                truncated: !ended,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::SamplingConfig;
    use std::cell::RefCell;

    /// A model whose next-token logits depend only on the last token fed: token t prefers
    /// t + 1, and token 5 (the stop token) follows 4. Rows of the state are the tokens fed.
    struct Counter {
        calls: RefCell<usize>,
    }

    impl LanguageModel for Counter {
        type State = Vec<Vec<u32>>;
        fn new_state(&self) -> Self::State {
            vec![Vec::new()]
        }
        fn feed_rows(&self, state: &mut Self::State, rows: &[Vec<u32>]) -> Vec<Vec<f32>> {
            *self.calls.borrow_mut() += 1;
            assert_eq!(state.len(), rows.len(), "one state row per fed row");
            state
                .iter_mut()
                .zip(rows)
                .map(|(s, r)| {
                    s.extend(r);
                    let last = *s.last().unwrap() as usize;
                    let mut l = vec![0.0; 8];
                    l[(last + 1) % 8] = 10.0;
                    l
                })
                .collect()
        }
        fn repeat_state(&self, state: &Self::State, n: usize) -> Self::State {
            state
                .iter()
                .flat_map(|r| std::iter::repeat_n(r.clone(), n))
                .collect()
        }
        fn state_bytes(&self, _: &Self::State) -> usize {
            0
        }
        fn vocab_size(&self) -> usize {
            8
        }
    }

    fn tokenizer() -> TextTokenizer {
        crate::text::tokenizer::tests_support::byte_tokenizer(vec![5])
    }

    #[test]
    fn greedy_rows_stop_at_the_stop_token_and_the_prompt_is_fed_once() {
        let model = Counter {
            calls: RefCell::new(0),
        };
        let mut sampler = Sampler::new(SamplingConfig::default());
        let out = sample_completions(&model, &tokenizer(), &[1, 2], 3, &mut sampler, 10).unwrap();
        assert_eq!(out.len(), 3);
        for c in &out {
            assert_eq!(c.ids, vec![3, 4, 5]);
            assert!(!c.truncated);
        }
        // One prefill, then one call per decode step until every row has stopped.
        assert_eq!(*model.calls.borrow(), 3);
        let cut = sample_completions(&model, &tokenizer(), &[0], 2, &mut sampler, 2).unwrap();
        assert_eq!(cut[0].ids, vec![1, 2]);
        assert!(cut[0].truncated);
    }

    #[test]
    fn sampled_rows_differ_and_repeat_with_the_seed() {
        let model = Counter {
            calls: RefCell::new(0),
        };
        let draw = |seed| {
            let mut sampler = Sampler::new(SamplingConfig {
                temperature: 20.0,
                seed,
                ..Default::default()
            });
            sample_completions(&model, &tokenizer(), &[0], 4, &mut sampler, 6).unwrap()
        };
        let a = draw(1);
        assert_eq!(a, draw(1));
        assert_ne!(a, draw(2));
        assert!(
            a.iter().any(|c| c.ids != a[0].ids),
            "rows are sampled independently"
        );
    }
}
