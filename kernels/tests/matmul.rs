//! The dense layers' product op against the backend's own `matmul` (the oracle): products and
//! the gradients of both inputs through autodiff, inputs that track no gradient, small and
//! large (multi-threaded) shapes, strided inputs, no autodiff.

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::max_rel_err;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rwkv_kernels::matmul;

fn random(shape: [usize; 2], rng: &mut StdRng, device: &Device) -> Tensor<2> {
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

#[test]
fn matches_the_backend_with_gradients() {
    // Small (one thread) and large enough for every thread; ragged sizes.
    for (m, k, n) in [(7, 5, 3), (300, 70, 45), (256, 200, 190)] {
        for (track_x, track_w) in [(true, true), (false, true), (true, false)] {
            let run = |fused: bool| {
                let device = Device::flex().autodiff();
                let mut rng = StdRng::seed_from_u64(9);
                let x = random([m, k], &mut rng, &device);
                let w = random([k, n], &mut rng, &device);
                let x = if track_x { x.require_grad() } else { x };
                let w = if track_w { w.require_grad() } else { w };
                let d_out = random([m, n], &mut rng, &device);
                let y = if fused {
                    matmul(x.clone(), w.clone())
                } else {
                    x.clone().matmul(w.clone())
                };
                let grads = (y.clone() * d_out).sum().backward();
                (y.detach(), x.grad(&grads), w.grad(&grads))
            };
            let (fused, want) = (run(true), run(false));
            let case = format!("{m}×{k}×{n}, tracked x {track_x}, w {track_w}");
            let err = max_rel_err(fused.0, want.0);
            assert!(err < 1e-5, "{case}: product, max relative error {err:e}");
            assert_eq!(
                fused.1.is_some(),
                track_x,
                "{case}: dx exactly when x tracks one"
            );
            assert_eq!(
                fused.2.is_some(),
                track_w,
                "{case}: dw exactly when w tracks one"
            );
            for (name, a, b) in [("dx", fused.1, want.1), ("dw", fused.2, want.2)] {
                if let (Some(a), Some(b)) = (a, b) {
                    let err = max_rel_err(a, b);
                    assert!(err < 1e-5, "{case}: {name}, max relative error {err:e}");
                }
            }
        }
    }
}

#[test]
fn takes_strided_inputs_and_runs_without_autodiff() {
    let device = Device::flex();
    let mut rng = StdRng::seed_from_u64(4);
    let x = random([40, 33], &mut rng, &device).transpose(); // [33, 40]
    let w = random([25, 40], &mut rng, &device).transpose(); // [40, 25]
    let err = max_rel_err(matmul(x.clone(), w.clone()), x.matmul(w));
    assert!(err < 1e-5, "max relative error {err:e}");
}

#[test]
fn an_empty_inner_dimension_gives_zeros() {
    let device = Device::flex();
    let x = Tensor::<2>::zeros([3, 0], &device);
    let w = Tensor::<2>::zeros([0, 4], &device);
    let y = matmul(x, w).into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(y, vec![0.0; 12]);
}
