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
/// step loss is the mean over converted layers. With `share_values`, `v_first` comes from the
/// first converted layer's mixer, as in the student; without, every mixer is its own first
/// (the layers then learn independently, as stage 1's layer probe needs).
pub fn stage1_loss(
    teacher: &Transformer,
    student: &Hybrid,
    batch: &Batch,
    device: &Device,
    share_values: bool,
) -> (Tensor<1>, BTreeMap<String, f64>) {
    let (ids, att, _) = batch_tensors(batch, device);
    let layers = &student.student.wkv_layers;
    let captures = teacher.capture_attention(ids, Some(att.clone()), layers);
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
            v_first.take().filter(|_| share_values),
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

/// The stage-2 (distillation) objective: `kl_weight · τ² · KL + ce_weight · CE(labels)`, the
/// KL summed over the vocabulary and averaged over real positions — KL(p_teacher ‖ p_student),
/// or with `adaptive` set the adaptive KL of [`distill_kl`]. Teacher logits are cut to the
/// student's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistillLoss {
    pub kl_weight: f64,
    pub ce_weight: f64,
    /// τ: both distributions are softened by it (and the KL scaled by τ²).
    pub temperature: f64,
    /// AKL's head mass μ; `None`: the forward KL.
    pub adaptive: Option<f64>,
}

impl DistillLoss {
    /// The loss of `student` against `teacher` on `batch`, with its metrics (`kl`, `ce`, and for
    /// AKL `rkl`, `akl_head_weight`).
    pub fn of_models(
        &self,
        teacher: &Transformer,
        student: &Hybrid,
        batch: &Batch,
        device: &Device,
    ) -> (Tensor<1>, BTreeMap<String, f64>) {
        let (ids, att, loss_mask) = batch_tensors(batch, device);
        let t_logits = teacher.forward(ids.clone(), Some(att.clone())).detach();
        let s_logits = student.forward(ids.clone(), Some(att.clone()));
        self.of_logits(t_logits, s_logits, ids, att, loss_mask)
    }

    /// The loss from both models' logits. The cross-entropy is always reported; with a zero
    /// weight it is computed on detached logits, so the backward pass does not go through a
    /// second vocabulary log-softmax.
    pub fn of_logits(
        &self,
        t_logits: Tensor<3>,
        s_logits: Tensor<3>,
        ids: Tensor<2, Int>,
        att: Tensor<2>,
        loss_mask: Tensor<2>,
    ) -> (Tensor<1>, BTreeMap<String, f64>) {
        let ce_logits = if self.ce_weight == 0.0 {
            s_logits.clone().detach()
        } else {
            s_logits.clone()
        };
        let (kl, mut metrics) = distill_kl(
            t_logits,
            s_logits,
            att.clone(),
            self.temperature,
            self.adaptive,
        );
        let (ce, _) = cross_entropy(ce_logits, ids, att, loss_mask);
        metrics.insert(
            "ce".into(),
            crate::model::weights::to_vec(ce.clone().detach())[0] as f64,
        );
        if self.ce_weight == 0.0 {
            return (kl.mul_scalar(self.kl_weight), metrics);
        }
        (
            kl.mul_scalar(self.kl_weight) + ce.mul_scalar(self.ce_weight),
            metrics,
        )
    }
}

