//! `tokenize` steps: raw text and chat data → Parquet token shards (train and held-out splits)
//! with `data.json` (shards and their sha256) and `stats.json` (documents, tokens, skipped
//! records with reasons). Records are tokenised in parallel; bad records are reported with
//! their file and line/row and skipped or fatal according to `on_error`.

use crate::data::document::{AssistantMarkers, Content, interpret, tokenize};
use crate::data::shards::{DataManifest, MANIFEST, make_sequences, split_documents, write_split};
use crate::data::sources::{BadRecord, RawRecord, read_file, source_files};
use crate::pipeline::ArtifactRef;
use crate::pipeline::step::{Step, StepContext, settings_json};
use crate::text::TextTokenizer;
use crate::util::fsx::atomic_write_json;
use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Skip bad records, list them in stats.json, and warn.
    #[default]
    Skip,
    /// Stop at the first bad record.
    Fail,
}

fn d_text_fields() -> Vec<String> {
    vec!["text".into()]
}
fn d_max_seq_len() -> usize {
    512
}
fn d_heldout() -> f64 {
    0.05
}
fn d_max_record_bytes() -> usize {
    crate::data::sources::DEFAULT_MAX_RECORD_BYTES
}
fn d_per_shard() -> usize {
    8192
}
fn d_yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenizeSettings {
    /// The model directory whose tokenizer (and chat template) to use, e.g. `@teacher`.
    pub tokenizer: ArtifactRef,
    /// Data files or folders (`*.jsonl`, `*.parquet`, `*.txt`, a `datasets` save folder).
    pub inputs: Vec<ArtifactRef>,
    /// Fields that hold plain text, tried in order (`.txt` files are read as `text`).
    #[serde(default = "d_text_fields")]
    pub text_fields: Vec<String>,
    /// Longest sequence; longer documents are cut.
    #[serde(default = "d_max_seq_len")]
    pub max_seq_len: usize,
    /// Pack documents end to end into sequences of exactly `max_seq_len`.
    #[serde(default)]
    pub pack: bool,
    /// Fraction of documents held out for evaluation.
    #[serde(default = "d_heldout")]
    pub heldout: f64,
    /// Append the end-of-text token to text documents.
    #[serde(default = "d_yes")]
    pub append_eos: bool,
    /// Use at most this many records (0: all), in source order.
    #[serde(default)]
    pub max_records: usize,
    #[serde(default)]
    pub on_error: OnError,
    /// Records larger than this many bytes (a JSON line, a text file, a Parquet row) are bad
    /// records: skipped with their file and line under `on_error = "skip"`. Memory stays
    /// bounded by this, whatever the input holds.
    #[serde(default = "d_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Sequences per Parquet shard.
    #[serde(default = "d_per_shard")]
    pub sequences_per_shard: usize,
    /// Where assistant turns start and end in rendered chats (ChatML by default).
    #[serde(default)]
    pub assistant_markers: AssistantMarkers,
}

impl TokenizeSettings {
    /// Values that decode but cannot work, as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.max_seq_len < 2 {
            out.push((
                "max_seq_len".into(),
                format!("max_seq_len must be at least 2, got {}", self.max_seq_len),
            ));
        }
        if !(0.0..1.0).contains(&self.heldout) {
            out.push((
                "heldout".into(),
                format!("heldout is a fraction in [0, 1), got {}", self.heldout),
            ));
        }
        if self.sequences_per_shard == 0 {
            out.push((
                "sequences_per_shard".into(),
                "sequences_per_shard must be at least 1".into(),
            ));
        }
        if self.max_record_bytes == 0 {
            out.push((
                "max_record_bytes".into(),
                "max_record_bytes must be at least 1".into(),
            ));
        }
        out
    }

    pub fn refs(&self) -> impl Iterator<Item = (&'static str, &ArtifactRef)> {
        std::iter::once(("tokenizer", &self.tokenizer))
            .chain(self.inputs.iter().map(|i| ("inputs", i)))
    }
}

#[derive(Debug, Default, Serialize)]
struct Stats {
    records: usize,
    text_documents: usize,
    chat_documents: usize,
    skipped: usize,
    skipped_by_reason: BTreeMap<String, usize>,
    /// The first skipped records, with where they are.
    skipped_examples: Vec<BadRecord>,
    tokens: usize,
    target_tokens: usize,
    seconds: f64,
    tokens_per_second: f64,
}

impl Step for TokenizeSettings {
    fn kind(&self) -> &'static str {
        "tokenize"
    }

    fn settings_json(&self) -> serde_json::Value {
        settings_json(self)
    }

    fn artifact_refs(&self) -> Vec<(&'static str, &ArtifactRef)> {
        self.refs().collect()
    }

    fn problems(&self) -> Vec<(String, String)> {
        TokenizeSettings::problems(self)
    }

    fn run(&self, ctx: &StepContext) -> anyhow::Result<()> {
        run(self, ctx)
    }
}

