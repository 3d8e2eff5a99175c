//! The fused SwiGLU op against Burn's `silu(g) * u` (the oracle) on random inputs: the output,
//! the gradients of both inputs through autodiff, and inputs that are not contiguous.

mod common;

use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};
use common::max_rel_err;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rwkv_kernels::swiglu;

fn random(shape: [usize; 3], rng: &mut StdRng, device: &Device) -> Tensor<3> {
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-12.0..12.0)).collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

#[test]
fn matches_silu_times_up_with_gradients() {
    // 2 × 37 × 1,000: several parallel parts and a ragged end.
    let shape = [2, 37, 1000];
    let run = |fused: bool| {
        let device = Device::flex().autodiff();
        let mut rng = StdRng::seed_from_u64(7);
        let g = random(shape, &mut rng, &device).require_grad();
        let u = random(shape, &mut rng, &device).require_grad();
        let d_out = random(shape, &mut rng, &device);
        let out = if fused {
            swiglu(g.clone(), u.clone())
        } else {
            silu(g.clone()) * u.clone()
        };
        let grads = (out.clone() * d_out).sum().backward();
        let grad = |x: &Tensor<3>| x.grad(&grads).expect("gradient");
        [out.detach(), grad(&g), grad(&u)]
    };
    let (fused, want) = (run(true), run(false));
    for (name, (a, b)) in ["out", "dg", "du"].iter().zip(fused.iter().zip(&want)) {
        let err = max_rel_err(a.clone(), b.clone());
        assert!(err < 1e-6, "{name}: max relative error {err:e}");
    }
}

#[test]
fn takes_transposed_inputs_and_runs_without_autodiff() {
    let device = Device::flex();
    let mut rng = StdRng::seed_from_u64(3);
    let g = random([3, 40, 24], &mut rng, &device).swap_dims(1, 2);
    let u = random([3, 24, 40], &mut rng, &device);
    let err = max_rel_err(swiglu(g.clone(), u.clone()), silu(g) * u);
    assert!(err < 1e-6, "max relative error {err:e}");
}
