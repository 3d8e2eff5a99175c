//! The GRPO objective (SPEC §6): advantages normalised within each prompt's group, per-token
//! log-probabilities of completions (log-softmax over the vocabulary in chunks of positions),
//! and the clipped surrogate with the k3 estimate of KL(π_θ ‖ π_ref), averaged over each
//! completion's tokens. The loss is the negative of the objective — minimising it raises the
//! probability of completions with positive advantage.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

/// `A_i = (R_i − mean(R)) / (std(R) + eps)` within each group of `group` consecutive rewards
/// (sample standard deviation, n − 1). A group whose rewards are all equal gets zeros.
pub fn group_advantages(rewards: &[f64], group: usize, eps: f64) -> Vec<f64> {
    assert!(
        group > 0 && rewards.len().is_multiple_of(group),
        "rewards come in whole groups"
    );
    rewards
        .chunks(group)
        .flat_map(|g| {
            let n = g.len() as f64;
            let mean = g.iter().sum::<f64>() / n;
            let var = if g.len() > 1 {
                g.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0)
            } else {
                0.0
            };
            let std = var.sqrt();
            g.iter().map(move |r| {
                if std == 0.0 {
                    0.0
                } else {
                    (r - mean) / (std + eps)
                }
            })
        })
        .collect()
}

/// Log-probabilities `[B, L]` of `targets` `[B, L]` under `logits_of(hidden chunk)`, where
/// `hidden` `[B, L, C]` holds the states that predict each target. The vocabulary-sized
/// log-softmax is formed for at most `chunk` positions at a time.
pub fn token_logprobs(
    hidden: Tensor<3>,
    targets: Tensor<2, Int>,
    temperature: f64,
    chunk: usize,
    logits_of: impl Fn(Tensor<3>) -> Tensor<3>,
) -> Tensor<2> {
    let [_, l, _] = hidden.dims();
    let chunk = chunk.max(1);
    let parts: Vec<Tensor<2>> = (0..l)
        .step_by(chunk)
        .map(|s| {
            let n = chunk.min(l - s);
            let logits = logits_of(hidden.clone().narrow(1, s, n));
            let logits = if temperature != 1.0 {
                logits / temperature
            } else {
                logits
            };
            let idx = targets.clone().narrow(1, s, n).unsqueeze_dim::<3>(2);
            log_softmax(logits, 2).gather(2, idx).squeeze_dim::<2>(2)
        })
        .collect();
    Tensor::cat(parts, 1)
}

/// Settings of the surrogate.
#[derive(Debug, Clone, Copy)]
pub struct Surrogate {
    /// Clip range ε of the ratio.
    pub epsilon: f64,
    /// Weight β of the KL penalty.
    pub beta: f64,
}

/// Scalars the objective reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct SurrogateStats {
    /// Sum over completions of their mean per-token k3 KL.
    pub kl_sum: f64,
    /// Completion tokens where the clipped term was the smaller one (clipping active).
    pub clipped_tokens: f64,
    pub tokens: f64,
}