pub fn run(s: &TokenizeSettings, ctx: &StepContext) -> Result<()> {
    let start = std::time::Instant::now();
    let tok_dir = s.tokenizer.resolve(ctx)?;
    let tok = TextTokenizer::from_dir(&tok_dir)?;
    let eos = if s.append_eos {
        let eos = tok.eos_token.as_deref().or(tok.pad_token.as_deref());
        eos.and_then(|t| tok.inner.token_to_id(t))
            .or_else(|| tok.stop_ids.first().copied())
    } else {
        None
    };

    // Read.
    let mut records: Vec<RawRecord> = Vec::new();
    let mut bad: Vec<BadRecord> = Vec::new();
    for input in &s.inputs {
        let path = input.resolve(ctx)?;
        for file in source_files(&path).with_context(|| format!("input `{input}`"))? {
            read_file(&file, s.max_record_bytes, &mut records, &mut bad)?;
        }
    }
    if s.max_records > 0 {
        records.truncate(s.max_records);
    }
    let fail_on = |b: &BadRecord| -> Result<()> {
        bail!(
            "{}: {} (set `on_error = \"skip\"` to skip bad records)",
            b.origin,
            b.reason
        )
    };
    if s.on_error == OnError::Fail
        && let Some(b) = bad.first()
    {
        fail_on(b)?;
    }

    // Tokenise in parallel, keeping source order.
    let bar = ctx.progress_bar(records.len() as u64, "records");
    let results: Vec<Result<(bool, crate::data::document::Document), BadRecord>> = records
        .par_iter()
        .map(|r| {
            let out = interpret(&r.value, &s.text_fields)
                .and_then(|c| {
                    tokenize(&c, &tok, &s.assistant_markers, eos)
                        .map(|d| (matches!(c, Content::Chat(_)), d))
                })
                .map_err(|reason| BadRecord {
                    origin: r.origin.clone(),
                    reason,
                });
            bar.inc(1);
            out
        })
        .collect();
    bar.finish_and_clear();
    let mut stats = Stats {
        records: records.len() + bad.len(),
        ..Default::default()
    };
    let mut docs = Vec::new();
    for r in results {
        match r {
            Ok((chat, d)) => {
                if chat {
                    stats.chat_documents += 1
                } else {
                    stats.text_documents += 1
                }
                docs.push(d);
            }
            Err(b) => {
                if s.on_error == OnError::Fail {
                    fail_on(&b)?;
                }
                bad.push(b);
            }
        }
    }
    for b in &bad {
        let reason = b.reason.split(':').next().unwrap_or(&b.reason).to_string();
        *stats.skipped_by_reason.entry(reason).or_default() += 1;
    }
    stats.skipped = bad.len();
    for b in bad.iter().take(5) {
        tracing::warn!("{}: skipped {}: {}", ctx.id, b.origin, b.reason);
    }
    if bad.len() > 5 {
        tracing::warn!(
            "{}: {} more records skipped (see stats.json)",
            ctx.id,
            bad.len() - 5
        );
    }
    stats.skipped_examples = bad.into_iter().take(50).collect();
    if docs.is_empty() {
        bail!(
            "no usable records in the inputs ({} skipped)",
            stats.skipped
        );
    }

    // Split, cut or pack, write.
    let (train, heldout) = split_documents(docs, s.heldout, ctx.seed);
    let mut splits = BTreeMap::new();
    for (name, part) in [("train", &train), ("heldout", &heldout)] {
        if part.is_empty() {
            continue;
        }
        let seqs = make_sequences(part, s.max_seq_len, s.pack);
        let info = write_split(&ctx.out_dir, name, &seqs, part.len(), s.sequences_per_shard)?;
        stats.tokens += info.tokens;
        stats.target_tokens += info.target_tokens;
        splits.insert(name.to_string(), info);
    }
    let manifest = DataManifest {
        format: 1,
        max_seq_len: s.max_seq_len,
        packed: s.pack,
        pad_id: tok
            .pad_token
            .as_deref()
            .and_then(|t| tok.inner.token_to_id(t))
            .or(eos)
            .unwrap_or(0),
        vocab_size: tok.vocab_size(),
        tokenizer_sha256: crate::util::hash::sha256_file(&tok_dir.join("tokenizer.json"))?,
        splits,
    };
    stats.seconds = start.elapsed().as_secs_f64();
    stats.tokens_per_second = stats.tokens as f64 / stats.seconds.max(1e-9);
    atomic_write_json(&ctx.out_dir.join("stats.json"), &stats)?;
    atomic_write_json(&ctx.out_dir.join(MANIFEST), &manifest)?;
    tracing::info!(
        "{}: {} documents ({} text, {} chat), {} tokens ({} trained), {} skipped, {:.0} tokens/s",
        ctx.id,
        stats.text_documents + stats.chat_documents,
        stats.text_documents,
        stats.chat_documents,
        stats.tokens,
        stats.target_tokens,
        stats.skipped,
        stats.tokens_per_second
    );
    Ok(())
}
