//! Held-out perplexity of a model on a tokenized dataset's `heldout` split (falls back to
//! `train` when there is none), over a fixed, seeded set of batches.

use super::losses::{batch_tensors, cross_entropy};
use crate::data::loader::{BatchLength, Loader};
use anyhow::Result;
use burn::tensor::{Device, Int, Tensor};
use std::path::Path;

/// Perplexity `exp(mean CE)` over up to `max_batches` batches of `batch_size`.
pub fn perplexity(
    forward: impl Fn(Tensor<2, Int>, Tensor<2>) -> Tensor<3>,
    data: &Path,
    batch_size: usize,
    max_batches: usize,
    device: &Device,
) -> Result<f64> {
    let manifest = crate::data::shards::read_manifest(data)?;
    let split = if manifest.splits.contains_key("heldout") {
        "heldout"
    } else {
        "train"
    };
    let (mut loader, _) = Loader::open(data, split, batch_size, BatchLength::Bucket(64), 0)?;
    let n = max_batches.min(loader.len().div_ceil(batch_size)).max(1);
    let (mut nll, mut count) = (0.0, 0.0);
    for _ in 0..n {
        let batch = loader.next_batch();
        let (ids, att, mask) = batch_tensors(&batch, device);
        let logits = forward(ids.clone(), att.clone());
        let (ce, w) = cross_entropy(logits, ids, att, mask);
        nll += crate::model::weights::to_vec(ce)[0] as f64 * w;
        count += w;
    }
    Ok((nll / count.max(1.0)).exp())
}
