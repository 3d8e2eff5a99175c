//! The fused causal attention against Burn's own attention built from tensor ops (the oracle):
//! outputs and the gradients of q, k and v on random inputs, with grouped key/value heads,
//! padded keys, more keys than queries (a cache), and sequences longer than one row block.

mod common;

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Tensor, TensorData};
use common::max_rel_err;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rwkv_kernels::causal_attention;

#[derive(Debug, Clone, Copy)]
struct Case {
    b: usize,
    h: usize,
    hkv: usize,
    tq: usize,
    tk: usize,
    d: usize,
    padded: bool,
}

fn random(shape: [usize; 4], rng: &mut StdRng, device: &Device) -> Tensor<4> {
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// Keys `[B, Tk]`: batch row 1 has a padded stretch (when the case has padding).
fn key_mask(c: &Case) -> Vec<f32> {
    (0..c.b * c.tk)
        .map(|i| {
            let (b, j) = (i / c.tk, i % c.tk);
            if c.padded && b % 2 == 1 && (j % 5 == 1 || j < 3) {
                0.0
            } else {
                1.0
            }
        })
        .collect()
}

/// The oracle: repeated key/value heads, a boolean mask hiding padded keys from every query
/// but their own position, Burn's causal attention.
fn oracle(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: &[f32],
    c: &Case,
    scale: f64,
) -> Tensor<4> {
    let group = c.h / c.hkv;
    let rep = |x: Tensor<4>| {
        x.unsqueeze_dim::<5>(2)
            .expand([c.b, c.hkv, group, c.tk, c.d])
            .reshape([c.b, c.h, c.tk, c.d])
    };
    let offset = c.tk - c.tq;
    let hidden: Vec<bool> = (0..c.b * c.h * c.tq * c.tk)
        .map(|i| {
            let (j, i_q, b) = (i % c.tk, (i / c.tk) % c.tq, i / (c.tk * c.tq * c.h));
            mask[b * c.tk + j] == 0.0 && j != i_q + offset
        })
        .collect();
    let device = q.device();
    let hidden =
        Tensor::<4, Bool>::from_data(TensorData::new(hidden, [c.b, c.h, c.tq, c.tk]), &device);
    let options = AttentionModuleOptions {
        scale: Some(scale),
        softcap: None,
        is_causal: true,
    };
    attention(q, rep(k), rep(v), Some(hidden), None, options)
}

fn check(c: Case, seed: u64) {
    check_on(c, seed, &Device::flex(), 2e-5);
}

/// The fused op on `device` against the oracle on the CPU: output and the gradients of q, k
/// and v, within `tol` (max relative error).
fn check_on(c: Case, seed: u64, device: &Device, tol: f32) {
    let scale = 1.0 / (c.d as f64).sqrt();
    let mask = key_mask(&c);
    let run = |fused: bool| {
        let device = if fused {
            device.clone().autodiff()
        } else {
            Device::flex().autodiff()
        };
        let mut rng = StdRng::seed_from_u64(seed);
        let q = random([c.b, c.h, c.tq, c.d], &mut rng, &device).require_grad();
        let k = random([c.b, c.hkv, c.tk, c.d], &mut rng, &device).require_grad();
        let v = random([c.b, c.hkv, c.tk, c.d], &mut rng, &device).require_grad();
        let d_o = random([c.b, c.h, c.tq, c.d], &mut rng, &device);
        let mask_t = Tensor::<2>::from_data(TensorData::new(mask.clone(), [c.b, c.tk]), &device);
        let o = if fused {
            causal_attention(q.clone(), k.clone(), v.clone(), Some(mask_t), scale)
                .expect("the fused attention runs on this device")
        } else {
            oracle(q.clone(), k.clone(), v.clone(), &mask, &c, scale)
        };
        let grads = (o.clone() * d_o).sum().backward();
        let g = |x: &Tensor<4>| x.grad(&grads).expect("gradient");
        [o.detach(), g(&q), g(&k), g(&v)]
    };
    let (fused, want) = (run(true), run(false));
    for (name, (a, b)) in ["o", "dq", "dk", "dv"].iter().zip(fused.iter().zip(&want)) {
        let err = max_rel_err(a.clone(), b.clone());
        assert!(
            err < tol,
            "{c:?} on {device:?}: {name} max relative error {err:e}"
        );
    }
}

#[test]
fn matches_burn_attention_with_grouped_heads_padding_and_long_sequences() {
    for (i, c) in cases().into_iter().enumerate() {
        check(c, 11 + i as u64);
    }
}

/// Grouped heads, padding, sequences longer than one row block, queries after a cache.
fn cases() -> [Case; 5] {
    [
        Case {
            b: 1,
            h: 2,
            hkv: 2,
            tq: 9,
            tk: 9,
            d: 8,
            padded: false,
        },
        Case {
            b: 2,
            h: 6,
            hkv: 2,
            tq: 70,
            tk: 70,
            d: 16,
            padded: true,
        },
        Case {
            b: 2,
            h: 4,
            hkv: 1,
            tq: 150,
            tk: 150,
            d: 8,
            padded: false,
        },
        // Queries after a cache: the last 5 of 37 positions, and a single decode step.
        Case {
            b: 2,
            h: 4,
            hkv: 2,
            tq: 5,
            tk: 37,
            d: 8,
            padded: true,
        },
        Case {
            b: 3,
            h: 3,
            hkv: 3,
            tq: 1,
            tk: 20,
            d: 4,
            padded: true,
        },
    ]
}

/// The CubeCL kernels on the wgpu device (in CI: lavapipe) against the same oracle.
#[cfg(feature = "wgpu")]
#[test]
fn gpu_kernels_match_burn_attention() {
    let gpu = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
    assert!(rwkv_kernels::attention_fused_available(&gpu, 64));
    for (i, c) in cases().into_iter().enumerate() {
        check_on(c, 11 + i as u64, &gpu, 1e-4);
    }
}

#[test]
fn untracked_inputs_give_the_same_output_as_tracked_ones() {
    let c = Case {
        b: 1,
        h: 3,
        hkv: 1,
        tq: 66,
        tk: 66,
        d: 8,
        padded: false,
    };
    let make = |device: &Device| {
        let mut rng = StdRng::seed_from_u64(5);
        let q = random([c.b, c.h, c.tq, c.d], &mut rng, device);
        let k = random([c.b, c.hkv, c.tk, c.d], &mut rng, device);
        let v = random([c.b, c.hkv, c.tk, c.d], &mut rng, device);
        (q, k, v)
    };
    let (q, k, v) = make(&Device::flex());
    let a = causal_attention(q, k, v, None, 0.3).unwrap();
    let (q, k, v) = make(&Device::flex().autodiff());
    let b = causal_attention(q.require_grad(), k, v, None, 0.3).unwrap();
    assert_eq!(
        a.into_data().try_to_vec::<f32>().unwrap(),
        b.into_data().try_to_vec::<f32>().unwrap()
    );
}

/// Keys and values passed as the first `Tk` rows of a longer buffer (a KV cache with room for
/// more tokens, read in place) give exactly the output of the same keys and values passed as
/// tensors of their own; so do a view starting inside the buffer and keys and values with
/// different room (which the op copies).
#[test]
fn keys_inside_a_larger_buffer_give_the_same_output() {
    for c in cases() {
        for room in [0, 1, 13] {
            // The buffers hold `room` rows more than the two-row shifted view below needs.
            let device = Device::flex();
            let scale = 1.0 / (c.d as f64).sqrt();
            let mut rng = StdRng::seed_from_u64(21);
            let q = random([c.b, c.h, c.tq, c.d], &mut rng, &device);
            let rows = c.tk + 2 + room;
            let k_buf = random([c.b, c.hkv, rows, c.d], &mut rng, &device);
            let v_buf = random([c.b, c.hkv, rows, c.d], &mut rng, &device);
            let mask = Tensor::<2>::from_data(TensorData::new(key_mask(&c), [c.b, c.tk]), &device);
            let run = |k: Tensor<4>, v: Tensor<4>| {
                causal_attention(q.clone(), k, v, Some(mask.clone()), scale)
                    .unwrap()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap()
            };
            let own = |x: &Tensor<4>, start: usize| {
                let data = x.clone().narrow(2, start, c.tk).into_data();
                Tensor::<4>::from_data(data, &device)
            };
            let want = run(own(&k_buf, 0), own(&v_buf, 0));
            let in_place = run(
                k_buf.clone().narrow(2, 0, c.tk),
                v_buf.clone().narrow(2, 0, c.tk),
            );
            assert_eq!(in_place, want, "{c:?}, {room} spare rows");
            // Starting two rows into the buffer (read in place from that offset), against values
            // of another size of buffer (both copied).
            let shifted = run(k_buf.clone().narrow(2, 2, c.tk), own(&v_buf, 0));
            assert_eq!(shifted, run(own(&k_buf, 2), own(&v_buf, 0)), "{c:?}");
        }
    }
}