/// The loss of a micro-batch: minus the sum over its completions of the per-token objective
/// `min(ρA, clip(ρ, 1±ε)A) − β·KL_t` averaged over each completion's tokens (`mask` `[B, L]`),
/// divided by `normaliser` (the number of completions in the optimizer step).
pub fn surrogate_loss(
    logp: Tensor<2>,
    old_logp: Tensor<2>,
    ref_logp: Option<Tensor<2>>,
    advantages: Tensor<1>,
    mask: Tensor<2>,
    s: Surrogate,
    normaliser: f64,
) -> (Tensor<1>, SurrogateStats) {
    let [b, _] = logp.dims();
    let adv = advantages.reshape([b as i32, 1]);
    let ratio = (logp.clone() - old_logp).exp();
    let unclipped = ratio.clone() * adv.clone();
    let clipped = ratio.clone().clamp(1.0 - s.epsilon, 1.0 + s.epsilon) * adv.clone();
    let mut objective = unclipped.clone().min_pair(clipped.clone());
    let lengths = mask.clone().sum_dim(1).clamp_min(1.0); // [B, 1]
    let mut kl_sum = 0.0;
    if let Some(r) = ref_logp {
        let d = r - logp;
        let kl = d.clone().exp() - d - 1.0;
        kl_sum = crate::model::weights::to_vec(
            ((kl.clone() * mask.clone()).sum_dim(1) / lengths.clone()).sum(),
        )[0] as f64;
        if s.beta != 0.0 {
            objective = objective - kl * s.beta;
        }
    }
    let per_seq = (objective * mask.clone()).sum_dim(1) / lengths; // [B, 1]
    let loss = per_seq.sum().neg() / normaliser;
    // Clipping is active where the clipped term is strictly smaller.
    let active = unclipped.greater(clipped).float() * mask.clone();
    let stats = SurrogateStats {
        kl_sum,
        clipped_tokens: crate::model::weights::to_vec(active.sum())[0] as f64,
        tokens: crate::model::weights::to_vec(mask.sum())[0] as f64,
    };
    (loss, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::to_vec;
    use burn::module::{Module, Param};
    use burn::tensor::TensorData;

    #[test]
    fn advantages_are_normalised_per_group() {
        // Two prompts whose rewards differ in scale by 10×: per-group normalisation gives
        // both groups the same advantages; a batch-wide one would not.
        let a = group_advantages(&[0.0, 1.0, 0.0, 1.0, 0.0, 10.0, 0.0, 10.0], 4, 1e-4);
        for i in 0..4 {
            assert!((a[i] - a[i + 4]).abs() < 1e-3, "{a:?}");
        }
        // Zero mean, unit (sample) standard deviation within a group.
        let g = &a[..4];
        assert!(g.iter().sum::<f64>().abs() < 1e-12);
        let var = g.iter().map(|x| x * x).sum::<f64>() / 3.0;
        assert!((var - 1.0).abs() < 1e-3, "{var}");
        assert!(a[1] > 0.0 && a[0] < 0.0);
        // A group that all got the same reward learns nothing; no NaN.
        assert_eq!(group_advantages(&[0.6, 0.6, 0.6], 3, 1e-4), vec![0.0; 3]);
        assert_eq!(group_advantages(&[5.0], 1, 1e-4), vec![0.0]);
    }

    #[test]
    fn token_logprobs_match_a_direct_log_softmax_in_any_chunking() {
        let device = crate::testing::device();
        let hidden = Tensor::<3>::random(
            [2, 5, 7],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let targets = Tensor::<2, Int>::from_data(
            TensorData::new(vec![0i64, 3, 6, 2, 1, 4, 4, 0, 5, 6], [2, 5]),
            &device,
        );
        let flat = to_vec(hidden.clone());
        let full = to_vec(token_logprobs(
            hidden.clone(),
            targets.clone(),
            0.7,
            64,
            |h| h,
        ));
        for chunk in [1, 2, 3] {
            let c = to_vec(token_logprobs(
                hidden.clone(),
                targets.clone(),
                0.7,
                chunk,
                |h| h,
            ));
            assert_eq!(c, full);
        }
        // By hand for position (1, 2): target 0.
        let row = &flat[(5 + 2) * 7..(5 + 2) * 7 + 7];
        let z: Vec<f64> = row.iter().map(|&x| x as f64 / 0.7).collect();
        let lse = z.iter().map(|x| x.exp()).sum::<f64>().ln();
        assert!((full[7] as f64 - (z[0] - lse)).abs() < 1e-5);
    }

    /// A toy policy: for each of two prompts, a table of logits over 6 tokens at each of 3
    /// positions; a completion's log-probability is the sum over its tokens.
    #[derive(Module, Debug)]
    struct Toy {
        logits: Param<Tensor<3>>,
    }

    fn toy_logprobs(toy: &Toy, prompts: &[usize], completions: &[[i64; 3]]) -> Tensor<2> {
        let device = toy.logits.val().device();
        let rows: Vec<Tensor<3>> = prompts
            .iter()
            .map(|&p| toy.logits.val().narrow(0, p, 1))
            .collect();
        let hidden = Tensor::cat(rows, 0); // [B, 3, 6]
        let flat: Vec<i64> = completions.iter().flatten().copied().collect();
        let targets =
            Tensor::<2, Int>::from_data(TensorData::new(flat, [completions.len(), 3]), &device);
        token_logprobs(hidden, targets, 1.0, 2, |h| h)
    }

    #[test]
    fn one_update_raises_above_mean_completions_and_lowers_the_others() {
        let device = crate::testing::device().autodiff();
        let init = Tensor::<3>::random(
            [2, 3, 6],
            burn::tensor::Distribution::Normal(0.0, 0.1),
            &device,
        );
        let toy = Toy {
            logits: Param::from_tensor(init),
        };
        // Two prompts, four completions each; the second group's rewards are 10× the first's.
        // Within a group the completions use different tokens at each position, so the
        // update of one does not spill onto another.
        let prompts = [0, 0, 0, 0, 1, 1, 1, 1];
        let completions = [
            [0, 1, 2],
            [3, 4, 5],
            [1, 2, 0],
            [5, 3, 4],
            [2, 2, 2],
            [4, 0, 1],
            [5, 5, 3],
            [0, 3, 4],
        ];
        let rewards = [1.0, 0.0, 0.0, 0.5, 0.0, 10.0, 5.0, 0.0];
        let adv = group_advantages(&rewards, 4, 1e-4);
        let before = to_vec(toy_logprobs(&toy, &prompts, &completions).sum_dim(1));
        let old = toy_logprobs(&toy, &prompts, &completions).detach();
        let mask = Tensor::<2>::ones([8, 3], &device);
        let advantages = Tensor::<1>::from_data(
            TensorData::new(adv.iter().map(|&a| a as f32).collect::<Vec<_>>(), [8]),
            &device,
        );
        let logp = toy_logprobs(&toy, &prompts, &completions);
        let s = Surrogate {
            epsilon: 0.2,
            beta: 0.1,
        };
        let (loss, stats) = surrogate_loss(logp, old.clone(), Some(old), advantages, mask, s, 8.0);
        // At the rollout policy the ratio is 1 and the KL 0: nothing is clipped.
        assert_eq!(stats.clipped_tokens, 0.0);
        assert!(stats.kl_sum.abs() < 1e-6);
        let grads = loss.backward();
        let g = to_vec(
            toy.logits
                .val()
                .grad(&grads)
                .expect("gradient of the logits"),
        );
        let lr = 0.5;
        let stepped: Vec<f32> = to_vec(toy.logits.val())
            .iter()
            .zip(&g)
            .map(|(p, g)| p - lr * g)
            .collect();
        let updated = Toy {
            logits: Param::from_tensor(Tensor::from_data(
                TensorData::new(stepped, [2, 3, 6]),
                &device,
            )),
        };
        let after = to_vec(toy_logprobs(&updated, &prompts, &completions).sum_dim(1));
        for i in 0..8 {
            let delta = after[i] - before[i];
            if adv[i] > 0.0 {
                assert!(
                    delta > 0.0,
                    "completion {i} (A = {}) fell by {delta}",
                    adv[i]
                );
            } else {
                assert!(
                    delta < 0.0,
                    "completion {i} (A = {}) rose by {delta}",
                    adv[i]
                );
            }
        }
    }

    #[test]
    fn the_ratio_is_clipped_where_the_policy_moved_too_far() {
        let device = crate::testing::device();
        let old = Tensor::<2>::zeros([2, 2], &device);
        // ρ = e^{0.5} ≈ 1.65 on the first token of each completion, 1 on the second.
        let logp = Tensor::<2>::from_data(
            TensorData::new(vec![0.5f32, 0.0, 0.5, 0.0], [2, 2]),
            &device,
        );
        let adv = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, -1.0], [2]), &device);
        let mask = Tensor::<2>::ones([2, 2], &device);
        let s = Surrogate {
            epsilon: 0.2,
            beta: 0.0,
        };
        let (loss, stats) = surrogate_loss(logp, old, None, adv, mask, s, 2.0);
        // A > 0: min(1.65, 1.2) = 1.2 (clipped); A < 0: min(-1.65, -1.2) = -1.65 (not clipped).
        assert_eq!(stats.clipped_tokens, 1.0);
        let expect = -(((1.2 + 1.0) / 2.0) + ((-(0.5f64.exp()) - 1.0) / 2.0)) / 2.0;
        let got = to_vec(loss)[0] as f64;
        assert!((got - expect).abs() < 1e-5, "{got} vs {expect}");
    }

    #[test]
    fn k3_kl_is_zero_at_the_reference_and_positive_elsewhere() {
        let device = crate::testing::device();
        let reference =
            Tensor::<2>::from_data(TensorData::new(vec![-1.0f32, -2.0], [1, 2]), &device);
        let adv = Tensor::<1>::zeros([1], &device);
        let mask = Tensor::<2>::ones([1, 2], &device);
        let s = Surrogate {
            epsilon: 0.2,
            beta: 1.0,
        };
        let same = surrogate_loss(
            reference.clone(),
            reference.clone(),
            Some(reference.clone()),
            adv.clone(),
            mask.clone(),
            s,
            1.0,
        );
        assert!(same.1.kl_sum.abs() < 1e-7);
        let moved = Tensor::<2>::from_data(TensorData::new(vec![-0.5f32, -2.5], [1, 2]), &device);
        let (loss, stats) =
            surrogate_loss(moved.clone(), moved, Some(reference), adv, mask, s, 1.0);
        let k3 = |d: f64| d.exp() - d - 1.0;
        let expect = (k3(-0.5) + k3(0.5)) / 2.0;
        assert!((stats.kl_sum - expect).abs() < 1e-5);
        // With zero advantages the loss is β·KL.
        assert!((to_vec(loss)[0] as f64 - expect).abs() < 1e-5);
    }
}
