//! The loader every training step reads batches from: a deterministic order per epoch (from the
//! seed), micro-batches padded to a fixed length or to the longest sequence of the batch
//! (rounded up to a bucket), and a cursor that checkpoints store so a resumed run continues with
//! exactly the next batch.

use super::shards::{DataManifest, Sequence, read_manifest, read_split};
use anyhow::{Context, Result};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// Where the loader is: the epoch and the position in that epoch's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LoaderCursor {
    pub epoch: u64,
    pub position: usize,
}

/// How batch length is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchLength {
    /// Every batch padded to this many tokens.
    Fixed(usize),
    /// Padded to the longest sequence, rounded up to a multiple of this.
    Bucket(usize),
}

/// One micro-batch, `[B][T]` each.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub ids: Vec<Vec<u32>>,
    /// 1 for real tokens, 0 for padding.
    pub attention: Vec<Vec<u8>>,
    pub loss_mask: Vec<Vec<u8>>,
    /// Real tokens in the batch.
    pub tokens: usize,
}

pub struct Loader {
    data: Arc<Vec<Sequence>>,
    batch_size: usize,
    length: BatchLength,
    pad_id: u32,
    seed: u64,
    cursor: LoaderCursor,
    order: Vec<usize>,
}

fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng =
        rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch);
    order.shuffle(&mut rng);
    order
}

impl Loader {
    /// A loader over one split of a tokenized dataset folder.
    pub fn open(
        dir: &Path,
        split: &str,
        batch_size: usize,
        length: BatchLength,
        seed: u64,
    ) -> Result<(Self, DataManifest)> {
        let (data, manifest) = read_nonempty(dir, split)?;
        Ok((
            Self::new(Arc::new(data), batch_size, length, manifest.pad_id, seed),
            manifest,
        ))
    }

    /// A loader over the `train` split of `dir` with sequences of a second dataset mixed in
    /// (see [`mix_in`]): rehearsal of other data while training on this one. The two datasets
    /// must come from the same tokenizer. Returns the loader and how many sequences and tokens
    /// came from `replay`.
    pub fn open_with_replay(
        dir: &Path,
        replay: &Path,
        fraction: f64,
        batch_size: usize,
        length: BatchLength,
        seed: u64,
    ) -> Result<(Self, (usize, usize))> {
        let (mut data, manifest) = read_nonempty(dir, "train")?;
        let (extra, other) = read_nonempty(replay, "train")?;
        anyhow::ensure!(
            other.tokenizer_sha256 == manifest.tokenizer_sha256 && other.pad_id == manifest.pad_id,
            "the replay data {} was tokenized with another tokenizer than {} (tokenizer.json \
             sha256 {} against {}): tokenize both with the same model's tokenizer",
            replay.display(),
            dir.display(),
            other.tokenizer_sha256,
            manifest.tokenizer_sha256
        );
        let taken = mix_in(&mut data, extra, fraction, seed)
            .with_context(|| format!("mixing {} into {}", replay.display(), dir.display()))?;
        Ok((
            Self::new(Arc::new(data), batch_size, length, manifest.pad_id, seed),
            taken,
        ))
    }

    pub fn new(
        data: Arc<Vec<Sequence>>,
        batch_size: usize,
        length: BatchLength,
        pad_id: u32,
        seed: u64,
    ) -> Self {
        let order = epoch_order(data.len(), seed, 0);
        Self {
            data,
            batch_size: batch_size.max(1),
            length,
            pad_id,
            seed,
            cursor: LoaderCursor::default(),
            order,
        }
    }

    pub fn cursor(&self) -> LoaderCursor {
        self.cursor
    }

