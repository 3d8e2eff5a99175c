//! The fused SwiGLU op against Burn's `silu(g) * u` (the oracle) on random inputs: the output,
//! the gradients of both inputs through autodiff, and inputs that are not contiguous.

use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rwkv_kernels::swiglu;

fn random(shape: [usize; 3], rng: &mut StdRng, device: &Device) -> Tensor<3> {
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-12.0..12.0)).collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

fn max_rel_err(a: Tensor<3>, b: Tensor<3>) -> f32 {
    let a = a.into_data().try_to_vec::<f32>().unwrap();
    let b = b.into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
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
