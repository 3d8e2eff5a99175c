//! `runner bench tokenize`: tokenisation throughput of the `tokenize` step's code path
//! (records tokenised in parallel with the tokenizers crate) vs the Python `tokenizers`
//! library's `encode_batch` on the same texts and tokenizer.json, with peak memory.

use super::{mem, run_python_json};
use crate::data::document::{AssistantMarkers, Content, tokenize};
use crate::data::sources::{read_file, source_files};
use crate::text::TextTokenizer;
use anyhow::Result;
use rayon::prelude::*;
use std::path::Path;
use std::time::Instant;

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Throughput {
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub peak_rss_mib: f64,
}

/// The texts (first of `text_fields` present) of every record under `input`.
pub fn load_texts(input: &Path, text_fields: &[String]) -> Result<Vec<String>> {
    let (mut records, mut bad) = (Vec::new(), Vec::new());
    for f in source_files(input)? {
        read_file(
            &f,
            crate::data::sources::DEFAULT_MAX_RECORD_BYTES,
            &mut records,
            &mut bad,
        )?;
    }
    Ok(records
        .into_iter()
        .filter_map(
            |r| match crate::data::document::interpret(&r.value, text_fields) {
                Ok(Content::Text(t)) => Some(t),
                _ => None,
            },
        )
        .collect())
}

pub fn measure_ours(tok: &TextTokenizer, texts: &[String], reps: usize) -> Throughput {
    mem::reset_peak();
    let markers = AssistantMarkers::default();
    let mut times = Vec::new();
    let mut tokens = 0;
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        tokens = texts
            .par_iter()
            .map(|t| {
                tokenize(&Content::Text(t.clone()), tok, &markers, None).map_or(0, |d| d.ids.len())
            })
            .sum();
        times.push(t0.elapsed().as_secs_f64());
    }
    let seconds = super::generate::median(times);
    Throughput {
        tokens,
        seconds,
        tokens_per_s: tokens as f64 / seconds,
        peak_rss_mib: mem::peak_rss_mib().unwrap_or(f64::NAN),
    }
}

pub fn measure_python(
    python: &str,
    tokenizer_json: &Path,
    texts: &[String],
    reps: usize,
) -> Result<Throughput, String> {
    let tmp = tempfile_path();
    let mut body = String::new();
    for t in texts {
        body.push_str(&serde_json::json!({ "text": t }).to_string());
        body.push('\n');
    }
    std::fs::write(&tmp, body).map_err(|e| e.to_string())?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_tokenize_py.py");
    let (tj, tx, r) = (
        tokenizer_json.to_string_lossy(),
        tmp.to_string_lossy(),
        reps.to_string(),
    );
    let out = run_python_json(
        python,
        &script,
        &["--tokenizer", &tj, "--texts", &tx, "--reps", &r],
        "the `tokenizers` package",
    );
    let _ = std::fs::remove_file(&tmp);
    let v = out?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    Ok(Throughput {
        tokens: f("tokens") as usize,
        seconds: f("seconds"),
        tokens_per_s: f("tokens_per_s"),
        peak_rss_mib: f("peak_rss_mb"),
    })
}

fn tempfile_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("runner-bench-texts-{}.jsonl", std::process::id()))
}
