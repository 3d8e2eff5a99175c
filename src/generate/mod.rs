//! Autoregressive generation for any model that carries a state between calls (the teacher's KV
//! cache, the hybrid's RWKV state): prefill the prompt in one pass, then decode token by token,
//! streaming text, until an end-of-sequence token, a stop string or the token limit.

pub mod sampler;

pub use sampler::{Sampler, SamplingConfig};

use crate::model::transformer::{Transformer, TransformerCache, ids_tensor};
use crate::model::weights::to_vec;
use crate::text::TextTokenizer;
use crate::util::pool::on_pool;
use anyhow::Result;
use std::time::{Duration, Instant};

/// A causal language model that generation can drive.
pub trait LanguageModel {
    /// What must be carried from one call to the next.
    type State: Clone;

    fn new_state(&self) -> Self::State;

    /// Feeds `rows` (sequences of equal length, one per row of the state's batch) after
    /// everything in `state`; returns each row's logits at its last position.
    fn feed_rows(&self, state: &mut Self::State, rows: &[Vec<u32>]) -> Vec<Vec<f32>>;

    /// The state with every row repeated `n` times (row-major: all copies of row 0 first).
    fn repeat_state(&self, state: &Self::State, n: usize) -> Self::State;

    /// Makes room in `state` for `additional` tokens after those fed so far, when the length of
    /// a generation is known (KV caches otherwise grow in steps as tokens come).
    fn reserve(&self, _state: &mut Self::State, _additional: usize) {}

    /// Bytes held by the state (KV cache or recurrent state).
    fn state_bytes(&self, state: &Self::State) -> usize;

    /// The part of [`LanguageModel::state_bytes`] held by recurrent (RWKV) layers, whose size
    /// does not grow with the context.
    fn recurrent_bytes(&self, _state: &Self::State) -> usize {
        0
    }

    fn vocab_size(&self) -> usize;

    /// Feeds prompts of different lengths into a fresh state with one row per prompt: each is
    /// padded on the left to the longest and the padding is masked (attention hides padded keys;
    /// converted layers keep their state and shift in zeros there), so each row's logits and
    /// state are those of its prompt fed alone, up to rounding. Returns the state and each row's
    /// logits at its last token; `None` for a model that cannot take padded rows (feed the
    /// prompts one at a time then).
    fn prefill_padded(&self, _rows: &[Vec<u32>]) -> Option<(Self::State, Vec<Vec<f32>>)> {
        None
    }

    /// Feeds `ids` (one sequence) after everything in `state`; returns the logits of the last
    /// position.
    fn feed(&self, state: &mut Self::State, ids: &[u32]) -> Vec<f32> {
        self.feed_rows(state, &[ids.to_vec()]).swap_remove(0)
    }
}

/// Rows of different lengths padded on the left to the longest (`pad` is any id; the mask says
/// which positions are real): ids `[B, T]` and mask `[B, T]` (1 real, 0 padding).
fn left_padded(
    rows: &[Vec<u32>],
    pad: u32,
    device: &burn::tensor::Device,
) -> (
    burn::tensor::Tensor<2, burn::tensor::Int>,
    burn::tensor::Tensor<2>,
) {
    let t = rows.iter().map(Vec::len).max().unwrap_or(0);
    let ids: Vec<Vec<u32>> = rows
        .iter()
        .map(|r| {
            let mut p = vec![pad; t - r.len()];
            p.extend(r);
            p
        })
        .collect();
    let mask: Vec<f32> = rows
        .iter()
        .flat_map(|r| (0..t).map(move |j| if j < t - r.len() { 0.0 } else { 1.0 }))
        .collect();
    let mask = burn::tensor::TensorData::new(mask, [rows.len(), t]);
    (
        ids_tensor(&ids, device),
        burn::tensor::Tensor::from_data(mask, device),
    )
}

