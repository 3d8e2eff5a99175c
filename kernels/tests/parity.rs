//! The fused WKV-7 op against the tensor-op reference on random inputs: outputs, final states
//! and every gradient, plus chunked processing and single-token steps.

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rwkv_kernels::{Wkv7Impl, Wkv7Input, wkv7, wkv7_step};

const TOL: f32 = 1e-4;

struct Case {
    b: usize,
    t: usize,
    h: usize,
    n: usize,
}

/// Random inputs shaped like a real layer's: w in (0.545, 1), kk unit per head, a in (0, 1).
struct Raw {
    r: Vec<f32>,
    w: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    s0: Vec<f32>,
    mask: Vec<f32>,
}

fn raw(c: &Case, seed: u64, gaps: bool) -> Raw {
    let mut rng = StdRng::seed_from_u64(seed);
    let len = c.b * c.t * c.h * c.n;
    let mut u = |lo: f32, hi: f32, n: usize| {
        (0..n)
            .map(|_| rng.random_range(lo..hi))
            .collect::<Vec<f32>>()
    };
    let r = u(-1.0, 1.0, len);
    let w = u(0.55, 0.999, len);
    let k = u(-1.0, 1.0, len);
    let v = u(-1.0, 1.0, len);
    let kk_raw = u(-1.0, 1.0, len);
    let icl = u(0.0, 1.0, len);
    let s0 = u(-0.5, 0.5, c.b * c.h * c.n * c.n);
    let (a, b) = rwkv_kernels::removal_terms(&kk_raw, &icl, c.n);
    let mask = common::gap_mask(c.b * c.t, gaps, 11);
    Raw {
        r,
        w,
        k,
        v,
        a,
        b,
        s0,
        mask,
    }
}

fn t4(x: &[f32], s: [usize; 4], d: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(x.to_vec(), s), d)
}

fn vec_of<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// The inputs of `x` as (non-autodiff) tensors on `d`.
fn tensors(c: &Case, x: &Raw, d: &Device) -> Wkv7Input {
    let sh = [c.b, c.t, c.h, c.n];
    Wkv7Input {
        r: t4(&x.r, sh, d),
        w: t4(&x.w, sh, d),
        k: t4(&x.k, sh, d),
        v: t4(&x.v, sh, d),
        a: t4(&x.a, sh, d),
        b: t4(&x.b, sh, d),
    }
}

/// max |x − y| / max |y|
fn rel(x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len());
    let scale = y.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    x.iter()
        .zip(y)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

