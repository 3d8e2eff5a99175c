//! Token shards: training sequences (token ids, loss mask, document starts) stored as Parquet
//! files per split, listed with their sha256 in `data.json`. Also the splitting of documents
//! into held-out and training sets, and their cutting or packing into sequences.

use super::document::Document;
use crate::util::hash::sha256_file;
use anyhow::{Context, Result, bail};
use arrow::array::{
    Array, AsArray, ListArray, ListBuilder, RecordBatch, UInt8Builder, UInt32Builder,
};
use arrow::datatypes::{DataType, Field, Schema, UInt8Type, UInt32Type};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Name of the manifest in a tokenized dataset folder.
pub const MANIFEST: &str = "data.json";

/// One training sequence.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sequence {
    pub ids: Vec<u32>,
    pub loss_mask: Vec<u8>,
    /// Positions where a document begins (a continuation of a cut document has none).
    pub doc_starts: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardInfo {
    pub file: String,
    pub sequences: usize,
    pub tokens: usize,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SplitInfo {
    pub documents: usize,
    pub sequences: usize,
    pub tokens: usize,
    /// Tokens with loss.
    pub target_tokens: usize,
    pub shards: Vec<ShardInfo>,
}

/// `data.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DataManifest {
    pub format: u32,
    pub max_seq_len: usize,
    pub packed: bool,
    pub pad_id: u32,
    pub vocab_size: usize,
    /// sha256 of the tokenizer.json used.
    pub tokenizer_sha256: String,
    pub splits: BTreeMap<String, SplitInfo>,
}

/// Splits documents into (train, held-out) deterministically from `seed`: a fraction `heldout`
/// of the documents (at least one when the fraction is positive and there are two or more).
pub fn split_documents(
    docs: Vec<Document>,
    heldout: f64,
    seed: u64,
) -> (Vec<Document>, Vec<Document>) {
    let n = docs.len();
    let n_held = if heldout > 0.0 && n >= 2 {
        ((n as f64 * heldout).round() as usize).clamp(1, n - 1)
    } else {
        0
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
        seed ^ 0x5EED_DA7A,
    ));
    let held: std::collections::HashSet<usize> = order[..n_held].iter().copied().collect();
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (i, d) in docs.into_iter().enumerate() {
        if held.contains(&i) {
            test.push(d)
        } else {
            train.push(d)
        }
    }
    (train, test)
}