/// Logits of the last position of each row of `hidden`, as rows of f32.
fn last_logits(
    hidden: burn::tensor::Tensor<3>,
    head: impl Fn(burn::tensor::Tensor<3>) -> burn::tensor::Tensor<3>,
) -> Vec<Vec<f32>> {
    let [b, t, _] = hidden.dims();
    let logits = to_vec(head(hidden.narrow(1, t - 1, 1)));
    let v = logits.len() / b;
    logits.chunks(v).map(<[f32]>::to_vec).collect()
}

impl LanguageModel for Transformer {
    type State = TransformerCache;

    fn new_state(&self) -> TransformerCache {
        TransformerCache::default()
    }

    fn feed_rows(&self, state: &mut TransformerCache, rows: &[Vec<u32>]) -> Vec<Vec<f32>> {
        on_pool(|| {
            let device = self.embed.val().device();
            let (hidden, _) =
                self.forward_hidden(ids_tensor(rows, &device), None, Some(state), &[]);
            last_logits(hidden, |h| self.logits(h))
        })
    }

    fn prefill_padded(&self, rows: &[Vec<u32>]) -> Option<(TransformerCache, Vec<Vec<f32>>)> {
        if rows.is_empty() || rows.iter().any(Vec::is_empty) {
            return None;
        }
        let (ids, mask) = left_padded(rows, 0, &self.embed.val().device());
        let mut state = TransformerCache::default();
        let (hidden, _) = self.forward_hidden(ids, Some(mask), Some(&mut state), &[]);
        Some((state, last_logits(hidden, |h| self.logits(h))))
    }

    fn repeat_state(&self, state: &TransformerCache, n: usize) -> TransformerCache {
        TransformerCache {
            layers: state
                .layers
                .iter()
                .map(|c| c.as_ref().map(|c| c.repeat_rows(n)))
                .collect(),
        }
    }

    fn reserve(&self, state: &mut TransformerCache, additional: usize) {
        state.reserve(additional);
    }

    fn state_bytes(&self, state: &TransformerCache) -> usize {
        state.bytes()
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
}

impl LanguageModel for crate::model::hybrid::Hybrid {
    type State = crate::model::hybrid::HybridState;

    fn new_state(&self) -> Self::State {
        crate::model::hybrid::Hybrid::new_state(self)
    }

    fn feed_rows(&self, state: &mut Self::State, rows: &[Vec<u32>]) -> Vec<Vec<f32>> {
        on_pool(|| {
            let device = self.embed.val().device();
            let (hidden, _) =
                self.forward_hidden(ids_tensor(rows, &device), None, Some(state), &[]);
            last_logits(hidden, |h| self.logits(h))
        })
    }

    /// Not for mixers with rotary embeddings: their recurrence depends on absolute positions,
    /// which padding shifts.
    fn prefill_padded(&self, rows: &[Vec<u32>]) -> Option<(Self::State, Vec<Vec<f32>>)> {
        if rows.is_empty() || rows.iter().any(Vec::is_empty) || self.student.rope {
            return None;
        }
        let (ids, mask) = left_padded(rows, 0, &self.embed.val().device());
        let mut state = crate::model::hybrid::Hybrid::new_state(self);
        let (hidden, _) = self.forward_hidden(ids, Some(mask), Some(&mut state), &[]);
        Some((state, last_logits(hidden, |h| self.logits(h))))
    }

    fn repeat_state(&self, state: &Self::State, n: usize) -> Self::State {
        state.repeat_rows(n)
    }

    fn reserve(&self, state: &mut Self::State, additional: usize) {
        state.reserve(additional);
    }

    fn state_bytes(&self, state: &Self::State) -> usize {
        let (kv, rwkv) = state.bytes();
        kv + rwkv
    }

