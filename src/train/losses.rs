//! The stages' losses on batches from the loader.

use crate::data::loader::Batch;
use crate::model::Transformer;
use crate::model::hybrid::{Hybrid, Mixer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rwkv_kernels::Wkv7Impl;
use std::collections::BTreeMap;

/// `ids [B, T]`, attention mask `[B, T]` (f32) and loss mask `[B, T]` (f32) of a batch.
pub fn batch_tensors(batch: &Batch, device: &Device) -> (Tensor<2, Int>, Tensor<2>, Tensor<2>) {
    let b = batch.ids.len();
    let t = batch.ids[0].len();
    let ids: Vec<i64> = batch.ids.iter().flatten().map(|&v| v as i64).collect();
    let att: Vec<f32> = batch
        .attention
        .iter()
        .flatten()
        .map(|&v| v as f32)
        .collect();
    let loss: Vec<f32> = batch
        .loss_mask
        .iter()
        .flatten()
        .map(|&v| v as f32)
        .collect();
    (
        Tensor::from_data(TensorData::new(ids, [b, t]), device),
        Tensor::from_data(TensorData::new(att, [b, t]), device),
        Tensor::from_data(TensorData::new(loss, [b, t]), device),
    )
}

/// Stage 1 (attention alignment): each converted layer's mixer runs on the teacher's attention
/// input of that layer; its loss is the mean over real tokens of `‖o − mixer(h)‖₂ / √C`; the
/// step loss is the mean over converted layers. `v_first` comes from the first converted
/// layer's mixer, as in the student.
pub fn stage1_loss(
    teacher: &Transformer,
    student: &Hybrid,
    batch: &Batch,
    device: &Device,
) -> (Tensor<1>, BTreeMap<String, f64>) {
    let (ids, att, _) = batch_tensors(batch, device);
    let layers = &student.student.wkv_layers;
    let (_, captures) = teacher.forward_hidden(ids, Some(att.clone()), None, layers);
    let c = teacher.config.hidden_size as f64;
    let real = att.clone().sum();
    let mut v_first = None;
    let mut total: Option<Tensor<1>> = None;
    let mut metrics = BTreeMap::new();
    for cap in captures {
        let Mixer::Rwkv(m) = &student.layers[cap.layer].mixer else {
            continue;
        };
        let h = cap.attn_in.detach();
        let target = cap.attn_out.detach();
        let (out, vf, _) = m.forward(
            h,
            v_first.take(),
            None,
            Some(att.clone()),
            0,
            Wkv7Impl::Fused,
        );
        v_first = Some(vf);
        let dist = (target - out)
            .square()
            .sum_dim(2)
            .add_scalar(1e-12)
            .sqrt()
            .div_scalar(c.sqrt()); // [B, T, 1]
        let [b, t, _] = dist.dims();
        let layer_loss = (dist.reshape([b, t]) * att.clone()).sum() / real.clone();
        metrics.insert(
            format!("loss_layer_{}", cap.layer),
            crate::model::weights::to_vec(layer_loss.clone().detach())[0] as f64,
        );
        total = Some(match total {
            None => layer_loss,
            Some(acc) => acc + layer_loss,
        });
    }
    let n = layers.len().max(1) as f64;
    (
        total.expect("at least one converted layer").div_scalar(n),
        metrics,
    )
}

/// Shifted next-token pairs: logits at positions `0..T-1` predict tokens `1..T`; returns
/// `(logits [B, T-1, V], targets [B, T-1], weight [B, T-1])` with the weight = loss mask of the
/// target token × its attention mask.
fn shifted(
    logits: Tensor<3>,
    ids: Tensor<2, Int>,
    att: Tensor<2>,
    loss_mask: Tensor<2>,
) -> (Tensor<3>, Tensor<2, Int>, Tensor<2>) {
    let [_, t, _] = logits.dims();
    (
        logits.narrow(1, 0, t - 1),
        ids.narrow(1, 1, t - 1),
        (loss_mask * att).narrow(1, 1, t - 1),
    )
}

/// Mean cross-entropy of next-token prediction over weighted positions, and the weight sum.
pub fn cross_entropy(
    logits: Tensor<3>,
    ids: Tensor<2, Int>,
    att: Tensor<2>,
    loss_mask: Tensor<2>,
) -> (Tensor<1>, f64) {
    let (logits, targets, weight) = shifted(logits, ids, att, loss_mask);
    let logp = burn::tensor::activation::log_softmax(logits, 2);
    let picked = logp.gather(2, targets.unsqueeze_dim(2)).squeeze_dim::<2>(2);
    let total = crate::model::weights::to_vec(weight.clone().sum())[0] as f64;
    (
        (picked * weight).sum().neg().div_scalar(total.max(1.0)),
        total,
    )
}

/// Stage 2 (distillation): `kl_weight · τ² · KL(p_teacher ‖ p_student)` at temperature τ, summed
/// over the vocabulary and averaged over real positions, plus `ce_weight · CE(labels)`. Teacher
/// logits are cut to the student's vocabulary.
pub fn stage2_loss(
    teacher: &Transformer,
    student: &Hybrid,
    batch: &Batch,
    device: &Device,
    kl_weight: f64,
    ce_weight: f64,
    temperature: f64,
) -> (Tensor<1>, BTreeMap<String, f64>) {
    let (ids, att, loss_mask) = batch_tensors(batch, device);
    let t_logits = teacher.forward(ids.clone(), Some(att.clone())).detach();
    let s_logits = student.forward(ids.clone(), Some(att.clone()));
    let v = s_logits.dims()[2];
    let t_logits = if t_logits.dims()[2] > v {
        t_logits.narrow(2, 0, v)
    } else {
        t_logits
    };
    let log_t = burn::tensor::activation::log_softmax(t_logits.div_scalar(temperature), 2);
    let log_s = burn::tensor::activation::log_softmax(s_logits.clone().div_scalar(temperature), 2);
    let kl_pos = (log_t.clone().exp() * (log_t - log_s)).sum_dim(2); // [B, T, 1]
    let [b, t, _] = kl_pos.dims();
    let real = att.clone().sum();
    let kl = (kl_pos.reshape([b, t]) * att.clone()).sum() / real;
    let kl = kl.mul_scalar(temperature * temperature);
    let (ce, _) = cross_entropy(s_logits, ids, att, loss_mask);
    let mut metrics = BTreeMap::new();
    metrics.insert(
        "kl".into(),
        crate::model::weights::to_vec(kl.clone().detach())[0] as f64,
    );
    metrics.insert(
        "ce".into(),
        crate::model::weights::to_vec(ce.clone().detach())[0] as f64,
    );
    (kl.mul_scalar(kl_weight) + ce.mul_scalar(ce_weight), metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// SFT masking: with fixed logits, changing the target of a prompt (masked) position leaves
    /// the loss unchanged; changing an assistant position's target changes it. Labels are the
    /// inputs shifted once: position t's logits are scored against token t+1.
    #[test]
    fn loss_counts_only_masked_in_targets_shifted_once() {
        let device = Device::flex();
        device.seed(3);
        let logits = Tensor::<3>::random([1, 6, 11], Distribution::Uniform(-2.0, 2.0), &device);
        let att = Tensor::<2>::ones([1, 6], &device);
        // Tokens 0..2 are the prompt, 3..5 the assistant turn.
        let mask = Tensor::<2>::from_data(
            TensorData::new(vec![0f32, 0., 0., 1., 1., 1.], [1, 6]),
            &device,
        );
        let loss = |ids: Vec<i64>| {
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 6]), &device);
            crate::model::weights::to_vec(
                cross_entropy(logits.clone(), ids, att.clone(), mask.clone()).0,
            )[0]
        };
        let base = loss(vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(
            loss(vec![9, 9, 9, 4, 5, 6]),
            base,
            "prompt targets do not count"
        );
        assert_ne!(
            loss(vec![1, 2, 3, 4, 9, 6]),
            base,
            "assistant targets count"
        );
        // Shifted once: the score of position 2's logits against token 3 is part of the loss.
        let manual = {
            let logp = burn::tensor::activation::log_softmax(logits.clone(), 2);
            let v = crate::model::weights::to_vec(logp);
            -(v[2 * 11 + 4] + v[3 * 11 + 5] + v[4 * 11 + 6]) / 3.0
        };
        assert!((base - manual).abs() < 1e-5, "{base} vs {manual}");
    }
}
