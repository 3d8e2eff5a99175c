//! Rollouts: `n` completions of one prompt decoded together. The prompt is fed once; the
//! state (KV caches, RWKV states) is then repeated `n` times and every decode step feeds one
//! token per row. A row that has ended keeps being fed its stop token (its output is ignored),
//! so rows stay aligned and the batch never needs padding. Greedy completions of several prompts
//! (the math evaluations) decode together too, their prompts padded on the left and masked.

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
    ensure_stop(tokenizer)?;
    let mut prefix = model.new_state();
    let first = model.feed(&mut prefix, prompt);
    let state = model.repeat_state(&prefix, n);
    drop(prefix);
    let rows = Rows {
        state,
        logits: vec![first; n],
        history: vec![prompt.to_vec(); n],
    };
    decode(model, tokenizer, rows, sampler, max_new)
}

/// Greedy completions of `prompts`, each at most `max_new` tokens, decoded up to `batch`
/// prompts at a time when the model takes padded rows ([`LanguageModel::prefill_padded`]),
/// else one by one; `progress` is told how many prompts are done. Each completion is the one
/// its prompt gets alone, up to the rounding of a batched product (a near-tie between two
/// tokens may then go the other way).
pub fn greedy_completions<M: LanguageModel>(
    model: &M,
    tokenizer: &TextTokenizer,
    prompts: &[Vec<u32>],
    max_new: usize,
    batch: usize,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Completion>> {
    anyhow::ensure!(prompts.iter().all(|p| !p.is_empty()), "a prompt is empty");
    ensure_stop(tokenizer)?;
    let greedy = || Sampler::new(crate::generate::SamplingConfig::default());
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(batch.max(1)) {
        let padded = if chunk.len() > 1 {
            model.prefill_padded(chunk)
        } else {
            None
        };
        match padded {
            Some((state, logits)) => {
                let rows = Rows {
                    state,
                    logits,
                    history: chunk.to_vec(),
                };
                out.extend(decode(model, tokenizer, rows, &mut greedy(), max_new)?);
            }
            None => {
                for p in chunk {
                    out.extend(sample_completions(
                        model,
                        tokenizer,
                        p,
                        1,
                        &mut greedy(),
                        max_new,
                    )?);
                }
            }
        }
        progress(out.len());
    }
    Ok(out)
}

fn ensure_stop(tokenizer: &TextTokenizer) -> Result<()> {
    anyhow::ensure!(
        !tokenizer.stop_ids.is_empty(),
        "the tokenizer names no end-of-sequence token, so completions could not end"
    );
    Ok(())
}

/// Rows ready to decode: their state after the prompt, each row's next-token logits, and each
/// row's tokens so far (for the repetition penalty).
struct Rows<S> {
    state: S,
    logits: Vec<Vec<f32>>,
    history: Vec<Vec<u32>>,
}

/// Decodes every row until its stop token or `max_new` tokens. A row that has ended keeps being
/// fed the stop token (its output ignored), so the rows stay aligned.
fn decode<M: LanguageModel>(
    model: &M,
    tokenizer: &TextTokenizer,
    rows: Rows<M::State>,
    sampler: &mut Sampler,
    max_new: usize,
) -> Result<Vec<Completion>> {
    let Rows {
        mut state,
        mut logits,
        mut history,
    } = rows;
    let n = logits.len();
    model.reserve(&mut state, max_new);
    let mut ids: Vec<Vec<u32>> = vec![Vec::new(); n];
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
        /// Takes padded prompts ([`LanguageModel::prefill_padded`]).
        padded: bool,
    }

    impl Counter {
        fn new(padded: bool) -> Self {
            Self {
                calls: RefCell::new(0),
                padded,
            }
        }
    }

    /// Token t prefers t + 1.
    fn next_logits(last: u32) -> Vec<f32> {
        let mut l = vec![0.0; 8];
        l[(last as usize + 1) % 8] = 10.0;
        l
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
                    next_logits(*s.last().unwrap())
                })
                .collect()
        }
        fn prefill_padded(&self, rows: &[Vec<u32>]) -> Option<(Self::State, Vec<Vec<f32>>)> {
            if !self.padded {
                return None;
            }
            *self.calls.borrow_mut() += 1;
            let logits = rows.iter().map(|r| next_logits(*r.last().unwrap()));
            Some((rows.to_vec(), logits.collect()))
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
        let model = Counter::new(false);
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
        let model = Counter::new(false);
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

    #[test]
    fn greedy_completions_of_many_prompts_batched_or_one_by_one_agree() {
        // At most 3 tokens, 5 the stop token: 1 → 2 3 4 (cut); 4 → 5; 6 → 7 0 1 (cut).
        let prompts = vec![vec![0, 1], vec![4], vec![2, 6], vec![3, 3, 4]];
        let want: Vec<Vec<u32>> = vec![vec![2, 3, 4], vec![5], vec![7, 0, 1], vec![5]];
        let mut seen = Vec::new();
        let one_by_one = Counter::new(false);
        let got = greedy_completions(&one_by_one, &tokenizer(), &prompts, 3, 3, |n| seen.push(n))
            .unwrap();
        assert_eq!(got.iter().map(|c| c.ids.clone()).collect::<Vec<_>>(), want);
        assert_eq!(seen, vec![3, 4], "progress after each group of prompts");
        let batched = Counter::new(true);
        let same = greedy_completions(&batched, &tokenizer(), &prompts, 3, 3, |_| {}).unwrap();
        assert_eq!(same, got);
        assert!(same[0].truncated && !same[1].truncated);
        // The group of three: one prefill and two decode steps; the last prompt, alone: one
        // feed (its first token is the stop token).
        assert_eq!(*batched.calls.borrow(), 3 + 1);
        assert!(*one_by_one.calls.borrow() > 4);
    }
}