    fn recurrent_bytes(&self, state: &Self::State) -> usize {
        state.bytes().1
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
}

/// A teacher or a student, as read from a model directory.
pub enum AnyModel {
    Teacher(Transformer),
    Student(crate::model::hybrid::Hybrid),
}

#[derive(Clone)]
pub enum AnyState {
    Teacher(TransformerCache),
    Student(crate::model::hybrid::HybridState),
}

impl AnyModel {
    /// Loads `dir`: a student when its `model_type` is `rwkv_hybrid`, a teacher otherwise.
    pub fn load(dir: &std::path::Path, device: &burn::tensor::Device) -> Result<Self> {
        let config = crate::model::TransformerConfig::from_dir(dir)?;
        Ok(if config.model_type == "rwkv_hybrid" {
            AnyModel::Student(crate::model::hybrid::Hybrid::load(dir, device)?)
        } else {
            AnyModel::Teacher(Transformer::load(dir, device)?)
        })
    }

    /// The longest sequence the model was trained for (`max_position_embeddings`).
    pub fn max_context(&self) -> usize {
        match self {
            AnyModel::Teacher(t) => t.config.max_position_embeddings,
            AnyModel::Student(h) => h.config.max_position_embeddings,
        }
    }

    /// A one-line description for the terminal.
    pub fn describe(&self) -> String {
        match self {
            AnyModel::Teacher(t) => format!(
                "{} transformer, {} layers",
                t.config.model_type, t.config.num_hidden_layers
            ),
            AnyModel::Student(h) => format!(
                "RWKV-7 hybrid, {} of {} layers converted",
                h.student.wkv_layers.len(),
                h.config.num_hidden_layers
            ),
        }
    }
}

impl LanguageModel for AnyModel {
    type State = AnyState;

    fn new_state(&self) -> AnyState {
        match self {
            AnyModel::Teacher(m) => AnyState::Teacher(m.new_state()),
            AnyModel::Student(m) => AnyState::Student(LanguageModel::new_state(m)),
        }
    }

    fn feed_rows(&self, state: &mut AnyState, rows: &[Vec<u32>]) -> Vec<Vec<f32>> {
        match (self, state) {
            (AnyModel::Teacher(m), AnyState::Teacher(s)) => m.feed_rows(s, rows),
            (AnyModel::Student(m), AnyState::Student(s)) => m.feed_rows(s, rows),
            _ => panic!("state from a different model"),
        }
    }

    fn prefill_padded(&self, rows: &[Vec<u32>]) -> Option<(AnyState, Vec<Vec<f32>>)> {
        match self {
            AnyModel::Teacher(m) => m
                .prefill_padded(rows)
                .map(|(s, l)| (AnyState::Teacher(s), l)),
            AnyModel::Student(m) => m
                .prefill_padded(rows)
                .map(|(s, l)| (AnyState::Student(s), l)),
        }
    }

    fn repeat_state(&self, state: &AnyState, n: usize) -> AnyState {
        match (self, state) {
            (AnyModel::Teacher(m), AnyState::Teacher(s)) => AnyState::Teacher(m.repeat_state(s, n)),
            (AnyModel::Student(m), AnyState::Student(s)) => AnyState::Student(m.repeat_state(s, n)),
            _ => panic!("state from a different model"),
        }
    }

    fn state_bytes(&self, state: &AnyState) -> usize {
        match (self, state) {
            (AnyModel::Teacher(m), AnyState::Teacher(s)) => m.state_bytes(s),
            (AnyModel::Student(m), AnyState::Student(s)) => m.state_bytes(s),
            _ => 0,
        }
    }

    fn reserve(&self, state: &mut AnyState, additional: usize) {
        match (self, state) {
            (AnyModel::Teacher(m), AnyState::Teacher(s)) => m.reserve(s, additional),
            (AnyModel::Student(m), AnyState::Student(s)) => m.reserve(s, additional),
            _ => panic!("state from a different model"),
        }
    }

    fn recurrent_bytes(&self, state: &AnyState) -> usize {
        match (self, state) {
            (AnyModel::Student(m), AnyState::Student(s)) => m.recurrent_bytes(s),
            _ => 0,
        }
    }

