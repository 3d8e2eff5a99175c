//! Held-out comparison of students with their teacher on the same fixed batches: perplexity
//! of each, mean KL(teacher ‖ student) per position and top-1 agreement (the two models'
//! most likely next tokens are the same). The teacher runs once per batch for all students.

use crate::data::loader::{BatchLength, Loader};
use crate::model::Transformer;
use crate::model::hybrid::Hybrid;
use crate::model::weights::to_vec;
use crate::train::losses::{batch_tensors, cross_entropy};
use anyhow::Result;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor};
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

/// Over the real positions of one batch (`att` 1, padding 0), from teacher and student logits
/// `[b, t, vocab]`: the sum of KL(teacher ‖ student) and the number of positions whose most
/// likely tokens agree. A student with a smaller vocabulary than its teacher (cut when it was
/// converted) is compared on the teacher's probabilities of the tokens it has.
pub fn batch_sums(t_logits: Tensor<3>, s_logits: Tensor<3>, att: Tensor<2>) -> (f64, f64) {
    let [bs, t, t_vocab] = t_logits.dims();
    let real = att.reshape([bs, t, 1]);
    let vocab = t_vocab.min(s_logits.dims()[2]);
    let t_lp = log_softmax(t_logits.clone(), 2).narrow(2, 0, vocab);
    let s_lp = log_softmax(s_logits.clone().narrow(2, 0, vocab), 2);
    let kl = (t_lp.clone().exp() * (t_lp - s_lp)).sum_dim(2) * real.clone();
    let same = t_logits.argmax(2).equal(s_logits.argmax(2)).float() * real;
    (to_vec(kl.sum())[0] as f64, to_vec(same.sum())[0] as f64)
}

/// The fixed held-out batches every comparison uses: the `heldout` split of `data` (else
/// `train`) from its start, `batch_size` sequences each; with how many of up to `batches` it
/// holds (at least one).
pub fn heldout_batches(data: &Path, batch_size: usize, batches: usize) -> Result<(Loader, usize)> {
    let manifest = crate::data::shards::read_manifest(data)?;
    let split = if manifest.splits.contains_key("heldout") {
        "heldout"
    } else {
        "train"
    };
    let (loader, _) = Loader::open(data, split, batch_size, BatchLength::Bucket(64), 0)?;
    let n = batches.min(loader.len().div_ceil(batch_size)).max(1);
    Ok((loader, n))
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
    let (mut loader, n) = heldout_batches(data, batch_size, batches)?;
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
        positions += to_vec(att.clone().sum())[0] as f64;
        for (s, acc) in students.iter().zip(sums.iter_mut()) {
            let s_logits = s.forward(ids.clone(), Some(att.clone()));
            let (ce, _) = cross_entropy(s_logits.clone(), ids.clone(), att.clone(), mask.clone());
            acc.0 += to_vec(ce)[0] as f64 * w;
            let (kl, same) = batch_sums(t_logits.clone(), s_logits, att.clone());
            acc.1 += kl;
            acc.2 += same;
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn logits(rows: &[[f64; 3]]) -> Tensor<3> {
        let data: Vec<f32> = rows.iter().flatten().map(|&p| p.ln() as f32).collect();
        Tensor::from_data(
            TensorData::new(data, [1, rows.len(), 3]),
            &crate::testing::device(),
        )
    }

    #[test]
    fn kl_and_top1_on_a_three_token_vocabulary_by_hand() {
        // Position 0: teacher (.5, .25, .25), student (.25, .5, .25):
        //   KL = .5 ln 2 + .25 ln .5 = .25 ln 2, and the top tokens differ.
        // Position 1: the same distribution: KL 0, top tokens agree.
        // Position 2: padding, wildly different: not counted.
        let t = logits(&[[0.5, 0.25, 0.25], [0.2, 0.3, 0.5], [0.9, 0.05, 0.05]]);
        let s = logits(&[[0.25, 0.5, 0.25], [0.2, 0.3, 0.5], [0.05, 0.05, 0.9]]);
        let att = Tensor::from_data(
            TensorData::new(vec![1.0f32, 1.0, 0.0], [1, 3]),
            &crate::testing::device(),
        );
        let (kl, same) = batch_sums(t, s, att);
        assert!((kl - 0.25 * 2f64.ln()).abs() < 1e-6, "{kl}");
        assert_eq!(same, 1.0);
    }

    #[test]
    fn a_model_compared_with_itself_agrees_everywhere() {
        let t = logits(&[[0.1, 0.6, 0.3], [0.7, 0.2, 0.1]]);
        let att = Tensor::from_data(
            TensorData::new(vec![1.0f32, 1.0], [1, 2]),
            &crate::testing::device(),
        );
        let (kl, same) = batch_sums(t.clone(), t, att);
        assert!(kl.abs() < 1e-7, "{kl}");
        assert_eq!(same, 2.0);
    }

    #[test]
    fn a_larger_student_vocabulary_is_cut_to_the_teachers() {
        let t = logits(&[[0.5, 0.25, 0.25]]);
        // The student's extra token (index 3) is ignored by the KL.
        let s = Tensor::from_data(
            TensorData::new(
                vec![0.5f32.ln(), 0.25f32.ln(), 0.25f32.ln(), 5.0],
                [1, 1, 4],
            ),
            &crate::testing::device(),
        );
        let att = Tensor::from_data(
            TensorData::new(vec![1.0f32], [1, 1]),
            &crate::testing::device(),
        );
        let (kl, _) = batch_sums(t, s, att);
        assert!(kl.abs() < 1e-6, "{kl}");
    }
}
