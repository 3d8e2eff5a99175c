//! The time mixer's fused token shift, decay and output stage against the tensor ops they
//! replace (the oracle, as the model built them): outputs and the gradients of every input
//! through autodiff, inputs that track no gradient, inputs that are not contiguous, no
//! autodiff.

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::max_rel_err;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rwkv_kernels::{
    MixerOutput, decay, decay_ops, mixer_output, mixer_output_ops, token_mix, token_mix_ops,
};

fn random<const D: usize>(
    shape: [usize; D],
    amp: f32,
    rng: &mut StdRng,
    device: &Device,
) -> Tensor<D> {
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-amp..amp)).collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

#[test]
fn token_mix_matches_tensor_ops_with_gradients() {
    // 3 × 300 rows of 70: several parallel tasks, ending mid-sequence.
    let (b, t, c) = (3, 300, 70);
    for track_x in [true, false] {
        let run = |fused: bool| {
            let device = Device::flex().autodiff();
            let mut rng = StdRng::seed_from_u64(11);
            let x = random([b, t, c], 3.0, &mut rng, &device);
            let x = if track_x { x.require_grad() } else { x };
            let shift = random([b, c], 3.0, &mut rng, &device).require_grad();
            let mu = random([c], 1.0, &mut rng, &device).require_grad();
            let d_out = random([b, t, c], 1.0, &mut rng, &device);
            let out = if fused {
                token_mix(x.clone(), shift.clone(), mu.clone())
            } else {
                token_mix_ops(x.clone(), shift.clone(), mu.clone())
            };
            let grads = (out.clone() * d_out).sum().backward();
            let dx = x.grad(&grads).map(|g| g.reshape([b * t * c]));
            let dshift = shift.grad(&grads).expect("dshift").reshape([b * c]);
            let dmu = mu.grad(&grads).expect("dmu");
            (out.detach(), dx, dshift, dmu)
        };
        let (fused, want) = (run(true), run(false));
        let err = max_rel_err(fused.0, want.0);
        assert!(err < 1e-6, "out: max relative error {err:e}");
        assert_eq!(
            fused.1.is_some(),
            track_x,
            "x has a gradient exactly when it tracks one"
        );
        if let (Some(a), Some(b)) = (fused.1, want.1) {
            let err = max_rel_err(a, b);
            assert!(err < 1e-6, "dx: max relative error {err:e}");
        }
        let err = max_rel_err(fused.2, want.2);
        assert!(err < 1e-6, "dshift: max relative error {err:e}");
        // A sum over 900 rows, in another order.
        let err = max_rel_err(fused.3, want.3);
        assert!(err < 1e-5, "dmu: max relative error {err:e}");
    }
}

#[test]
fn decay_matches_tensor_ops_with_gradients() {
    let (b, t, c) = (2, 150, 96);
    let run = |fused: bool| {
        let device = Device::flex().autodiff();
        let mut rng = StdRng::seed_from_u64(5);
        // z + w0 over about −30..30: both tails of the softplus.
        let z = random([b, t, c], 24.0, &mut rng, &device).require_grad();
        let w0 = random([c], 6.0, &mut rng, &device).require_grad();
        let d_out = random([b, t, c], 1.0, &mut rng, &device);
        let w = if fused {
            decay(z.clone(), w0.clone())
        } else {
            decay_ops(z.clone(), w0.clone())
        };
        let grads = (w.clone() * d_out).sum().backward();
        let dz = z.grad(&grads).expect("dz");
        let dw0 = w0.grad(&grads).expect("dw0");
        (w.detach(), dz, dw0)
    };
    let (fused, want) = (run(true), run(false));
    for (name, a, b, tol) in [("w", fused.0, want.0, 1e-6), ("dz", fused.1, want.1, 1e-5)] {
        let err = max_rel_err(a, b);
        assert!(err < tol, "{name}: max relative error {err:e}");
    }
    let err = max_rel_err(fused.2, want.2);
    assert!(err < 1e-5, "dw0: max relative error {err:e}");
}