    fn vocab_size(&self) -> usize {
        match self {
            AnyModel::Teacher(m) => m.config.vocab_size,
            AnyModel::Student(m) => m.config.vocab_size,
        }
    }
}

/// Limits of one generation.
#[derive(Debug, Clone)]
pub struct GenerationLimits {
    pub max_new_tokens: usize,
    /// Text that ends the generation (not included in the output).
    pub stop_strings: Vec<String>,
}

impl Default for GenerationLimits {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            stop_strings: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    EndOfSequence,
    StopString,
    MaxTokens,
}

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The reply's tokens (without a stop token).
    pub ids: Vec<u32>,
    /// The stop token that ended the reply (fed into the state, not part of `ids`).
    pub stop_token: Option<u32>,
    pub text: String,
    pub stop: StopReason,
    pub prompt_tokens: usize,
    pub prefill: Duration,
    pub decode: Duration,
}

impl Generation {
    /// Every token fed into the state after the prompt: the reply's and, when the model ended
    /// its turn, the stop token too. A conversation continued from the state starts after them.
    pub fn fed(&self) -> Vec<u32> {
        self.ids.iter().copied().chain(self.stop_token).collect()
    }

    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }

    /// Decode speed over the tokens after the first (which the prefill produced).
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.ids.len().saturating_sub(1) as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// Generates a continuation of `prompt` (token ids) from `state`, calling `on_text` with each
/// new piece of text. The state afterwards covers the prompt and the generated tokens (the
/// final token included), so a conversation can continue from it.
pub fn generate<M: LanguageModel>(
    model: &M,
    tokenizer: &TextTokenizer,
    state: &mut M::State,
    prompt: &[u32],
    sampler: &mut Sampler,
    limits: &GenerationLimits,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    anyhow::ensure!(!prompt.is_empty(), "the prompt is empty");
    let start = Instant::now();
    let mut logits = model.feed(state, prompt);
    // Every generated token is fed back (the last one too, for a conversation to continue).
    model.reserve(state, limits.max_new_tokens);
    let prefill = start.elapsed();
    let decode_start = Instant::now();
    let mut history: Vec<u32> = prompt.to_vec();
    let mut ids = Vec::new();
    let mut stop_token = None;
    let mut text = String::new();
    // Bytes of `text` already passed to `on_text`.
    let mut emitted = 0;
    let mut stop = StopReason::MaxTokens;
    while ids.len() < limits.max_new_tokens {
        let next = sampler.sample(&logits, &history);
        // The state always takes the chosen token, so a conversation can continue from it.
        logits = model.feed(state, &[next]);
        if tokenizer.stop_ids.contains(&next) {
            stop = StopReason::EndOfSequence;
            stop_token = Some(next);
            break;
        }
        ids.push(next);
        history.push(next);
        text = tokenizer.decode(&ids, true)?;
        if let Some(cut) = limits
            .stop_strings
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            text.truncate(cut);
            stop = StopReason::StopString;
            break;
        }
        // Hold back an incomplete character and anything that may begin a stop string.
        let complete = text.trim_end_matches('\u{FFFD}').len();
        let hold = limits
            .stop_strings
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(|&k| s.is_char_boundary(k) && text[..complete].ends_with(&s[..k]))
            })
            .max()
            .unwrap_or(0);
        let safe = complete - hold;
        if safe > emitted {
            on_text(&text[emitted..safe]);
            emitted = safe;
        }
    }
    if text.len() > emitted {
        on_text(&text[emitted..]);
    }
    Ok(Generation {
        ids,
        stop_token,
        text,
        stop,
        prompt_tokens: prompt.len(),
        prefill,
        decode: decode_start.elapsed(),
    })
}

