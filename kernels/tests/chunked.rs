//! The chunked (matrix-form) WKV-7 against the per-token kernel (itself checked against the
//! tensor-op reference in parity.rs) on random inputs shaped like a real layer's: outputs,
//! final states and every gradient, with and without masked tokens, decays near the 0.545
//! floor, sequences that end mid-chunk, and long sequences.

mod common;

use rand::{Rng, SeedableRng, rngs::StdRng};
use rwkv_kernels::chunked;
use rwkv_kernels::cpu::{self, Dims, Grads, Inputs};

struct Raw {
    r: Vec<f32>,
    w: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    mask: Vec<f32>,
    s0: Vec<f32>,
    dy: Vec<f32>,
    ds: Vec<f32>,
}

fn raw(d: Dims, seed: u64, w_range: (f32, f32), gaps: bool) -> Raw {
    let mut rng = StdRng::seed_from_u64(seed);
    let len = d.seq_len();
    let mut u = |lo: f32, hi: f32, n: usize| -> Vec<f32> {
        (0..n).map(|_| rng.random_range(lo..hi)).collect()
    };
    let (r, w, k, v) = (
        u(-1.0, 1.0, len),
        u(w_range.0, w_range.1, len),
        u(-1.0, 1.0, len),
        u(-1.0, 1.0, len),
    );
    let kk = u(-1.0, 1.0, len);
    let icl = u(0.0, 1.0, len);
    let s0 = u(-0.5, 0.5, d.state_len());
    let dy = u(-1.0, 1.0, len);
    let ds = u(-1.0, 1.0, d.state_len());
    let (a, b) = rwkv_kernels::removal_terms(&kk, &icl, d.head_size);
    let mask = common::gap_mask(d.batch * d.seq, gaps, 13);
    Raw {
        r,
        w,
        k,
        v,
        a,
        b,
        mask,
        s0,
        dy,
        ds,
    }
}

fn inputs(x: &Raw) -> Inputs<'_> {
    Inputs {
        r: &x.r,
        w: &x.w,
        k: &x.k,
        v: &x.v,
        a: &x.a,
        b: &x.b,
        mask: &x.mask,
    }
}

/// max |x − y| / max |y|
fn rel(x: &[f32], y: &[f32]) -> f32 {
    let scale = y.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    x.iter()
        .zip(y)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

fn check(d: Dims, seed: u64, w_range: (f32, f32), gaps: bool) {
    let x = raw(d, seed, w_range, gaps);
    let (y1, s1, sv1) = cpu::forward(d, inputs(&x), &x.s0, true);
    let (y2, s2, sv2) = chunked::forward(d, inputs(&x), &x.s0, true);
    let tag = format!("{d:?} w in {w_range:?} gaps={gaps}");
    assert!(rel(&y2, &y1) < 1e-4, "{tag}: y {}", rel(&y2, &y1));
    assert!(rel(&s2, &s1) < 1e-4, "{tag}: state {}", rel(&s2, &s1));
    let g1: Grads = cpu::backward(d, inputs(&x), &sv1, &x.dy, &x.ds);
    let g2: Grads = chunked::backward(d, inputs(&x), &sv2, &x.dy, &x.ds);
    for (name, a, b) in [
        ("r", &g2.r, &g1.r),
        ("w", &g2.w, &g1.w),
        ("k", &g2.k, &g1.k),
        ("v", &g2.v, &g1.v),
        ("a", &g2.a, &g1.a),
        ("b", &g2.b, &g1.b),
        ("s0", &g2.s0, &g1.s0),
    ] {
        let e = rel(a, b);
        assert!(e < 1e-4, "{tag}: d{name} rel err {e}");
        assert!(b.iter().any(|v| *v != 0.0), "{tag}: d{name} all zero");
    }
    if gaps {
        for (bt, m) in x.mask.iter().enumerate() {
            if *m == 0.0 {
                let o = bt * d.heads * d.head_size;
                let row = o..o + d.heads * d.head_size;
                assert!(y2[row.clone()].iter().all(|v| *v == 0.0), "{tag}: masked y");
                for g in [&g2.r, &g2.w, &g2.k, &g2.v, &g2.a, &g2.b] {
                    assert!(
                        g[row.clone()].iter().all(|v| *v == 0.0),
                        "{tag}: masked grad"
                    );
                }
            }
        }
    }
}

fn dims(batch: usize, seq: usize, heads: usize, head_size: usize) -> Dims {
    Dims {
        batch,
        seq,
        heads,
        head_size,
    }
}

#[test]
fn chunked_equals_per_token_small_heads() {
    for (i, d) in [dims(2, 37, 3, 4), dims(1, 16, 2, 8), dims(2, 50, 2, 16)]
        .into_iter()
        .enumerate()
    {
        check(d, i as u64, (0.55, 0.999), false);
        check(d, 10 + i as u64, (0.55, 0.999), true);
    }
}

#[test]
fn chunked_equals_per_token_head_size_64() {
    check(dims(2, 67, 2, 64), 3, (0.55, 0.999), true);
    // Decays at the floor: e^{-c} is largest here.
    check(dims(1, 48, 2, 64), 4, (0.5455, 0.56), false);
    // Slow decays: the state keeps everything.
    check(dims(1, 48, 1, 64), 5, (0.995, 0.99999), true);
}

#[test]
fn chunked_equals_per_token_on_long_sequences() {
    check(dims(1, 1024, 2, 64), 6, (0.55, 0.999), false);
}

/// Both forms give the same bits at every instruction-set level this CPU has: the kernels use
/// no fused multiply-adds and sum in the same order at every vector width (and tile width).
#[test]
fn every_instruction_set_gives_the_same_bits() {
    use cpu::SimdLevel;
    let d = dims(2, 67, 2, 64);
    let x = raw(d, 7, (0.55, 0.999), true);
    let run = |level: SimdLevel| -> Vec<Vec<f32>> {
        cpu::cap_simd_level(Some(level));
        let (y1, s1, sv1) = cpu::forward(d, inputs(&x), &x.s0, true);
        let g1 = cpu::backward(d, inputs(&x), &sv1, &x.dy, &x.ds);
        let (y2, s2, sv2) = chunked::forward(d, inputs(&x), &x.s0, true);
        let g2 = chunked::backward(d, inputs(&x), &sv2, &x.dy, &x.ds);
        cpu::cap_simd_level(None);
        let mut all = vec![y1, s1, y2, s2];
        for g in [g1, g2] {
            all.extend([g.r, g.w, g.k, g.v, g.a, g.b, g.s0]);
        }
        all
    };
    let levels: Vec<SimdLevel> = [SimdLevel::Base, SimdLevel::Avx2Fma, SimdLevel::Avx512]
        .into_iter()
        .filter(|l| *l <= cpu::detected_simd_level())
        .collect();
    let base = run(levels[0]);
    for &level in &levels[1..] {
        for (i, (a, b)) in run(level).iter().zip(&base).enumerate() {
            let same =
                a.len() == b.len() && a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "{level:?} differs from {:?} in result {i}", levels[0]);
        }
    }
}
