//! Which layers to convert, by measurement: what replacing one layer's attention alone by an
//! RWKV-7 mixer costs — KL(teacher ‖ the teacher with that one layer replaced) and top-1
//! agreement on held-out text — and the choice of the K cheapest layers (`layer_choice.json`,
//! written by stage 1's layer probe and shown in the evaluation report).

use super::agreement::batch_sums;
use crate::model::Transformer;
use crate::model::hybrid::{Hybrid, Mixer};
use crate::model::layers::Rotary;
use crate::model::transformer::decoder_stack;
use burn::tensor::{Int, Tensor};
use rwkv_kernels::Wkv7Impl;
use serde::{Deserialize, Serialize};

/// The file a choice is written to: beside a step's checkpoints and in its artifacts.
pub const CHOICE_FILE: &str = "layer_choice.json";

/// What replacing one layer's attention by its probe mixer costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerScore {
    pub layer: usize,
    /// Mean KL(teacher ‖ teacher with this layer replaced) per held-out position, nats.
    pub kl: f64,
    /// Fraction of positions where the two pick the same most likely token.
    pub top1: f64,
    pub chosen: bool,
}

/// A choice of layers and every layer's score: `layer_choice.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerChoice {
    /// How many layers were asked for.
    pub k: usize,
    /// The layers converted, ascending.
    pub layers: Vec<usize>,
    /// Every layer's score, by layer.
    pub scores: Vec<LayerScore>,
    /// Optimizer steps that trained the probe's mixers.
    pub probe_steps: u64,
    /// Held-out batches each layer was scored on, and their positions.
    pub batches: usize,
    pub positions: f64,
    /// Wall time of the probe (training and scoring).
    pub seconds: f64,
}

impl LayerChoice {
    /// The `k` layers with the lowest KL (ties: the lower index) from `(kl, top1)` per layer.
    pub fn from_scores(k: usize, scores: &[(f64, f64)]) -> Self {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[a].0.total_cmp(&scores[b].0).then(a.cmp(&b)));
        let mut layers = order[..k.min(scores.len())].to_vec();
        layers.sort_unstable();
        LayerChoice {
            k,
            scores: scores
                .iter()
                .enumerate()
                .map(|(layer, &(kl, top1))| LayerScore {
                    layer,
                    kl,
                    top1,
                    chosen: layers.contains(&layer),
                })
                .collect(),
            layers,
            probe_steps: 0,
            batches: 0,
            positions: 0.0,
            seconds: 0.0,
        }
    }
}