struct Run {
    y: Vec<f32>,
    s: Vec<f32>,
    grads: Vec<(&'static str, Vec<f32>)>,
}

fn run(c: &Case, x: &Raw, imp: Wkv7Impl, with_mask: bool, device: &Device) -> Run {
    let d = device.clone().autodiff();
    let sh = [c.b, c.t, c.h, c.n];
    let sh_s = [c.b, c.h, c.n, c.n];
    let leaf = |v: &[f32], s: [usize; 4]| t4(v, s, &d).require_grad();
    let (r, w, k, v, a, b, s0) = (
        leaf(&x.r, sh),
        leaf(&x.w, sh),
        leaf(&x.k, sh),
        leaf(&x.v, sh),
        leaf(&x.a, sh),
        leaf(&x.b, sh),
        leaf(&x.s0, sh_s),
    );
    let mask =
        with_mask.then(|| Tensor::<2>::from_data(TensorData::new(x.mask.clone(), [c.b, c.t]), &d));
    let input = Wkv7Input {
        r: r.clone(),
        w: w.clone(),
        k: k.clone(),
        v: v.clone(),
        a: a.clone(),
        b: b.clone(),
    };
    let (y, s) = wkv7(input, mask, Some(s0.clone()), imp);
    // A loss touching both outputs with fixed random weights.
    let mut rng = StdRng::seed_from_u64(99);
    let gy: Vec<f32> = (0..c.b * c.t * c.h * c.n)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let gs: Vec<f32> = (0..c.b * c.h * c.n * c.n)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let loss = (y.clone() * t4(&gy, sh, &d)).sum() + (s.clone() * t4(&gs, sh_s, &d)).sum();
    let grads = loss.backward();
    let g = |t: &Tensor<4>| vec_of(t.grad(&grads).expect("gradient"));
    Run {
        y: vec_of(y),
        s: vec_of(s),
        grads: vec![
            ("r", g(&r)),
            ("w", g(&w)),
            ("k", g(&k)),
            ("v", g(&v)),
            ("a", g(&a)),
            ("b", g(&b)),
            ("state", g(&s0)),
        ],
    }
}

fn check_case(c: Case, seed: u64, gaps: bool) {
    check_case_on(c, seed, gaps, &Device::flex(), TOL);
}

/// The fused op on `device` against the reference on the CPU, within `tol`.
fn check_case_on(c: Case, seed: u64, gaps: bool, device: &Device, tol: f32) {
    let x = raw(&c, seed, gaps);
    let fused = run(&c, &x, Wkv7Impl::Fused, true, device);
    let reference = run(&c, &x, Wkv7Impl::Reference, true, &Device::flex());
    let tag = format!(
        "B={} T={} H={} N={} gaps={gaps} on {device:?}",
        c.b, c.t, c.h, c.n
    );
    let e = rel(&fused.y, &reference.y);
    assert!(e < tol, "{tag}: y rel err {e}");
    let e = rel(&fused.s, &reference.s);
    assert!(e < tol, "{tag}: state rel err {e}");
    for ((name, gf), (_, gr)) in fused.grads.iter().zip(&reference.grads) {
        let e = rel(gf, gr);
        assert!(e < tol, "{tag}: d{name} rel err {e}");
        assert!(
            gr.iter().any(|v| *v != 0.0),
            "{tag}: d{name} is all zero — the test would not catch anything"
        );
    }
    if gaps {
        // Masked tokens: zero output and zero gradient.
        for (bt, m) in x.mask.iter().enumerate() {
            if *m == 0.0 {
                let o = bt * c.h * c.n;
                assert!(
                    fused.y[o..o + c.h * c.n].iter().all(|v| *v == 0.0),
                    "{tag}: masked output"
                );
                assert!(
                    fused.grads[0].1[o..o + c.h * c.n].iter().all(|v| *v == 0.0),
                    "{tag}: masked dr"
                );
            }
        }
    }
}

/// `(case, seed, gaps)` with small heads.
fn small_head_cases() -> [(Case, u64, bool); 2] {
    [
        (
            Case {
                b: 2,
                t: 37,
                h: 3,
                n: 8,
            },
            1,
            true,
        ),
        (
            Case {
                b: 1,
                t: 16,
                h: 2,
                n: 16,
            },
            2,
            false,
        ),
    ]
}

/// `(case, seed, gaps)` with SmolLM2's and Qwen2.5's head size.
fn head_64_cases() -> [(Case, u64, bool); 2] {
    [
        (
            Case {
                b: 2,
                t: 21,
                h: 2,
                n: 64,
            },
            3,
            true,
        ),
        (
            Case {
                b: 1,
                t: 48,
                h: 1,
                n: 64,
            },
            4,
            false,
        ),
    ]
}

#[test]
fn fused_matches_reference_small_heads() {
    for (c, seed, gaps) in small_head_cases() {
        check_case(c, seed, gaps);
    }
}

#[test]
fn fused_matches_reference_head_size_64() {
    for (c, seed, gaps) in head_64_cases() {
        check_case(c, seed, gaps);
    }
}

#[test]
fn two_halves_with_carried_state_equal_one_pass() {
    let c = Case {
        b: 2,
        t: 40,
        h: 2,
        n: 16,
    };
    let x = raw(&c, 5, true);
    let d = Device::flex();
    let mask = Tensor::<2>::from_data(TensorData::new(x.mask.clone(), [c.b, c.t]), &d);
    let s0 = t4(&x.s0, [c.b, c.h, c.n, c.n], &d);
    let input = tensors(&c, &x, &d);
    let (y, s) = wkv7(
        input.clone(),
        Some(mask.clone()),
        Some(s0.clone()),
        Wkv7Impl::Fused,
    );

    let split = 23;
    let part =
        |t: &Tensor<4>, r: std::ops::Range<usize>| t.clone().slice([0..c.b, r, 0..c.h, 0..c.n]);
    let half = |r: std::ops::Range<usize>| Wkv7Input {
        r: part(&input.r, r.clone()),
        w: part(&input.w, r.clone()),
        k: part(&input.k, r.clone()),
        v: part(&input.v, r.clone()),
        a: part(&input.a, r.clone()),
        b: part(&input.b, r),
    };
    let m = |r: std::ops::Range<usize>| mask.clone().slice([0..c.b, r]);
    let (y1, s1) = wkv7(half(0..split), Some(m(0..split)), Some(s0), Wkv7Impl::Fused);
    let (y2, s2) = wkv7(
        half(split..c.t),
        Some(m(split..c.t)),
        Some(s1),
        Wkv7Impl::Fused,
    );
    let y12 = Tensor::cat(vec![y1, y2], 1);
    assert_eq!(vec_of(y12), vec_of(y), "chunked output differs");
    assert_eq!(vec_of(s2), vec_of(s), "chunked final state differs");
}

/// Decoding one token at a time (the in-place step kernel, its sums over j in another order)
/// gives the sequence op's outputs and state, and the reference's, up to rounding.
#[test]
fn single_token_steps_match_the_sequence_op_and_the_reference() {
    let c = Case {
        b: 2,
        t: 19,
        h: 3,
        n: 64,
    };
    let x = raw(&c, 6, false);
    let d = Device::flex();
    let s0 = || Some(t4(&x.s0, [c.b, c.h, c.n, c.n], &d));
    let (y, s) = wkv7(tensors(&c, &x, &d), None, s0(), Wkv7Impl::Fused);
    let (yr, sr) = wkv7(tensors(&c, &x, &d), None, s0(), Wkv7Impl::Reference);
    let (ys, state) = token_by_token(&c, &x, &d);
    for (what, got, want) in [
        ("y vs the sequence op", &ys, vec_of(y)),
        ("state vs the sequence op", &state, vec_of(s)),
        ("y vs the reference", &ys, vec_of(yr)),
        ("state vs the reference", &state, vec_of(sr)),
    ] {
        let e = rel(got, &want);
        assert!(e < TOL, "{what}: rel err {e}");
    }
}

/// A masked sequence in a one-token step keeps its state exactly and outputs zeros; the
/// others match the reference.
#[test]
fn a_single_token_step_skips_masked_rows() {
    let c = Case {
        b: 3,
        t: 1,
        h: 2,
        n: 64,
    };
    let x = raw(&c, 8, false);
    let d = Device::flex();
    let keep = [1.0f32, 0.0, 1.0];
    let mask = || {
        Some(Tensor::<2>::from_data(
            TensorData::new(keep.to_vec(), [c.b, 1]),
            &d,
        ))
    };
    let s0 = || Some(t4(&x.s0, [c.b, c.h, c.n, c.n], &d));
    let (y, s) = wkv7(tensors(&c, &x, &d), mask(), s0(), Wkv7Impl::Fused);
    let (yr, sr) = wkv7(tensors(&c, &x, &d), mask(), s0(), Wkv7Impl::Reference);
    let (y, s, yr, sr) = (vec_of(y), vec_of(s), vec_of(yr), vec_of(sr));
    assert!(rel(&y, &yr) < TOL, "y rel err {}", rel(&y, &yr));
    assert!(rel(&s, &sr) < TOL, "state rel err {}", rel(&s, &sr));
    let per_state = c.h * c.n * c.n;
    assert_eq!(s[per_state..2 * per_state], x.s0[per_state..2 * per_state]);
    let per_y = c.h * c.n;
    assert!(y[per_y..2 * per_y].iter().all(|&v| v == 0.0));
    assert_ne!(
        s[..per_state],
        x.s0[..per_state],
        "a kept row's state moves"
    );
}

/// `(y, final state)` of the fused op run one [`wkv7_step`] at a time on `d`, from `x.s0`.
fn token_by_token(c: &Case, x: &Raw, d: &Device) -> (Vec<f32>, Vec<f32>) {
    let input = tensors(c, x, d);
    let tok = |t: &Tensor<4>, i: usize| {
        t.clone()
            .slice([0..c.b, i..i + 1, 0..c.h, 0..c.n])
            .reshape([c.b, c.h, c.n])
    };
    let mut state = t4(&x.s0, [c.b, c.h, c.n, c.n], d);
    let mut ys = Vec::new();
    for i in 0..c.t {
        let (yt, st) = wkv7_step(
            tok(&input.r, i),
            tok(&input.w, i),
            tok(&input.k, i),
            tok(&input.v, i),
            tok(&input.a, i),
            tok(&input.b, i),
            state,
            Wkv7Impl::Fused,
        );
        state = st;
        ys.push(yt.reshape([c.b, 1, c.h, c.n]));
    }
    (vec_of(Tensor::cat(ys, 1)), vec_of(state))
}

#[test]
fn fused_without_autodiff_matches_reference() {
    let c = Case {
        b: 1,
        t: 33,
        h: 2,
        n: 32,
    };
    let x = raw(&c, 7, true);
    let d = Device::flex();
    let mk = || tensors(&c, &x, &d);
    let mask = || {
        Some(Tensor::<2>::from_data(
            TensorData::new(x.mask.clone(), [c.b, c.t]),
            &d,
        ))
    };
    let (yf, sf) = wkv7(mk(), mask(), None, Wkv7Impl::Fused);
    let (yr, sr) = wkv7(mk(), mask(), None, Wkv7Impl::Reference);
    assert!(rel(&vec_of(yf), &vec_of(yr)) < TOL);
    assert!(rel(&vec_of(sf), &vec_of(sr)) < TOL);
}

#[test]
fn the_fused_path_is_taken_on_flex() {
    assert!(
        rwkv_kernels::fused_available(&Device::flex()),
        "{:?}",
        Device::flex()
    );
    assert!(
        rwkv_kernels::fused_available(&Device::flex().autodiff()),
        "{:?}",
        Device::flex().autodiff()
    );
}

/// The CubeCL kernels on the wgpu device (in CI: Mesa's software Vulkan driver, lavapipe)
/// against the same CPU reference. lavapipe does not fuse multiply-adds and sums in another
/// order than the reference, hence a tolerance a little above the CPU's.
#[cfg(feature = "wgpu")]
mod gpu {
    use super::*;
    use burn::tensor::DeviceKind;