/// A model state with the tokens it has consumed, so that a conversation continuing what the
/// state has seen is fed only its new tokens — with the same result as feeding the whole
/// conversation to a fresh state. `runner chat` and `runner serve` keep one between turns.
pub struct KeptState<S> {
    /// Every token fed into `state`, in order.
    fed: Vec<u32>,
    state: Option<S>,
}

impl<S> Default for KeptState<S> {
    fn default() -> Self {
        Self {
            fed: Vec::new(),
            state: None,
        }
    }
}

impl<S> KeptState<S> {
    /// The state to continue from and the tokens still to feed for the conversation `ids` (all
    /// its tokens): the kept state when `ids` extends what it has seen, else a fresh one.
    pub fn take(&mut self, ids: &[u32], fresh: impl FnOnce() -> S) -> (S, Vec<u32>) {
        let fed = std::mem::take(&mut self.fed);
        match self.state.take() {
            Some(s) if ids.len() > fed.len() && ids.starts_with(&fed) => {
                (s, ids[fed.len()..].to_vec())
            }
            _ => (fresh(), ids.to_vec()),
        }
    }

    /// Keeps `state` after the conversation `ids` and a generation that fed `generated` (its
    /// [`Generation::fed`]).
    pub fn keep(&mut self, ids: &[u32], generated: &[u32], state: S) {
        self.fed = ids.iter().chain(generated).copied().collect();
        self.state = Some(state);
    }

    /// Forgets the state.
    pub fn clear(&mut self) {
        self.fed.clear();
        self.state = None;
    }