/// The distillation term at temperature τ (τ²-scaled), averaged over positions where `att` is 1.
/// Teacher logits beyond the student's vocabulary are dropped.
///
/// Without `adaptive`: forward KL(p_t ‖ p_s). With `adaptive = Some(μ)` (AKL): per position the
/// head is the smallest set of the teacher's most likely tokens whose probability reaches μ,
/// `g_head`/`g_tail` the summed `|p_t − p_s|` over head and tail, and the loss
/// `w·FKL + (1 − w)·RKL` with `w = g_head / (g_head + g_tail)` (a weight, not differentiated).
pub fn distill_kl(
    t_logits: Tensor<3>,
    s_logits: Tensor<3>,
    att: Tensor<2>,
    temperature: f64,
    adaptive: Option<f64>,
) -> (Tensor<1>, BTreeMap<String, f64>) {
    let v = s_logits.dims()[2];
    let t_logits = if t_logits.dims()[2] > v {
        t_logits.narrow(2, 0, v)
    } else {
        t_logits
    };
    let [b, t, _] = s_logits.dims();
    let real = att.clone().sum();
    let mean = |per_pos: Tensor<3>| (per_pos.reshape([b, t]) * att.clone()).sum() / real.clone();
    let mut metrics = BTreeMap::new();
    let scalar = |x: &Tensor<1>| crate::model::weights::to_vec(x.clone().detach())[0] as f64;
    // On the CPU the plain forward KL is one fused op (no vocabulary-sized temporaries).
    let fused = match adaptive {
        None => rwkv_kernels::forward_kl(&t_logits, &s_logits, temperature),
        Some(_) => None,
    };
    let loss = match fused {
        Some(fkl_pos) => mean(fkl_pos.reshape([b, t, 1])),
        None => {
            let log_t = burn::tensor::activation::log_softmax(t_logits.div_scalar(temperature), 2);
            let log_s = burn::tensor::activation::log_softmax(s_logits.div_scalar(temperature), 2);
            let p_t = log_t.clone().exp();
            let fkl_pos = (p_t.clone() * (log_t.clone() - log_s.clone())).sum_dim(2); // [B, T, 1]
            match adaptive {
                None => mean(fkl_pos),
                Some(mu) => {
                    let p_s = log_s.clone().exp();
                    let rkl_pos = (p_s.clone() * (log_s - log_t)).sum_dim(2);
                    // Head membership from the teacher's sorted probabilities: a token is in
                    // the head when the mass of the tokens ranked before it is still below μ.
                    let (sorted, order) = p_t.clone().detach().sort_descending_with_indices(2);
                    let before = sorted.clone().cumsum(2) - sorted;
                    let head_sorted = before.lower_elem(mu).float();
                    let gap = (p_t.detach() - p_s.detach()).abs().gather(2, order);
                    let g_head = (gap.clone() * head_sorted).sum_dim(2);
                    let g_all = gap.sum_dim(2);
                    let w = g_head / g_all.clamp_min(1e-12); // [B, T, 1]
                    metrics.insert("akl_head_weight".into(), scalar(&mean(w.clone())));
                    metrics.insert(
                        "rkl".into(),
                        scalar(&mean(rkl_pos.clone())) * temperature * temperature,
                    );
                    mean(w.clone() * fkl_pos.clone() + (w.neg() + 1.0) * rkl_pos)
                }
            }
        }
    };
    let loss = loss.mul_scalar(temperature * temperature);
    metrics.insert("kl".into(), scalar(&loss));
    (loss, metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// A plain f64 reference of one position's KL terms.
    fn reference_position(t: &[f64], s: &[f64], mu: Option<f64>) -> f64 {
        let softmax = |x: &[f64]| {
            let m = x.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
            let z: f64 = e.iter().sum();
            e.into_iter().map(|v| v / z).collect::<Vec<_>>()
        };
        let (pt, ps) = (softmax(t), softmax(s));
        let fkl: f64 = pt.iter().zip(&ps).map(|(a, b)| a * (a / b).ln()).sum();
        let Some(mu) = mu else { return fkl };
        let rkl: f64 = pt.iter().zip(&ps).map(|(a, b)| b * (b / a).ln()).sum();
        let mut order: Vec<usize> = (0..pt.len()).collect();
        order.sort_by(|&i, &j| pt[j].total_cmp(&pt[i]));
        let (mut cum, mut g_head, mut g_all) = (0.0, 0.0, 0.0);
        for i in order {
            let gap = (pt[i] - ps[i]).abs();
            if cum < mu {
                g_head += gap;
            }
            cum += pt[i];
            g_all += gap;
        }
        let w = g_head / g_all;
        w * fkl + (1.0 - w) * rkl
    }

    #[test]
    fn distillation_kl_and_adaptive_kl_match_a_scalar_reference() {
        let device = crate::testing::device();
        device.seed(7);
        let (b, t, v) = (2, 3, 9);
        // The teacher has a larger vocabulary (cut to the student's); one padded position.
        let tl = Tensor::<3>::random([b, t, v + 2], Distribution::Normal(0.0, 2.0), &device);
        let sl = Tensor::<3>::random([b, t, v], Distribution::Normal(0.0, 2.0), &device);
        let att = Tensor::<2>::from_data(
            TensorData::new(vec![1f32, 1., 1., 1., 1., 0.], [b, t]),
            &device,
        );
        let (tv, sv) = (
            crate::model::weights::to_vec(tl.clone()),
            crate::model::weights::to_vec(sl.clone()),
        );
        for (mu, tau) in [(None, 1.0), (None, 2.0), (Some(0.5), 1.0), (Some(0.8), 1.5)] {
            let mut want = 0.0;
            for p in 0..5 {
                let tp: Vec<f64> = tv[p * (v + 2)..p * (v + 2) + v]
                    .iter()
                    .map(|&x| x as f64 / tau)
                    .collect();
                let sp: Vec<f64> = sv[p * v..(p + 1) * v]
                    .iter()
                    .map(|&x| x as f64 / tau)
                    .collect();
                want += reference_position(&tp, &sp, mu);
            }
            want = want / 5.0 * tau * tau;
            let (got, m) = distill_kl(tl.clone(), sl.clone(), att.clone(), tau, mu);
            let got = crate::model::weights::to_vec(got)[0] as f64;
            assert!(
                (got - want).abs() < 1e-4 * want.abs().max(1.0),
                "μ {mu:?} τ {tau}: {got} vs {want}"
            );
            assert_eq!(m.contains_key("akl_head_weight"), mu.is_some());
        }
    }

    /// SFT masking: with fixed logits, changing the target of a prompt (masked) position leaves
    /// the loss unchanged; changing an assistant position's target changes it. Labels are the
    /// inputs shifted once: position t's logits are scored against token t+1.
    #[test]
    fn loss_counts_only_masked_in_targets_shifted_once() {
        let device = crate::testing::device();
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
