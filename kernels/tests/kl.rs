//! The fused forward KL against the same divergence built from Burn's tensor ops (the
//! oracle): each position's value and the gradient of the student's logits through autodiff,
//! at two temperatures; and where the op declines.

mod common;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};
use common::max_rel_err;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rwkv_kernels::forward_kl;

fn random(shape: [usize; 3], spread: f32, rng: &mut StdRng, device: &Device) -> Tensor<3> {
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-spread..spread)).collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

#[test]
fn matches_log_softmax_kl_with_the_student_gradient() {
    // A vocabulary that is not a multiple of the vector lanes, two batches of 7 positions.
    let shape = [2, 7, 3001];
    for tau in [1.0, 2.0] {
        let run = |fused: bool| {
            let device = Device::flex().autodiff();
            let mut rng = StdRng::seed_from_u64(5);
            let t = random(shape, 8.0, &mut rng, &device);
            let s = random(shape, 6.0, &mut rng, &device).require_grad();
            let weights = Tensor::<2>::from_data(
                TensorData::new((0..14).map(|i| i as f32 - 3.0).collect(), [2, 7]),
                &device,
            );
            let kl = if fused {
                forward_kl(&t, &s, tau).expect("the fused KL runs on the CPU")
            } else {
                let log_t = log_softmax(t.clone().div_scalar(tau), 2);
                let log_s = log_softmax(s.clone().div_scalar(tau), 2);
                (log_t.clone().exp() * (log_t - log_s))
                    .sum_dim(2)
                    .reshape([2, 7])
            };
            let grads = (kl.clone() * weights).sum().backward();
            (kl.detach(), s.grad(&grads).expect("gradient"))
        };
        let ((kl, ds), (want_kl, want_ds)) = (run(true), run(false));
        let e = max_rel_err(kl, want_kl);
        assert!(e < 1e-5, "τ {tau}: KL max relative error {e:e}");
        let e = max_rel_err(ds, want_ds);
        assert!(e < 1e-5, "τ {tau}: gradient max relative error {e:e}");
    }
}

#[test]
fn declines_teacher_logits_that_need_a_gradient_and_mismatched_shapes() {
    let device = Device::flex().autodiff();
    let mut rng = StdRng::seed_from_u64(1);
    let t = random([1, 2, 10], 1.0, &mut rng, &device);
    let s = random([1, 2, 10], 1.0, &mut rng, &device);
    assert!(forward_kl(&t.clone().require_grad(), &s, 1.0).is_none());
    assert!(forward_kl(&t.clone().narrow(2, 0, 9), &s, 1.0).is_none());
    assert!(forward_kl(&t, &s, 1.0).is_some());
}
