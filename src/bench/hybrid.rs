//! `runner bench hybrid`: generation speed and memory of the teacher vs its hybrid student
//! (teacher-initialised mixers in the chosen layers) at growing context lengths: prefill the
//! context, then decode tokens one by one. Attention layers pay for the KV cache on every
//! decoded token; converted layers carry a fixed-size state.
//!
//! One decoded token reads every weight once plus the whole KV cache and recurrent state, so
//! on a CPU the decode speed is bounded by those bytes over the memory's read bandwidth. The
//! table reports the bytes each model reads per token, the rate it reads them at, and the
//! speed-up a purely read-bound decode would show (the ratio of the bytes): the most that
//! converting these layers can give at that context, whatever the kernels.

use super::generate::{median, prompt_ids};
use super::mem;
use crate::generate::LanguageModel;
use crate::generate::sampler::argmax;
use std::fmt::Write;
use std::time::Instant;

#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct ContextSpeed {
    pub context: usize,
    pub prefill_s: f64,
    pub decode_tok_s: f64,
    pub state_mib: f64,
    /// The part of `state_mib` held by RWKV layers (constant in the context length).
    pub recurrent_mib: f64,
    /// Peak RSS of the process so far (absent where the platform does not report it).
    pub peak_rss_mib: Option<f64>,
}

/// Prefills `context` tokens, then decodes `new` tokens from there with `batch` sequences
/// together (its state repeated, as GRPO's groups are; median of `reps` decode runs): the speed
/// counts the tokens of all of them, the memory is the whole batch's.
pub fn measure_batch<M: LanguageModel>(
    model: &M,
    context: usize,
    new: usize,
    reps: usize,
    batch: usize,
) -> ContextSpeed {
    measure_batches(model, context, new, reps, &[batch])
        .pop()
        .expect("one row per batch size")
}

/// As [`measure_batch`] for each of `batches` in turn, from one prefill of the context.
pub fn measure_batches<M: LanguageModel>(
    model: &M,
    context: usize,
    new: usize,
    reps: usize,
    batches: &[usize],
) -> Vec<ContextSpeed> {
    mem::reset_peak();
    let ids = prompt_ids(context, model.vocab_size());
    let mut state = model.new_state();
    let t0 = Instant::now();
    let logits = model.feed(&mut state, &ids);
    let prefill_s = t0.elapsed().as_secs_f64();
    let first = argmax(&logits);
    batches
        .iter()
        .map(|&batch| {
            let batch = batch.max(1);
            let mut speeds = Vec::new();
            let mut end_state = state.clone();
            for _ in 0..reps.max(1) {
                // Its own copy (buffers of its own: no copy-on-write while timed), with room for
                // the decoded tokens.
                let mut s = model.repeat_state(&state, batch);
                model.reserve(&mut s, new);
                let mut next = vec![first; batch];
                let t = Instant::now();
                for _ in 0..new {
                    let rows: Vec<Vec<u32>> = next.iter().map(|&id| vec![id]).collect();
                    next = model
                        .feed_rows(&mut s, &rows)
                        .iter()
                        .map(|l| argmax(l))
                        .collect();
                }
                speeds.push((new * batch) as f64 / t.elapsed().as_secs_f64());
                end_state = s;
            }
            ContextSpeed {
                context,
                prefill_s,
                decode_tok_s: median(speeds),
                state_mib: model.state_bytes(&end_state) as f64 / (1 << 20) as f64,
                recurrent_mib: model.recurrent_bytes(&end_state) as f64 / (1 << 20) as f64,
                peak_rss_mib: mem::peak_rss_mib(),
            }
        })
        .collect()
}

/// What the two models read per decoding step besides their caches (their parameters' bytes),
/// the machine's read bandwidth, and how many sequences each step decodes.
#[derive(Debug, Clone, Copy)]
pub struct Reads {
    pub teacher_weights: usize,
    pub hybrid_weights: usize,
    /// The machine's measured read bandwidth, GB/s.
    pub bandwidth_gb_s: f64,
    /// Sequences decoded together.
    pub batch: usize,
}

/// Bytes one decoding step reads: the weights plus the whole batch's cache and state after the
/// decode.
fn step_bytes(weights: usize, row: &ContextSpeed) -> f64 {
    weights as f64 + row.state_mib * (1 << 20) as f64
}

pub fn render(
    teacher: &[ContextSpeed],
    hybrid: &[ContextSpeed],
    layers: usize,
    total: usize,
    reads: &Reads,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "teacher vs hybrid ({layers} of {total} layers converted), decode after a prefilled context{}:",
        if reads.batch > 1 {
            format!(
                ", {} sequences at a time (t/s counts all of them)",
                reads.batch
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "  {:>8} {:>12} {:>12} {:>8} {:>12} {:>12} {:>10} {:>11} {:>11} {:>11} {:>9}",
        "context",
        "teacher t/s",
        "hybrid t/s",
        "ratio",
        "teacher MiB",
        "hybrid MiB",
        "read bound",
        "MB/step T/H",
        "GB/s T/H",
        "prefill T/H s",
        "RSS T/H"
    );
    let steps_s = |row: &ContextSpeed| row.decode_tok_s / reads.batch as f64;
    for (t, h) in teacher.iter().zip(hybrid) {
        let (bt, bh) = (
            step_bytes(reads.teacher_weights, t),
            step_bytes(reads.hybrid_weights, h),
        );
        let _ = writeln!(
            s,
            "  {:>8} {:>12.1} {:>12.1} {:>7.2}x {:>12.2} {:>12.2} {:>9.2}x {:>5.0}/{:<6.0} {:>5.1}/{:<5.1} {:>5.2}/{:<5.2} {:>4.0}/{:<4.0}",
            t.context,
            t.decode_tok_s,
            h.decode_tok_s,
            h.decode_tok_s / t.decode_tok_s,
            t.state_mib,
            h.state_mib,
            bt / bh,
            bt / 1e6,
            bh / 1e6,
            bt * steps_s(t) / 1e9,
            bh * steps_s(h) / 1e9,
            t.prefill_s,
            h.prefill_s,
            t.peak_rss_mib.unwrap_or(f64::NAN),
            h.peak_rss_mib.unwrap_or(f64::NAN)
        );
    }
    let _ = writeln!(
        s,
        "  (MiB columns: KV cache + recurrent state after the decode; ratio = hybrid / teacher decode speed;\n   \
         MB/step: weights + cache + state, each read once per decoding step; read bound = the ratio\n   \
         of those bytes, the speed-up a decode limited by memory reads would show; GB/s: bytes per\n   \
         step × steps/s, against {:.1} GB/s measured for this machine's reads)",
        reads.bandwidth_gb_s
    );
    s
}