#[test]
fn take_strided_inputs_and_run_without_autodiff() {
    let device = Device::flex();
    let mut rng = StdRng::seed_from_u64(3);
    let x = random([2, 24, 17], 3.0, &mut rng, &device).swap_dims(1, 2); // [2, 17, 24]
    let shift = random([24, 2], 3.0, &mut rng, &device).transpose();
    let mu = random([24], 1.0, &mut rng, &device);
    let err = max_rel_err(
        token_mix(x.clone(), shift.clone(), mu.clone()),
        token_mix_ops(x.clone(), shift, mu.clone()),
    );
    assert!(err < 1e-6, "token mix: max relative error {err:e}");
    let err = max_rel_err(decay(x.clone(), mu.clone()), decay_ops(x, mu));
    assert!(err < 1e-6, "decay: max relative error {err:e}");
}

#[test]
fn output_stage_matches_tensor_ops_with_gradients() {
    // 3 × 50 tokens of 5 heads of 16, as a layer gives them (GroupNorm and a gate).
    let (b, t, h, n) = (3, 50, 5, 16);
    let c = h * n;
    let run = |fused: bool| {
        let device = Device::flex().autodiff();
        let mut rng = StdRng::seed_from_u64(21);
        let mut bt = |amp| random([b, t, c], amp, &mut rng, &device).require_grad();
        let (r, k, v, g) = (bt(1.0), bt(1.0), bt(2.0), bt(1.5));
        let y = random([b, t, h, n], 3.0, &mut rng, &device).require_grad();
        let r_k = random([h, n], 1.0, &mut rng, &device).require_grad();
        let lw = random([c], 2.0, &mut rng, &device).require_grad();
        let lb = random([c], 1.0, &mut rng, &device).require_grad();
        let d_out = random([b, t, c], 1.0, &mut rng, &device);
        let x = MixerOutput {
            y: y.clone(),
            r: r.clone(),
            k: k.clone(),
            v: v.clone(),
            r_k: r_k.clone(),
            group_norm: Some((lw.clone(), lb.clone())),
            gate: Some(g.clone()),
        };
        let out = if fused {
            mixer_output(x, 64e-5)
        } else {
            mixer_output_ops(x, 64e-5)
        };
        let grads = (out.clone() * d_out).sum().backward();
        let flat3 = |x: &Tensor<3>| x.grad(&grads).expect("gradient").reshape([b * t * c]);
        vec![
            ("out", out.detach().reshape([b * t * c])),
            ("dy", y.grad(&grads).expect("dy").reshape([b * t * c])),
            ("dr", flat3(&r)),
            ("dk", flat3(&k)),
            ("dv", flat3(&v)),
            ("dg", flat3(&g)),
            ("dr_k", r_k.grad(&grads).expect("dr_k").reshape([c])),
            ("dlw", lw.grad(&grads).expect("dlw")),
            ("dlb", lb.grad(&grads).expect("dlb")),
        ]
    };
    for ((name, a), (_, want)) in run(true).into_iter().zip(run(false)) {
        let err = max_rel_err(a, want);
        assert!(err < 1e-5, "{name}: max relative error {err:e}");
    }
}

#[test]
fn output_stage_without_group_norm_or_gate_takes_tensor_ops() {
    let device = Device::flex();
    let mut rng = StdRng::seed_from_u64(2);
    let (b, t, h, n) = (2, 7, 3, 8);
    let mut bt = |amp| random([b, t, h * n], amp, &mut rng, &device);
    let (r, k, v) = (bt(1.0), bt(1.0), bt(1.0));
    let y = random([b, t, h, n], 1.0, &mut rng, &device);
    let r_k = random([h, n], 1.0, &mut rng, &device);
    let x = MixerOutput {
        y,
        r,
        k,
        v,
        r_k,
        group_norm: None,
        gate: None,
    };
    let err = max_rel_err(mixer_output(x.clone(), 64e-5), mixer_output_ops(x, 64e-5));
    assert_eq!(err, 0.0);
}