    const GPU_TOL: f32 = 2e-4;

    fn gpu() -> Device {
        Device::wgpu(DeviceKind::DefaultDevice)
    }

    #[test]
    fn the_fused_path_is_taken_on_wgpu_up_to_head_size_64() {
        assert!(rwkv_kernels::wkv7_fused_available(&gpu(), 64));
        assert!(rwkv_kernels::wkv7_fused_available(&gpu().autodiff(), 8));
        assert!(!rwkv_kernels::wkv7_fused_available(&gpu(), 128));
        assert!(
            !rwkv_kernels::fused_available(&gpu()),
            "fused_available names the CPU only"
        );
    }

    #[test]
    fn gpu_kernels_match_reference_small_heads_with_gaps() {
        for (c, seed, gaps) in small_head_cases() {
            check_case_on(c, seed, gaps, &gpu(), GPU_TOL);
        }
    }

    #[test]
    fn gpu_kernels_match_reference_head_size_64() {
        for (c, seed, gaps) in head_64_cases() {
            check_case_on(c, seed, gaps, &gpu(), GPU_TOL);
        }
        // Long enough that a kernel whose 64-step loops were not unrolled would be cut short
        // by lavapipe's 65,535-iteration loop limit (its last tokens came back unwritten).
        check_case_on(
            Case {
                b: 1,
                t: 130,
                h: 2,
                n: 64,
            },
            5,
            true,
            &gpu(),
            GPU_TOL,
        );
    }

