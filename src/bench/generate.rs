//! `runner bench generate`: prefill and decode speed of a model directory on this CPU, side by
//! side with Hugging Face transformers (PyTorch eager, float32) on the same directory and the
//! same prompt ids, with peak memory of each.

use super::{mem, run_python_json};
use crate::generate::LanguageModel;
use crate::generate::sampler::argmax;
use std::fmt::Write;
use std::path::Path;
use std::time::Instant;

/// The deterministic prompt both sides feed.
pub fn prompt_ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((17 + 7919 * i) % vocab) as u32).collect()
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Speed {
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    pub peak_rss_mib: f64,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Our side: the median over `reps` runs after one warm-up.
pub fn measure_ours<M: LanguageModel>(model: &M, prompt: usize, new: usize, reps: usize) -> Speed {
    let ids = prompt_ids(prompt, model.vocab_size());
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    mem::reset_peak();
    for _ in 0..reps + 1 {
        let mut state = model.new_state();
        let t0 = Instant::now();
        let mut logits = model.feed(&mut state, &ids);
        model.reserve(&mut state, new);
        let t1 = Instant::now();
        for _ in 0..new {
            let next = argmax(&logits);
            logits = model.feed(&mut state, &[next]);
        }
        let t2 = Instant::now();
        prefill.push(prompt as f64 / (t1 - t0).as_secs_f64());
        decode.push(new as f64 / (t2 - t1).as_secs_f64());
    }
    Speed {
        prefill_tok_s: median(prefill[1..].to_vec()),
        decode_tok_s: median(decode[1..].to_vec()),
        peak_rss_mib: mem::peak_rss_mib().unwrap_or(f64::NAN),
    }
}

pub fn measure_torch(
    python: &str,
    model_dir: &Path,
    prompt: usize,
    new: usize,
    reps: usize,
) -> Result<Speed, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_generate_torch.py");
    let dir = model_dir.to_string_lossy();
    let (p, n, r) = (prompt.to_string(), new.to_string(), reps.to_string());
    let args = [
        "--model",
        &dir,
        "--prompt-tokens",
        &p,
        "--new-tokens",
        &n,
        "--reps",
        &r,
    ];
    let v = run_python_json(python, &script, &args, "torch and transformers")?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    Ok(Speed {
        prefill_tok_s: f("prefill_tok_s"),
        decode_tok_s: f("decode_tok_s"),
        peak_rss_mib: f("peak_rss_mb"),
    })
}

/// One row of the report.
pub fn render(prompt: usize, new: usize, ours: &Speed, torch: &Result<Speed, String>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "prompt {prompt} tokens, then {new} decoded tokens:");
    let _ = writeln!(
        s,
        "  {:<22} {:>12} {:>12} {:>14}",
        "", "prefill tok/s", "decode tok/s", "peak RSS MiB"
    );
    let _ = writeln!(
        s,
        "  {:<22} {:>12.1} {:>12.1} {:>14.0}",
        "runner (burn flex)", ours.prefill_tok_s, ours.decode_tok_s, ours.peak_rss_mib
    );
    match torch {
        Ok(t) => {
            let _ = writeln!(
                s,
                "  {:<22} {:>12.1} {:>12.1} {:>14.0}",
                "transformers (torch)", t.prefill_tok_s, t.decode_tok_s, t.peak_rss_mib
            );
            let _ = writeln!(
                s,
                "  {:<22} {:>11.2}x {:>11.2}x",
                "runner / torch",
                ours.prefill_tok_s / t.prefill_tok_s,
                ours.decode_tok_s / t.decode_tok_s
            );
        }
        Err(e) => {
            let _ = writeln!(s, "  transformers (torch): not measured: {e}");
        }
    }
    s
}