    /// Continues from a saved cursor.
    pub fn restore(&mut self, cursor: LoaderCursor) {
        self.order = epoch_order(self.data.len(), self.seed, cursor.epoch);
        self.cursor = cursor;
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next micro-batch; an epoch boundary inside a batch continues into the next epoch.
    pub fn next_batch(&mut self) -> Batch {
        let mut picked = Vec::with_capacity(self.batch_size);
        while picked.len() < self.batch_size {
            if self.cursor.position >= self.order.len() {
                self.cursor = LoaderCursor {
                    epoch: self.cursor.epoch + 1,
                    position: 0,
                };
                self.order = epoch_order(self.data.len(), self.seed, self.cursor.epoch);
            }
            picked.push(&self.data[self.order[self.cursor.position]]);
            self.cursor.position += 1;
        }
        let longest = picked.iter().map(|s| s.ids.len()).max().unwrap_or(0);
        let t = match self.length {
            BatchLength::Fixed(n) => n.max(longest),
            BatchLength::Bucket(m) => longest.div_ceil(m.max(1)) * m.max(1),
        };
        let mut batch = Batch {
            ids: Vec::new(),
            attention: Vec::new(),
            loss_mask: Vec::new(),
            tokens: 0,
        };
        for s in picked {
            let pad = t - s.ids.len();
            batch.ids.push(
                s.ids
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(self.pad_id, pad))
                    .collect(),
            );
            batch.attention.push(
                std::iter::repeat_n(1, s.ids.len())
                    .chain(std::iter::repeat_n(0, pad))
                    .collect(),
            );
            batch.loss_mask.push(
                s.loss_mask
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, pad))
                    .collect(),
            );
            batch.tokens += s.ids.len();
        }
        batch
    }
}

/// The sequences of one split of a tokenized dataset folder, and the folder's manifest. An
/// empty split is an error: a loader over no sequences would never fill a batch.
fn read_nonempty(dir: &Path, split: &str) -> Result<(Vec<Sequence>, DataManifest)> {
    let manifest = read_manifest(dir)?;
    let data = read_split(dir, &manifest, split)?;
    anyhow::ensure!(
        !data.is_empty(),
        "the `{split}` split of {} is empty",
        dir.display()
    );
    Ok((data, manifest))
}

