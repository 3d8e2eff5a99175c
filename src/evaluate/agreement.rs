//! Held-out comparison of students with their teacher on the same fixed batches: perplexity
//! of each, mean KL(teacher ‖ student) per position and top-1 agreement (the two models'
//! most likely next tokens are the same). The teacher runs once per batch for all students.

use crate::data::loader::{BatchLength, Loader};
use crate::model::Transformer;
use crate::model::hybrid::Hybrid;
use crate::model::weights::to_vec;
use crate::train::losses::{batch_tensors, cross_entropy};
use anyhow::Result;
use burn::tensor::Device;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How close one model is to the teacher.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    pub perplexity: f64,
    /// `perplexity / teacher perplexity`.
    pub perplexity_ratio: f64,
    /// Mean over positions of KL(teacher ‖ model), nats.
    pub kl: f64,
    /// Fraction of positions where both pick the same most likely token.
    pub top1: f64,
}

/// The teacher's perplexity and each student's [`Agreement`], over up to `batches` held-out
/// batches of `batch_size` sequences (the `heldout` split, else `train`).
pub fn compare(
    teacher: &Transformer,
    students: &[&Hybrid],
    data: &Path,
    batch_size: usize,
    batches: usize,
    device: &Device,
    mut progress: impl FnMut(usize),
) -> Result<(f64, Vec<Agreement>, usize)> {
    let manifest = crate::data::shards::read_manifest(data)?;
    let split = if manifest.splits.contains_key("heldout") {
        "heldout"
    } else {
        "train"
    };
    let (mut loader, _) = Loader::open(data, split, batch_size, BatchLength::Bucket(64), 0)?;
    let n = batches.min(loader.len().div_ceil(batch_size)).max(1);
    let mut t_nll = 0.0;
    let mut weight = 0.0;
    let mut sums = vec![(0.0f64, 0.0f64, 0.0f64); students.len()];
    let mut positions = 0.0;
    for b in 0..n {
        let batch = loader.next_batch();
        let (ids, att, mask) = batch_tensors(&batch, device);
        let t_logits = teacher.forward(ids.clone(), Some(att.clone()));
        let (ce, w) = cross_entropy(t_logits.clone(), ids.clone(), att.clone(), mask.clone());
        t_nll += to_vec(ce)[0] as f64 * w;
        weight += w;
        let t_logp = log_softmax(t_logits.clone(), 2);
        let t_vocab = t_logits.dims()[2];
        let t_top = t_logits.argmax(2);
        let [bs, t, _] = t_logp.dims();
        let real = att.clone().reshape([bs, t, 1]);
        let real_n = to_vec(att.clone().sum())[0] as f64;
        positions += real_n;
        for (s, acc) in students.iter().zip(sums.iter_mut()) {
            let s_logits = s.forward(ids.clone(), Some(att.clone()));
            let (ce, _) = cross_entropy(s_logits.clone(), ids.clone(), att.clone(), mask.clone());
            acc.0 += to_vec(ce)[0] as f64 * w;
            let vocab = t_vocab.min(s_logits.dims()[2]);
            let s_logp = log_softmax(s_logits.clone().narrow(2, 0, vocab), 2);
            let t_lp = t_logp.clone().narrow(2, 0, vocab);
            let kl = (t_lp.clone().exp() * (t_lp - s_logp)).sum_dim(2) * real.clone();
            acc.1 += to_vec(kl.sum())[0] as f64;
            let same = t_top.clone().equal(s_logits.argmax(2)).float() * real.clone();
            acc.2 += to_vec(same.sum())[0] as f64;
        }
        progress(b + 1);
    }
    let t_ppl = (t_nll / weight.max(1.0)).exp();
    let out = sums
        .into_iter()
        .map(|(nll, kl, same)| {
            let ppl = (nll / weight.max(1.0)).exp();
            Agreement {
                perplexity: ppl,
                perplexity_ratio: ppl / t_ppl,
                kl: kl / positions.max(1.0),
                top1: same / positions.max(1.0),
            }
        })
        .collect();
    Ok((t_ppl, out, n))
}