    /// The forward alone (no states saved), several times in a row with new inputs.
    #[test]
    fn gpu_forward_without_autodiff_matches_the_cpu_every_time() {
        let c = Case {
            b: 2,
            t: 300,
            h: 3,
            n: 64,
        };
        for seed in [21, 22, 23] {
            let x = raw(&c, seed, true);
            let go = |d: &Device| {
                let mask = Tensor::<2>::from_data(TensorData::new(x.mask.clone(), [c.b, c.t]), d);
                let s0 = t4(&x.s0, [c.b, c.h, c.n, c.n], d);
                let (y, s) = wkv7(tensors(&c, &x, d), Some(mask), Some(s0), Wkv7Impl::Fused);
                (vec_of(y), vec_of(s))
            };
            let (yg, sg) = go(&gpu());
            let (yc, sc) = go(&Device::flex());
            assert!(
                rel(&yg, &yc) < GPU_TOL,
                "seed {seed}: y rel err {}",
                rel(&yg, &yc)
            );
            assert!(
                rel(&sg, &sc) < GPU_TOL,
                "seed {seed}: state rel err {}",
                rel(&sg, &sc)
            );
        }
    }

    #[test]
    fn gpu_single_token_steps_match_the_cpu() {
        let c = Case {
            b: 2,
            t: 5,
            h: 3,
            n: 64,
        };
        let x = raw(&c, 6, false);
        let (yg, sg) = token_by_token(&c, &x, &gpu());
        let (yc, sc) = token_by_token(&c, &x, &Device::flex());
        assert!(rel(&yg, &yc) < GPU_TOL, "y rel err {}", rel(&yg, &yc));
        assert!(rel(&sg, &sc) < GPU_TOL, "state rel err {}", rel(&sg, &sc));
    }
}
