//! The loader every training step reads batches from: a deterministic order per epoch (from the
//! seed), micro-batches padded to a fixed length or to the longest sequence of the batch
//! (rounded up to a bucket), and a cursor that checkpoints store so a resumed run continues with
//! exactly the next batch.

use super::shards::{DataManifest, Sequence, read_manifest, read_split};
use anyhow::Result;
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
        let manifest = read_manifest(dir)?;
        let data = read_split(dir, &manifest, split)?;
        anyhow::ensure!(
            !data.is_empty(),
            "the `{split}` split of {} is empty",
            dir.display()
        );
        Ok((
            Self::new(Arc::new(data), batch_size, length, manifest.pad_id, seed),
            manifest,
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
}
