//! `runner bench wkv`: the WKV-7 recurrence, forward and forward+backward, for
//! (a) the Burn tensor-op reference, (b) the fused CPU op, (c) PyTorch eager running the same
//! recurrence as a per-token loop (when `torch` is importable), on the same inputs' shapes.
//!
//! FLOP counts used for GFLOP/s, per token and head of size N: forward 9·N² (S·α, the rank-2
//! update, S·r); forward+backward 39·N² (forward, the chunk recompute, and the backward).

use super::mem;
use burn::tensor::{Device, Tensor};
use rwkv_kernels::{Wkv7Impl, Wkv7Input, wkv7};
use std::fmt::Write;
use std::path::Path;
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub n: usize,
}

/// The shapes the original's CPU figures were measured at: SmolLM2-135M (9 heads) and
/// Qwen2.5-0.5B (14 heads) layers.
pub const SHAPES: [Shape; 2] = [
    Shape {
        b: 4,
        t: 1024,
        h: 9,
        n: 64,
    },
    Shape {
        b: 2,
        t: 2048,
        h: 14,
        n: 64,
    },
];

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Timing {
    pub fwd_ms: f64,
    pub fwdbwd_ms: f64,
    pub peak_rss_mib: f64,
}

/// Inputs shaped like a real layer's, made on the host and uploaded (the same numbers on
/// every device).
fn inputs(s: Shape, device: &Device, seed: u64) -> Wkv7Input {
    SeededInputs::seeded(s, device, false, seed).x
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times one implementation: median of `reps` forward runs and `reps` forward+backward runs.
pub fn time_burn(s: Shape, imp: Wkv7Impl, reps: usize, device: &Device) -> Timing {
    mem::reset_peak();
    let plain = device.clone();
    let calls = std::cell::Cell::new(0u64);
    let next_seed = || {
        calls.set(calls.get() + 1);
        calls.get()
    };
    let fwd = || {
        let x = inputs(s, &plain, next_seed());
        // A GPU runs ops asynchronously: let the inputs exist before the clock starts.
        plain.sync().expect("device sync");
        let t0 = Instant::now();
        let (y, st) = wkv7(x, None, None, imp);
        let _ = (y.into_data(), st.into_data());
        t0.elapsed().as_secs_f64() * 1e3
    };
    fwd(); // warm-up
    let fwd_ms = median((0..reps).map(|_| fwd()).collect());
    let ad = device.clone().autodiff();
    let fwdbwd = || {
        let x = inputs(s, &ad, next_seed());
        let x = Wkv7Input {
            r: x.r.require_grad(),
            w: x.w.require_grad(),
            k: x.k.require_grad(),
            v: x.v.require_grad(),
            a: x.a.require_grad(),
            b: x.b.require_grad(),
        };
        let leaves = x.clone();
        ad.sync().expect("device sync");
        let t0 = Instant::now();
        let (y, st) = wkv7(x, None, None, imp);
        let grads = (y.sum() + st.sum()).backward();
        let g = leaves.r.grad(&grads).expect("gradient of r");
        let _ = g.into_data();
        t0.elapsed().as_secs_f64() * 1e3
    };
    let fwdbwd_ms = median((0..reps.max(1)).map(|_| fwdbwd()).collect());
    Timing {
        fwd_ms,
        fwdbwd_ms,
        peak_rss_mib: mem::peak_rss_mib().unwrap_or(f64::NAN),
    }
}

/// Runs the PyTorch script; `Err` says why it could not (e.g. torch not installed).
pub fn time_torch(python: &str, script: &Path, s: Shape, reps: usize) -> Result<Timing, String> {
    let (b, t, h, n, r) = (
        s.b.to_string(),
        s.t.to_string(),
        s.h.to_string(),
        s.n.to_string(),
        reps.to_string(),
    );
    let args = ["--b", &b, "--t", &t, "--h", &h, "--n", &n, "--reps", &r];
    let v = super::run_python_json(python, script, &args, "PyTorch (pip install torch==2.9.0)")?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    Ok(Timing {
        fwd_ms: f("fwd_ms"),
        fwdbwd_ms: f("fwdbwd_ms"),
        peak_rss_mib: f("peak_rss_mb"),
    })
}

pub fn gflops(s: Shape, flops_per: f64, ms: f64) -> f64 {
    (s.b * s.t * s.h) as f64 * flops_per * (s.n * s.n) as f64 / (ms * 1e-3) / 1e9
}

/// All measurements for one shape.
#[derive(Debug)]
pub struct ShapeResult {
    pub shape: Shape,
    pub fused: Timing,
    pub reference: Option<Timing>,
    /// `Err` says why PyTorch was not measured.
    pub torch: Result<Timing, String>,
    /// The machine's measured f32 peak, GFLOP/s (see [`super::peak`]).
    pub peak_gflops: f64,
}

/// Measures the fused op, the Burn reference (when `with_reference`; once, it is slow) and
/// PyTorch eager for one shape.
pub fn measure(
    s: Shape,
    reps: usize,
    with_reference: bool,
    python: &str,
    script: &Path,
    device: &Device,
) -> ShapeResult {
    let on_cpu = rwkv_kernels::fused_available(device);
    ShapeResult {
        shape: s,
        fused: time_burn(s, Wkv7Impl::Fused, reps, device),
        reference: with_reference.then(|| time_burn(s, Wkv7Impl::Reference, reps.min(1), device)),
        // The PyTorch loop and the FMA peak are CPU figures: beside a GPU they say nothing.
        torch: if on_cpu {
            time_torch(python, script, s, reps)
        } else {
            Err("not measured beside a GPU".into())
        },
        peak_gflops: if on_cpu {
            super::peak::fma_peak_gflops()
        } else {
            f64::NAN
        },
    }
}

impl ShapeResult {
    /// The table for this shape, with the fused op's speed-ups over each reference.
    pub fn render(&self, reps: usize) -> String {
        let s = self.shape;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let peak = self.peak_gflops;
        let mut out = if peak.is_nan() {
            format!(
                "WKV-7  B={} T={} H={} N={}  (GPU, median of {reps}; peak RSS is the host's)\n",
                s.b, s.t, s.h, s.n
            )
        } else {
            format!(
                "WKV-7  B={} T={} H={} N={}  ({threads} threads, median of {reps}; measured f32 \
                 peak {peak:.0} GFLOP/s)\n",
                s.b, s.t, s.h, s.n
            )
        };
        let _ = writeln!(
            out,
            "{:<16} {:>10} {:>12} {:>14} {:>20} {:>16}",
            "implementation",
            "fwd ms",
            "fwd+bwd ms",
            "peak RSS MiB",
            "GFLOP/s fwd, f+b",
            "% of peak"
        );
        let mut row = |name: &str, t: &Timing| {
            let (gf, gb) = (gflops(s, 9.0, t.fwd_ms), gflops(s, 39.0, t.fwdbwd_ms));
            let _ = writeln!(
                out,
                "{name:<16} {:>10.1} {:>12.1} {:>14.0} {gf:>9.1}, {gb:>8.1} {:>7.1}, {:>6.1}",
                t.fwd_ms,
                t.fwdbwd_ms,
                t.peak_rss_mib,
                100.0 * gf / peak,
                100.0 * gb / peak
            );
        };
        if let Some(r) = &self.reference {
            row("burn reference", r);
        }
        row("fused (ours)", &self.fused);
        match &self.torch {
            Ok(t) => row("pytorch eager", t),
            Err(why) => {
                let _ = writeln!(out, "{:<16} skipped: {why}", "pytorch eager");
            }
        }
        let others = [
            ("burn reference", self.reference.as_ref()),
            ("pytorch eager", self.torch.as_ref().ok()),
        ];
        for (name, t) in others {
            if let Some(t) = t {
                let _ = writeln!(
                    out,
                    "fused vs {name:<14}: {:.1}x forward, {:.1}x forward+backward",
                    t.fwd_ms / self.fused.fwd_ms,
                    t.fwdbwd_ms / self.fused.fwdbwd_ms
                );
            }
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let s = self.shape;
        serde_json::json!({
            "shape": {"b": s.b, "t": s.t, "h": s.h, "n": s.n},
            "fused": self.fused,
            "reference": self.reference,
            "pytorch": self.torch.as_ref().ok(),
            "peak_gflops": self.peak_gflops,
        })
    }
}

/// Largest relative error (max |x − y| / max |y|) of the fused op on `device` against the
/// fused CPU op (itself tested against the reference), per output and gradient, on random
/// inputs of shape `s` with a few masked tokens.
pub fn check_against_cpu(s: Shape, device: &Device) -> Vec<(&'static str, f64)> {
    let run = |d: &Device| -> Vec<(&'static str, Vec<f32>)> {
        let d = d.clone().autodiff();
        SeededInputs::seeded(s, &d, true, 7).outputs_and_grads()
    };
    let ours = run(device);
    let cpu = run(&Device::flex());
    ours.into_iter()
        .zip(cpu)
        .map(|((name, x), (_, y))| {
            let scale = y.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
            let err = x
                .iter()
                .zip(&y)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            (name, f64::from(err / scale))
        })
        .collect()
}

/// Inputs made on the host from a fixed seed, so two devices get the same numbers.
struct SeededInputs {
    x: Wkv7Input,
    mask: Tensor<2>,
    s0: Tensor<4>,
}

impl SeededInputs {
    /// `grad`: the inputs and the initial state are leaves that track gradients.
    fn seeded(s: Shape, d: &Device, grad: bool, seed: u64) -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let dims = [s.b, s.t, s.h, s.n];
        let len = s.b * s.t * s.h * s.n;
        let mut u = |lo: f32, hi: f32, n: usize| -> Vec<f32> {
            (0..n).map(|_| rng.random_range(lo..hi)).collect()
        };
        let t4 = |v: Vec<f32>, dims: [usize; 4]| {
            Tensor::<4>::from_data(burn::tensor::TensorData::new(v, dims), d)
        };
        let (r, w, k, v) = (
            u(-1.0, 1.0, len),
            u(0.55, 0.999, len),
            u(-1.0, 1.0, len),
            u(-1.0, 1.0, len),
        );
        let kk = u(-1.0, 1.0, len);
        let icl = u(0.0, 1.0, len);
        let s0 = u(-0.5, 0.5, s.b * s.h * s.n * s.n);
        let (a, b) = rwkv_kernels::removal_terms(&kk, &icl, s.n);
        // Every 7th token masked out.
        let mask: Vec<f32> = (0..s.b * s.t)
            .map(|i| if i % 7 == 3 { 0.0 } else { 1.0 })
            .collect();
        let req = |t: Tensor<4>| if grad { t.require_grad() } else { t };
        SeededInputs {
            x: Wkv7Input {
                r: req(t4(r, dims)),
                w: req(t4(w, dims)),
                k: req(t4(k, dims)),
                v: req(t4(v, dims)),
                a: req(t4(a, dims)),
                b: req(t4(b, dims)),
            },
            mask: Tensor::from_data(burn::tensor::TensorData::new(mask, [s.b, s.t]), d),
            s0: req(t4(s0, [s.b, s.h, s.n, s.n])),
        }
    }

    /// `y`, the final state, and the gradients of a fixed weighted sum of both.
    fn outputs_and_grads(self) -> Vec<(&'static str, Vec<f32>)> {
        let leaves = self.x.clone();
        let s0 = self.s0.clone();
        let (y, st) = wkv7(self.x, Some(self.mask), Some(self.s0), Wkv7Impl::Fused);
        let wy = y.clone().sin();
        let ws = st.clone().cos();
        let loss = (y.clone() * wy.detach()).sum() + (st.clone() * ws.detach()).sum();
        let grads = loss.backward();
        let v = |t: Tensor<4>| {
            t.into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32")
        };
        let g = |t: &Tensor<4>, name: &str| {
            v(t.grad(&grads)
                .unwrap_or_else(|| panic!("no gradient of {name}")))
        };
        vec![
            ("r", g(&leaves.r, "r")),
            ("w", g(&leaves.w, "w")),
            ("k", g(&leaves.k, "k")),
            ("v", g(&leaves.v, "v")),
            ("a", g(&leaves.a, "a")),
            ("b", g(&leaves.b, "b")),
            ("state0", g(&s0, "state")),
            ("y", v(y)),
            ("state", v(st)),
        ]
    }
}
