//! `runner bench stage2`: the time of one stage-2 optimizer step — teacher forward without
//! gradients, hybrid student forward, full-vocabulary KL, backward, global-norm clipping,
//! AdamW — on a fixed batch, side by side with the same model and loss in PyTorch eager
//! (`scripts/bench_stage2_torch.py`), with peak memory of each.

use super::generate::median;
use super::mem;
use crate::data::loader::Batch;
use crate::model::Transformer;
use crate::model::hybrid::{Hybrid, InitMode, StudentConfig};
use crate::train::losses::{DistillLoss, batch_tensors};
use crate::train::optim::{AdamW, AdamWConfig, collect_grads};
use anyhow::Result;
use burn::module::{Module, Param};
use burn::tensor::Device;
use std::path::Path;
use std::time::Instant;

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StepTiming {
    pub step_s: f64,
    pub tokens_per_s: f64,
    pub loss: f64,
    pub peak_rss_mib: f64,
    /// Median seconds of each part of the step, in [`PHASES`] order.
    pub phases_s: [f64; 4],
}

/// The parts of one step, timed separately on both sides.
pub const PHASES: [&str; 4] = [
    "teacher forward",
    "student forward + loss",
    "backward",
    "clip + AdamW",
];

/// The ids both sides train on: `batch` sequences of `seq` tokens.
pub fn batch_ids(batch: usize, seq: usize, vocab: usize) -> Vec<Vec<u32>> {
    (0..batch)
        .map(|s| {
            (0..seq)
                .map(|i| ((17 + 7919 * (i + 131 * s)) % vocab) as u32)
                .collect()
        })
        .collect()
}

/// Our side: median over `steps` optimizer steps after one warm-up.
pub fn measure_ours(
    teacher_dir: &Path,
    layers: Vec<usize>,
    batch: usize,
    seq: usize,
    steps: usize,
    device: &Device,
) -> Result<StepTiming> {
    mem::reset_peak();
    let device = device.clone().autodiff();
    let teacher = Transformer::load(teacher_dir, &device)?.set_require_grad(false);
    let cfg = StudentConfig {
        wkv_layers: layers,
        ..Default::default()
    };
    let mut student = Hybrid::from_teacher(teacher.clone(), cfg, InitMode::Teacher, 0)?;
    if student.lm_head.is_none() {
        student.lm_head = Some(Param::from_tensor(student.embed.val().transpose().detach()));
    }
    let mut student = student.set_require_grad(true);
    let ids = batch_ids(batch, seq, teacher.config.vocab_size);
    let b = Batch {
        attention: vec![vec![1; seq]; batch],
        loss_mask: vec![vec![1; seq]; batch],
        tokens: batch * seq,
        ids,
    };
    let mut opt = AdamW::new(AdamWConfig::default());
    let mut times = Vec::new();
    let mut phases: [Vec<f64>; 4] = Default::default();
    let mut first_loss = 0.0;
    let kl_only = DistillLoss {
        kl_weight: 1.0,
        ce_weight: 0.0,
        temperature: 1.0,
        adaptive: None,
    };
    for i in 0..steps + 1 {
        let t0 = Instant::now();
        let (ids, att, loss_mask) = batch_tensors(&b, &device);
        let t_logits = teacher.forward(ids.clone(), Some(att.clone())).detach();
        let t1 = Instant::now();
        let s_logits = student.forward(ids.clone(), Some(att.clone()));
        let (loss, metrics) = kl_only.of_logits(t_logits, s_logits, ids, att, loss_mask);
        let t2 = Instant::now();
        let grads = loss.backward();
        let t3 = Instant::now();
        let g = collect_grads(&student, &grads);
        drop(grads);
        let norm = g.global_norm();
        let clip = if norm > 1.0 { 1.0 / norm } else { 1.0 };
        student = opt.step(student, &g, 1e-5, clip);
        let t4 = Instant::now();
        if i == 1 {
            first_loss = metrics["kl"];
        }
        if i > 0 {
            times.push((t4 - t0).as_secs_f64());
            for (p, (a, b)) in phases
                .iter_mut()
                .zip([(t0, t1), (t1, t2), (t2, t3), (t3, t4)])
            {
                p.push((b - a).as_secs_f64());
            }
        }
    }
    let step_s = median(times);
    Ok(StepTiming {
        step_s,
        tokens_per_s: (batch * seq) as f64 / step_s,
        loss: first_loss,
        peak_rss_mib: mem::peak_rss_mib().unwrap_or(f64::NAN),
        phases_s: phases.map(median),
    })
}

/// Approximate arithmetic of one stage-2 step, in FLOP: the teacher's forward plus the
/// student's forward and backward (twice the forward), each `2 × matmul parameters` per token
/// (projections, MLP, LM head) plus causal attention's `2·T·C` per token in attention layers
/// (a converted layer's recurrence, ~9·N² per head and token, is left out: < 1 % here).
pub fn step_flops(
    cfg: &crate::model::TransformerConfig,
    converted: usize,
    batch: usize,
    seq: usize,
) -> f64 {
    let (c, i, l) = (
        cfg.hidden_size as f64,
        cfg.intermediate_size as f64,
        cfg.num_hidden_layers as f64,
    );
    let qo = 2.0 * c * (cfg.num_attention_heads * cfg.head_dim) as f64;
    let kv = 2.0 * c * (cfg.num_key_value_heads * cfg.head_dim) as f64;
    let per_layer = qo + kv + 3.0 * c * i;
    let matmul = l * per_layer + cfg.vocab_size as f64 * c;
    let t = seq as f64;
    let attention = |layers: f64| layers * 2.0 * t * c;
    let teacher = 2.0 * matmul + attention(l);
    let student = 2.0 * matmul + attention(l - converted as f64);
    (teacher + 3.0 * student) * t * batch as f64
}