/// For each of `layers`, on one batch (`ids`, `att` `[B, T]`): the summed KL(teacher ‖ the
/// teacher with only that layer's attention replaced by its mixer in `mixers`) and the number of
/// positions where both pick the same token (see [`batch_sums`]). The teacher runs once; each
/// variant continues from the teacher's residual stream entering its layer. `progress(i)` is
/// called after the i-th layer.
pub fn replaced_alone(
    teacher: &Transformer,
    mixers: &Hybrid,
    layers: &[usize],
    ids: Tensor<2, Int>,
    att: Tensor<2>,
    mut progress: impl FnMut(usize),
) -> Vec<(f64, f64)> {
    let device = ids.device();
    let t = ids.dims()[1];
    let (hidden, captures) = teacher.forward_hidden(ids, Some(att.clone()), None, layers);
    let t_logits = teacher.logits(hidden);
    let cfg = &teacher.config;
    let rotary = Rotary::new(cfg.rope_theta, cfg.head_dim, 0, t, &device);
    let mut out = Vec::with_capacity(layers.len());
    for (done, cap) in captures.iter().enumerate() {
        let l = cap.layer;
        let Mixer::Rwkv(m) = &mixers.layers[l].mixer else {
            panic!("layer {l} of the probe has no mixer");
        };
        let (mixed, _, _) = m.forward(
            cap.attn_in.clone(),
            None,
            None,
            Some(att.clone()),
            0,
            Wkv7Impl::Fused,
        );
        let mut mixed = Some(mixed);
        let blocks = teacher.layers[l..]
            .iter()
            .map(|d| (&d.input_norm, &d.post_norm, &d.mlp));
        let (x, _) = decoder_stack(
            cap.residual_in.clone(),
            blocks,
            |i, h| match mixed.take() {
                Some(replaced) if i == 0 => replaced,
                _ => teacher.layers[l + i]
                    .attn
                    .forward(h, &rotary, Some(att.clone()), None),
            },
            &[],
            None,
        );
        let logits = teacher.logits(teacher.norm.forward(x));
        out.push(batch_sums(t_logits.clone(), logits, att.clone()));
        progress(done + 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_k_lowest_kl_layers_are_chosen_ties_by_index() {
        let scores = [(0.5, 0.7), (0.1, 0.9), (0.3, 0.8), (0.1, 0.95), (0.9, 0.5)];
        let c = LayerChoice::from_scores(3, &scores);
        assert_eq!(c.layers, vec![1, 2, 3]);
        assert_eq!(
            c.scores.iter().filter(|s| s.chosen).count(),
            3,
            "{:?}",
            c.scores
        );
        assert_eq!(LayerChoice::from_scores(1, &scores).layers, vec![1]);
        assert_eq!(
            LayerChoice::from_scores(5, &scores).layers,
            vec![0, 1, 2, 3, 4]
        );
    }

    /// The shortcut (continue from the teacher's stream at the layer) gives what a whole
    /// hybrid with that one layer converted gives, on a batch with padding.
    #[test]
    fn replacing_a_layer_alone_matches_a_one_layer_hybrid() {
        use crate::model::TransformerConfig;
        use crate::model::hybrid::{InitMode, StudentConfig};
        use crate::model::transformer::ids_tensor;
        use burn::tensor::TensorData;
        let device = crate::testing::device();
        let cfg = TransformerConfig::from_json(serde_json::json!({
            "model_type": "qwen2", "vocab_size": 48, "hidden_size": 64,
            "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
            "num_key_value_heads": 2
        }))
        .unwrap();
        let teacher = Transformer::random(cfg, 5, &device);
        let every = StudentConfig {
            wkv_layers: vec![0, 1, 2],
            ..Default::default()
        };
        // RWKV-style initialisation: mixers far from the attention they replace.
        let mixers = Hybrid::from_teacher(teacher.clone(), every, InitMode::Rwkv, 9).unwrap();
        let ids = ids_tensor(
            &[(0..20).map(|i| (i * 7 + 3) % 48).collect(), vec![5; 20]],
            &device,
        );
        let mut mask = vec![1.0f32; 40];
        mask[32..].fill(0.0); // the second sequence ends after 12 tokens
        let att = Tensor::from_data(TensorData::new(mask, [2, 20]), &device);
        let fast = replaced_alone(
            &teacher,
            &mixers,
            &[0, 1, 2],
            ids.clone(),
            att.clone(),
            |_| {},
        );
        let t_logits = teacher.forward(ids.clone(), Some(att.clone()));
        for l in 0..3 {
            let one = StudentConfig {
                wkv_layers: vec![l],
                ..Default::default()
            };
            let mut hybrid = Hybrid::from_teacher(teacher.clone(), one, InitMode::Rwkv, 1).unwrap();
            hybrid.layers[l].mixer = match &mixers.layers[l].mixer {
                Mixer::Rwkv(m) => Mixer::Rwkv(m.clone()),
                Mixer::Attention(_) => unreachable!(),
            };
            let logits = hybrid.forward(ids.clone(), Some(att.clone()));
            let (kl, same) = batch_sums(t_logits.clone(), logits, att.clone());
            let (fast_kl, fast_same) = fast[l];
            assert!(
                kl > 1e-4,
                "layer {l}: the replacement changes the output ({kl})"
            );
            assert!(
                (fast_kl - kl).abs() <= 1e-4 * kl,
                "layer {l}: KL {fast_kl} vs {kl}"
            );
            assert_eq!(fast_same, same, "layer {l}");
        }
    }
}
