//! Times the distillation loss's forward KL, forward and backward through autodiff, fused
//! ([`rwkv_kernels::forward_kl`]) against the same loss built from Burn's tensor ops, on
//! teacher and student logits `[1, T, V]`:
//! `cargo run --release -p rwkv-kernels --example kl_time [REPS] [T] [V]` (3 repetitions,
//! T = 512 and V = 49,152 by default: one stage-2 micro-batch of SmolLM2; the best of each is
//! printed, the two alternating).
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Distribution, Tensor};
use rwkv_kernels::forward_kl;
use std::time::Instant;

fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .map_or(default, |s| s.parse().expect("a number"))
    };
    let (reps, t, v) = (arg(1, 3), arg(2, 512), arg(3, 49_152));
    let device = Device::flex().autodiff();
    let teacher = Tensor::<3>::random([1, t, v], Distribution::Normal(0.0, 3.0), &device);
    let student = Tensor::<3>::random([1, t, v], Distribution::Normal(0.0, 3.0), &device);
    let mut best = [f64::INFINITY; 2];
    for _ in 0..reps {
        for (i, fused) in [false, true].into_iter().enumerate() {
            let s = student.clone().detach().require_grad();
            let start = Instant::now();
            let kl = if fused {
                forward_kl(&teacher, &s, 1.0).expect("runs on the CPU")
            } else {
                let log_t = log_softmax(teacher.clone(), 2);
                let log_s = log_softmax(s.clone(), 2);
                (log_t.clone().exp() * (log_t - log_s))
                    .sum_dim(2)
                    .reshape([1, t])
            };
            let grads = kl.mean().backward();
            let grad = s.grad(&grads).expect("gradient");
            let _ = grad.into_data();
            best[i] = best[i].min(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    println!(
        "forward KL + backward, [1, {t}, {v}], best of {reps}: tensor ops {:.1} ms, fused {:.1} ms ({:.2}x)",
        best[0],
        best[1],
        best[0] / best[1]
    );
}