    /// How many tokens the kept state has seen.
    pub fn len(&self) -> usize {
        if self.state.is_some() {
            self.fed.len()
        } else {
            0
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod kept_state_tests {
    use super::*;

    /// Its state is every token it was fed; token t makes t + 1 most likely (7 → 0).
    struct Recorder;

    impl LanguageModel for Recorder {
        type State = Vec<u32>;
        fn new_state(&self) -> Vec<u32> {
            Vec::new()
        }
        fn feed_rows(&self, state: &mut Vec<u32>, rows: &[Vec<u32>]) -> Vec<Vec<f32>> {
            state.extend(&rows[0]);
            let mut l = vec![0.0; 8];
            l[(*state.last().unwrap() as usize + 1) % 8] = 10.0;
            vec![l]
        }
        fn repeat_state(&self, state: &Vec<u32>, _: usize) -> Vec<u32> {
            state.clone()
        }
        fn state_bytes(&self, _: &Vec<u32>) -> usize {
            0
        }
        fn vocab_size(&self) -> usize {
            8
        }
    }

    /// Turn 1 from `turn1`, then the conversation extended by the reply, `end` (what a chat
    /// template writes after a reply) and `turn2`: the kept state must hold exactly what a fresh
    /// state fed the whole conversation holds.
    fn continue_conversation(
        stop_ids: Vec<u32>,
        max_new: usize,
        end: &[u32],
    ) -> (Vec<u32>, Vec<u32>) {
        let tok = crate::text::tokenizer::tests_support::byte_tokenizer(stop_ids);
        let model = Recorder;
        let limits = GenerationLimits {
            max_new_tokens: max_new,
            stop_strings: Vec::new(),
        };
        let mut sampler = Sampler::new(SamplingConfig::default());
        let mut kept = KeptState::default();
        let turn1 = vec![0, 1];
        let (mut st, new) = kept.take(&turn1, || model.new_state());
        let g = generate(&model, &tok, &mut st, &new, &mut sampler, &limits, |_| {}).unwrap();
        kept.keep(&turn1, &g.fed(), st);
        // The next conversation: turn 1, the reply, the end-of-turn tokens, turn 2.
        let mut all = turn1.clone();
        all.extend(&g.ids);
        all.extend(end);
        all.extend([6, 7]);
        let (mut st, new) = kept.take(&all, || model.new_state());
        assert!(new.len() < all.len(), "the kept state was used");
        model.feed(&mut st, &new);
        let mut fresh = model.new_state();
        model.feed(&mut fresh, &all);
        (st, fresh)
    }

    #[test]
    fn a_continued_conversation_feeds_each_token_once() {
        // Ended by the stop token: the reply is 2, 3, then 4 stops it; the template's end of
        // turn is that stop token followed by 5 (a newline).
        let (kept, fresh) = continue_conversation(vec![4], 10, &[4, 5]);
        assert_eq!(kept, fresh);
        // Ended by the length limit: nothing of the end of turn was fed yet.
        let (kept, fresh) = continue_conversation(vec![], 3, &[4, 5]);
        assert_eq!(kept, fresh);
    }

    #[test]
    fn a_conversation_that_does_not_extend_the_state_starts_fresh() {
        let mut kept: KeptState<Vec<u32>> = KeptState::default();
        kept.keep(&[1, 2], &[3], vec![1, 2, 3]);
        assert_eq!(kept.len(), 3);
        let (st, new) = kept.take(&[1, 9, 9, 9], Vec::new);
        assert!(st.is_empty());
        assert_eq!(new, vec![1, 9, 9, 9]);
        assert!(kept.is_empty());
    }
}

#[cfg(test)]
mod padded_tests {
    use super::*;
    use crate::model::TransformerConfig;
    use crate::model::hybrid::{Hybrid, InitMode, StudentConfig};

    fn teacher() -> Transformer {
        let cfg = TransformerConfig::from_json(serde_json::json!({
            "model_type": "qwen2", "vocab_size": 40, "hidden_size": 64,
            "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
            "num_key_value_heads": 2
        }))
        .unwrap();
        Transformer::random(cfg, 3, &crate::testing::device())
    }

    /// Prompts of 6, 1 and 3 tokens: the second and third are padded.
    fn prompts() -> Vec<Vec<u32>> {
        vec![vec![3, 7, 1, 9, 2, 11], vec![5], vec![8, 8, 4]]
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= 1e-5 * scale,
            "{what}: max error {err} (scale {scale})"
        );
    }

    /// Each row of a padded prefill, and three tokens decoded after it, give the logits of its
    /// prompt fed alone.
    fn check<M: LanguageModel>(model: &M) {
        let prompts = prompts();
        let (mut state, logits) = model.prefill_padded(&prompts).expect("takes padded rows");
        let mut alone: Vec<M::State> = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let mut s = model.new_state();
            assert_close(
                &logits[i],
                &model.feed(&mut s, p),
                &format!("row {i}, prompt"),
            );
            alone.push(s);
        }
        for step in 0..3u32 {
            let next: Vec<Vec<u32>> = (0..prompts.len() as u32)
                .map(|i| vec![(i * 7 + step * 3 + 1) % 40])
                .collect();
            let batched = model.feed_rows(&mut state, &next);
            for (i, s) in alone.iter_mut().enumerate() {
                let want = model.feed(s, &next[i]);
                assert_close(&batched[i], &want, &format!("row {i}, decode step {step}"));
            }
        }
    }

    #[test]
    fn padded_prompts_decode_as_each_prompt_alone() {
        let teacher = teacher();
        check(&teacher);
        // Converted layers first, in the middle and last: the recurrence and the token shift
        // must both ignore the padding.
        for layers in [vec![0], vec![1], vec![0, 2]] {
            let st = StudentConfig {
                wkv_layers: layers,
                ..Default::default()
            };
            check(&Hybrid::from_teacher(teacher.clone(), st, InitMode::Teacher, 4).unwrap());
        }
        let rope = StudentConfig {
            wkv_layers: vec![1],
            rope: true,
            ..Default::default()
        };
        let rope = Hybrid::from_teacher(teacher, rope, InitMode::Teacher, 4).unwrap();
        assert!(
            rope.prefill_padded(&prompts()).is_none(),
            "rotary mixers depend on absolute positions"
        );
    }
}