/// Cuts documents into sequences of at most `max_len` tokens, or packs them end to end into
/// sequences of exactly `max_len` (the last may be shorter). Sequences under 2 tokens are
/// dropped (nothing to predict).
pub fn make_sequences(docs: &[Document], max_len: usize, pack: bool) -> Vec<Sequence> {
    let mut out = Vec::new();
    if !pack {
        for d in docs {
            for (i, start) in (0..d.ids.len()).step_by(max_len).enumerate() {
                let end = (start + max_len).min(d.ids.len());
                if end - start >= 2 {
                    out.push(Sequence {
                        ids: d.ids[start..end].to_vec(),
                        loss_mask: d.loss_mask[start..end].to_vec(),
                        doc_starts: if i == 0 { vec![0] } else { vec![] },
                    });
                }
            }
        }
        return out;
    }
    let mut cur = Sequence::default();
    for d in docs {
        let mut pos = 0;
        let mut first = true;
        while pos < d.ids.len() {
            if first {
                cur.doc_starts.push(cur.ids.len() as u32);
                first = false;
            }
            let take = (max_len - cur.ids.len()).min(d.ids.len() - pos);
            cur.ids.extend_from_slice(&d.ids[pos..pos + take]);
            cur.loss_mask
                .extend_from_slice(&d.loss_mask[pos..pos + take]);
            pos += take;
            if cur.ids.len() == max_len {
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    if cur.ids.len() >= 2 {
        out.push(cur);
    }
    out
}

fn schema() -> Arc<Schema> {
    let item = |t: DataType| Arc::new(Field::new("item", t, true));
    Arc::new(Schema::new(vec![
        Field::new("input_ids", DataType::List(item(DataType::UInt32)), false),
        Field::new("loss_mask", DataType::List(item(DataType::UInt8)), false),
        Field::new("doc_starts", DataType::List(item(DataType::UInt32)), false),
    ]))
}

/// Writes `seqs` as Parquet shards `{split}-00000.parquet`, … of at most `per_shard` sequences
/// into `dir` (each atomically), returning the split's description.
pub fn write_split(
    dir: &Path,
    split: &str,
    seqs: &[Sequence],
    documents: usize,
    per_shard: usize,
) -> Result<SplitInfo> {
    let mut info = SplitInfo {
        documents,
        ..Default::default()
    };
    for (i, chunk) in seqs.chunks(per_shard.max(1)).enumerate() {
        let mut ids = ListBuilder::new(UInt32Builder::new());
        let mut mask = ListBuilder::new(UInt8Builder::new());
        let mut starts = ListBuilder::new(UInt32Builder::new());
        for s in chunk {
            ids.values().append_slice(&s.ids);
            ids.append(true);
            mask.values().append_slice(&s.loss_mask);
            mask.append(true);
            starts.values().append_slice(&s.doc_starts);
            starts.append(true);
        }
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(ids.finish()),
                Arc::new(mask.finish()),
                Arc::new(starts.finish()),
            ],
        )?;
        let file = format!("{split}-{i:05}.parquet");
        let path = dir.join(&file);
        let tmp = crate::util::fsx::temp_sibling(&path);
        {
            let f = std::fs::File::create(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                .build();
            let mut w = parquet::arrow::ArrowWriter::try_new(f, schema(), Some(props))?;
            w.write(&batch)?;
            w.close()?;
        }
        std::fs::rename(&tmp, &path)?;
        let tokens: usize = chunk.iter().map(|s| s.ids.len()).sum();
        info.sequences += chunk.len();
        info.tokens += tokens;
        info.target_tokens += chunk
            .iter()
            .map(|s| s.loss_mask.iter().map(|&m| m as usize).sum::<usize>())
            .sum::<usize>();
        info.shards.push(ShardInfo {
            file,
            sequences: chunk.len(),
            tokens,
            sha256: sha256_file(&path)?,
        });
    }
    Ok(info)
}

fn list_u32(col: &dyn Array, row: usize) -> Vec<u32> {
    let l: &ListArray = col.as_list::<i32>();
    l.value(row).as_primitive::<UInt32Type>().values().to_vec()
}

/// Reads every sequence of a split, checking each shard's sha256 against the manifest.
pub fn read_split(dir: &Path, manifest: &DataManifest, split: &str) -> Result<Vec<Sequence>> {
    let info = manifest
        .splits
        .get(split)
        .with_context(|| format!("{} has no `{split}` split", dir.join(MANIFEST).display()))?;
    let mut out = Vec::with_capacity(info.sequences);
    for shard in &info.shards {
        let path = dir.join(&shard.file);
        let sha = sha256_file(&path).with_context(|| format!("reading {}", path.display()))?;
        if sha != shard.sha256 {
            bail!(
                "{} is corrupt: its sha256 differs from {MANIFEST}; re-run the tokenize step",
                path.display()
            );
        }
        let f = std::fs::File::open(&path)?;
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)?.build()?;
        for batch in reader {
            let batch = batch?;
            let expect = schema();
            if batch.schema().fields().len() != 3
                || batch
                    .schema()
                    .fields()
                    .iter()
                    .zip(expect.fields())
                    .any(|(a, b)| a.name() != b.name())
            {
                bail!(
                    "{} does not have the token shard schema (input_ids, loss_mask, doc_starts)",
                    path.display()
                );
            }
            for r in 0..batch.num_rows() {
                let mask_col = batch.column(1).as_list::<i32>().value(r);
                out.push(Sequence {
                    ids: list_u32(batch.column(0).as_ref(), r),
                    loss_mask: mask_col.as_primitive::<UInt8Type>().values().to_vec(),
                    doc_starts: list_u32(batch.column(2).as_ref(), r),
                });
            }
        }
    }
    Ok(out)
}

/// Reads `DIR/data.json`.
pub fn read_manifest(dir: &Path) -> Result<DataManifest> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is not a tokenized dataset (no {MANIFEST})",
            dir.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(n: usize, base: u32) -> Document {
        Document {
            ids: (0..n as u32).map(|i| base + i).collect(),
            loss_mask: vec![1; n],
        }
    }

    #[test]
    fn cutting_and_packing() {
        let docs = vec![doc(5, 0), doc(3, 100), doc(1, 200)];
        let cut = make_sequences(&docs, 4, false);
        assert_eq!(cut.iter().map(|s| s.ids.len()).collect::<Vec<_>>(), [4, 3]);
        assert_eq!(cut[0].doc_starts, [0]);
        let packed = make_sequences(&docs, 4, true);
        assert_eq!(
            packed.iter().map(|s| s.ids.clone()).collect::<Vec<_>>(),
            [vec![0, 1, 2, 3], vec![4, 100, 101, 102], vec![200]]
                .iter()
                .filter(|v| v.len() >= 2)
                .cloned()
                .collect::<Vec<_>>()
        );
        assert_eq!(packed[1].doc_starts, [1]);
        let all: Vec<u32> = make_sequences(&docs, 4, true)
            .into_iter()
            .flat_map(|s| s.ids)
            .collect();
        assert_eq!(all.len(), 8, "only the 1-token tail is dropped");
    }

    #[test]
    fn split_is_deterministic_and_disjoint() {
        let docs: Vec<Document> = (0..20).map(|i| doc(3, i * 10)).collect();
        let (a, b) = split_documents(docs.clone(), 0.1, 7);
        let (c, d) = split_documents(docs.clone(), 0.1, 7);
        assert_eq!((a.len(), b.len()), (18, 2));
        assert_eq!((a.clone(), b.clone()), (c, d));
        assert!(b.iter().all(|x| !a.contains(x)));
        assert_eq!(split_documents(docs, 0.0, 7).1.len(), 0);
    }

    #[test]
    fn shards_round_trip_and_detect_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let seqs = make_sequences(&[doc(10, 0), doc(7, 50)], 4, true);
        let info = write_split(dir.path(), "train", &seqs, 2, 2).unwrap();
        assert_eq!(
            (seqs.len(), info.shards.len()),
            (4, 2),
            "17 tokens pack into four sequences of 4"
        );
        let m = DataManifest {
            format: 1,
            max_seq_len: 4,
            packed: true,
            pad_id: 0,
            vocab_size: 100,
            tokenizer_sha256: String::new(),
            splits: BTreeMap::from([("train".to_string(), info)]),
        };
        assert_eq!(read_split(dir.path(), &m, "train").unwrap(), seqs);
        std::fs::write(dir.path().join("train-00001.parquet"), b"junk").unwrap();
        let err = read_split(dir.path(), &m, "train").unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
        assert!(read_split(dir.path(), &m, "heldout").is_err());
    }
}