/// Appends sequences of `replay`, taken in an order drawn from `seed`, to `data` until they hold
/// `fraction` (in (0, 1)) of all the tokens; returns how many sequences and tokens were taken.
/// Fails when `replay` holds too few tokens for that fraction.
pub fn mix_in(
    data: &mut Vec<Sequence>,
    replay: Vec<Sequence>,
    fraction: f64,
    seed: u64,
) -> Result<(usize, usize)> {
    anyhow::ensure!(
        fraction > 0.0 && fraction < 1.0,
        "the replay fraction must be between 0 and 1, got {fraction}"
    );
    let own: usize = data.iter().map(|s| s.ids.len()).sum();
    let want = (own as f64 * fraction / (1.0 - fraction)).round() as usize;
    let available: usize = replay.iter().map(|s| s.ids.len()).sum();
    anyhow::ensure!(
        available >= want,
        "{:.0} % of the tokens from replay needs {want} replay tokens beside the {own} of the \
         data, but the replay data holds {available}: lower the fraction",
        fraction * 100.0
    );
    let order = epoch_order(replay.len(), seed ^ 0x5245_504C_4159, 0);
    let mut replay: Vec<Option<Sequence>> = replay.into_iter().map(Some).collect();
    let (mut n, mut tokens) = (0, 0);
    for i in order {
        if tokens >= want {
            break;
        }
        let s = replay[i].take().expect("each index once");
        tokens += s.ids.len();
        n += 1;
        data.push(s);
    }
    Ok((n, tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Arc<Vec<Sequence>> {
        Arc::new(
            (0..n)
                .map(|i| Sequence {
                    ids: vec![i as u32; 2 + i % 5],
                    loss_mask: vec![1; 2 + i % 5],
                    doc_starts: vec![0],
                })
                .collect(),
        )
    }

    #[test]
    fn resume_from_cursor_gives_the_same_batches() {
        let mut full = Loader::new(data(23), 4, BatchLength::Bucket(4), 0, 9);
        let reference: Vec<Batch> = (0..20).map(|_| full.next_batch()).collect();
        for k in [0, 1, 5, 6, 13] {
            let mut first = Loader::new(data(23), 4, BatchLength::Bucket(4), 0, 9);
            for _ in 0..k {
                first.next_batch();
            }
            let saved = serde_json::to_string(&first.cursor()).unwrap();
            let mut resumed = Loader::new(data(23), 4, BatchLength::Bucket(4), 0, 9);
            resumed.restore(serde_json::from_str(&saved).unwrap());
            let rest: Vec<Batch> = (k..20).map(|_| resumed.next_batch()).collect();
            assert_eq!(rest, reference[k..], "resumed after {k} batches");
        }
    }

    #[test]
    fn epochs_cover_everything_once_and_differ() {
        let mut l = Loader::new(data(12), 3, BatchLength::Fixed(8), 0, 1);
        let firsts = |b: &Batch| b.ids.iter().map(|r| r[0]).collect::<Vec<_>>();
        let e0: Vec<u32> = (0..4).flat_map(|_| firsts(&l.next_batch())).collect();
        let e1: Vec<u32> = (0..4).flat_map(|_| firsts(&l.next_batch())).collect();
        let mut s0 = e0.clone();
        s0.sort();
        assert_eq!(s0, (0..12).collect::<Vec<_>>());
        assert_ne!(e0, e1);
        assert_eq!(
            l.cursor(),
            LoaderCursor {
                epoch: 1,
                position: 12
            }
        );
        let b = l.next_batch();
        assert!(b.ids.iter().all(|r| r.len() == 8));
        assert_eq!(
            b.tokens,
            b.attention
                .iter()
                .flatten()
                .map(|&a| a as usize)
                .sum::<usize>()
        );
    }

    #[test]
    fn replay_takes_its_share_of_tokens_the_same_way_each_time() {
        let chat = |n: usize| -> Vec<Sequence> { data(n).iter().cloned().collect() };
        let text: Vec<Sequence> = (0..50)
            .map(|i| Sequence {
                ids: vec![1000 + i; 10],
                loss_mask: vec![1; 10],
                doc_starts: vec![0],
            })
            .collect();
        let mut a = chat(30);
        let own: usize = a.iter().map(|s| s.ids.len()).sum();
        let (n, tokens) = mix_in(&mut a, text.clone(), 0.25, 3).unwrap();
        // A quarter of all the tokens: a third of the data's own, to the next whole sequence.
        assert!(
            tokens * 3 >= own && tokens * 3 < own + 30,
            "{tokens} of {own}"
        );
        assert_eq!((a.len(), n * 10), (30 + n, tokens));
        assert!(a[30..].iter().all(|s| s.ids[0] >= 1000));
        let mut b = chat(30);
        mix_in(&mut b, text.clone(), 0.25, 3).unwrap();
        assert_eq!(a, b, "the same seed takes the same sequences");
        let mut c = chat(30);
        mix_in(&mut c, text.clone(), 0.25, 4).unwrap();
        assert_ne!(a, c, "another seed takes others");
        let err = mix_in(&mut chat(30), text.clone(), 0.95, 3).unwrap_err();
        assert!(err.to_string().contains("lower the fraction"), "{err}");
        for bad in [0.0, 1.0, -0.5, f64::NAN] {
            assert!(mix_in(&mut chat(3), text.clone(), bad, 3).is_err(), "{bad}");
        }
    }

    #[test]
    fn replay_from_another_tokenizer_or_into_an_empty_split_is_refused() {
        let root = tempfile::tempdir().unwrap();
        // A dataset folder with `train` sequences as given and the tokenizer digest `sha`.
        let dataset = |name: &str, train: &[Sequence], sha: &str| {
            let dir = root.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let info =
                super::super::shards::write_split(&dir, "train", train, train.len(), 8).unwrap();
            let manifest = DataManifest {
                format: 1,
                max_seq_len: 16,
                packed: false,
                pad_id: 0,
                vocab_size: 2000,
                tokenizer_sha256: sha.into(),
                splits: [("train".to_string(), info)].into(),
            };
            crate::util::fsx::atomic_write_json(
                &dir.join(super::super::shards::MANIFEST),
                &manifest,
            )
            .unwrap();
            dir
        };
        let chat: Vec<Sequence> = data(6).iter().cloned().collect();
        let text: Vec<Sequence> = data(40).iter().cloned().collect();
        let open = |d: &Path, r: &Path| {
            Loader::open_with_replay(d, r, 0.5, 2, BatchLength::Bucket(4), 1).map(|(_, t)| t)
        };
        let (c, t) = (dataset("chat", &chat, "aa"), dataset("text", &text, "aa"));
        let (n, tokens) = open(&c, &t).unwrap();
        assert!(n > 0 && tokens > 0);
        let other = dataset("other", &text, "bb");
        let err = open(&c, &other).unwrap_err().to_string();
        assert!(err.contains("another tokenizer"), "{err}");
        let empty = dataset("empty", &[], "aa");
        let err = open(&empty, &t).unwrap_err().to_string();
        assert!(
            err.contains("split of") && err.contains("is empty"),
            "{err}"
        );
        let err = open(&c, &empty).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
    }
}
